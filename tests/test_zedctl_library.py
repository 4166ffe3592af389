"""zedctl's plain modules without Consul: config files, transaction batching, addresses."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import pytest
import zedctl
from zedctl.configfile import check_document, load_config_file, load_document, parse_text
from zedctl.consulapi import TXN_LIMIT, ConsulSettings, parse_address
from zedctl.errors import ConfigSyntaxError, InvalidConfig, UsageProblem
from zedctl.layout import Layout
from zedctl.ops import batch_transactions
from zedctl.schema import Schema, render_path

SCHEMA = Schema.load()


# -- config files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "line", "column"),
    [
        ("a.yaml", "instances:\n  web:\n    pools: [\n  - x\n", 4, 3),
        ("a.yaml", "instances:\n  web: {}\n  web: {}\n", 3, 3),
        ("a.json", '{\n  "instances": {\n    "web": [}\n}', 3, 13),
        ("a.json", '{"instances": {}, "instances": {}}', None, None),
        ("a.yaml", "instances:\n\tweb: {}\n", 2, 1),
    ],
)
def test_syntax_errors_name_file_line_and_column(
    name: str, text: str, line: int | None, column: int | None
) -> None:
    with pytest.raises(ConfigSyntaxError) as info:
        parse_text(text, name)
    err = info.value
    assert (err.source, err.line, err.column) == (name, line, column)
    where = name if line is None else f"{name}:{line}:{column}"
    assert err.message.startswith(where + ": ")


def test_duplicate_keys_are_refused_in_both_formats() -> None:
    with pytest.raises(ConfigSyntaxError, match="duplicate key 'web'"):
        parse_text("instances:\n  web: {}\n  web: {}\n", "f.yaml")
    with pytest.raises(ConfigSyntaxError, match="duplicate key 'port'"):
        parse_text('{"instances": {"w": {"port": 1, "port": 2}}}', "<stdin>")


def test_json_refuses_nan_and_infinity() -> None:
    with pytest.raises(ConfigSyntaxError, match="NaN"):
        parse_text('{"config": {"session_ttl": NaN}}', "f.json")


def test_stdin_is_read_for_dash() -> None:
    doc, source = load_document("-", stdin=io.StringIO('{"instances": {}}'))
    assert (doc, source) == ({"instances": {}}, "<stdin>")


def test_missing_file_is_a_usage_problem(tmp_path: Any) -> None:
    with pytest.raises(UsageProblem, match=r"cannot read .*nope\.yaml: no such file") as info:
        load_document(str(tmp_path / "nope.yaml"))
    assert info.value.exit_code == 2
    with pytest.raises(UsageProblem, match="directory"):
        load_document(str(tmp_path))


def test_document_problems_carry_full_paths() -> None:
    doc = {
        "config": {"session_ttl": 1},
        "instances": {
            "web": {"pools": [{"hosts": [{"host": "a", "port": 80}, {"port": 70000}]}]},
            "": {"pools": []},
            "a/b": {},
        },
        "extra": True,
    }
    _, problems = check_document(SCHEMA, doc)
    rendered = [p.render() for p in problems]
    assert "extra: unknown top-level key (expected config, instances), got true" in rendered
    assert "config.session_ttl: must be at least 10, got 1" in rendered
    assert "instances.web.pools[0].hosts[1].port: must be at most 65535, got 70000" in rendered
    assert "instances.web.pools[0].hosts[1].host: required field is missing" in rendered
    assert 'instances[""]: an instance name must not be empty, got ""' in rendered
    assert 'instances["a/b"]: an instance name must not contain \'/\', got "a/b"' in rendered


@pytest.mark.parametrize("doc", [[], "text", {"instances": []}, {"config": [1]}])
def test_documents_of_the_wrong_shape_are_refused(doc: Any) -> None:
    _, problems = check_document(SCHEMA, doc)
    assert problems


def test_empty_file_configures_nothing(tmp_path: Any) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    config = load_config_file(SCHEMA, str(path))
    assert config.global_config is None and config.instances == {}


def test_invalid_config_lists_every_problem(tmp_path: Any) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "instances:\n  web:\n    pools:\n      - method: rr\n        hosts:\n"
        "          - {host: a, port: 0}\n          - {host: b, port: 1, weight: 'x'}\n"
    )
    with pytest.raises(InvalidConfig) as info:
        load_config_file(SCHEMA, str(path))
    lines = info.value.message.splitlines()
    assert lines[0] == f"{path}: 3 problems"
    assert '  instances.web.pools[0].method: must be one of: weighted_rr, got "rr"' in lines
    assert "  instances.web.pools[0].hosts[0].port: must be at least 1, got 0" in lines
    assert '  instances.web.pools[0].hosts[1].weight: expected an integer, got "x"' in lines


def test_render_path() -> None:
    assert render_path(("instances", "web", "pools", 0, "hosts", 1, "port")) == (
        "instances.web.pools[0].hosts[1].port"
    )
    assert render_path(("instances", "my.app", "ssl")) == 'instances["my.app"].ssl'


# -- transactions -----------------------------------------------------------------------


def _decode(txn: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    out = []
    for item in txn:
        kv = item["KV"]
        value = base64.b64decode(kv["Value"]).decode() if "Value" in kv else None
        out.append((kv["Verb"], kv["Key"], value))
    return out


def test_a_small_tree_is_written_in_one_transaction() -> None:
    keys = {f"p/instances/web/k{i}": str(i) for i in range(62)}
    txns = batch_transactions(
        ["p/instances/web/", "p/state/web/"], "p/instances/web/_pending", keys, "zedctl host 1"
    )
    assert len(txns) == 1
    ops = _decode(txns[0])
    assert ops[:2] == [
        ("delete-tree", "p/instances/web/", None),
        ("delete-tree", "p/state/web/", None),
    ]
    assert ops[2:] == [("set", k, v) for k, v in keys.items()]
    assert not any(key.endswith("_pending") for _, key, _ in ops)


@pytest.mark.parametrize("count", [63, 64, 125, 126, 127, 500, 1000])
def test_a_large_tree_is_bracketed_by_pending(count: int) -> None:
    keys = {f"p/instances/web/k{i}": str(i) for i in range(count)}
    pending = "p/instances/web/_pending"
    txns = [
        _decode(t)
        for t in batch_transactions(
            ["p/instances/web/", "p/state/web/"], pending, keys, "zedctl host 1"
        )
    ]
    assert len(txns) >= 2
    assert all(len(t) <= TXN_LIMIT for t in txns)
    first, last = txns[0], txns[-1]
    assert first[:3] == [
        ("delete-tree", "p/instances/web/", None),
        ("delete-tree", "p/state/web/", None),
        ("set", pending, "zedctl host 1"),
    ]
    assert last[-1] == ("delete", pending, None)
    sets = [(k, v) for t in txns for verb, k, v in t if verb == "set" and k != pending]
    assert sets == list(keys.items()), "every key set once, in order"
    for middle in txns[1:-1]:
        assert all(verb == "set" for verb, _, _ in middle)
    # As few transactions as the limit allows.
    assert len(txns) == -(-(count + 4) // TXN_LIMIT)


# -- addresses and layout ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "parts"),
    [
        ("127.0.0.1:8500", ("http", "127.0.0.1", 8500)),
        ("consul.example:18500", ("http", "consul.example", 18500)),
        ("http://10.0.0.1:1234", ("http", "10.0.0.1", 1234)),
        ("https://consul.example", ("https", "consul.example", 443)),
        ("http://consul.example/", ("http", "consul.example", 8500)),
        ("[::1]:8500", ("http", "::1", 8500)),
    ],
)
def test_consul_addresses(address: str, parts: tuple[str, str, int]) -> None:
    assert parse_address(address) == parts


@pytest.mark.parametrize("address", ["", "ftp://x:1", "http://x:99999", "http://x:1/v1/kv", ":80"])
def test_bad_consul_addresses(address: str) -> None:
    with pytest.raises(UsageProblem):
        ConsulSettings(address=address).url  # noqa: B018 - the property parses


def test_layout_prefixes_end_in_slash() -> None:
    layout = Layout.for_prefix("/zedcup/")
    assert layout.instance("web") == "zedcup/instances/web/"
    assert layout.instance_state("web") == "zedcup/state/web/"
    assert layout.config == "zedcup/config/"
    assert layout.lock("healthcheck") == "zedcup/locks/healthcheck"
    with pytest.raises(UsageProblem):
        layout.instance("a/b")
    with pytest.raises(UsageProblem):
        Layout.for_prefix("/")


def test_version_matches_the_data_plane() -> None:
    # The healthcheck User-Agent default says zedcup/{version}: both sides must fill in
    # the same version (the Lua one is zedcup.schema's VERSION, exported as _VERSION).
    lua = (Path(__file__).parents[1] / "lua" / "zedcup" / "schema.lua").read_text("utf-8")
    found = re.search(r'VERSION\s*=\s*"([^"]+)"', lua)
    assert found, "zedcup.schema has no VERSION"
    assert found.group(1) == zedctl.__version__ == "0.1.0"
