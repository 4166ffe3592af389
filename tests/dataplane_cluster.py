"""Real nginx nodes, real backends and a Consul that can be stopped, restarted or hung.

Used by tests/test_dataplane_consul.py (which asserts) and bench/bench_resilience.py
(which measures and prints). Nothing here is a mock: the Consul is `zedctl dev-consul`
or the real Consul agent (`.tools/bin/consul agent -dev`), both in subprocesses on
127.0.0.1, and nginx runs zedcup with two workers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from zedctl.devconsul.testing import free_port
from zedctl.testnginx import NginxServer, http_request
from zedctl.testnginx.consul import ConsulAgent, ConsulNotFound, find_consul

REPO = Path(__file__).resolve().parents[1]
ZEDCTL = Path(sys.executable).with_name("zedctl")


def real_consul_binary() -> str | None:
    """The real Consul agent of `make deps` (or CONSUL_BINARY / PATH), if any."""
    try:
        return find_consul()
    except ConsulNotFound:
        return None


@dataclass
class ConsulProc:
    """A Consul on 127.0.0.1:port that can be killed, hung and restarted (empty):
    `zedctl dev-consul`, or the real `consul agent -dev` (a ConsulAgent)."""

    kind: str  # "dev-consul" or "consul"
    port: int = field(default_factory=free_port)  # the real agent's is its own
    workdir: Path | None = None  # where the Consul's log goes (required)
    proc: subprocess.Popen[bytes] | None = None
    agent: ConsulAgent | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ConsulProc:
        assert self.workdir is not None
        if self.kind != "dev-consul":
            # the same ports again on a restart; -dev keeps nothing across one
            if self.agent is None:
                self.agent = ConsulAgent(self.workdir / "consul", mode="dev")
                self.port = self.agent.http_port
            self.proc = self.agent.start(timeout=30).proc
            return self
        cmd = [str(ZEDCTL), "dev-consul", "--port", str(self.port)]
        with open(self.workdir / f"consul-{self.kind}.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._answers():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} not ready on port {self.port}")

    def _answers(self) -> bool:
        """A leader, and KV reads answered."""
        try:
            r = requests.get(self.url + "/v1/status/leader", timeout=1)
            if r.status_code != 200 or not r.json():
                return False
            probe = requests.get(self.url + "/v1/kv/zedcup-ready-probe", timeout=1)
        except (requests.RequestException, ValueError):
            return False
        return probe.status_code in (200, 404)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def hang(self) -> None:
        assert self.proc
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc
        os.killpg(self.proc.pid, signal.SIGCONT)

    def restart_empty(self) -> None:
        """Kill and start again on the same port, with nothing stored (index reset)."""
        self.kill()
        self.start()

    def index(self) -> int:
        r = requests.get(self.url + "/v1/kv/?keys", timeout=5)
        return int(r.headers.get("X-Consul-Index", "0"))

    def get(self, key: str) -> dict[str, Any] | None:
        r = requests.get(self.url + "/v1/kv/" + key, timeout=5)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return dict(r.json()[0])

    def put(self, key: str, value: str) -> None:
        r = requests.put(self.url + "/v1/kv/" + key, data=value.encode(), timeout=5)
        r.raise_for_status()

    def delete(self, key: str, recurse: bool = False) -> None:
        url = self.url + "/v1/kv/" + key + ("?recurse" if recurse else "")
        requests.delete(url, timeout=5).raise_for_status()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
        self.kill()


def zedcup_http_config(
    consul_port: int, prefix: str, backends: dict[str, int], extra: str = ""
) -> str:
    servers = "\n".join(
        f"""
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "{name}"; }}
    }}"""
        for name, port in backends.items()
    )
    return f"""
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;
    init_by_lua_block {{
        require "resty.core"
        assert(require("zedcup").init({{
            prefix = "{prefix}",
            consul = {{ host = "127.0.0.1", port = {consul_port} }},
        }}))
    }}
    init_worker_by_lua_block {{
        require("zedcup").run_workers()
    }}
    {servers}
    {extra}
"""


# /which: "<worker id> <backend name or error>"; /lua?code=...: runs Lua for set-up
NODE_CONFIG = r"""
    location = /which {
        content_by_lua_block {
            local h, err = require("zedcup").create_handler(ngx.var.arg_i or "inst")
            if not h then ngx.say(ngx.worker.id(), " ", err) return end
            local res, rerr = h:request({ path = "/" })
            if not res then ngx.say(ngx.worker.id(), " ", rerr) return end
            ngx.say(ngx.worker.id(), " ", res:read_body())
            h:set_keepalive()
        }
    }
    location = /configure {
        client_body_buffer_size 1m;
        client_max_body_size 1m;
        content_by_lua_block {
            ngx.req.read_body()
            local cjson = require "cjson.safe"
            local req = cjson.decode(ngx.req.get_body_data())
            local zedcup = require "zedcup"
            local ok, err
            if req.global then
                ok, err = zedcup.configure(req.global)
            else
                ok, err = zedcup.configure_instance(req.instance, req.config)
            end
            ngx.say(ok and "ok" or err)
        }
    }
    location = /hc {
        content_by_lua_block {
            local s = require("zedcup.healthcheck").stats()
            ngx.say(s.checks)
        }
    }
"""


def instance(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "pools": [
            {"name": "p", "hosts": [{"name": "h", "host": "127.0.0.1", "port": port}], **extra}
        ]
    }


@dataclass
class Node:
    server: NginxServer
    backends: dict[str, int]
    prefix: str

    def ask(self, path: str = "/which") -> tuple[int | None, str]:
        resp = http_request(self.server.port, "GET", path, timeout=5)
        text = resp.body.decode(errors="replace").strip()
        w, _, rest = text.partition(" ")
        return (int(w) if w.isdigit() else None), rest

    def checks(self) -> int:
        """This node's health-check count (its shared dict: every worker's checks)."""
        body = http_request(self.server.port, "GET", "/hc", timeout=5).body.decode().strip()
        return int(body) if body.isdigit() else -1

    def post(self, path: str, body: dict[str, Any]) -> str:
        resp = http_request(
            self.server.port, "POST", path, body=json.dumps(body).encode(), timeout=30
        )
        return resp.body.decode(errors="replace").strip()

    def configure_instance(self, name: str, conf: dict[str, Any]) -> str:
        return self.post("/configure", {"instance": name, "config": conf})

    def configure(self, conf: dict[str, Any]) -> str:
        return self.post("/configure", {"global": conf})

    def until_all(self, want: str, deadline: float, workers: int = 2) -> float | None:
        """Seconds until every worker answered `want` as its latest answer (fresh
        connections spread over the workers), or None at the deadline."""
        start = time.monotonic()
        seen: dict[int, bool] = {}
        while time.monotonic() - start < deadline:
            try:
                w, body = self.ask()
            except OSError:
                w, body = None, ""
            if w is not None:
                seen[w] = body == want
            if len(seen) >= workers and all(seen.values()):
                return time.monotonic() - start
            time.sleep(0.005)
        return None


def start_node(
    tmp: Path,
    consul_port: int,
    prefix: str,
    backends: dict[str, int],
    name: str = "node",
    workers: int = 2,
) -> Node:
    server = NginxServer(
        tmp / name,
        http_config=zedcup_http_config(consul_port, prefix, backends),
        config=NODE_CONFIG,
        workers=workers,
        error_log_level="info",
    )
    server.start()
    return Node(server, backends, prefix)


def new_prefix() -> str:
    return f"zt/{uuid.uuid4().hex[:8]}"


def wait_for(pred: Callable[[], Any], deadline: float, step: float = 0.02) -> tuple[Any, float]:
    """Polls pred until truthy: (value, seconds) or (None, deadline)."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        v = pred()
        if v:
            return v, time.monotonic() - start
        time.sleep(step)
    return None, deadline


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
