"""Benchmark: zedcup.http against a hand-written cosocket request.

One nginx (one worker) serves a small fixed response on a backend port and two
client locations. Each client location makes N keepalive requests to the backend
in a loop and times itself inside Lua (ngx.update_time + ngx.now):

- /zedcup: http.new, connect, request, read_body, set_keepalive (zedcup.http)
- /raw:    ngx.socket.tcp, connect, one send of a fixed GET, status line and
           headers by "*l", body by Content-Length, setkeepalive

Both sides pay the same backend cost, so the ratio zedcup.http / raw is the price
of the client library. Each round also reports the worker's CPU time per request
(os.clock: client and backend, both in this worker), steadier than req/s on a
loaded machine. --baseline FILE adds /baseline: another version of zedcup.http
(e.g. `git show main~3:lua/zedcup/http.lua > /tmp/http_before.lua`) in the same
worker and rounds, for a before/after comparison.
Usage: .venv/bin/python bench/bench_http.py [-n N] [-r ROUNDS] [--baseline FILE]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from zedctl.testnginx import NginxServer, find_nginx

BODY_SIZE = 64

CLIENT_LUA = r"""
local http = require "zedcup.http"
local tcp = ngx.socket.tcp
local BACKEND = %(backend)d
local BASELINE = %(baseline)s

local function client_once(http)
    local httpc = http.new()
    local ok, err = httpc:connect("127.0.0.1", BACKEND)
    if not ok then return nil, err end
    local res
    res, err = httpc:request({ path = "/backend" })
    if not res then return nil, err end
    local body
    body, err = res:read_body()
    if not body then return nil, err end
    ok, err = httpc:set_keepalive()
    if not ok then return nil, err end
    return #body
end

local function zedcup_once()
    return client_once(http)
end

local http_base = BASELINE and dofile(BASELINE)

local function baseline_once()
    return client_once(http_base)
end

local RAW_REQUEST = "GET /backend HTTP/1.1\r\nHost: 127.0.0.1:" .. BACKEND .. "\r\n\r\n"

local function raw_once()
    local sock = tcp()
    local ok, err = sock:connect("127.0.0.1", BACKEND)
    if not ok then return nil, err end
    ok, err = sock:send(RAW_REQUEST)
    if not ok then return nil, err end
    local line
    line, err = sock:receive("*l")
    if not line then return nil, err end
    local len
    while true do
        line, err = sock:receive("*l")
        if not line then return nil, err end
        if line == "" then break end
        local v = line:match("^[Cc]ontent%%-[Ll]ength:%%s*(%%d+)")
        if v then len = tonumber(v) end
    end
    local body
    body, err = sock:receive(len)
    if not body then return nil, err end
    ok, err = sock:setkeepalive()
    if not ok then return nil, err end
    return #body
end

local variants = { zedcup = zedcup_once, raw = raw_once, baseline = baseline_once }

return function(name)
    local once = variants[name]
    local n = tonumber(ngx.var.arg_n) or 1000
    ngx.update_time()
    local t0, c0 = ngx.now(), os.clock()
    for i = 1, n do
        local size, err = once()
        if size ~= %(body_size)d then
            ngx.status = 500
            ngx.say(name, " request ", i, " failed: ", err or ("body of " .. tostring(size)))
            return
        end
    end
    local cpu = os.clock() - c0
    ngx.update_time()
    ngx.say(n / math.max(ngx.now() - t0, 0.001), " ", cpu * 1e6 / n)
end
"""

CONF = """
{modules}
daemon off;
master_process off;
worker_processes 1;
error_log {root}/logs/error.log warn;
pid {root}/logs/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    lua_package_path "{repo}/lua/?.lua;{root}/?.lua;;";
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{backend};
        location = /backend {{ return 200 "{body}"; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        location = /zedcup {{ content_by_lua_block {{ require "bench_client" ("zedcup") }} }}
        location = /raw {{ content_by_lua_block {{ require "bench_client" ("raw") }} }}
        location = /baseline {{ content_by_lua_block {{ require "bench_client" ("baseline") }} }}
    }}
}}
"""


@dataclass
class Result:
    name: str
    rates: list[float]
    cpu_us: list[float]  # worker CPU per request, µs

    @property
    def best(self) -> float:
        return max(self.rates)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_us)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_variant(port: int, name: str, n: int) -> tuple[float, float]:
    """-> (requests/s, worker CPU µs per request)"""
    url = f"http://127.0.0.1:{port}/{name}?n={n}"
    with urllib.request.urlopen(url, timeout=600) as resp:
        rate, cpu = resp.read().decode().split()
    return float(rate), float(cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000, help="requests per round (default 20000)")
    parser.add_argument("-r", "--rounds", type=int, default=5, help="rounds per variant")
    parser.add_argument(
        "--baseline", type=Path, help="another zedcup/http.lua to compare in the same rounds"
    )
    args = parser.parse_args(argv)
    if args.baseline and not args.baseline.is_file():
        print(f"bench_http: --baseline {args.baseline}: no such file", file=sys.stderr)
        return 1

    repo = Path(__file__).resolve().parent.parent
    binary = find_nginx()
    with tempfile.TemporaryDirectory(prefix="zedcup-bench-http-") as tmp:
        root = Path(tmp)
        (root / "logs").mkdir()
        (root / "tmp").mkdir()
        port, backend = free_port(), free_port()
        (root / "bench_client.lua").write_text(
            CLIENT_LUA
            % {
                "backend": backend,
                "body_size": BODY_SIZE,
                "baseline": f'"{args.baseline.resolve()}"' if args.baseline else "nil",
            }
        )
        conf = CONF.format(
            modules="\n".join(f"load_module {m};" for m in binary.modules),
            root=root,
            repo=repo,
            port=port,
            backend=backend,
            body="x" * BODY_SIZE,
        )
        server = NginxServer(root, conf_text=conf, port=port, binary=binary, repo=repo)
        server.start()
        try:
            names = ("zedcup", "raw", "baseline") if args.baseline else ("zedcup", "raw")
            results = {name: Result(name, [], []) for name in names}
            for name in results:  # warm up: JIT, connection pool
                run_variant(port, name, 2000)
            for _ in range(args.rounds):  # interleaved, so drift hits all alike
                for name, result in results.items():
                    rate, cpu = run_variant(port, name, args.n)
                    result.rates.append(rate)
                    result.cpu_us.append(cpu)
        except Exception as err:  # a failed round prints nginx's own words
            print(f"benchmark failed: {err}", file=sys.stderr)
            print(server.error_log_text()[-3000:], file=sys.stderr)
            return 1
        finally:
            server.stop()

    z, r = results["zedcup"], results["raw"]
    print(f"nginx {binary.version}, 1 worker, {args.rounds} rounds x {args.n} keepalive requests")
    print(f"{'client':<12} {'best req/s':>12} {'median req/s':>14} {'median CPU µs/req':>18}")
    for res in results.values():
        print(f"{res.name:<12} {res.best:>12.0f} {res.median:>14.0f} {res.cpu:>18.2f}")
    print(f"ratio zedcup.http / raw: best {z.best / r.best:.2f}, median {z.median / r.median:.2f}")
    print(f"CPU per request zedcup.http / raw: {z.cpu / r.cpu:.2f}")
    if args.baseline:
        b = results["baseline"]
        per_round = [zc / bc for zc, bc in zip(z.cpu_us, b.cpu_us)]
        print(
            f"CPU per request zedcup.http / baseline: median of rounds "
            f"{statistics.median(per_round):.3f} ({min(per_round):.3f}..{max(per_round):.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
