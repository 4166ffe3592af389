"""zedctl's library errors: plain exceptions with one clear message each.

Library modules raise these; only `zedctl.cli` turns them into exit codes:

  0  success (for `validate`: the file is valid; for `diff`: no change)
  1  invalid configuration, an operation refused (not found, changed concurrently,
     not confirmed); for `diff`: there are changes
  2  usage error: bad options or arguments, a file that cannot be read
  3  Consul error: unreachable, permission denied (ACL), TLS, or a server error
"""

from __future__ import annotations

from collections.abc import Sequence

from .schema import ConfigPath, Problem


class ZedctlError(Exception):
    """Base of zedctl's errors: `message` is what the user reads."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageProblem(ZedctlError):
    """Bad input to the command itself: a file that cannot be read, a bad address."""


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


class NotConfirmed(ZedctlError):
    """A destructive operation that was not confirmed (no terminal and no --yes, or 'no')."""


class ConsulError(ZedctlError):
    """Consul could not be reached or refused the request."""


class ConsulUnreachable(ConsulError):
    """No answer: connection refused or reset, a timeout, a name that does not resolve."""


class ConsulPermissionDenied(ConsulError):
    """403: an unknown token, or a token without the rights needed."""


class ConsulTLSError(ConsulError):
    """The TLS handshake failed (certificate, name, or TLS against a plain port)."""
