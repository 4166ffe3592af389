"""Config files: YAML or JSON documents with `config:` (global) and `instances:` (name -> config).

    config:            # optional: global settings, replaces the stored global config
      session_ttl: 30
    instances:         # optional: each instance named here is replaced as a whole
      web:
        pools:
          - name: primary
            hosts:
              - { host: 10.0.0.1, port: 80 }

`load_document` parses a file (or `-` for stdin) and raises `ConfigSyntaxError` with file,
line and column; `check_document` validates the document against the schema and returns
a `ConfigFile` holding the normalised configs, or raises `InvalidConfig` naming every problem.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from .errors import ConfigSyntaxError, InvalidConfig, UsageProblem
from .schema import Problem, Schema, validate_instance_name

TOP_LEVEL_KEYS = ("config", "instances")


@dataclass
class ConfigFile:
    """A validated config file: normalised configs (the form stored in Consul)."""

    global_config: dict[str, Any] | None = None
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last silently)."""


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    # Only the keys written in this mapping can be duplicates: keys merged in with
    # `<<: *anchor` are overridden by them, as YAML says.
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            duplicate = False  # unhashable keys are refused by the constructor itself
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        if not isinstance(key, (list, dict)):
            seen[key] = key_node
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def read_source(path: str, stdin: TextIO | None = None) -> tuple[str, str]:
    """The text of `path` (`-`: stdin) and the name to report it by."""
    if path == "-":
        stream = stdin if stdin is not None else sys.stdin
        return stream.read(), "<stdin>"
    try:
        return Path(path).read_text(encoding="utf-8"), path
    except FileNotFoundError:
        raise UsageProblem(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise UsageProblem(f"cannot read {path}: it is a directory") from None
    except PermissionError:
        raise UsageProblem(f"cannot read {path}: permission denied") from None
    except UnicodeDecodeError as e:
        raise UsageProblem(f"cannot read {path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise UsageProblem(f"cannot read {path}: {e.strerror or e}") from None


def parse_text(text: str, source: str) -> Any:
    """A YAML or JSON document (JSON for *.json files, or text starting with '{' or '[')."""
    text = text.removeprefix("\ufeff")  # a byte order mark, as some editors write
    is_json = source.endswith(".json") or text.lstrip()[:1] in ("{", "[")
    if is_json:
        try:
            return json.loads(text, object_pairs_hook=_json_object, parse_constant=_refuse_constant)
        except json.JSONDecodeError as e:
            raise ConfigSyntaxError(source, e.lineno, e.colno, f"invalid JSON: {e.msg}") from None
        except ValueError as e:
            raise ConfigSyntaxError(source, None, None, f"invalid JSON: {e}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        reason = ": ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
        if mark is None:
            raise ConfigSyntaxError(source, None, None, f"invalid YAML: {reason}") from None
        raise ConfigSyntaxError(
            source, mark.line + 1, mark.column + 1, f"invalid YAML: {reason}"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigSyntaxError(source, None, None, f"invalid YAML: {e}") from None


def load_document(path: str, stdin: TextIO | None = None) -> tuple[Any, str]:
    """Read and parse a config file: (document, source name)."""
    text, source = read_source(path, stdin)
    return parse_text(text, source), source


def check_document(schema: Schema, document: Any) -> tuple[ConfigFile, list[Problem]]:
    """Validate a parsed config file; problems carry full paths (instances.web.pools[0]...)."""
    problems: list[Problem] = []
    result = ConfigFile()
    if document is None:
        return result, problems  # an empty file configures nothing
    if not isinstance(document, dict):
        problems.append(
            Problem((), document, "expected a map with 'config' and/or 'instances' at the top")
        )
        return result, problems
    for key, value in document.items():
        if key not in TOP_LEVEL_KEYS:
            problems.append(
                Problem((str(key),), value, "unknown top-level key (expected config, instances)")
            )
    if "config" in document:
        normalised, found = schema.validate("global", document["config"])
        problems.extend(Problem(("config", *p.path), p.value, p.message, p.missing) for p in found)
        result.global_config = normalised
    if "instances" in document:
        instances = document["instances"]
        if not isinstance(instances, dict):
            problems.append(
                Problem(("instances",), instances, "expected a map of instance name -> config")
            )
        else:
            for name, config in instances.items():
                reason = validate_instance_name(name)
                if reason:
                    problems.append(Problem(("instances", str(name)), name, reason))
                    continue
                normalised, found = schema.validate("instance", config)
                problems.extend(
                    Problem(("instances", name, *p.path), p.value, p.message, p.missing)
                    for p in found
                )
                result.instances[name] = normalised
    return result, problems


def load_config_file(schema: Schema, path: str, stdin: TextIO | None = None) -> ConfigFile:
    """Read, parse and validate a config file; raise on any problem."""
    document, source = load_document(path, stdin)
    config, problems = check_document(schema, document)
    if problems:
        raise InvalidConfig(source, problems)
    return config


def to_document(config: ConfigFile) -> dict[str, Any]:
    """A ConfigFile as a document `check_document` accepts (export's form)."""
    doc: dict[str, Any] = {}
    if config.global_config is not None:
        doc["config"] = config.global_config
    doc["instances"] = {name: config.instances[name] for name in sorted(config.instances)}
    return doc
