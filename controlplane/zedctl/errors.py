"""Errors zedctl shows to users: one clear message and a documented exit code, never a traceback.

Exit codes:
  0  success (for `validate`: the file is valid)
  1  invalid configuration, or an operation refused (not found, changed concurrently)
  2  usage error: bad options or arguments, a file that cannot be read
  3  Consul error: unreachable, permission denied (ACL), or a server error
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from .schema import ConfigPath, Problem

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_CONSUL = 3


class ZedctlError(click.ClickException):
    """Base of zedctl's user-facing errors (exit code 1)."""

    exit_code = EXIT_INVALID


class UsageProblem(ZedctlError):
    """Bad input to the command itself: a file that cannot be read, a bad address."""

    exit_code = EXIT_USAGE


class ConfigSyntaxError(ZedctlError):
    """A config file that is not well-formed YAML or JSON."""

    def __init__(self, source: str, line: int | None, column: int | None, reason: str) -> None:
        where = source
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.line = line
        self.column = column


class InvalidConfig(ZedctlError):
    """A config that breaks the schema: every problem, each naming its path and value."""

    def __init__(self, source: str, problems: Sequence[Problem], base: ConfigPath = ()) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [p.render(base) for p in self.problems]
        count = len(lines)
        header = f"{source}: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([header, *("  " + line for line in lines)]))


class NotFound(ZedctlError):
    """An instance, pool or host that does not exist."""


class Conflict(ZedctlError):
    """A compare-and-set lost against a concurrent change."""


class ConsulError(ZedctlError):
    """Consul could not be reached or refused the request."""

    exit_code = EXIT_CONSUL


class ConsulUnreachable(ConsulError):
    pass


class ConsulPermissionDenied(ConsulError):
    pass
