"""Real zedcup nodes for the Python tests of status, dashboard, metrics and nodes.

`Backends` is one nginx serving N ports, each answering its own name, with `/_break`
and `/_fix` (503 everywhere while broken), like the demo's. `start_node` starts an
nginx with zedcup (2 workers) whose locations are the public calls: `/` (handler),
`/proxy/` (balance), `/_status` (status_page) and `/metrics` (metrics). Everything on
random free ports; the Consul is the test session's (`make test` runs these tests on
dev-consul and again on a real Consul).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from zedctl.configfile import load_config_file
from zedctl.consulapi import ConsulKV, ConsulSettings
from zedctl.layout import Layout
from zedctl.ops import apply_plan, plan_apply
from zedctl.schema import Schema
from zedctl.testnginx.consul import ConsulEndpoint
from zedctl.testnginx.runner import NginxServer, PortPicker

T = TypeVar("T")

BACKEND_HTTP = """
    lua_shared_dict broken 64k;
    map $server_port $backend {{
{names}
    }}
    server {{
{listens}
        default_type text/plain;
        location = /_break {{ content_by_lua_block {{ ngx.shared.broken:set(ngx.var.backend, true) ngx.say("broken") }} }}
        location = /_fix {{ content_by_lua_block {{ ngx.shared.broken:delete(ngx.var.backend) ngx.say("fixed") }} }}
        location / {{
            content_by_lua_block {{
                if ngx.shared.broken:get(ngx.var.backend) then return ngx.exit(503) end
                ngx.say(ngx.var.backend)
            }}
        }}
    }}
"""  # noqa: E501

NODE_HTTP = """
    lua_shared_dict zedcup_cache 1m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_socket_log_errors off;
    init_by_lua_block {{
        assert(require("zedcup").init({{
            prefix = "{prefix}", node_name = "{name}",
            consul = {{ host = "{consul_host}", port = {consul_port}, token = "{token}" }},
        }}))
    }}
    init_worker_by_lua_block {{
        require("zedcup").run_workers()
    }}
    upstream zedcup_web {{
        server 0.0.0.1;
        balancer_by_lua_block {{
            local ok, err = require("zedcup").balance("{instance}")
            if not ok then return ngx.exit(502) end
        }}
        keepalive 16;
    }}
"""

NODE_CONFIG = """
    location / {{
        content_by_lua_block {{
            local handler, err = require("zedcup").create_handler("{instance}")
            if not handler then ngx.status = 503 ngx.say(err) return end
            local res
            res, err = handler:request({{ method = "GET", path = ngx.var.uri }})
            if not res then ngx.status = 502 ngx.say(err) return end
            ngx.status = res.status
            ngx.print(res:read_body())
            handler:set_keepalive()
        }}
    }}
    location /proxy/ {{
        proxy_pass http://zedcup_web/;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_next_upstream error timeout http_502 http_503 http_504;
        log_by_lua_block {{ require("zedcup").log() }}
    }}
    location = /_status {{
        content_by_lua_block {{ require("zedcup").status_page() }}
    }}
    location = /metrics {{
        content_by_lua_block {{ require("zedcup").metrics() }}
    }}
{extra}
"""


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float = 15.0, step: float = 0.05
) -> T:
    """Poll `check` until it returns a truthy value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


def get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, str, dict[str, str]]:
    """(status, body, headers) of a GET; status 0 when nothing answered."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, res.read().decode(errors="replace"), dict(res.headers.items())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace"), dict(err.headers.items())
    except OSError as err:
        return 0, str(err), {}


def status_json(node: NginxServer) -> dict[str, Any] | None:
    code, body, _ = get(node.url + "/_status?format=json")
    return json.loads(body) if code == 200 else None


def host_of(status: Mapping[str, Any], inst: str, pool: str, host: str) -> dict[str, Any] | None:
    for i in status.get("instances") or []:
        if i["name"] != inst:
            continue
        for p in i["pools"]:
            if p["name"] != pool:
                continue
            for h in p["hosts"]:
                if h["name"] == host:
                    return h
    return None


class Backends:
    """One nginx answering on `n` ports, each with its own name."""

    def __init__(self, root: Path, names: list[str], picker: PortPicker) -> None:
        self.names = names
        self.ports = dict(zip(names, picker.pick_many(len(names))))
        mapping = "\n".join(f"        {p} {n};" for n, p in self.ports.items())
        listens = "\n".join(f"        listen 127.0.0.1:{p};" for p in self.ports.values())
        self.server = NginxServer(
            root,
            http_config=BACKEND_HTTP.format(names=mapping, listens=listens),
            error_log_level="notice",
        )

    def start(self) -> Backends:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def set_broken(self, name: str, broken: bool) -> None:
        code, _, _ = get(self.url(name) + ("/_break" if broken else "/_fix"))
        assert code == 200


def start_node(
    root: Path,
    consul: ConsulEndpoint,
    prefix: str,
    name: str,
    instance: str = "web",
    extra_config: str = "",
    workers: int = 2,
    token: str | None = None,
) -> NginxServer:
    server = NginxServer(
        root,
        workers=workers,
        error_log_level="info",
        http_config=NODE_HTTP.format(
            prefix=prefix,
            name=name,
            consul_host=consul.host,
            consul_port=consul.port,
            token=token if token is not None else consul.token or "",
            instance=instance,
        ),
        config=NODE_CONFIG.format(instance=instance, extra=extra_config),
    )
    return server.start()


def configure(consul: ConsulEndpoint, prefix: str, document: Mapping[str, Any], tmp: Path) -> None:
    """What `zedctl configure FILE` does, through zedctl's library."""
    path = tmp / f"zedcup-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(dict(document)))
    schema = Schema.load()
    kv = ConsulKV(ConsulSettings(address=consul.url, token=consul.token))
    apply_plan(
        kv,
        plan_apply(kv, Layout.for_prefix(prefix), schema, load_config_file(schema, str(path))),
    )
