"""Parsing of Test::Nginx-style `.t` files into blocks and sections.

The file format (see the package docstring for the whole contract):

    # header lines, ignored, then the file's preamble (optional):
    --- http_config
        lua_shared_dict cache 1m;
    __DATA__

    === TEST 1: title
    --- config
        location = /t { ... }
    --- request
    GET /t
    --- response_body
    ok

Values are CRLF-normalised, leading and trailing blank lines are dropped and one final
newline is kept; `--- name: value` is the one-line form (no final newline). Filter
words after the section name: `chomp` drops the final newline, `re` makes the lines of
`error_log`, `no_error_log` and `grep_error_log` Python regular expressions, `own` makes
a block's main_config, http_config, config or vars replace the preamble's.

The preamble (Test::Nginx's add_block_preprocessor / `$::HttpConfig`): `main_config`,
`http_config` and `config` sections before `__DATA__` are put in front of the same
section of every block (or stand for it in a block without one), unless the block's
section says `own`. Header lines before the first `---` are comments.

Block variables, to change one place inside the preamble per block: a `vars` section
(in the preamble: the defaults; in a block: its own values, which win) holds
`NAME = value` lines (`#` lines are comments; the value may be empty and may use the
harness's variables). NAME is a `TEST_NGINX_*` or `TEST_ZEDCUP_*` name the harness does
not define; `$NAME` is replaced in every section of the block when the file is parsed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Every section a block may have. Anything else is a parse error.
SECTIONS: frozenset[str] = frozenset(
    {
        "main_config",
        "http_config",
        "config",
        "request",
        "more_headers",
        "pipelined_requests",
        "error_code",
        "response_body",
        "response_body_like",
        "response_headers",
        "error_log",
        "no_error_log",
        "grep_error_log",
        "grep_error_log_out",
        "wait",
        "timeout",
        "abort",
        "ONLY",
        "SKIP",
        "LAST",
        "workers",
        "nodes",
        "vars",
    }
)

#: Filter words allowed after a section name, and the sections `re` applies to.
FILTERS: frozenset[str] = frozenset({"chomp", "re", "own"})
REGEX_SECTIONS: frozenset[str] = frozenset({"error_log", "no_error_log", "grep_error_log"})
#: Sections a file's preamble may give (and `own` applies to).
PREAMBLE_SECTIONS: frozenset[str] = frozenset({"main_config", "http_config", "config", "vars"})

#: Variables the harness defines for every block (besides the numbered ones).
FIXED_VARIABLES: frozenset[str] = frozenset(
    {
        "TEST_NGINX_SERVER_PORT",
        "TEST_NGINX_CONSUL_PORT",
        "TEST_NGINX_CONSUL_HOST",
        "TEST_NGINX_CONSUL_TOKEN",
        "TEST_ZEDCUP_PREFIX",
        "TEST_NGINX_HTML_DIR",
        "TEST_NGINX_SERVROOT",
        "TEST_NGINX_REPO",
        "TEST_NGINX_NODE",
        "TEST_NGINX_DNS_PORT",
        "TEST_NGINX_DNS_DIR",
    }
)
#: Variables whose use starts a DNS server for the block (zedctl.testdns).
DNS_VARIABLES: frozenset[str] = frozenset({"TEST_NGINX_DNS_PORT", "TEST_NGINX_DNS_DIR"})
#: Variables whose use makes a block need Consul (the session's `consul` fixture).
CONSUL_VARIABLES: frozenset[str] = frozenset(
    {"TEST_NGINX_CONSUL_PORT", "TEST_NGINX_CONSUL_HOST", "TEST_NGINX_CONSUL_TOKEN"}
)

_VAR_RE = re.compile(
    r"\$(?:\{(?P<braced>TEST_(?:NGINX|ZEDCUP)_[A-Z0-9_]+)\}|(?P<bare>TEST_(?:NGINX|ZEDCUP)_[A-Z0-9_]+))"
)
_RAND_PORT_RE = re.compile(r"TEST_NGINX_RAND_PORT_([1-9][0-9]*)")
_NODE_PORT_RE = re.compile(r"TEST_NGINX_NODE_PORT_([1-9][0-9]*)")
_BLOCK_RE = re.compile(r"^===[ \t]*(.*?)[ \t]*$")
_SECTION_RE = re.compile(r"^---[ \t]*(.*?)[ \t]*$")
_SECTION_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TEST_NUMBER_RE = re.compile(r"^TEST\s+(\d+)\b")
_VARS_LINE_RE = re.compile(r"^\s*(?P<name>[A-Za-z0-9_]+)\s*=(?P<value>.*)$")


class ParseError(ValueError):
    """A `.t` file that cannot be run: names the file, line, block and section."""

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] = "<string>",
        line: int | None = None,
        block: str | None = None,
        section: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path)
        self.line = line
        self.block = block
        self.section = section
        where = self.path if line is None else f"{self.path}:{line}"
        parts = [where]
        if block is not None:
            parts.append(f"block {block!r}")
        if section is not None:
            parts.append(f"section {section!r}")
        super().__init__(", ".join(parts) + ": " + message)


@dataclass(frozen=True)
class Section:
    """One `--- name [filters]` section of a block, value already normalised."""

    name: str
    value: str
    filters: tuple[str, ...] = ()
    line: int = 0

    @property
    def is_regex(self) -> bool:
        return "re" in self.filters


@dataclass
class Block:
    """One `=== title` block: the unit the harness runs against a fresh nginx."""

    title: str
    path: str = "<string>"
    line: int = 0
    index: int = 0
    sections: dict[str, Section] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.sections

    def get(self, name: str, default: str | None = None) -> str | None:
        section = self.sections.get(name)
        return default if section is None else section.value

    @property
    def number(self) -> int | None:
        """N of a title `TEST N: ...`, else None."""
        m = _TEST_NUMBER_RE.match(self.title)
        return int(m.group(1)) if m else None

    def variables(self) -> set[str]:
        """Names of every `$TEST_NGINX_*` / `$TEST_ZEDCUP_*` variable the block uses."""
        names: set[str] = set()
        for section in self.sections.values():
            names.update(variables_in(section.value))
        return names

    @property
    def needs_consul(self) -> bool:
        return bool(self.variables() & CONSUL_VARIABLES)

    @property
    def needs_dns(self) -> bool:
        return bool(self.variables() & DNS_VARIABLES)

    def rand_ports(self) -> int:
        """How many `$TEST_NGINX_RAND_PORT_N` the block needs (the highest N used)."""
        highest = 0
        for name in self.variables():
            m = _RAND_PORT_RE.fullmatch(name)
            if m:
                highest = max(highest, int(m.group(1)))
        return highest

    def int_value(self, name: str, default: int, minimum: int = 0) -> int:
        raw = self.get(name)
        if raw is None or not raw.strip():
            return default
        try:
            value = int(raw.strip())
        except ValueError:
            raise self.error(f"expected an integer, got {raw.strip()!r}", name) from None
        if value < minimum:
            raise self.error(f"must be >= {minimum}, got {value}", name)
        return value

    def seconds_value(self, name: str, default: float) -> float:
        """A duration: `3`, `1.5`, `1.5s` or `300ms`."""
        raw = self.get(name)
        if raw is None or not raw.strip():
            return default
        text = raw.strip()
        scale = 1.0
        if text.endswith("ms"):
            text, scale = text[:-2], 0.001
        elif text.endswith("s"):
            text = text[:-1]
        try:
            value = float(text) * scale
        except ValueError:
            raise self.error(
                f"expected seconds (3, 1.5, 300ms), got {raw.strip()!r}", name
            ) from None
        if value < 0:
            raise self.error(f"must not be negative, got {raw.strip()!r}", name)
        return value

    def error(self, message: str, section: str | None = None) -> ParseError:
        line = self.sections[section].line if section in self.sections else self.line
        return ParseError(message, path=self.path, line=line, block=self.title, section=section)

    def validate(self, env: Mapping[str, str] | None = None) -> None:
        """Check what can be checked before running: numbers and variable names."""
        self.int_value("workers", 1, minimum=1)
        nodes = self.int_value("nodes", 1, minimum=1)
        if "error_code" in self and "$" not in (self.get("error_code") or ""):
            for code in (self.get("error_code") or "").split():
                if not code.isdigit():
                    raise self.error(f"expected an HTTP status, got {code!r}", "error_code")
        self.seconds_value("timeout", 5.0)
        self.seconds_value("wait", 0.0)
        if "request" in self and "pipelined_requests" in self:
            raise self.error("use either request or pipelined_requests", "pipelined_requests")
        if "grep_error_log_out" in self and "grep_error_log" not in self:
            raise self.error("grep_error_log_out needs grep_error_log", "grep_error_log_out")
        for section in self.sections.values():
            for name in variables_in(section.value):
                if not is_defined(name, nodes, env):
                    raise self.error(f"undefined variable ${name}", section.name)
            # regexes are compiled with a stand-in for each variable
            value = _VAR_RE.sub("1", section.value)
            if section.is_regex:
                for line in value.splitlines():
                    try:
                        re.compile(line)
                    except re.error as err:
                        raise self.error(f"bad regex {line!r}: {err}", section.name) from None
            if section.name == "response_body_like":
                try:
                    re.compile(regex_of(value))
                except re.error as err:
                    raise self.error(f"bad regex: {err}", section.name) from None


def variables_in(text: str) -> list[str]:
    return [m.group("braced") or m.group("bare") for m in _VAR_RE.finditer(text)]


def is_defined(name: str, nodes: int, env: Mapping[str, str] | None = None) -> bool:
    """Whether the harness (or the environment) defines variable `name`."""
    if name in FIXED_VARIABLES or _RAND_PORT_RE.fullmatch(name):
        return True
    m = _NODE_PORT_RE.fullmatch(name)
    if m:
        return int(m.group(1)) <= nodes
    return name in (os.environ if env is None else env)


def substitute(text: str, variables: Mapping[str, str], where: str = "") -> str:
    """Replace `$TEST_NGINX_X` / `${TEST_NGINX_X}`; an undefined one raises KeyError."""

    def repl(m: re.Match[str]) -> str:
        name = m.group("braced") or m.group("bare")
        try:
            return str(variables[name])
        except KeyError:
            suffix = f" in {where}" if where else ""
            raise KeyError(f"undefined variable ${name}{suffix}") from None

    return _VAR_RE.sub(repl, text)


def regex_of(value: str) -> str:
    """The pattern of a response_body_like section: its text without the final newline."""
    return value[:-1] if value.endswith("\n") else value


def _normalise(lines: list[str], filters: Iterable[str]) -> str:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    if start == end:
        return ""
    value = "\n".join(lines[start:end]) + "\n"
    if "chomp" in filters:
        value = value[:-1]
    return value


def parse_text(text: str, path: str | os.PathLike[str] = "<string>") -> list[Block]:
    """Parse the text of a `.t` file into its blocks (in file order)."""
    path = str(path)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    start = 0
    for i, line in enumerate(lines):
        if line.strip() == "__DATA__":
            start = i + 1
            break
    preamble = parse_preamble(lines[: max(start - 1, 0)], path)

    blocks: list[Block] = []
    titles: dict[str, int] = {}
    block: Block | None = None
    # the section being read: (name, filters, header line number, value lines)
    pending: tuple[str, tuple[str, ...], int, list[str]] | None = None
    oneline: str | None = None  # name of the one-line section just read

    def close_section() -> None:
        nonlocal pending, oneline
        oneline = None
        if pending is not None and block is not None:
            name, filters, lineno, body = pending
            block.sections[name] = Section(name, _normalise(body, filters), filters, lineno)
        pending = None

    for i in range(start, len(lines)):
        line = lines[i]
        lineno = i + 1
        if line.strip() == "__END__":
            break
        m = _BLOCK_RE.match(line)
        if m:
            close_section()
            title = m.group(1)
            if not title:
                raise ParseError("block without a title", path=path, line=lineno)
            if title in titles:
                raise ParseError(
                    f"duplicate block title (first at line {titles[title]})",
                    path=path,
                    line=lineno,
                    block=title,
                )
            titles[title] = lineno
            block = Block(title=title, path=path, line=lineno, index=len(blocks))
            blocks.append(block)
            continue
        m = _SECTION_RE.match(line)
        if m and block is not None:
            close_section()
            head, sep, rest = m.group(1).partition(":")
            words = head.split()
            if not words:
                raise ParseError(
                    "section without a name", path=path, line=lineno, block=block.title
                )
            name, filters = words[0], tuple(words[1:])
            if not _SECTION_NAME_RE.match(name) or name not in SECTIONS:
                raise ParseError(
                    "unknown section (known: " + ", ".join(sorted(SECTIONS)) + ")",
                    path=path,
                    line=lineno,
                    block=block.title,
                    section=name,
                )
            if name in block.sections:
                raise ParseError(
                    f"duplicate section (first at line {block.sections[name].line})",
                    path=path,
                    line=lineno,
                    block=block.title,
                    section=name,
                )
            for word in filters:
                if word not in FILTERS:
                    raise ParseError(
                        f"unknown filter {word!r} (known: {', '.join(sorted(FILTERS))})",
                        path=path,
                        line=lineno,
                        block=block.title,
                        section=name,
                    )
                if word == "re" and name not in REGEX_SECTIONS:
                    raise ParseError(
                        "filter 're' applies only to " + ", ".join(sorted(REGEX_SECTIONS)),
                        path=path,
                        line=lineno,
                        block=block.title,
                        section=name,
                    )
                if word == "own" and name not in preamble:
                    raise ParseError(
                        "filter 'own' needs a preamble section of that name before __DATA__",
                        path=path,
                        line=lineno,
                        block=block.title,
                        section=name,
                    )
            if sep:
                block.sections[name] = Section(name, rest.strip(), filters, lineno)
                oneline = name
            else:
                pending = (name, filters, lineno, [])
            continue
        if pending is not None:
            pending[3].append(line)
        elif oneline is not None and line.strip():
            raise ParseError(
                "text after a one-line section (use `--- name` and the value below it)",
                path=path,
                line=lineno,
                block=block.title if block else None,
                section=oneline,
            )
        # lines between a block title and its first section are ignored (a description)
    close_section()
    for block in blocks:
        apply_preamble(block, preamble)
        apply_vars(block)
    return blocks


def parse_preamble(lines: list[str], path: str) -> dict[str, Section]:
    """The sections before `__DATA__` (main_config, http_config, config); the lines
    before the first one are comments."""
    sections: dict[str, Section] = {}
    pending: tuple[str, int, list[str]] | None = None

    def close() -> None:
        if pending is not None:
            name, lineno, body = pending
            sections[name] = Section(name, _normalise(body, ()), (), lineno)

    for i, line in enumerate(lines):
        m = _SECTION_RE.match(line)
        if m is None:
            if pending is not None:
                pending[2].append(line)
            continue
        close()
        name = m.group(1)
        if name not in PREAMBLE_SECTIONS:
            raise ParseError(
                "a preamble (before __DATA__) may only give "
                + ", ".join(sorted(PREAMBLE_SECTIONS))
                + " (one `--- name` line each, no filters)",
                path=path,
                line=i + 1,
                section=name,
            )
        if name in sections:
            raise ParseError(
                f"duplicate preamble section (first at line {sections[name].line})",
                path=path,
                line=i + 1,
                section=name,
            )
        pending = (name, i + 1, [])
    close()
    return sections


def apply_preamble(block: Block, preamble: Mapping[str, Section]) -> None:
    """Put each preamble section in front of the block's own (unless it says `own`)."""
    for name, pre in preamble.items():
        own = block.sections.get(name)
        if own is None:
            block.sections[name] = pre
        elif "own" not in own.filters:
            block.sections[name] = Section(name, pre.value + own.value, own.filters, own.line)


def apply_vars(block: Block) -> None:
    """Replace the block's `vars` (preamble defaults, then its own) in its other
    sections, and drop the `vars` section."""
    section = block.sections.get("vars")
    if section is None:
        return
    values: dict[str, str] = {}
    for line in section.value.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _VARS_LINE_RE.match(line)
        name = m.group("name") if m else ""
        if m is None or not _VAR_RE.fullmatch("$" + name):
            raise block.error(
                "expected `NAME = value` with a TEST_NGINX_* or TEST_ZEDCUP_* NAME, "
                f"got {line.strip()!r}",
                "vars",
            )
        if is_defined(name, 1 << 30, env={}):
            raise block.error(f"${name} is the harness's own variable", "vars")
        values[name] = m.group("value").strip()
    del block.sections["vars"]
    if not values:
        return
    names = "|".join(sorted(values, key=len, reverse=True))
    pattern = re.compile(rf"\$(?:\{{(?P<braced>{names})\}}|(?P<bare>{names})(?![A-Z0-9_]))")
    for name, sec in list(block.sections.items()):
        value = pattern.sub(lambda m: values[m.group("braced") or m.group("bare")], sec.value)
        if value != sec.value:
            block.sections[name] = Section(name, value, sec.filters, sec.line)


def parse_file(path: str | os.PathLike[str]) -> list[Block]:
    """Parse a `.t` file; raises ParseError for anything the harness cannot run."""
    return parse_text(Path(path).read_text(encoding="utf-8"), path)
