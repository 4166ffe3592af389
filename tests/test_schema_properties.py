"""Property-based tests of validation, normalisation, defaults and the KV mapping."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zedctl.configfile import ConfigFile
from zedctl.consulapi import ConsulKV, ConsulSettings
from zedctl.kvmap import flatten, key_of, read_config, unflatten
from zedctl.layout import Layout
from zedctl.ops import apply_plan, export, load_global, load_instance, plan_apply
from zedctl.schema import Schema, parse_number
from zedctl.testnginx.consul import ConsulEndpoint

SCHEMA = Schema.load()

# Text without surrogates (not encodable as UTF-8, so not storable in Consul).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
# Names are key segments: no '/', and not the dot segments '.' and '..'.
names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), min_size=1, max_size=8
).filter(lambda s: s not in (".", ".."))
token = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12
)
positive_number = st.one_of(
    st.integers(1, 10**6),
    st.floats(0.001, 1e6, allow_nan=False, allow_infinity=False),
    # Tiny and huge ones, whose repr() has an exponent that no reader accepts.
    st.floats(1e-12, 1e-4, allow_nan=False, allow_infinity=False),
    st.floats(1e15, 1e22, allow_nan=False, allow_infinity=False),
    st.integers(1, 10**6).map(str),
    st.sampled_from(["0.5", "1.25", "30"]),
)
status_code = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from("12345"),
    st.one_of(
        st.just("xx"),
        st.integers(0, 9).map(lambda d: f"{d}x"),
        st.integers(0, 99).map(lambda d: f"{d:02d}"),
    ),
)


def optional(draw: st.DrawFn, out: dict[str, Any], key: str, strategy: st.SearchStrategy) -> None:
    if draw(st.booleans()):
        out[key] = draw(strategy)


@st.composite
def ssl_configs(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(st.booleans())
    out: dict[str, Any] = {}
    optional(draw, out, draw(st.sampled_from(["verify", "ssl_verify"])), st.booleans())
    optional(draw, out, "sni_name", text)
    return out


@st.composite
def healthchecks(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 3)) == 0:
        return draw(st.booleans())
    out: dict[str, Any] = {}
    optional(draw, out, "ssl", ssl_configs())
    optional(draw, out, "interval", positive_number)
    optional(
        draw,
        out,
        "method",
        st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
    )
    optional(draw, out, "path", text.map(lambda t: "/" + t))
    optional(draw, out, "headers", st.dictionaries(token, text, max_size=3))
    optional(draw, out, "status_codes", st.lists(status_code, max_size=3))
    optional(draw, out, "rise", st.integers(1, 10))
    optional(draw, out, "fall", st.integers(1, 10))
    return out


def unique_names(elements: list[dict[str, Any]]) -> bool:
    effective = [e.get("name", str(i + 1)) for i, e in enumerate(elements)]
    return len(effective) == len(set(effective))


@st.composite
def hosts(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    optional(draw, out, "name", names)
    if draw(st.integers(0, 4)) == 0:
        out["host"] = draw(st.sampled_from(["unix:/run/app.sock", "/tmp/x.sock"]))
        optional(draw, out, "port", st.integers(1, 65535))
    else:
        out["host"] = draw(st.sampled_from(["10.0.0.1", "backend.example.com", "::1"]))
        out["port"] = draw(st.one_of(st.integers(1, 65535), st.integers(1, 65535).map(str)))
    optional(draw, out, "up", st.booleans())
    optional(draw, out, "weight", st.integers(1, 1000000))
    optional(draw, out, "healthcheck", healthchecks())
    return out


@st.composite
def pools(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    optional(draw, out, "name", names)
    optional(draw, out, "up", st.booleans())
    optional(draw, out, "method", st.sampled_from(["weighted_rr", "chash", "least_conn", "ewma"]))
    for key in ("timeout", "max_errors", "read_timeout", "keepalive_timeout", "keepalive_pool"):
        optional(draw, out, key, st.integers(1, 10**6))
    optional(draw, out, "error_timeout", positive_number)
    optional(draw, out, "status_codes", st.lists(status_code, max_size=3))
    optional(draw, out, "healthcheck", healthchecks())
    out["hosts"] = draw(st.lists(hosts(), min_size=1, max_size=4).filter(unique_names))
    return out


@st.composite
def instances(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    optional(draw, out, "ssl", ssl_configs())
    optional(draw, out, "healthcheck", healthchecks())
    out["pools"] = draw(st.lists(pools(), min_size=1, max_size=3).filter(unique_names))
    return out


@st.composite
def globals_(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in (
        "host_revive_interval",
        "cache_update_interval",
        "healthcheck_interval",
        "watcher_interval",
        "session_renew_interval",
        "worker_lock_ttl",
    ):
        optional(draw, out, key, positive_number)
    optional(draw, out, "session_ttl", st.integers(10, 86400))
    # The schema's relation: session_renew_interval <= session_ttl / 2 (defaults 10, 30).
    half = out.get("session_ttl", 30) / 2
    if (parse_number(out.get("session_renew_interval", 10)) or 0) > half:
        out["session_renew_interval"] = half
    optional(draw, out, "consul_wait_time", st.integers(1, 600))
    return out


def configs() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    return st.one_of(
        st.tuples(st.just("instance"), instances()), st.tuples(st.just("global"), globals_())
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_valid_configs_survive_the_kv_round_trip(case: tuple[str, dict[str, Any]]) -> None:
    kind, config = case
    original = copy.deepcopy(config)
    normalised, problems = SCHEMA.validate(kind, config)
    assert problems == []
    assert config == original, "validation must not modify its input"
    kv = flatten(SCHEMA, kind, normalised)
    assert all(isinstance(v, str) for v in kv.values())
    assert read_config(SCHEMA, kind, kv) == (normalised, [])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_normalised_and_effective_configs_are_fixpoints(case: tuple[str, dict[str, Any]]) -> None:
    kind, config = case
    normalised, _ = SCHEMA.validate(kind, config)
    # Normalising is idempotent, and stored JSON reads back the same.
    assert SCHEMA.validate(kind, normalised) == (normalised, [])
    assert SCHEMA.validate(kind, json.loads(json.dumps(normalised))) == (normalised, [])
    # The effective config is itself a valid config, with nothing left to default.
    effective = SCHEMA.effective(kind, normalised)
    again, problems = SCHEMA.validate(kind, effective)
    assert problems == []
    assert SCHEMA.effective(kind, again) == effective


# -- mutations: each breaks one rule at one place and must be reported there ---------------


def _host_paths(config: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        ("pools", p, "hosts", h)
        for p, pool in enumerate(config["pools"])
        for h in range(len(pool["hosts"]))
    ]


def _at(config: dict[str, Any], path: tuple[Any, ...]) -> Any:
    node: Any = config
    for seg in path:
        node = node[seg]
    return node


MUTATIONS = {
    "port above range": ("host", "port", 65536),
    "port zero": ("host", "port", 0),
    "port text": ("host", "port", "eighty"),
    "weight zero": ("host", "weight", 0),
    "weight boolean": ("host", "weight", True),
    "up as string": ("host", "up", "true"),
    "name with slash": ("host", "name", "a/b"),
    "unknown host field": ("host", "colour", "blue"),
    "timeout zero": ("pool", "timeout", 0),
    "error_timeout negative": ("pool", "error_timeout", -1),
    "bad method": ("pool", "method", "round_robin"),
    "bad status code": ("pool", "status_codes", ["5x5"]),
    "healthcheck number": ("pool", "healthcheck", 3),
    "unknown pool field": ("pool", "hostz", []),
}


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.sampled_from(sorted(MUTATIONS)), st.data())
def test_mutations_that_break_a_rule_are_reported_at_their_path(
    config: dict[str, Any], mutation: str, data: st.DataObject
) -> None:
    level, key, bad = MUTATIONS[mutation]
    if level == "host":
        where = data.draw(st.sampled_from(_host_paths(config)))
    else:
        where = ("pools", data.draw(st.integers(0, len(config["pools"]) - 1)))
    _at(config, where)[key] = bad
    path = (*where, key)
    if key == "status_codes":
        path += (0,)
        bad = bad[0]
    _, problems = SCHEMA.validate("instance", config)
    reported = [(p.path, json.dumps(p.value)) for p in problems]
    assert (path, json.dumps(bad)) in reported


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.data())
def test_removing_a_host_address_is_reported(config: dict[str, Any], data: st.DataObject) -> None:
    where = data.draw(st.sampled_from(_host_paths(config)))
    del _at(config, where)["host"]
    _, problems = SCHEMA.validate("instance", config)
    assert ((*where, "host"), None) in [(p.path, p.value) for p in problems]


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.data())
def test_duplicating_a_pool_name_is_reported(config: dict[str, Any], data: st.DataObject) -> None:
    # Append a copy of an existing pool: its effective name now appears twice.
    source = data.draw(st.integers(0, len(config["pools"]) - 1))
    name = config["pools"][source].get("name", str(source + 1))
    config["pools"].append({**copy.deepcopy(config["pools"][source]), "name": name})
    _, problems = SCHEMA.validate("instance", config)
    last = len(config["pools"]) - 1
    assert (("pools", last, "name"), name) in [(p.path, p.value) for p in problems]


# -- unflatten: what it cannot place is reported --------------------------------------------


def test_unflatten_reports_list_gaps_and_unknown_keys() -> None:
    kv = {
        "pools/1/hosts/1/host": "a",
        "pools/1/hosts/1/port": "80",
        "pools/1/hosts/3/host": "b",
        "pools/1/hosts/3/port": "81",
        "pools/1/colour": "red",
    }
    _, problems = read_config(SCHEMA, "instance", kv)
    rendered = {key_of(p.path): p.message for p in problems}
    assert "pools/1/hosts" in rendered and "1-based" in rendered["pools/1/hosts"]
    assert "pools/1/colour" in rendered and "unknown field" in rendered["pools/1/colour"]


def test_unflatten_types_scalars_by_the_schema_not_by_guessing() -> None:
    kv = {
        "pools/1/name": "1",
        "pools/1/hosts/1/name": "true",
        "pools/1/hosts/1/host": "10",
        "pools/1/hosts/1/port": "80",
        "pools/1/hosts/1/up": "false",
    }
    value, problems = unflatten(SCHEMA, "instance", kv)
    assert problems == []
    host = value["pools"][0]["hosts"][0]
    assert host["name"] == "true" and host["host"] == "10" and host["up"] is False
    normalised, problems = read_config(SCHEMA, "instance", kv)
    assert problems == [] and normalised["pools"][0]["hosts"][0]["port"] == 80


@pytest.mark.parametrize(
    ("kv", "path", "value"),
    [
        ({"pools/1/hosts/1/host": "a", "pools/1/hosts/1/port": "x"}, "pools/1/hosts/1/port", "x"),
        (
            {"pools/1/hosts/1/host": "a", "pools/1/hosts/1/port": "1", "pools/1/up": "yes"},
            "pools/1/up",
            "yes",
        ),
        (
            {"pools/1/hosts/1/host": "a", "pools/1/hosts/1/port": "1", "ssl": "maybe"},
            "ssl",
            "maybe",
        ),
    ],
)
def test_stored_values_of_the_wrong_type_are_reported(
    kv: dict[str, str], path: str, value: str
) -> None:
    _, problems = read_config(SCHEMA, "instance", kv)
    assert (path, value) in [(key_of(p.path), p.value) for p in problems]


# -- through a real Consul ------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), globals_())
def test_configs_survive_a_round_trip_through_consul(
    consul: ConsulEndpoint, instance: dict[str, Any], global_config: dict[str, Any]
) -> None:
    kv = ConsulKV(ConsulSettings(address=consul.url, token=consul.token))
    layout = Layout(f"zt/{uuid.uuid4()}")
    normalised, _ = SCHEMA.validate("instance", instance)
    global_normalised, _ = SCHEMA.validate("global", global_config)
    config = ConfigFile(global_normalised, {"app": normalised})
    try:
        apply_plan(kv, plan_apply(kv, layout, SCHEMA, config))
        assert load_instance(kv, layout, SCHEMA, "app") == normalised
        assert (load_global(kv, layout, SCHEMA) or {}) == global_normalised
        assert export(kv, layout, SCHEMA).instances == {"app": normalised}
    finally:
        kv.delete_tree(layout.prefix + "/")
