"""zedctl's plain modules without Consul: config files, transaction batching, addresses."""

from __future__ import annotations

import base64
import io
import re
import time
from pathlib import Path
from typing import Any

import pytest
import zedctl
from zedctl.cli import exit_code_of, hoist_globals
from zedctl.configfile import check_document, load_config_file, load_document, parse_text
from zedctl.consulapi import TXN_LIMIT, ConsulSettings, KVEntry, parse_address, resolve_settings
from zedctl.errors import ConfigSyntaxError, InvalidConfig, UsageProblem
from zedctl.kvmap import flatten, read_config
from zedctl.layout import Layout
from zedctl.ops import (
    OWN_PENDING_INDEX,
    PENDING_STALE,
    batch_transactions,
    bind_pending,
    natural_key,
    pending_age,
)
from zedctl.render import status_table
from zedctl.schema import (
    Schema,
    format_number,
    parse_number,
    render_path,
    validate_instance_name,
)
from zedctl.status import HostStatus, InstanceStatus, StatusReport, host_status

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
    assert exit_code_of(info.value) == 2
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
    assert "instances.web.pools[1].hosts[2].port: must be at most 65535, got 70000" in rendered
    assert "instances.web.pools[1].hosts[2].host: required field is missing" in rendered
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
    assert (
        "  instances.web.pools[1].method: must be one of: weighted_rr, chash, least_conn, ewma,"
        ' got "rr"'
    ) in lines
    assert "  instances.web.pools[1].hosts[1].port: must be at least 1, got 0" in lines
    assert '  instances.web.pools[1].hosts[2].weight: expected an integer, got "x"' in lines


def test_render_path_counts_list_items_from_1() -> None:
    assert render_path(("instances", "web", "pools", 0, "hosts", 1, "port")) == (
        "instances.web.pools[1].hosts[2].port"
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
    raw = batch_transactions(["p/instances/web/", "p/state/web/"], pending, keys, "zedctl host 1")
    txns = [_decode(t) for t in raw]
    assert len(txns) >= 2
    assert all(len(t) <= TXN_LIMIT for t in txns)
    first, last = txns[0], txns[-1]
    # The data plane's protocol: the marker must not exist, then deletes and the marker.
    assert first[:4] == [
        ("check-not-exists", pending, None),
        ("delete-tree", "p/instances/web/", None),
        ("delete-tree", "p/state/web/", None),
        ("set", pending, "zedctl host 1"),
    ]
    # Every later transaction checks that the marker is still ours; the last removes it
    # with delete-cas, both on the index apply_plan binds.
    for t in raw[1:]:
        assert t[0]["KV"] == {"Verb": "check-index", "Key": pending, "Index": OWN_PENDING_INDEX}
    assert last[-1] == ("delete-cas", pending, None)
    assert raw[-1][-1]["KV"]["Index"] == OWN_PENDING_INDEX
    assert bind_pending(raw[-1], 42)[-1]["KV"]["Index"] == 42
    assert bind_pending(raw[1], 42)[0]["KV"]["Index"] == 42
    sets = [(k, v) for t in txns for verb, k, v in t if verb == "set" and k != pending]
    assert sets == list(keys.items()), "every key set once, in order"
    for middle in txns[1:-1]:
        assert all(verb == "set" for verb, _, _ in middle[1:])
    # As few transactions as the limit allows: one check per transaction, 4 operations
    # of bracketing and deletes, and delete-cas.
    assert len(txns) == -(-(count + 4) // (TXN_LIMIT - 1))


def test_a_stale_pending_is_taken_over_with_check_index() -> None:
    keys = {f"p/instances/web/k{i}": str(i) for i in range(100)}
    stale = KVEntry("p/instances/web/_pending", "1700000000", flags=1700000000, modify_index=77)
    txns = batch_transactions(
        ["p/instances/web/"], "p/instances/web/_pending", keys, "m", current=stale
    )
    assert txns[0][0]["KV"] == {
        "Verb": "check-index",
        "Key": "p/instances/web/_pending",
        "Index": 77,
    }
    assert pending_age(stale, now=1700000061) == 61 >= PENDING_STALE


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
        ("http://[::1]:8500", ("http", "::1", 8500)),
        ("HTTPS://[fe80::1]:8501", ("https", "fe80::1", 8501)),
    ],
)
def test_consul_addresses(address: str, parts: tuple[str, str, int]) -> None:
    parsed = parse_address(address)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.socket_path) == (*parts, None)


def test_consul_unix_addresses_and_ssl() -> None:
    parsed = parse_address("unix:///run/consul/http.sock")
    assert parsed.socket_path == "/run/consul/http.sock"
    assert parsed.url == "unix:///run/consul/http.sock"
    # CONSUL_HTTP_SSL=true: no scheme, or http://, means https (as the consul CLI does).
    assert parse_address("127.0.0.1:8501", ssl=True).url == "https://127.0.0.1:8501"
    assert parse_address("http://127.0.0.1:8501", ssl=True).scheme == "https"


@pytest.mark.parametrize(
    "address",
    [
        "",
        "ftp://x:1",
        "http://x:99999",
        "http://x:1/v1/kv",
        ":80",
        "http://[::1",
        "::1:8500",
        "unix://relative.sock",
        "http://user@x:1",
    ],
)
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


# -- regressions found by the independent check -------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e-05, "0.00001"),
        (1.5e-06, "0.0000015"),
        (-2e-05, "-0.00002"),
        (1e20, "100000000000000000000"),
        # The shortest digits that read back, as the data plane writes them, not the
        # exact binary expansion 65279722690890850304.
        (6.527972269089085e19, "65279722690890850000"),
        (6.1e21, "6100000000000000000000"),
        (0.1, "0.1"),
        (2.5, "2.5"),
        (30.0, "30"),
        (7, "7"),
    ],
)
def test_numbers_are_stored_as_plain_decimal_text(value: float, text: str) -> None:
    # repr() gave "1e-05", which neither zedctl nor the data plane reads as a number:
    # a config written with such a value was unreadable on both sides.
    assert format_number(value) == text
    assert parse_number(text) == value


@pytest.mark.parametrize("value", [1e-05, 1e-09, 3.3e-07, 1e16, 1.2345e21])
def test_a_config_with_tiny_or_huge_numbers_reads_back(value: float) -> None:
    # (Integral floats beyond 2**53 stay floats, so that they keep their short text.)
    normalised, problems = SCHEMA.validate("global", {"watcher_interval": value})
    assert problems == []
    kv = flatten(SCHEMA, "global", normalised)
    assert "e" not in kv["watcher_interval"]
    assert read_config(SCHEMA, "global", kv) == (normalised, [])


def test_decimal_text_with_a_leading_point_is_a_number_as_in_the_data_plane() -> None:
    assert parse_number(".5") == 0.5 and parse_number("-.25") == -0.25
    for text in ("1e5", ".", "5.", "1.2.3", "+1", " 1"):
        assert parse_number(text) is None, text


def test_record_names_take_the_right_article() -> None:
    _, problems = SCHEMA.validate("instance", {"pools": [{"hosts": [5]}], "colour": 1})
    messages = [p.message for p in problems]
    assert any(m.startswith("unknown field (an instance has:") for m in messages), messages
    assert "expected a host record (a map of fields)" in messages
    _, problems = SCHEMA.validate("instance", None)
    assert problems[0].message == "expected an instance record (a map of fields)"


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_instance_names_are_refused(name: str) -> None:
    # `<prefix>/instances/../` is resolved by HTTP clients and Consul's router: reading
    # or deleting it would reach `<prefix>/`.
    assert validate_instance_name(name) == "an instance name must not be '.' or '..'"
    with pytest.raises(UsageProblem):
        Layout().instance(name)
    assert Layout().instance(name, check=False) == f"zedcup/instances/{name}/"
    _, problems = check_document(SCHEMA, {"instances": {name: {"pools": []}}})
    assert [(p.path, p.message) for p in problems] == [
        (("instances", name), "an instance name must not be '.' or '..'")
    ]
    assert validate_instance_name("...") is None and validate_instance_name(".web") is None


@pytest.mark.parametrize("prefix", ["a//b", "a/./b", "../zedcup", "zedcup/.."])
def test_prefixes_with_empty_or_dot_segments_are_refused(prefix: str) -> None:
    with pytest.raises(UsageProblem, match="segments"):
        Layout.for_prefix(prefix)


def test_the_pending_marker_carries_the_start_time_in_its_flags() -> None:
    keys = {f"p/instances/web/k{i}": str(i) for i in range(100)}
    before = int(time.time())
    txns = batch_transactions(["p/instances/web/"], "p/instances/web/_pending", keys, "m")
    pending = next(
        op["KV"]
        for op in txns[0]
        if op["KV"]["Key"].endswith("_pending") and op["KV"]["Verb"] == "set"
    )
    assert before <= pending["Flags"] <= int(time.time())


def test_diff_keys_sort_list_indexes_numerically() -> None:
    keys = ["w/pools/10/name", "w/pools/2/name", "w/pools/1/hosts/10/host", "w/pools/1/hosts/9/a"]
    assert sorted(keys, key=natural_key) == [
        "w/pools/1/hosts/9/a",
        "w/pools/1/hosts/10/host",
        "w/pools/2/name",
        "w/pools/10/name",
    ]


def test_host_status_counts_errors_only_within_the_error_timeout() -> None:
    pool = SCHEMA.effective("instance", {"pools": [{"hosts": [{"host": "::1", "port": 80}]}]})[
        "pools"
    ][0]
    host = pool["hosts"][0]
    now = 1_800_000_000
    fresh = {"errors": KVEntry("k", "5", flags=now - 59)}
    stale = {"errors": KVEntry("k", "5", flags=now - 60)}
    undated = {"errors": KVEntry("k", "5", flags=0)}
    assert host_status(pool, host, fresh, now).errors == 5
    assert host_status(pool, host, fresh, now).errors_at == now - 59
    # The data plane starts counting again from 0 once error_timeout (60 s) has passed.
    assert host_status(pool, host, stale, now).errors == 0
    assert host_status(pool, host, stale, now).errors_at == now - 60
    assert host_status(pool, host, undated, now).errors == 5
    assert host_status(pool, host, {}, now).address == "[::1]:80"


def test_status_table_cuts_long_down_reasons() -> None:
    reason = "marked down: 3 errors within 60s, last: " + "connect() failed " * 20
    host = HostStatus("p", "h", "10.0.0.1:80", "down", reason, down_since=1000)
    table = status_table(StatusReport(None, [InstanceStatus("web", [host])]), now=1090)
    row = table.splitlines()[-1]
    assert "down (marked down: 3 errors within 60s, last: connect() failed ..., 90s ago)" in row
    assert len(row) < 160


def test_yaml_merge_keys_may_be_overridden() -> None:
    # Explicit keys override keys merged in with `<<: *anchor`; they used to be refused
    # as duplicates, so shared pool settings could not be written once.
    text = (
        "instances:\n  web:\n    pools:\n"
        "      - &base\n        name: a\n        timeout: 100\n"
        "        hosts: [{host: 10.0.0.1, port: 80}]\n"
        "      - <<: *base\n        name: b\n        timeout: 200\n"
    )
    config, problems = check_document(SCHEMA, parse_text(text, "m.yaml"))
    assert problems == []
    a, b = config.instances["web"]["pools"]
    assert (a["name"], a["timeout"], b["name"], b["timeout"]) == ("a", 100, "b", 200)
    assert b["hosts"] == a["hosts"]
    with pytest.raises(ConfigSyntaxError, match="duplicate key 'c'") as raised:
        parse_text("a: &x {b: 1}\nd: {<<: *x, c: 3, c: 4}\n", "m.yaml")
    assert (raised.value.line, raised.value.column) == (2, 19)


@pytest.mark.parametrize("name", ["a.json", "a.yaml"])
def test_a_byte_order_mark_is_skipped(tmp_path: Any, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b'\xef\xbb\xbf{"instances": {}}\n')
    assert load_document(str(path)) == ({"instances": {}}, str(path))


def test_settings_resolve_like_the_consul_cli(tmp_path: Any) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {
        "CONSUL_HTTP_ADDR": "unix:///run/consul.sock",
        "CONSUL_HTTP_TOKEN_FILE": str(token_file),
        "CONSUL_HTTP_SSL_VERIFY": "0",
        "CONSUL_CLIENT_CERT": "c.pem",
        "CONSUL_CLIENT_KEY": "c.key",
        "CONSUL_TLS_SERVER_NAME": "consul.test",
    }
    settings = resolve_settings(env)
    assert settings.url == "unix:///run/consul.sock"
    assert (settings.token, settings.token_source) == ("from-file", "CONSUL_HTTP_TOKEN_FILE")
    assert settings.verify is False
    assert (settings.client_cert, settings.client_key) == ("c.pem", "c.key")
    assert settings.tls_server_name == "consul.test"
    # Flags beat the environment; CONSUL_HTTP_TOKEN beats CONSUL_HTTP_TOKEN_FILE.
    flags = resolve_settings(env, address="10.0.0.1:8501", token="flag", tls_server_name="x")
    assert (flags.url, flags.token, flags.tls_server_name) == ("http://10.0.0.1:8501", "flag", "x")
    assert resolve_settings({**env, "CONSUL_HTTP_TOKEN": "env"}).token == "env"
    assert resolve_settings(
        {**env, "CONSUL_HTTP_TOKEN": "env"}, token_file=str(token_file)
    ).token == ("from-file")
    assert resolve_settings({"CONSUL_HTTP_SSL": "TRUE"}).url == "https://127.0.0.1:8500"
    with pytest.raises(UsageProblem, match="CONSUL_HTTP_SSL_VERIFY='no': expected true or false"):
        resolve_settings({"CONSUL_HTTP_SSL_VERIFY": "no"})
    with pytest.raises(UsageProblem, match="cannot read the token file"):
        resolve_settings({"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "missing")})


def test_global_options_are_hoisted_before_the_command() -> None:
    assert hoist_globals(["list", "--consul", "x:1", "-o", "json", "--insecure"]) == [
        "--consul", "x:1", "--insecure", "list", "-o", "json",
    ]  # fmt: skip
    assert hoist_globals(["host", "down", "w", "1", "1", "--prefix=p", "--", "--token"]) == [
        "--prefix=p", "host", "down", "w", "1", "1", "--", "--token",
    ]  # fmt: skip
