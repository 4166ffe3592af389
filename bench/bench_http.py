"""Benchmark: zedcup.http against a hand-written cosocket request.

One nginx (one worker) serves a small fixed response on a backend port and two
client locations. Each client location makes N keepalive requests to the backend
in a loop and times itself inside Lua (ngx.update_time + ngx.now):

- /zedcup: http.new, connect, request, read_body, set_keepalive (zedcup.http)
- /raw:    ngx.socket.tcp, connect, one send of a fixed GET, status line and
           headers by "*l", body by Content-Length, setkeepalive

Both sides pay the same backend cost, so the ratio zedcup.http / raw is the price
of the client library. Usage: .venv/bin/python bench/bench_http.py [-n N] [-r ROUNDS]
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

local function zedcup_once()
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

local variants = { zedcup = zedcup_once, raw = raw_once }

return function(name)
    local once = variants[name]
    local n = tonumber(ngx.var.arg_n) or 1000
    ngx.update_time()
    local t0 = ngx.now()
    for i = 1, n do
        local size, err = once()
        if size ~= %(body_size)d then
            ngx.status = 500
            ngx.say(name, " request ", i, " failed: ", err or ("body of " .. tostring(size)))
            return
        end
    end
    ngx.update_time()
    ngx.say(n / math.max(ngx.now() - t0, 0.001))
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
    }}
}}
"""


@dataclass
class Result:
    name: str
    rates: list[float]

    @property
    def best(self) -> float:
        return max(self.rates)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_variant(port: int, name: str, n: int) -> float:
    url = f"http://127.0.0.1:{port}/{name}?n={n}"
    with urllib.request.urlopen(url, timeout=600) as resp:
        text = resp.read().decode()
    return float(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000, help="requests per round (default 20000)")
    parser.add_argument("-r", "--rounds", type=int, default=5, help="rounds per variant")
    args = parser.parse_args(argv)

    repo = Path(__file__).resolve().parent.parent
    binary = find_nginx()
    with tempfile.TemporaryDirectory(prefix="zedcup-bench-http-") as tmp:
        root = Path(tmp)
        (root / "logs").mkdir()
        (root / "tmp").mkdir()
        port, backend = free_port(), free_port()
        (root / "bench_client.lua").write_text(
            CLIENT_LUA % {"backend": backend, "body_size": BODY_SIZE}
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
            results = {name: Result(name, []) for name in ("zedcup", "raw")}
            for name in results:  # warm up: JIT, connection pool
                run_variant(port, name, 2000)
            for _ in range(args.rounds):  # interleaved, so drift hits both alike
                for name, result in results.items():
                    result.rates.append(run_variant(port, name, args.n))
        except Exception as err:  # a failed round prints nginx's own words
            print(f"benchmark failed: {err}", file=sys.stderr)
            print(server.error_log_text()[-3000:], file=sys.stderr)
            return 1
        finally:
            server.stop()

    z, r = results["zedcup"], results["raw"]
    print(f"nginx {binary.version}, 1 worker, {args.rounds} rounds x {args.n} keepalive requests")
    print(f"{'client':<12} {'best req/s':>12} {'median req/s':>14}")
    for res in (z, r):
        print(f"{res.name:<12} {res.best:>12.0f} {res.median:>14.0f}")
    print(f"ratio zedcup.http / raw: best {z.best / r.best:.2f}, median {z.median / r.median:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
