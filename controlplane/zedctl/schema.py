"""zedcup's configuration schema: loading schema.json, validation, normalisation, defaults.

Everything here is driven by `schema.json` (shared with the Lua data plane), read once
into a `Schema` value. Three operations on plain data (dicts, lists, scalars):

- `Schema.validate(kind, value)` checks a global or instance config and returns its
  normalised form (the form stored in Consul: typed, aliases mapped, no defaults) with
  every problem found, each naming its path and the bad value.
- `Schema.effective(kind, normalised)` applies defaults recursively.
- `validate_instance_name(name)` checks an instance name (a Consul key segment).

Paths are tuples of segments: field names (str) and 0-based list indexes (int).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Union

from . import __version__

PathSeg = Union[str, int]
ConfigPath = tuple[PathSeg, ...]

SCHEMA_FILE = Path(__file__).with_name("schema.json")

PRIMITIVES = ("string", "integer", "number", "boolean", "list", "map")
KINDS = ("global", "instance")

_INTEGER_TEXT = re.compile(r"-?[0-9]+\Z")
# Decimal text as both languages read it: "5", "-2", "0.5", ".5" (never exponents).
_NUMBER_TEXT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)\Z")
_STATUS_CODE = re.compile(r"[1-5](?:[0-9][0-9]|[0-9]x|xx)\Z")


class _Missing:
    """The absence of a default (None is a value)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where, the value found there, and why."""

    path: ConfigPath
    value: Any
    message: str
    missing: bool = False

    def describe(self) -> str:
        """What is wrong, with the value found (without the path)."""
        if self.missing:
            return self.message
        return f"{self.message}, got {render_value(self.value)}"

    def render(self, base: ConfigPath = ()) -> str:
        where = render_path(base + self.path) or "(top level)"
        return f"{where}: {self.describe()}"


def render_path(path: Iterable[PathSeg]) -> str:
    """('instances', 'web', 'pools', 0, 'port') -> 'instances.web.pools[1].port': list
    indexes count from 1, as in the Lua library, the Consul keys and zedctl's commands."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg + 1}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", seg):
            out += f".{seg}" if out else seg
        else:
            out += f"[{json.dumps(seg)}]"
    return out


def _a(noun: str) -> str:
    """The noun with its indefinite article: 'a pool', 'an instance'."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def render_value(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return text


@dataclass(frozen=True)
class Field:
    """A record field (or a named scalar type): its type and its constraints."""

    name: str
    types: tuple[str, ...]
    default: Any = MISSING
    required: bool = False
    required_unless: str | None = None
    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False
    min_items: int | None = None
    min_length: int | None = None
    enum: tuple[Any, ...] | None = None
    format: str | None = None
    items: str | None = None
    values: str | None = None
    alias_of: str | None = None
    default_from_index: bool = False
    from_integer: bool = False
    doc: str = ""

    @classmethod
    def from_json(cls, name: str, spec: Mapping[str, Any]) -> Field:
        known = {
            "type",
            "default",
            "required",
            "required_unless",
            "min",
            "max",
            "exclusive_min",
            "min_items",
            "min_length",
            "enum",
            "format",
            "items",
            "values",
            "alias_of",
            "default_from_index",
            "from_integer",
            "doc",
        }
        unknown = set(spec) - known
        if unknown:
            raise SchemaError(f"field {name}: unknown schema attributes {sorted(unknown)}")
        raw_type = spec["type"]
        types = tuple(raw_type) if isinstance(raw_type, list) else (raw_type,)
        return cls(
            name=name,
            types=types,
            default=spec.get("default", MISSING),
            required=bool(spec.get("required", False)),
            required_unless=spec.get("required_unless"),
            min=spec.get("min"),
            max=spec.get("max"),
            exclusive_min=bool(spec.get("exclusive_min", False)),
            min_items=spec.get("min_items"),
            min_length=spec.get("min_length"),
            enum=tuple(spec["enum"]) if "enum" in spec else None,
            format=spec.get("format"),
            items=spec.get("items"),
            values=spec.get("values"),
            alias_of=spec.get("alias_of"),
            default_from_index=bool(spec.get("default_from_index", False)),
            from_integer=bool(spec.get("from_integer", False)),
            doc=spec.get("doc", ""),
        )


@dataclass(frozen=True)
class Record:
    name: str
    fields: dict[str, Field]
    checks: tuple[str, ...] = ()

    @cached_property
    def canonical_fields(self) -> list[Field]:
        """The fields that are stored (aliases excluded), in schema order."""
        return [f for f in self.fields.values() if f.alias_of is None]


class SchemaError(Exception):
    """schema.json itself is malformed (a programmer's error)."""


@dataclass
class _Walk:
    """Accumulates problems during one validation."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, path: ConfigPath, value: Any, message: str, missing: bool = False) -> None:
        self.problems.append(Problem(path, value, message, missing))


def format_number(value: int | float) -> str:
    """Decimal text of a number as stored in Consul: integers without '.0', never an
    exponent (readers accept only plain decimal text: 0.00001, not 1e-05)."""
    if isinstance(value, bool):
        raise TypeError("format_number: boolean given")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"format_number: {value!r} is not a finite number")
        # repr's digits are the shortest that read back as the same float; spelled out
        # without an exponent they are the data plane's text too (1e20 and 6.1e21 as
        # "100000000000000000000" and "6100000000000000000000", not the exact binary
        # expansion "6099999999999999737856").
        text = format(Decimal(repr(value)), "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    return str(value)


def parse_integer(value: Any) -> int | None:
    """An integer from an int, an integral float or decimal text; None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER_TEXT.match(value):
        return int(value)
    return None


_EXACT_INTEGERS = 2**53
"""Integral floats below this are ints exactly; above, a float stands for many integers."""


def _integral(number: float) -> int | float:
    # 30.0 becomes 30; 1e20 stays a float, so that it is stored as "100000000000000000000"
    # (its shortest digits, as the data plane writes it), not as an exact binary expansion.
    return int(number) if number.is_integer() and abs(number) < _EXACT_INTEGERS else number


def parse_number(value: Any) -> int | float | None:
    """A number from an int, a finite float or decimal text; integral values become int."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return _integral(value)
    if isinstance(value, str) and _NUMBER_TEXT.match(value):
        return _integral(float(value))
    return None


def validate_instance_name(name: Any) -> str | None:
    """Why `name` cannot name an instance, or None when it can."""
    if not isinstance(name, str):
        return "an instance name must be a string"
    if name == "":
        return "an instance name must not be empty"
    if "/" in name:
        return "an instance name must not contain '/'"
    if name in (".", ".."):
        # HTTP clients and Consul's own router resolve dot segments in key paths:
        # `<prefix>/instances/../` would read (or delete) `<prefix>/`.
        return "an instance name must not be '.' or '..'"
    return None


def _substitute(value: Any) -> Any:
    """Defaults may say {version}: zedcup's version."""
    if isinstance(value, str):
        return value.replace("{version}", __version__)
    if isinstance(value, list):
        return [_substitute(v) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Schema:
    """schema.json, loaded: records and named scalar types."""

    version: int
    records: dict[str, Record]
    scalars: dict[str, Field]

    @classmethod
    def load(cls, path: str | Path | None = None) -> Schema:
        with open(path or SCHEMA_FILE, encoding="utf-8") as fh:
            return cls.from_json(json.load(fh))

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Schema:
        records = {}
        for rname, rspec in doc["records"].items():
            fields = {fname: Field.from_json(fname, fs) for fname, fs in rspec["fields"].items()}
            records[rname] = Record(rname, fields, tuple(rspec.get("checks", ())))
        scalars = {
            sname: Field.from_json(sname, ss) for sname, ss in doc.get("scalars", {}).items()
        }
        schema = cls(int(doc.get("version", 1)), records, scalars)
        schema._check()
        return schema

    def _check(self) -> None:
        for kind in KINDS:
            if kind not in self.records:
                raise SchemaError(f"schema has no record {kind!r}")
        for record in self.records.values():
            for f in record.fields.values():
                for t in f.types:
                    self._resolve(t)
                if "list" in f.types and not f.items:
                    raise SchemaError(f"{record.name}.{f.name}: list without items")
                if "map" in f.types and not f.values:
                    raise SchemaError(f"{record.name}.{f.name}: map without values")
                if f.alias_of and f.alias_of not in record.fields:
                    raise SchemaError(f"{record.name}.{f.name}: alias of unknown field")
            for check in record.checks:
                if check.startswith("unique_names:"):
                    target = check.split(":", 1)[1]
                    if target not in record.fields:
                        raise SchemaError(f"{record.name}: {check} names an unknown field")
                elif check.startswith("at_most_half:"):
                    names = check.split(":")[1:]
                    if len(names) != 2 or any(n not in record.fields for n in names):
                        raise SchemaError(f"{record.name}: {check} names an unknown field")
                elif check != "port_unless_unix":
                    raise SchemaError(f"{record.name}: unknown check {check!r}")

    def _resolve(self, type_name: str) -> Field | Record | str:
        if type_name in PRIMITIVES:
            return type_name
        if type_name in self.records:
            return self.records[type_name]
        if type_name in self.scalars:
            return self.scalars[type_name]
        raise SchemaError(f"unknown type {type_name!r}")

    def element_field(self, type_name: str, name: str) -> Field:
        """The Field describing one list item or map value of type `type_name`."""
        resolved = self._resolve(type_name)
        if isinstance(resolved, Field):
            return resolved
        return Field(name=name, types=(type_name,))

    def record_of(self, f: Field) -> Record | None:
        """The record type among a field's types, if any."""
        for t in f.types:
            if t in self.records:
                return self.records[t]
        return None

    # -- validation -------------------------------------------------------------------

    def validate(self, kind: str, value: Any) -> tuple[Any, list[Problem]]:
        """Check a config of `kind` ('global' or 'instance').

        Returns (normalised, problems). The normalised form is only meaningful when
        there are no problems.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        walk = _Walk()
        normalised = self._record(self.records[kind], value, (), walk)
        return normalised, walk.problems

    def check_field(self, record: str, field_name: str, value: Any) -> tuple[Any, list[Problem]]:
        """Check one value for one field of a record: (normalised, problems)."""
        f = self.records[record].fields[field_name]
        walk = _Walk()
        normalised = self._value(f, value, (), walk)
        return normalised, walk.problems

    def _record(self, record: Record, value: Any, path: ConfigPath, walk: _Walk) -> Any:
        if not isinstance(value, dict):
            walk.add(path, value, f"expected {_a(record.name)} record (a map of fields)")
            return value
        out: dict[str, Any] = {}
        for key, item in value.items():
            f = record.fields.get(key) if isinstance(key, str) else None
            if f is None:
                fields = ", ".join(f.name for f in record.canonical_fields)
                walk.add(
                    (*path, str(key)), item, f"unknown field ({_a(record.name)} has: {fields})"
                )
                continue
            target = f.alias_of or f.name
            if f.alias_of is not None and f.alias_of in value:
                walk.add((*path, key), item, f"{key} is another spelling of {f.alias_of}; give one")
                continue
            out[target] = self._value(f, item, (*path, key), walk)
        for f in record.canonical_fields:
            if f.required_unless is not None and f.required_unless in out:
                continue  # e.g. a pool's hosts may come from its service alone
            if f.required and f.name not in out and not self._alias_given(record, f, value):
                walk.add((*path, f.name), None, "required field is missing", missing=True)
        for check in record.checks:
            self._check_record(check, record, out, path, walk)
        # Schema order, whatever the input's: stable output for get, export and diffs.
        return {f.name: out[f.name] for f in record.canonical_fields if f.name in out}

    @staticmethod
    def _alias_given(record: Record, target: Field, value: Mapping[str, Any]) -> bool:
        return any(f.alias_of == target.name and f.name in value for f in record.fields.values())

    def _check_record(
        self, check: str, record: Record, value: dict[str, Any], path: ConfigPath, walk: _Walk
    ) -> None:
        if check == "port_unless_unix":
            host = value.get("host")
            if not isinstance(host, str) or host == "" or "port" in value:
                return
            if not (host.startswith("unix:/") or host.startswith("/")):
                walk.add(
                    (*path, "port"),
                    None,
                    f"a port is required for host {json.dumps(host)} "
                    "(only unix socket paths 'unix:/...' or '/...' go without)",
                    missing=True,
                )
        elif check.startswith("at_most_half:"):
            # Effective values (defaults applied): session_ttl: 10 alone breaks the
            # default session_renew_interval of 10.
            small, large = check.split(":")[1:]
            a = value.get(small, record.fields[small].default)
            b = value.get(large, record.fields[large].default)
            numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
            if numbers and a > b / 2:
                walk.add(
                    (*path, small),
                    a,
                    f"must be at most {large} / 2 ({format_number(b / 2)}), so that a "
                    "session is renewed at least twice within its TTL",
                )
        elif check.startswith("unique_names:"):
            list_field = check.split(":", 1)[1]
            elements = value.get(list_field)
            if not isinstance(elements, list):
                return
            seen: dict[str, int] = {}
            for i, element in enumerate(elements):
                if not isinstance(element, dict):
                    continue
                name = element.get("name", str(i + 1))
                if not isinstance(name, str):
                    continue
                if name in seen:
                    walk.add(
                        (*path, list_field, i, "name"),
                        name,
                        f"duplicate name: {list_field}[{seen[name] + 1}] already has this name "
                        "(an unnamed element is named by its 1-based index)",
                    )
                else:
                    seen[name] = i

    def _value(self, f: Field, value: Any, path: ConfigPath, walk: _Walk) -> Any:
        types = f.types
        record = self.record_of(f)
        if "boolean" in types and isinstance(value, bool):
            return value
        if record is not None and isinstance(value, dict):
            normalised = self._record(record, value, path, walk)
            if len(types) > 1 and "boolean" in types and normalised == {}:
                # {} means "the record with its defaults", which `true` says too.
                return True
            return normalised
        if len(types) > 1:
            walk.add(path, value, f"expected one of: {' or '.join(types)}")
            return value
        (t,) = types
        if t in self.scalars:
            return self._value(self.scalars[t], value, path, walk)
        if t == "boolean":
            walk.add(path, value, "expected a boolean (true or false)")
            return value
        if t == "string":
            if f.from_integer and not isinstance(value, str):
                number = parse_integer(value)
                if number is not None:
                    value = str(number)  # 500 and "500" are the same status code
            if not isinstance(value, str):
                walk.add(path, value, "expected a string")
                return value
            return self._constrain(f, value, path, walk)
        if t == "integer":
            parsed = parse_integer(value)
            if parsed is None:
                walk.add(path, value, "expected an integer")
                return value
            return self._constrain(f, parsed, path, walk)
        if t == "number":
            parsed = parse_number(value)
            if parsed is None:
                walk.add(path, value, "expected a number")
                return value
            return self._constrain(f, parsed, path, walk)
        if t == "list":
            if not isinstance(value, list):
                walk.add(path, value, "expected a list")
                return value
            assert f.items is not None
            item_field = self.element_field(f.items, f.name)
            out = [self._value(item_field, item, (*path, i), walk) for i, item in enumerate(value)]
            if f.min_items is not None and len(out) < f.min_items:
                walk.add(path, value, f"expected at least {f.min_items} item(s)")
            return out
        if t == "map":
            if not isinstance(value, dict):
                walk.add(path, value, "expected a map")
                return value
            assert f.values is not None
            value_field = self.element_field(f.values, f.name)
            result: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str) or key in ("", ".", "..") or "/" in key:
                    walk.add(
                        (*path, str(key)),
                        item,
                        "map keys must be non-empty strings without '/', not '.' or '..'",
                    )
                    continue
                result[key] = self._value(value_field, item, (*path, key), walk)
            return result
        if t in self.records:
            walk.add(path, value, f"expected {_a(t)} record (a map of fields)")
            return value
        raise SchemaError(f"{f.name}: unhandled type {t!r}")

    def _constrain(self, f: Field, value: Any, path: ConfigPath, walk: _Walk) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if f.min is not None:
                if f.exclusive_min and value <= f.min:
                    walk.add(path, value, f"must be greater than {format_number(f.min)}")
                elif not f.exclusive_min and value < f.min:
                    walk.add(path, value, f"must be at least {format_number(f.min)}")
            if f.max is not None and value > f.max:
                walk.add(path, value, f"must be at most {format_number(f.max)}")
        if isinstance(value, str):
            if f.min_length is not None and len(value) < f.min_length:
                walk.add(path, value, f"must be at least {f.min_length} character(s) long")
            if f.format is not None:
                reason = _check_format(f.format, value)
                if reason:
                    walk.add(path, value, reason)
        if f.enum is not None and value not in f.enum:
            walk.add(path, value, f"must be one of: {', '.join(map(str, f.enum))}")
        return value

    # -- defaults ---------------------------------------------------------------------

    def effective(self, kind: str, normalised: Mapping[str, Any]) -> dict[str, Any]:
        """The effective config: defaults applied recursively to a normalised config.

        Healthcheck inheritance across levels is not resolved here.
        """
        return self._effective_record(self.records[kind], normalised, None)

    def _effective_record(
        self, record: Record, value: Mapping[str, Any], index: int | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in record.canonical_fields:
            if f.name in value:
                out[f.name] = self._effective_value(f, value[f.name])
            elif f.default is not MISSING:
                out[f.name] = self._effective_value(f, _substitute(f.default))
            elif f.default_from_index and index is not None:
                out[f.name] = str(index)
        return out

    def _effective_value(self, f: Field, value: Any) -> Any:
        record = self.record_of(f)
        if record is not None:
            if value is True:
                return self._effective_record(record, {}, None)
            if isinstance(value, dict):
                return self._effective_record(record, value, None)
            return value
        if "list" in f.types and isinstance(value, list):
            assert f.items is not None
            item_field = self.element_field(f.items, f.name)
            item_record = self.record_of(item_field)
            if item_record is not None:
                return [self._effective_record(item_record, v, i + 1) for i, v in enumerate(value)]
            return list(value)
        if "map" in f.types and isinstance(value, dict):
            merged = dict(_substitute(f.default)) if isinstance(f.default, dict) else {}
            merged.update(value)
            return merged
        return value


def _check_format(fmt: str, value: str) -> str | None:
    if fmt == "status_code":
        if not _STATUS_CODE.match(value):
            return (
                "not a status code pattern: expected three characters like "
                "'500', '50x' or '5xx' (first digit 1-5)"
            )
    elif fmt == "name":
        if value == "":
            return "a name must not be empty"
        if "/" in value:
            return "a name must not contain '/'"
        if value in (".", ".."):
            # dot segments are resolved by URL paths: a key segment `..` names another key
            return "a name must not be '.' or '..'"
    elif fmt == "host":
        if value.startswith("unix:/") or value.startswith("/"):
            return None
        if "://" in value:
            return (
                "a host is a hostname, IP address or unix socket path, without a scheme "
                "(the scheme is the instance's ssl setting)"
            )
        if "/" in value or any(c.isspace() for c in value):
            return "a host is a hostname, IP address or unix socket path ('unix:/...' or '/...')"
        if re.fullmatch(r"[^:]+:[0-9]+", value):
            return "a host has no port: give it in port"
    elif fmt == "path":
        if not value.startswith("/"):
            return "a path must start with '/'"
    else:
        raise SchemaError(f"unknown format {fmt!r}")
    return None
