"""Cost of a zedcup.cache L1 hit, timed inside nginx.

Runs, in one nginx worker and one request, the same loop over 100 keys with:

- a plain Lua table lookup (the floor),
- resty.lrucache's get (what L1 is built on),
- zedcup.cache's get on an L1 hit (the hot path of the data plane), also in the
  get(key, nil, callback, arg) form mlcache users write,
- ngx.shared.DICT:get (what every lookup would cost without L1),

and prints nanoseconds per lookup (best of several rounds, monotonic clock read
through the FFI) and the ratios between them. Also checks, with the GC
stopped, that the L1 hits allocated nothing, and, with every shared dict
method wrapped in a counter, that they made no shared dict call.

    .venv/bin/python bench/bench_cache.py [--iterations N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from zedctl.testnginx import NginxServer, PortPicker, http_request

HTTP_CONFIG = """
    lua_shared_dict bench_cache 16m;
    lua_shared_dict bench_ipc 1m;
"""

CONFIG_TEMPLATE = r"""
    location = /bench {
        content_by_lua_block {
            local ffi = require "ffi"
            local cjson = require "cjson"
            local lrucache = require "resty.lrucache"
            local cache = require "zedcup.cache"

            pcall(ffi.cdef, [[
                typedef struct { long tv_sec; long tv_nsec; } zc_timespec;
                int clock_gettime(int clk_id, zc_timespec *tp);
            ]])
            local ts = ffi.new("zc_timespec")
            local function now_ns()
                ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
                return tonumber(ts.tv_sec) * 1e9 + tonumber(ts.tv_nsec)
            end

            local N, ROUNDS, NKEYS = __ITERATIONS__, __ROUNDS__, 100
            local keys, tbl = {}, {}
            local lru = lrucache.new(NKEYS)
            local dict = ngx.shared.bench_cache
            local c = assert(cache.new("bench", "bench_cache",
                                       { lru_size = NKEYS, ttl = 0, ipc_shm = "bench_ipc" }))
            local function fetch(k) return tbl[k] end
            for i = 1, NKEYS do
                local k = "key:" .. i
                keys[i] = k
                tbl[k] = "value " .. i
                lru:set(k, tbl[k])
                assert(dict:set(k, tbl[k]))
                assert(c:get(k, nil, function() return tbl[k] end))
            end

            -- each loop does the same key arithmetic and the same check, so
            -- the differences are the lookups
            local loops = {
                table = function()
                    local hits = 0
                    for i = 1, N do
                        local k = keys[i % NKEYS + 1]
                        if tbl[k] then hits = hits + 1 end
                    end
                    return hits
                end,
                lrucache = function()
                    local hits = 0
                    for i = 1, N do
                        local k = keys[i % NKEYS + 1]
                        if lru:get(k) then hits = hits + 1 end
                    end
                    return hits
                end,
                cache_l1 = function()
                    local hits = 0
                    for i = 1, N do
                        local k = keys[i % NKEYS + 1]
                        if c:get(k) then hits = hits + 1 end
                    end
                    return hits
                end,
                -- the form mlcache users write: get(key, opts, callback, arg)
                cache_l1_cb = function()
                    local hits = 0
                    for i = 1, N do
                        local k = keys[i % NKEYS + 1]
                        if c:get(k, nil, fetch, k) then hits = hits + 1 end
                    end
                    return hits
                end,
                shdict = function()
                    local hits = 0
                    for i = 1, N do
                        local k = keys[i % NKEYS + 1]
                        if dict:get(k) then hits = hits + 1 end
                    end
                    return hits
                end,
            }

            local result = { iterations = N, rounds = ROUNDS, ns = {} }
            for name, loop in pairs(loops) do
                loop()  -- warm up: compile the traces
                local best = math.huge
                for _ = 1, ROUNDS do
                    local t0 = now_ns()
                    local hits = loop()
                    local dt = now_ns() - t0
                    assert(hits == N, name .. " missed")
                    if dt < best then best = dt end
                end
                result.ns[name] = best / N
            end

            -- allocation during L1 hits (both call forms), GC stopped
            collectgarbage("collect")
            collectgarbage("stop")
            local before = collectgarbage("count")
            loops.cache_l1()
            loops.cache_l1_cb()
            result.l1_kb_allocated = collectgarbage("count") - before
            collectgarbage("restart")

            -- shared dict calls during L1 hits: every dict method (all dicts
            -- share one metatable) counts its calls; the plain dict loop is
            -- the control that shows the counter works
            local methods = getmetatable(dict).__index
            local saved, calls = {}, 0
            for name, f in pairs(methods) do
                if type(f) == "function" then
                    saved[name] = f
                    methods[name] = function(...) calls = calls + 1; return f(...) end
                end
            end
            loops.cache_l1()
            loops.cache_l1_cb()
            result.l1_shdict_calls = calls
            calls = 0
            loops.shdict()
            result.control_shdict_calls = calls
            for name, f in pairs(saved) do methods[name] = f end

            ngx.header["Content-Type"] = "application/json"
            ngx.say(cjson.encode(result))
        }
    }
"""


@dataclass(frozen=True)
class Result:
    iterations: int
    rounds: int
    ns: dict[str, float]
    l1_kb_allocated: float
    l1_shdict_calls: int
    control_shdict_calls: int


def run(iterations: int, rounds: int) -> Result:
    config = CONFIG_TEMPLATE.replace("__ITERATIONS__", str(iterations)).replace(
        "__ROUNDS__", str(rounds)
    )
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        port = PortPicker().pick()
        generated = NginxServer(Path(tmp), http_config=HTTP_CONFIG, config=config, port=port)
        log = generated.parts.error_log_path
        # the test config logs at debug level, and a debug nginx logs every shm
        # mutex lock: that would time the logging, not the dict
        conf_text = generated.render().replace(f"error_log {log} debug;", f"error_log {log} warn;")
        with NginxServer(Path(tmp), conf_text=conf_text, port=port) as srv:
            resp = http_request(srv.port, "GET", "/bench", timeout=300)
            if resp.status != 200 or resp.problem:
                log = srv.error_log_text()
                raise RuntimeError(f"bench request failed: {resp.status} {resp.problem}\n{log}")
            data = json.loads(resp.body)
    return Result(
        iterations=data["iterations"],
        rounds=data["rounds"],
        ns=data["ns"],
        l1_kb_allocated=data["l1_kb_allocated"],
        l1_shdict_calls=data["l1_shdict_calls"],
        control_shdict_calls=data["control_shdict_calls"],
    )


def report(result: Result) -> str:
    ns = result.ns
    lines = [
        f"zedcup.cache L1 hit, {result.iterations} lookups x best of {result.rounds} rounds",
        "",
        f"{'lookup':<28}{'ns/op':>10}{'x table':>10}",
    ]
    labels = {
        "table": "Lua table",
        "lrucache": "resty.lrucache get",
        "cache_l1": "zedcup.cache get (L1 hit)",
        "cache_l1_cb": "  get(k, nil, cb, arg)",
        "shdict": "ngx.shared.DICT get",
    }
    for name, label in labels.items():
        lines.append(f"{label:<28}{ns[name]:>10.1f}{ns[name] / ns['table']:>10.1f}")
    lines += [
        "",
        f"L1 hit vs lrucache get:  {ns['cache_l1'] / ns['lrucache']:.2f}x",
        f"shared dict get vs L1 hit: {ns['shdict'] / ns['cache_l1']:.2f}x",
        f"KB allocated by {2 * result.iterations} L1 hits (GC stopped): "
        f"{result.l1_kb_allocated:.1f}",
        f"shared dict calls during {2 * result.iterations} L1 hits: {result.l1_shdict_calls}"
        f" (control, {result.iterations} dict gets: {result.control_shdict_calls})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(report(run(args.iterations, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
