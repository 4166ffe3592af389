"""Benchmark: the cache-hit hot path of create_handler plus host selection, in nginx.

One nginx worker (with zedcup, an instance of three hosts in an embedded
dev-consul) runs, inside one request and without network I/O, N iterations of:

- lookup:  a plain Lua table lookup plus a field read (the floor, same run)
- handler: zedcup.create_handler(instance) (cache hit)
- select:  select.next(plan, state.down_for(instance), nil) (weighted_rr)
- both:    create_handler + host selection, as handler:request() does first
- request: both, plus the handler fields request() sets on a success

and reports, per operation, wall and CPU nanoseconds (median over rounds),
bytes allocated (collectgarbage("count") delta with the GC stopped, after JIT
warm-up), and shared-dict, JSON and cosocket calls (counted by wrappers that
init_by_lua installs before zedcup is loaded).

Then, per balancing method, the cost of one pick (select.next + select.release,
a different key per pick; the worker's CPU time, median over rounds) in a pool of
10, 1,000 and 10,000 hosts (weights 1-3), all up and with 10% of them marked down,
and the ratio 10,000 / 10 hosts.
Not a test: nothing is asserted.
Usage: .venv/bin/python bench/bench_select.py [-n OPS] [-r ROUNDS]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from zedctl.devconsul import DevConsul
from zedctl.testnginx import NginxServer

HTTP_CONFIG = r"""
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;

    init_by_lua_block {
        require "resty.core"
        -- --lua-dir: modules there shadow the checkout's (for experiments)
        package.path = "%(lua_dir)s" .. package.path
        -- counting wrappers, installed before zedcup localises anything
        local counts = { shdict = 0, json = 0, socket = 0 }
        package.loaded.bench_counts = counts
        local function wrap(tab, key, what)
            local fn = tab[key]
            if type(fn) == "function" then
                tab[key] = function(...)
                    counts[what] = counts[what] + 1
                    return fn(...)
                end
            end
        end
        local methods = getmetatable(ngx.shared.zedcup_cache).__index
        for name, fn in pairs(methods) do
            if type(fn) == "function" then
                wrap(methods, name, "shdict")
            end
        end
        for _, mod in ipairs({ "cjson", "cjson.safe" }) do
            local cjson = require(mod)
            wrap(cjson, "encode", "json")
            wrap(cjson, "decode", "json")
        end
        wrap(ngx.socket, "tcp", "socket")
        wrap(ngx.socket, "udp", "socket")

        assert(require("zedcup").init({
            prefix = "benchsel",
            consul = { host = "127.0.0.1", port = %(consul)d },
        }))
    }

    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }
"""

CONFIG = r"""
    location = /setup {
        content_by_lua_block {
            assert(require("zedcup").configure_instance("bench", { pools = { { hosts = {
                { host = "127.0.0.1", port = 1, weight = 10 },
                { host = "127.0.0.1", port = 2, weight = 20 },
                { host = "127.0.0.1", port = 3, weight = 30 } } } } }))
            -- the first call loads the plan (Consul or shared dict): a cache miss
            local h = assert(require("zedcup").create_handler("bench"))
            ngx.say(#h:config().pools[1].hosts)
        }
    }

    location = /bench {
        content_by_lua_block {
            local ffi = require "ffi"
            local cjson = require "cjson"
            local zedcup = require "zedcup"
            local selection = require "zedcup.select"
            local state = require "zedcup.state"
            local counts = package.loaded.bench_counts
            pcall(ffi.cdef, [[
                struct bench_timespec { long sec; long nsec; };
                int clock_gettime(int clk, struct bench_timespec *tp);
            ]])
            local ts = ffi.new("struct bench_timespec")
            local function clock(id)
                ffi.C.clock_gettime(id, ts)
                return tonumber(ts.sec) * 1e9 + tonumber(ts.nsec)
            end

            local create_handler, select_next = zedcup.create_handler, selection.next
            local down_for = state.down_for
            local lookup_tab = { bench = { name = "bench" } }
            local INSTANCE = "bench"
            local ops = {
                lookup = function()
                    return lookup_tab[INSTANCE].name
                end,
                handler = function()
                    return create_handler(INSTANCE)
                end,
                select = (function()
                    local plan = require("zedcup.config").plan(INSTANCE)
                    return function()
                        local _, host = select_next(plan, down_for(INSTANCE), nil)
                        return host
                    end
                end)(),
                both = function()
                    local h = create_handler(INSTANCE)
                    select_next(h.plan, down_for(INSTANCE), h.failed)
                    return h
                end,
                -- both, plus the fields handler:request() sets on a success
                request = function()
                    local h = create_handler(INSTANCE)
                    local p, host = select_next(h.plan, down_for(INSTANCE), h.failed)
                    h.httpc = true
                    h.p, h.pool, h.host = p, p.config, host
                    h.used = true
                    h.open = true
                    return h
                end,
            }
            local n = tonumber(ngx.var.arg_n) or 200000
            local rounds = tonumber(ngx.var.arg_r) or 5
            local names = { "lookup", "handler", "select", "both", "request" }
            local out = {}
            -- results escape into a ring, as a real handler escapes into its
            -- request: otherwise the JIT may sink (elide) the allocations
            local keep = {}
            local function run(f, count)
                for i = 1, count do keep[i % 16 + 1] = f() end
            end
            for _, name in ipairs(names) do
                local f = ops[name]
                run(f, n)  -- JIT warm-up
                local wall, cpu = {}, {}
                for r = 1, rounds do
                    local w0, c0 = clock(1), clock(2)  -- CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID
                    run(f, n)
                    wall[r] = (clock(1) - w0) / n
                    cpu[r] = (clock(2) - c0) / n
                end
                table.sort(wall)
                table.sort(cpu)
                local m = 10000
                local before = {}
                for k, v in pairs(counts) do before[k] = v end
                collectgarbage("collect")
                collectgarbage("stop")
                local kb0 = collectgarbage("count")
                run(f, m)
                local kb1 = collectgarbage("count")
                collectgarbage("restart")
                local res = {
                    wall_ns = wall[math.ceil(rounds / 2)],
                    cpu_ns = cpu[math.ceil(rounds / 2)],
                    best_ns = wall[1],
                    bytes = (kb1 - kb0) * 1024 / m,
                }
                for k, v in pairs(counts) do res[k] = (v - before[k]) / m end
                out[name] = res
            end
            assert(keep[1] ~= nil)
            -- the counters themselves: one call of each kind must count as one
            local before = {}
            for k, v in pairs(counts) do before[k] = v end
            ngx.shared.zedcup_cache:get("bench-selfcheck")
            cjson.encode(before)
            ngx.socket.tcp()
            out.selfcheck = {}
            for k, v in pairs(counts) do out.selfcheck[k] = v - before[k] end
            ngx.say(cjson.encode(out))
        }
    }

    location = /picks {
        content_by_lua_block {
            local ffi = require "ffi"
            local cjson = require "cjson"
            local schema = require "zedcup.schema"
            local selection = require "zedcup.select"
            local select_next, select_release = selection.next, selection.release
            pcall(ffi.cdef, [[
                struct bench_timespec { long sec; long nsec; };
                int clock_gettime(int clk, struct bench_timespec *tp);
            ]])
            local ts = ffi.new("struct bench_timespec")
            local function clock()
                -- CLOCK_PROCESS_CPUTIME_ID: the nginx worker's own CPU time, so other
                -- jobs preempting it on a shared machine do not count
                ffi.C.clock_gettime(2, ts)
                return tonumber(ts.sec) * 1e9 + tonumber(ts.nsec)
            end
            local n = tonumber(ngx.var.arg_n) or 200000
            local rounds = tonumber(ngx.var.arg_r) or 5
            local keys = {}
            for i = 1, 1024 do keys[i] = "10.0." .. (i % 256) .. "." .. i end
            local out = {}
            for _, method in ipairs({ "weighted_rr", "chash", "least_conn", "ewma" }) do
                out[method] = {}
                for _, size in ipairs({ 10, 1000, 10000 }) do
                    local hosts = {}
                    for i = 1, size do
                        local ip = "10.1." .. (i % 250) .. "." .. (i % 200)
                        hosts[i] = { name = "h" .. i, host = ip, port = 80 + i % 1000,
                                     weight = 1 + i % 3 }
                    end
                    local pool = { name = "p", method = method, hosts = hosts }
                    local norm = assert(schema.check("instance", { pools = { pool } }))
                    local eff = schema.effective("instance", norm)
                    local plan = assert(selection.compile("b", eff, "1"))
                    for _, downs in ipairs({ 0, 10 }) do
                        local down = nil
                        if downs > 0 then
                            local d = {}
                            for i = 1, size, 10 do d["h" .. i] = true end
                            down = { p = d }
                        end
                        local function run(count)
                            for i = 1, count do
                                local p, host = select_next(plan, down, nil, keys[i % 1024 + 1])
                                select_release(p, host, nil, 0.001)
                            end
                        end
                        run(n)  -- JIT warm-up (and down hosts set aside)
                        local wall = {}
                        for r = 1, rounds do
                            local t0 = clock()
                            run(n)
                            wall[r] = (clock() - t0) / n
                        end
                        table.sort(wall)
                        out[method][size .. "/" .. downs] = wall[math.ceil(rounds / 2)]
                    end
                end
            end
            ngx.say(cjson.encode(out))
        }
    }
"""

OPS = ("lookup", "handler", "select", "both", "request")
METHODS = ("weighted_rr", "chash", "least_conn", "ewma")
SIZES = (10, 1000, 10000)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=120) as resp:
        return resp.read().decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--ops", type=int, default=200000, help="operations per round")
    parser.add_argument("-r", "--rounds", type=int, default=5, help="rounds (median reported)")
    parser.add_argument(
        "--lua-dir", type=Path, help="a directory whose zedcup modules shadow lua/ (experiments)"
    )
    args = parser.parse_args()
    lua_dir = f"{args.lua_dir.resolve()}/?.lua;" if args.lua_dir else ""

    consul = DevConsul(host="127.0.0.1", port=0)
    consul.start()
    try:
        with tempfile.TemporaryDirectory(prefix="zedcup-bench-select-") as tmp:
            server = NginxServer(
                servroot=Path(tmp) / "nginx",
                http_config=HTTP_CONFIG % {"consul": consul.address[1], "lua_dir": lua_dir},
                config=CONFIG,
                workers=1,
                error_log_level="warn",
            )
            with server:
                try:
                    fetch(f"{server.url}/setup")
                    results = json.loads(fetch(f"{server.url}/bench?n={args.ops}&r={args.rounds}"))
                    picks = json.loads(fetch(f"{server.url}/picks?n={args.ops}&r={args.rounds}"))
                except urllib.error.HTTPError:
                    print(server.error_log_text()[-3000:], file=sys.stderr)
                    raise
    finally:
        consul.stop()

    version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: nproc {os.cpu_count()}, {version}, 1 worker, loadavg {load}")
    print(f"{args.ops} ops per round, {args.rounds} rounds; per op:")
    lookup = results["lookup"]["wall_ns"] or 1e-9
    print(
        f"{'op':<8} {'wall ns':>8} {'best ns':>8} {'cpu ns':>8} {'vs lookup':>10} "
        f"{'bytes':>7} {'shdict':>7} {'json':>5} {'socket':>7}"
    )
    check = results["selfcheck"]
    if check != {"shdict": 1, "json": 1, "socket": 1}:
        print(f"bench_select: the call counters are broken: {check}", file=sys.stderr)
        return 1
    for name in OPS:
        r = results[name]
        print(
            f"{name:<8} {r['wall_ns']:>8.1f} {r['best_ns']:>8.1f} {r['cpu_ns']:>8.1f} "
            f"{r['wall_ns'] / lookup:>10.1f} {r['bytes']:>7.1f} {r['shdict']:>7.2f} "
            f"{r['json']:>5.2f} {r['socket']:>7.2f}"
        )
    print()
    print(
        "one pick (select.next + select.release), median CPU ns;"
        " 10% down: every 10th host marked down"
    )
    head = " ".join(f"{size:>8}" for size in SIZES)
    print(f"{'method':<12} {head} {'10k/10':>7} | {'10% down:':>9} {head} {'10k/10':>7}")
    for method in METHODS:
        row = picks[method]
        cells = []
        for downs in (0, 10):
            ns = [row[f"{size}/{downs}"] for size in SIZES]
            cells.append(" ".join(f"{x:>8.1f}" for x in ns) + f" {ns[-1] / ns[0]:>7.2f}")
        print(f"{method:<12} {cells[0]} | {'':>9} {cells[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
