"""Benchmark: what per-request counting (zedcup.counters, behind status() and metrics())
costs the handler and the balancer path, as throughput ratios measured in one run.

One front nginx (one worker) in front of one backend; /counting?on=0|1 switches
per-request counting off and on in that worker (zedcup.counters.enable: try() and
request() return at once when off), so both variants run in the same process. It has:

- /zedcup:  create_handler + handler:request + read_body + set_keepalive
- /balance: proxy_pass to an upstream whose peer zedcup.balance() picks, with
            zedcup.log() in log_by_lua (where the balancer path counts)

wrk (one thread) drives zedcup on, zedcup off, balance on, balance off, in an order that
alternates every round (ABBA), after a warm-up; each round gives two ratios per path:
requests/s on/off, and the front worker's CPU time per request off/on (from
/proc/<pid>/stat: the throughput ratio a saturated worker would see, and far less moved by
other processes on a shared machine than requests/s); the report shows their medians.
A second part times the counting calls alone in a Lua loop (ns per request: one try and
one request counted) and relates that to the worker's CPU time per handler request.
Not a test: nothing is asserted.
Usage: .venv/bin/python bench/bench_metrics.py [-d SECONDS] [-c CONNS] [-r ROUNDS]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from benchlib import Sample, bench_servers, fetch, machine, run_wrk

REPO = Path(__file__).resolve().parent.parent

FRONT_HTTP = """
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;

    upstream zedcup_backend {
        server 0.0.0.1;   # placeholder: balancer_by_lua picks the peer
        balancer_by_lua_block {
            local ok, err = require("zedcup").balance("bench")
            if not ok then
                ngx.log(ngx.ERR, "bench: ", err)
                return ngx.exit(502)
            end
        }
        keepalive 64;
    }

    init_by_lua_block {
        require "resty.core"
        assert(require("zedcup").init({
            prefix = "%(prefix)s",
            consul = { host = "127.0.0.1", port = %(consul)d },
        }))
    }

    init_worker_by_lua_block {
        require("zedcup").run_workers()
    }
"""

FRONT_CONFIG = r"""
    location = /setup {
        content_by_lua_block {
            assert(require("zedcup").configure_instance("bench", { pools = { { hosts = {
                { host = "127.0.0.1", port = %(backend)d } } } } }))
            ngx.say("ok")
        }
    }

    location = /zedcup {
        content_by_lua_block {
            local handler, err = require("zedcup").create_handler("bench")
            if not handler then
                ngx.status = 500
                return ngx.say(err)
            end
            local res
            res, err = handler:request({ path = "/backend" })
            if not res then
                ngx.status = 502
                return ngx.say(err)
            end
            ngx.print(res:read_body())
            handler:set_keepalive()
        }
    }

    location = /balance {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://zedcup_backend/backend;
        log_by_lua_block { require("zedcup").log() }
    }

    location = /counting {
        content_by_lua_block {
            require("zedcup.counters").enable(ngx.var.arg_on == "1")
            ngx.say("ok")
        }
    }

    location = /counted {
        content_by_lua_block {
            local zedcup = require "zedcup"
            local status = zedcup.status("bench")
            ngx.say(status and status.instances[1].requests or -1)
        }
    }

    location = /micro {
        content_by_lua_block {
            -- what a successful request reports, through the real call sites
            -- (zedcup.report: a connected try, the request's end), with counting
            -- on and off: the difference is what counting costs per request
            local report = require "zedcup.report"
            local counters = require "zedcup.counters"
            local connected, done = report.connected, report.done
            local h = assert(require("zedcup").create_handler("bench"))
            local pool = h:config().pools[1]
            local host = pool.hosts[1]
            local n = tonumber(ngx.var.arg_n) or 20000000
            local function time(on)
                counters.enable(on)
                for _ = 1, 10000 do connected("bench", pool, host) done("bench", 1) end
                local best = math.huge
                for _ = 1, 5 do
                    ngx.update_time()
                    local t0 = ngx.now()
                    for _ = 1, n do
                        connected("bench", pool, host)
                        done("bench", 1)
                    end
                    ngx.update_time()
                    best = math.min(best, ngx.now() - t0)
                end
                return best / n * 1e9
            end
            local on, off = time(true), time(false)
            counters.enable(true)
            ngx.say(on, " ", off)
        }
    }
"""

PATHS = ("zedcup", "balance")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--duration", type=int, default=3, help="seconds per run")
    parser.add_argument("-c", "--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("-r", "--rounds", type=int, default=6, help="rounds (ABBA order)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("bench_metrics: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1

    servers = bench_servers(FRONT_HTTP, FRONT_CONFIG, prefix="bench")
    with servers as (backend, front, _), backend, front:
        assert front.proc is not None  # one worker, no master: this is the worker
        results = measure(front.url, front.proc.pid, args)
    report(results, args)
    return 0


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Sample]]  # (on|off, path) -> runs
    rate_ratios: dict[str, list[float]]  # path -> on/off requests/s, per round
    cpu_ratios: dict[str, list[float]]  # path -> off/on CPU per request, per round
    counted: int
    micro_ns: float
    micro_on: float = 0.0
    micro_off: float = 0.0


def measure(base: str, pid: int, args: argparse.Namespace) -> Results:
    fetch(f"{base}/setup")
    for path in PATHS:  # warm up keepalive pools, caches and the JIT
        body = fetch(f"{base}/{path}")
        if not body.startswith(b"0123456789abcdef"):
            raise RuntimeError(f"{base}/{path} answered {body[:200]!r}")
        run_wrk(f"{base}/{path}", 1, args.connections, pid)
    res = Results({}, {p: [] for p in PATHS}, {p: [] for p in PATHS}, 0, 0.0)
    for r in range(args.rounds):
        order = ("on", "off") if r % 2 == 0 else ("off", "on")
        for path in PATHS:
            got = {}
            for name in order:
                fetch(f"{base}/counting?on={1 if name == 'on' else 0}")
                got[name] = run_wrk(f"{base}/{path}", args.duration, args.connections, pid)
                if got[name].non_2xx:
                    raise RuntimeError(f"{base}/{path}: {got[name].non_2xx} non-2xx answers")
                res.runs.setdefault((name, path), []).append(got[name])
            res.rate_ratios[path].append(
                got["on"].requests_per_s / (got["off"].requests_per_s or 1)
            )
            res.cpu_ratios[path].append(got["off"].cpu_us / (got["on"].cpu_us or 1))
    fetch(f"{base}/counting?on=1")
    res.counted = int(fetch(f"{base}/counted").strip())
    on_ns, off_ns = (float(x) for x in fetch(f"{base}/micro").split())
    res.micro_ns = on_ns - off_ns
    res.micro_on, res.micro_off = on_ns, off_ns
    return res


def report(res: Results, args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    print(f"wrk -t1 -c{args.connections}, {args.rounds} rounds (ABBA) of {args.duration}s per run")
    print(
        f"{'path':<8} {'r/s on':>8} {'r/s off':>8} {'on/off r/s':>11} {'min..max':>11}   "
        f"{'CPU us/req on':>13} {'off':>6} {'off/on CPU':>11} {'min..max':>11}"
    )
    for path in PATHS:
        on, off = res.runs[("on", path)], res.runs[("off", path)]
        rr, cr = res.rate_ratios[path], res.cpu_ratios[path]
        print(
            f"{path:<8} {statistics.median(x.requests_per_s for x in on):>8.0f} "
            f"{statistics.median(x.requests_per_s for x in off):>8.0f} "
            f"{statistics.median(rr):>11.3f} {min(rr):>5.2f}..{max(rr):<5.2f}   "
            f"{statistics.median(x.cpu_us for x in on):>13.2f} "
            f"{statistics.median(x.cpu_us for x in off):>6.2f} "
            f"{statistics.median(cr):>11.3f} {min(cr):>5.2f}..{max(cr):<5.2f}"
        )
    print(f"requests counted by status() over the runs with counting on: {res.counted}")
    cpu_ns = 1000 * statistics.median(x.cpu_us for x in res.runs[("on", "zedcup")])
    print(
        f"report.connected + report.done per request, in a Lua loop: {res.micro_on:.1f} ns "
        f"counting on, {res.micro_off:.1f} ns off: counting costs {res.micro_ns:.1f} ns "
        f"= {100 * res.micro_ns / cpu_ns:.3f}% of the front worker's CPU per handler request "
        f"({cpu_ns / 1000:.1f} us)"
    )


if __name__ == "__main__":
    sys.exit(main())
