"""Benchmark: zedcup's handler and balancer against native nginx and a raw cosocket.

A backend nginx serves a small fixed response. A front nginx (one worker) has
these locations that fetch it, all over keepalive connections (upstreams with
`keepalive 64`, the same proxy settings):

- /native:  proxy_pass to an upstream block (nginx's own proxy, the baseline)
- /zedcup:  create_handler + handler:request + read_body + set_keepalive, with
            the instance configured in an embedded dev-consul
- /raw:     a hand-written cosocket GET (the floor of any Lua client)
- /balance: proxy_pass to an upstream whose peer zedcup.balance() picks in
            balancer_by_lua, with zedcup.log() in log_by_lua (zedcup's selection
            and accounting on nginx's own proxy, as the README's snippet)
- /client:  the HTTP client zedcup's handler uses (zedcup.deps http), driven
            directly without zedcup: splits /zedcup's cost into client and handler
- /floor:   proxy_pass to an upstream whose balancer_by_lua only sets one
            constant peer, with a log_by_lua that does nothing: what nginx's own
            Lua hooks cost, the floor of /balance
- /nolog:   /balance without zedcup.log() (not run unless chosen with -l)
- /floor_balancer: /floor without its log_by_lua (not run unless chosen with -l)

wrk (one thread, a fixed connection count) drives the locations interleaved
over several rounds (native, zedcup, raw, balance, client, floor, native, ...)
after a warm-up, so load from other processes hits every location alike. The report gives the
median and best requests/s per location and the median of the per-round ratios
to native. Not a test: nothing is asserted.
Usage: .venv/bin/python bench/bench_handler.py [-d SECONDS] [-c CONNS] [-r ROUNDS]
                                              [-l native,balance,floor]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import Sample, bench_servers, fetch, machine, run_wrk

FRONT_HTTP = """
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;

    upstream native_backend {
        server 127.0.0.1:%(backend)d;
        keepalive 64;
    }

    upstream zedcup_backend {
        server 0.0.0.1;   # placeholder: balancer_by_lua picks the peer
        balancer_by_lua_block {
            local zedcup = require "zedcup"
            local ok, err = zedcup.balance("bench")
            if not ok then
                ngx.log(ngx.ERR, "bench: ", err)
                return ngx.exit(zedcup.NO_PEER)
            end
        }
        keepalive 64;
    }

    upstream floor_backend {
        server 0.0.0.1;   # placeholder: balancer_by_lua sets the one peer
        balancer_by_lua_block {
            require("ngx.balancer").set_current_peer("127.0.0.1", %(backend)d)
        }
        keepalive 64;
    }

    init_by_lua_block {
        require "resty.core"
        -- --lua-dir: modules there shadow the checkout's (for experiments)
        package.path = "%(lua_dir)s" .. package.path
        assert(require("zedcup").init({
            prefix = "bench",
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

    location = /native {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://native_backend/backend;
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

    location = /raw {
        content_by_lua_block {
            local sock = ngx.socket.tcp()
            assert(sock:connect("127.0.0.1", %(backend)d))
            sock:send("GET /backend HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            sock:receive("*l")
            local len
            while true do
                local line = sock:receive("*l")
                if not line or line == "" then break end
                local v = line:match("^[Cc]ontent%%-[Ll]ength:%%s*(%%d+)")
                if v then len = tonumber(v) end
            end
            ngx.print(sock:receive(len))
            sock:setkeepalive()
        }
    }

    location = /client {
        content_by_lua_block {
            local httpc = require("zedcup.deps").http.new()
            assert(httpc:connect({ scheme = "http", host = "127.0.0.1", port = %(backend)d }))
            local res = assert(httpc:request({ path = "/backend" }))
            ngx.print(res:read_body())
            httpc:set_keepalive()
        }
    }

    location = /balance {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://zedcup_backend/backend;
        log_by_lua_block { require("zedcup").log() }
    }

    location = /nolog {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://zedcup_backend/backend;
    }

    location = /floor {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://floor_backend/backend;
        log_by_lua_block { local _ = ngx }
    }

    location = /floor_balancer {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://floor_backend/backend;
    }
"""

LOCATIONS = ("native", "zedcup", "raw", "balance", "client", "floor", "nolog", "floor_balancer")
DEFAULT_LOCATIONS = ("native", "zedcup", "raw", "balance", "client", "floor")


@dataclass
class Series:
    location: str
    samples: list[Sample] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # to native, same round
    cpu_ratios: list[float] = field(default_factory=list)  # native's CPU/request over this one's

    @property
    def rates(self) -> list[float]:
        return [s.requests_per_s for s in self.samples]


def measure(
    base: str, pid: int, rounds: int, duration: int, connections: int, locations: list[str]
) -> list[Series]:
    fetch(f"{base}/setup")
    for name in locations:  # warm up keepalive pools, worker caches and the JIT
        body = fetch(f"{base}/{name}")
        if not body.startswith(b"0123456789abcdef"):
            raise RuntimeError(f"/{name} answered {body[:200]!r}, not the backend's body")
        run_wrk(f"{base}/{name}", 1, connections, pid)
    series = {name: Series(name) for name in locations}
    for _ in range(rounds):
        round_samples = {
            name: run_wrk(f"{base}/{name}", duration, connections, pid) for name in locations
        }
        native = round_samples["native"]
        for name, sample in round_samples.items():
            series[name].samples.append(sample)
            series[name].ratios.append(sample.requests_per_s / (native.requests_per_s or 1.0))
            series[name].cpu_ratios.append(native.cpu_us / (sample.cpu_us or 1.0))
    return list(series.values())


def report(results: list[Series], args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    print(
        f"wrk -t1 -c{args.connections}, {args.rounds} interleaved rounds of {args.duration}s each"
    )
    print(
        f"{'location':<9} {'median r/s':>11} {'best r/s':>9} "
        f"{'vs native (median)':>19} {'min..max':>12} {'non-2xx':>8} {'sock err':>8} "
        f"{'CPU us/req':>10} {'CPU vs native':>13}"
    )
    for s in results:
        print(
            f"{s.location:<9} {statistics.median(s.rates):>11.0f} {max(s.rates):>9.0f} "
            f"{statistics.median(s.ratios):>19.2f} "
            f"{min(s.ratios):>5.2f}..{max(s.ratios):<5.2f} "
            f"{sum(x.non_2xx for x in s.samples):>8} {sum(x.errors for x in s.samples):>8} "
            f"{statistics.median(x.cpu_us for x in s.samples):>10.2f} "
            f"{statistics.median(s.cpu_ratios):>13.2f}"
        )
    print(
        "CPU us/req: the front worker's CPU time (/proc) per request, median of the rounds; "
        "CPU vs native: native's CPU/request over the location's, median of the per-round ratios"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-d", "--duration", type=int, default=3, help="seconds per location and round"
    )
    parser.add_argument("-c", "--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("-r", "--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--lua-dir", type=Path, help="a directory whose zedcup modules shadow lua/ (experiments)"
    )
    parser.add_argument(
        "-l",
        "--locations",
        default=",".join(DEFAULT_LOCATIONS),
        help=f"comma-separated locations to run, native always first (of {', '.join(LOCATIONS)})",
    )
    args = parser.parse_args()
    chosen = [x.strip() for x in args.locations.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in LOCATIONS]
    if unknown:
        parser.error(
            f"--locations: unknown location {unknown[0]!r} (known: {', '.join(LOCATIONS)})"
        )
    locations = ["native"] + [x for x in dict.fromkeys(chosen) if x != "native"]
    lua_dir = f"{args.lua_dir.resolve()}/?.lua;" if args.lua_dir else ""

    if not shutil.which("wrk"):
        print("bench_handler: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1

    servers = bench_servers(FRONT_HTTP, FRONT_CONFIG, lua_dir=lua_dir)
    with servers as (backend, front, _), backend, front:
        assert front.proc is not None  # one worker, no master: this is the worker
        results = measure(
            front.url, front.proc.pid, args.rounds, args.duration, args.connections, locations
        )

    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
