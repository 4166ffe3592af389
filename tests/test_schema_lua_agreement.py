"""zedctl's schema and the data plane's (lua/zedcup/schema.lua) agree, beyond the shared
vectors: generated configs, broken configs and hand-edited stored values are given to both,
the Lua module run by a real Lua 5.1 interpreter with lua-cjson (skipped without them).

Compared: whether a config is valid, the paths of its problems, the keys and values it is
stored as, that those read back, and whether stored text is accepted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import test_schema_properties as gen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zedctl.kvmap import flatten, read_config
from zedctl.schema import Schema, parse_number

SCHEMA = Schema.load()
LUA_DIR = Path(__file__).parents[1] / "lua"

DRIVER = r"""
package.path = arg[1] .. "/?.lua;" .. package.path
local cjson = require "cjson"
local schema = require "zedcup.schema"
local out = {}
for i, c in ipairs(cjson.decode(io.read("*a"))) do
    local r = { problems = {} }
    if c.stored then
        local entries = {}
        for k, v in pairs(c.stored) do entries[#entries + 1] = { k, v } end
        local back = schema.unflatten(c.kind, entries)
        r.ok = back ~= nil
    else
        local norm, problems = schema.normalise(c.kind, c.config)
        for _, p in ipairs(problems) do
            local path = {}
            for j, seg in ipairs(p.path) do
                path[j] = type(seg) == "number" and seg - 1 or seg
            end
            r.problems[#r.problems + 1] = path
        end
        r.ok = #problems == 0
        if r.ok then
            r.kv = {}
            local flat = schema.flatten(c.kind, norm)
            for _, e in ipairs(flat) do r.kv[e[1]] = e[2] end
            r.reads_back = schema.unflatten(c.kind, flat) ~= nil
        end
    end
    out[i] = r
end
io.write(cjson.encode(out))
"""


def _lua() -> str | None:
    lua = shutil.which("lua5.1")
    if lua is None:
        return None
    probe = subprocess.run([lua, "-e", 'require "cjson"'], capture_output=True)
    return lua if probe.returncode == 0 else None


LUA = _lua()
pytestmark = pytest.mark.skipif(LUA is None, reason="needs lua5.1 with lua-cjson")


def run_lua(cases: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    driver = tmp_path / "driver.lua"
    driver.write_text(DRIVER, encoding="utf-8")
    assert LUA is not None
    done = subprocess.run(
        [LUA, str(driver), str(LUA_DIR)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    assert len(results) == len(cases)
    return results


def _lua_map(value: Any) -> dict[str, str]:
    return value if isinstance(value, dict) else {}  # cjson writes an empty table as []


def _same_value(python: str, lua: str) -> bool:
    """Equal text; or, for numbers, text for the same double. (At ties next to powers of
    two Lua's %.16g can miss the shortest digits and write 17: 2**-24 is
    "0.00000005960464477539063" here and "0.000000059604644775390625" there.)"""
    if python == lua:
        return True
    numbers = [parse_number(python), parse_number(lua)]
    return isinstance(numbers[0], float) and numbers[0] == numbers[1]


SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@SETTINGS
@given(st.lists(gen.configs(), min_size=5, max_size=10))
def test_valid_configs_are_stored_alike(
    tmp_path: Path, configs: list[tuple[str, dict[str, Any]]]
) -> None:
    # Through JSON first: the Lua side sees what cjson decodes.
    cases = [{"kind": kind, "config": json.loads(json.dumps(c))} for kind, c in configs]
    for case, lua in zip(cases, run_lua(cases, tmp_path)):
        normalised, problems = SCHEMA.validate(case["kind"], case["config"])
        assert problems == [] and lua["ok"], (case, lua["problems"])
        kv = flatten(SCHEMA, case["kind"], normalised)
        lua_kv = _lua_map(lua["kv"])
        assert kv.keys() == lua_kv.keys(), case
        assert all(_same_value(kv[k], lua_kv[k]) for k in kv), (kv, lua_kv)
        assert lua["reads_back"] and read_config(SCHEMA, case["kind"], kv)[1] == []


BREAKS: list[tuple[str, str, Any]] = [
    ("host", "port", 65536),
    ("host", "port", "eighty"),
    ("host", "port", None),
    ("host", "weight", 0),
    ("host", "up", "true"),
    ("host", "name", "a/b"),
    ("host", "host", ""),
    ("host", "colour", 1),
    ("host", "healthcheck", {"ssl": {"verify": "no"}}),
    ("pool", "timeout", 0),
    ("pool", "error_timeout", -1),
    ("pool", "keepalive_pool", 1.5),
    ("pool", "method", "round_robin"),
    ("pool", "status_codes", ["5x5"]),
    ("pool", "name", ""),
    ("pool", "healthcheck", 3),
    ("pool", "healthcheck", {"interval": 0}),
    ("pool", "healthcheck", {"path": "health"}),
    ("pool", "healthcheck", {"method": "get"}),
    ("pool", "healthcheck", {"headers": {"a/b": "x"}}),
    ("pool", "healthcheck", {"rise": 0}),
    ("pool", "ssl", True),
]


@st.composite
def broken_instances(draw: st.DrawFn) -> dict[str, Any]:
    config = draw(gen.instances())
    level, key, bad = draw(st.sampled_from(BREAKS))
    target = draw(st.sampled_from(config["pools"]))
    if level == "host":
        target = draw(st.sampled_from(target["hosts"]))
    target[key] = bad
    return config


@SETTINGS
@given(st.lists(broken_instances(), min_size=5, max_size=10))
def test_broken_configs_are_refused_at_the_same_paths(
    tmp_path: Path, configs: list[dict[str, Any]]
) -> None:
    cases = [{"kind": "instance", "config": json.loads(json.dumps(c))} for c in configs]
    for case, lua in zip(cases, run_lua(cases, tmp_path)):
        _, problems = SCHEMA.validate("instance", case["config"])
        assert problems and not lua["ok"]
        assert {p.path for p in problems} == {tuple(p) for p in lua["problems"]}, case


STORED_TEXTS = ["01", " 1", "1.0", ".5", "-.5", "-0", "+1", "1e3", "0x10", "", "1_000", "\uff11"]
STORED_TEXTS += ["true", "True", "false ", "5xx", "5XX", "0.5.", "00", "9" * 20, "nan", "inf"]
STORED_FIELDS = [
    "pools/1/hosts/1/port",
    "pools/1/hosts/1/weight",
    "pools/1/error_timeout",
    "pools/1/timeout",
    "pools/1/up",
    "pools/1/status_codes/1",
    "pools/1/name",
    "pools/1/healthcheck/interval",
    "ssl",
    "healthcheck",
]


def test_hand_edited_stored_values_are_accepted_alike(tmp_path: Path) -> None:
    base = {"pools/1/hosts/1/host": "a", "pools/1/hosts/1/port": "80"}
    stored = [{**base, key: text} for key in STORED_FIELDS for text in STORED_TEXTS]
    stored += [
        {**base, "pools/1/hosts/01/host": "b"},
        {**base, "pools/1/hosts/1/port/x": "1"},
        {**base, "healthcheck/headers": ""},
        {**base, "pools/1/status_codes": ""},
        {**base, "ssl/verify": "false", "ssl/ssl_verify": "true"},
        {**base, "ssl": "true", "ssl/verify": "false"},
        {"pools/2/hosts/1/host": "a", "pools/2/hosts/1/port": "80"},
    ]
    cases = [{"kind": "instance", "stored": kv} for kv in stored]
    verdicts = run_lua(cases, tmp_path)
    accepted = 0
    for kv, lua in zip(stored, verdicts):
        _, problems = read_config(SCHEMA, "instance", kv)
        assert (problems == []) == lua["ok"], (kv, [p.render() for p in problems])
        accepted += lua["ok"]
    assert 0 < accepted < len(stored)  # both accept some and refuse others
