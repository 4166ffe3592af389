"""The mapping between zedcup configs and Consul KV keys, typed by the schema.

A normalised config (see `Schema.validate`) becomes one key per scalar, relative to
the instance (or global config) prefix:

- records: one key segment per field (`pools/1/hosts/2/port`);
- lists: 1-based index keys; maps: one key per entry (`healthcheck/headers/Host`);
- an empty list or map: the field's own key with an empty value;
- booleans "true"/"false"; numbers as decimal text (integers without ".0");
- a boolean|record union holding a boolean: the field's own key (`healthcheck` = "true").

`unflatten` reverses `flatten`, typing scalars by the schema; what it cannot place it
reports as `Problem`s, and `read_config` validates the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .schema import ConfigPath, Field, Problem, Record, Schema, format_number, parse_integer

PENDING_KEY = "_pending"


def scalar_text(value: Any) -> str:
    """How one scalar is stored in Consul."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return format_number(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"not a scalar: {value!r}")


def flatten(schema: Schema, kind: str, normalised: Mapping[str, Any]) -> dict[str, str]:
    """Keys (relative to the config's prefix) and values of a normalised config."""
    out: dict[str, str] = {}
    _flatten_record(schema, schema.records[kind], normalised, "", out)
    return out


def _join(base: str, seg: str) -> str:
    return f"{base}/{seg}" if base else seg


def _flatten_record(
    schema: Schema, record: Record, value: Mapping[str, Any], base: str, out: dict[str, str]
) -> None:
    for f in record.canonical_fields:
        if f.name in value:
            _flatten_value(schema, f, value[f.name], _join(base, f.name), out)


def _flatten_value(schema: Schema, f: Field, value: Any, key: str, out: dict[str, str]) -> None:
    record = schema.record_of(f)
    if record is not None and isinstance(value, dict):
        _flatten_record(schema, record, value, key, out)
    elif isinstance(value, list):
        if not value:
            out[key] = ""
        assert f.items is not None
        item_field = schema.element_field(f.items, f.name)
        for i, item in enumerate(value):
            _flatten_value(schema, item_field, item, f"{key}/{i + 1}", out)
    elif isinstance(value, dict):
        if not value:
            out[key] = ""
        assert f.values is not None
        value_field = schema.element_field(f.values, f.name)
        for k, item in value.items():
            _flatten_value(schema, value_field, item, f"{key}/{k}", out)
    else:
        out[key] = scalar_text(value)


@dataclass
class _Node:
    """One key segment of a KV tree: its own value (if the key exists) and children."""

    value: str | None = None
    exists: bool = False
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(kv: Mapping[str, str | None]) -> _Node:
    root = _Node()
    for key, value in kv.items():
        if key.endswith("/") or key == "":
            continue  # "folder" keys made by UIs carry nothing
        node = root
        for seg in key.split("/"):
            node = node.children.setdefault(seg, _Node())
        node.exists = True
        node.value = value
    return root


def key_of(path: ConfigPath) -> str:
    """A config path as a relative KV key (list indexes 1-based)."""
    return "/".join(str(seg + 1) if isinstance(seg, int) else seg for seg in path)


def unflatten(
    schema: Schema, kind: str, kv: Mapping[str, str | None]
) -> tuple[dict[str, Any], list[Problem]]:
    """A config from its keys (relative to its prefix). Values None mean empty."""
    problems: list[Problem] = []
    root = _tree(kv)
    if root.exists:
        problems.append(Problem((), root.value, "unexpected value at the config's root key"))
    value = _unflatten_record(schema, schema.records[kind], root, (), problems)
    return value, problems


def _unflatten_record(
    schema: Schema, record: Record, node: _Node, path: ConfigPath, problems: list[Problem]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, child in node.children.items():
        f = record.fields.get(name)
        if f is None or f.alias_of is not None:
            # Kept as found, so that validation names it as an unknown field.
            out[name] = _raw(child)
            continue
        out[name] = _unflatten_value(schema, f, child, (*path, name), problems)
    return out


def _raw(node: _Node) -> Any:
    if node.children:
        return {k: _raw(v) for k, v in node.children.items()}
    return node.value or ""


def _unflatten_value(
    schema: Schema, f: Field, node: _Node, path: ConfigPath, problems: list[Problem]
) -> Any:
    types = f.types
    text = node.value or ""
    if node.children:
        if node.exists:
            problems.append(Problem(path, text, "key has both a value and sub-keys"))
        record = schema.record_of(f)
        if record is not None:
            return _unflatten_record(schema, record, node, path, problems)
        if "list" in types:
            assert f.items is not None
            item_field = schema.element_field(f.items, f.name)
            indexes = sorted(
                (parse_integer(k) or 0, k) for k in node.children if k.isdigit() and k[0] != "0"
            )
            wanted = [str(i) for i in range(1, len(node.children) + 1)]
            if [k for _, k in indexes] != wanted:
                problems.append(
                    Problem(
                        path,
                        sorted(node.children),
                        "list keys must be the 1-based indexes 1..n without gaps",
                    )
                )
            return [
                _unflatten_value(
                    schema, item_field, node.children[k], (*path, int(k) - 1), problems
                )
                for _, k in indexes
            ]
        if "map" in types:
            assert f.values is not None
            value_field = schema.element_field(f.values, f.name)
            return {
                k: _unflatten_value(schema, value_field, child, (*path, k), problems)
                for k, child in node.children.items()
            }
        problems.append(Problem(path, text, "a scalar field must not have sub-keys"))
        return text
    if "boolean" in types and text in ("true", "false"):
        return text == "true"
    if "list" in types and text == "":
        return []
    if "map" in types and text == "":
        return {}
    # Scalars stay text here; validation types integers and numbers from decimal text
    # and names any value that is not of the field's type.
    return text


def read_config(
    schema: Schema, kind: str, kv: Mapping[str, str | None]
) -> tuple[dict[str, Any], list[Problem]]:
    """A stored config, typed and checked: (normalised, problems)."""
    value, problems = unflatten(schema, kind, kv)
    normalised, invalid = schema.validate(kind, value)
    return normalised, problems + invalid
