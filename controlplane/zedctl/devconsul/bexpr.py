"""The `?filter=` expressions of Consul's catalog and health endpoints (go-bexpr), over
the JSON shape of each answer entry.

Grammar: `Selector == Value`, `!=`, `Value in Selector`, `not in`, `Selector contains
Value`, `not contains`, `Selector matches "regex"`, `not matches`, `Selector is empty`,
`is not empty`, joined by `and`, `or`, `not` and parentheses. A selector is a dotted
path (`Service.Meta.version`, `Node.Meta["rack"]` is not supported); through a list of
objects (`Checks.Status`) it yields every element's value. Values are quoted strings
("..." or `...`), numbers, booleans or bare words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PREFIX = "Failed to create boolean expression evaluator: "
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>==|!=|\(|\))
      | (?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)
      | (?P<word>[A-Za-z0-9_\-.:/]+)
    )""",
    re.VERBOSE,
)
_WORDS = ("and", "or", "not", "in", "contains", "matches", "is", "empty")


class FilterError(ValueError):
    """An expression that cannot be parsed or names an unknown selector."""


@dataclass
class _Tok:
    kind: str  # op, str, word, end
    text: str
    pos: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            col = len(text[:pos]) + 1
            raise FilterError(f"1:{col} ({pos}): no match found")
        kind = m.lastgroup or "word"
        out.append(_Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


Node = Callable[[dict[str, Any]], bool]


class _Parser:
    def __init__(self, text: str, valid: Callable[[list[str]], bool]) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.valid = valid

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def fail(self, tok: _Tok) -> FilterError:
        return FilterError(f"1:{tok.pos + 1} ({tok.pos}): no match found")

    def is_word(self, tok: _Tok, word: str) -> bool:
        return tok.kind == "word" and tok.text == word

    def parse(self) -> Node:
        node = self.expr_or()
        if self.peek().kind != "end":
            raise self.fail(self.peek())
        return node

    def expr_or(self) -> Node:
        left = self.expr_and()
        while self.is_word(self.peek(), "or"):
            self.take()
            right = self.expr_and()
            left = (lambda a, b: lambda e: a(e) or b(e))(left, right)
        return left

    def expr_and(self) -> Node:
        left = self.expr_not()
        while self.is_word(self.peek(), "and"):
            self.take()
            right = self.expr_not()
            left = (lambda a, b: lambda e: a(e) and b(e))(left, right)
        return left

    def expr_not(self) -> Node:
        if self.is_word(self.peek(), "not"):
            self.take()
            inner = self.expr_not()
            return lambda e: not inner(e)
        if self.peek().kind == "op" and self.peek().text == "(":
            self.take()
            inner = self.expr_or()
            tok = self.take()
            if tok.text != ")":
                raise self.fail(tok)
            return inner
        return self.match()

    def selector(self) -> list[str]:
        tok = self.take()
        if tok.kind != "word" or tok.text in _WORDS or not re.match(r"[A-Za-z_]", tok.text):
            raise self.fail(tok)
        path = tok.text.split(".")
        if not self.valid(path):
            raise FilterError(f'Selector "{tok.text}" is not valid')
        return path

    def value(self) -> str:
        tok = self.take()
        if tok.kind == "str":
            body = tok.text[1:-1]
            return re.sub(r"\\(.)", r"\1", body) if tok.text[0] == '"' else body
        if tok.kind == "word" and tok.text not in _WORDS:
            return tok.text
        raise self.fail(tok)

    def match(self) -> Node:
        first = self.peek()
        # `Value in Selector` / `Value not in Selector`
        nxt = self.peek(1)
        if first.kind == "str" or (
            first.kind == "word"
            and (
                self.is_word(nxt, "in")
                or (self.is_word(nxt, "not") and self.is_word(self.peek(2), "in"))
            )
        ):
            value = self.value()
            negate = False
            if self.is_word(self.peek(), "not"):
                self.take()
                negate = True
            if not self.is_word(self.take(), "in"):
                raise self.fail(self.toks[self.i - 1])
            path = self.selector()
            return lambda e: _contains(_resolve(e, path), value) != negate
        path = self.selector()
        tok = self.take()
        if tok.kind == "op" and tok.text in ("==", "!="):
            value = self.value()
            want = tok.text == "=="
            return lambda e: _equal(_resolve(e, path), value) == want
        negate = False
        if self.is_word(tok, "is"):
            if self.is_word(self.peek(), "not"):
                self.take()
                negate = True
            if not self.is_word(self.take(), "empty"):
                raise self.fail(self.toks[self.i - 1])
            return lambda e: _empty(_resolve(e, path)) != negate
        if self.is_word(tok, "not"):
            negate = True
            tok = self.take()
        if self.is_word(tok, "contains"):
            value = self.value()
            return lambda e: _contains(_resolve(e, path), value) != negate
        if self.is_word(tok, "matches"):
            pattern = self.value()
            try:
                regex = re.compile(pattern)
            except re.error as err:
                raise FilterError(f"Invalid regular expression {pattern!r}: {err}") from None
            return lambda e: _matches(_resolve(e, path), regex) != negate
        raise self.fail(tok)


_MISSING = object()


def _resolve(entry: Any, path: list[str]) -> Any:
    value = entry
    for i, part in enumerate(path):
        if isinstance(value, list):
            out: list[Any] = []
            for item in value:
                got = _resolve(item, path[i:])
                if isinstance(got, list):
                    out.extend(got)
                elif got is not _MISSING:
                    out.append(got)
            return out
        if not isinstance(value, dict):
            return _MISSING
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def _coerce(field: Any, value: str) -> Any:
    if isinstance(field, bool):
        return value.lower() == "true"
    if isinstance(field, int):
        try:
            return int(value)
        except ValueError:
            return None
    if isinstance(field, float):
        try:
            return float(value)
        except ValueError:
            return None
    return value


def _equal(field: Any, value: str) -> bool:
    if field is _MISSING or field is None or isinstance(field, (list, dict)):
        return False
    return bool(field == _coerce(field, value))


def _contains(field: Any, value: str) -> bool:
    if isinstance(field, list):
        return any(_equal(item, value) for item in field)
    if isinstance(field, dict):
        return value in field
    if isinstance(field, str):
        return value in field
    return False


def _empty(field: Any) -> bool:
    return (
        field is _MISSING
        or field is None
        or (isinstance(field, (list, dict, str)) and len(field) == 0)
    )


def _matches(field: Any, regex: re.Pattern[str]) -> bool:
    if isinstance(field, list):
        return any(isinstance(v, str) and regex.search(v) for v in field)
    return isinstance(field, str) and regex.search(field) is not None


# Fields whose JSON value is a map with free keys: any key below them is a valid selector.
FREE_MAPS = frozenset(
    (
        "Meta",
        "NodeMeta",
        "ServiceMeta",
        "TaggedAddresses",
        "ServiceTaggedAddresses",
        "Definition",
        "Proxy",
        "Connect",
        "ServiceProxy",
        "ServiceConnect",
        "Weights",
        "ServiceWeights",
    )
)


def shape_validator(prototype: dict[str, Any]) -> Callable[[list[str]], bool]:
    """A selector check against the JSON shape of one entry of the answer."""

    def valid(path: list[str]) -> bool:
        value: Any = prototype
        for part in path:
            while isinstance(value, list):
                value = value[0] if value else {}
            if not isinstance(value, dict):
                return False
            if part not in value:
                return False
            if part in FREE_MAPS:
                return True
            value = value[part]
        return True

    return valid


def compile_filter(text: str, prototype: dict[str, Any]) -> Node:
    """Parse `text` into a predicate over entries shaped like `prototype`; raise
    FilterError (message without Consul's prefix) when it is not valid."""
    return _Parser(text, shape_validator(prototype)).parse()
