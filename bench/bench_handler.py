"""Benchmark: zedcup's handler against native nginx proxying and a raw cosocket.

A backend nginx serves a small fixed response. A front nginx (one worker) has
three locations that fetch it, all over keepalive connections:

- /native: proxy_pass to an upstream block (nginx's own proxy, the baseline)
- /zedcup: create_handler + handler:request + read_body + set_keepalive, with
           the instance configured in an embedded dev-consul
- /raw:    a hand-written cosocket GET (the floor of any Lua client)

wrk drives each location in turn, in one run, against the same backend; the
report gives requests/s and the ratio to native nginx. Not a test: nothing is
asserted. Usage: .venv/bin/python bench/bench_handler.py [-d SECONDS] [-c CONNS]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from zedctl.devconsul import DevConsul
from zedctl.testnginx import NginxServer, PortPicker

BACKEND_CONFIG = """
    location = /backend {
        return 200 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    }
"""

FRONT_HTTP = """
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;

    upstream native_backend {
        server 127.0.0.1:%(backend)d;
        keepalive 64;
    }

    init_by_lua_block {
        require "resty.core"
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
"""

LOCATIONS = ("native", "zedcup", "raw")


@dataclass
class Result:
    location: str
    requests_per_s: float
    non_2xx: int


def run_wrk(url: str, duration: int, connections: int) -> Result:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return Result(
        location=url.rsplit("/", 1)[1],
        requests_per_s=float(rps.group(1)) if rps else 0.0,
        non_2xx=int(bad.group(1)) if bad else 0,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", "--duration", type=int, default=5, help="seconds per location")
    parser.add_argument("-c", "--connections", type=int, default=16, help="wrk connections")
    args = parser.parse_args()

    if not shutil.which("wrk"):
        print("bench_handler: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1

    consul = DevConsul(host="127.0.0.1", port=0)
    consul.start()
    picker = PortPicker()
    try:
        with tempfile.TemporaryDirectory(prefix="zedcup-bench-") as tmp:
            backend_port = picker.pick()
            backend = NginxServer(
                servroot=Path(tmp) / "backend",
                config=BACKEND_CONFIG,
                port=backend_port,
                error_log_level="warn",
            )
            values = {"backend": backend_port, "consul": consul.address[1]}
            front = NginxServer(
                servroot=Path(tmp) / "front",
                http_config=FRONT_HTTP % values,
                config=FRONT_CONFIG % values,
                error_log_level="warn",
            )
            with backend, front:
                with urllib.request.urlopen(f"{front.url}/setup", timeout=10) as resp:
                    resp.read()
                for name in LOCATIONS:  # warm up keepalive pools, worker caches and the JIT
                    with urllib.request.urlopen(f"{front.url}/{name}", timeout=10) as resp:
                        resp.read()
                    run_wrk(f"{front.url}/{name}", 1, args.connections)
                results = [
                    run_wrk(f"{front.url}/{name}", args.duration, args.connections)
                    for name in LOCATIONS
                ]
    finally:
        consul.stop()

    native = results[0].requests_per_s or 1.0
    print(f"{'location':<10} {'requests/s':>12} {'vs native':>10} {'non-2xx':>8}")
    for r in results:
        print(
            f"{r.location:<10} {r.requests_per_s:>12.0f} "
            f"{r.requests_per_s / native:>10.2f} {r.non_2xx:>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
