"""zedctl's operator actions as nginx acts on them: `pool down` forces failover to the next
pool, `host down` takes a host out, `up` gives them back, `apply` of a changed weight
keeps a down mark; the data plane's transitions show in `zedctl events`. Real nginx
with zedcup, real backends, the real `zedctl` binary, against dev-consul and the real
Consul.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from zedctl.testnginx.config import find_nginx
from zedctl.testnginx.consul import ConsulEndpoint
from zedctl.testnginx.runner import PortPicker
from zedctl_consuls import ZEDCTL, Consul, Lines, Zedctl, backends, operator_env
from zedcup_nodes import Backends, get, start_node, wait_for

CONFIG = """\
config: {{ healthcheck_interval: 0.5, host_revive_interval: 0.5 }}
instances:
  web:
    pools:
      - name: primary
        max_errors: 2
        error_timeout: 30
        healthcheck: {{ path: /, interval: 0.5, fall: 2, rise: 1 }}
        hosts:
          - {{ name: web01, host: 127.0.0.1, port: {web01}{weight} }}
          - {{ name: web02, host: 127.0.0.1, port: {web02} }}
      - name: dr
        hosts:
          - {{ name: dr01, host: 127.0.0.1, port: {dr01} }}
"""


@pytest.fixture(scope="module", params=["dev-consul", "consul"])
def consul(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Consul]:
    if find_nginx() is None:
        pytest.skip("needs an nginx with the Lua module")
    yield from backends(tmp_path_factory, request.param)


def _answers(url: str, n: int = 8) -> set[str]:
    return {get(url)[1].strip() for _ in range(n)}


def test_pool_and_host_holds_steer_traffic_and_transitions_are_events(
    consul: Consul, tmp_path: Path
) -> None:
    prefix = f"op/{uuid.uuid4()}"
    zed = Zedctl(operator_env(consul, prefix), tmp_path)
    picker = PortPicker()
    backend = Backends(tmp_path / "backends", ["web01", "web02", "dr01"], picker).start()
    host, port = consul.url.removeprefix("http://").rsplit(":", 1)
    endpoint = ConsulEndpoint(consul.url, host, int(port), token=consul.token)
    zed("apply", zed.file(CONFIG.format(weight="", **backend.ports)))
    node = start_node(tmp_path / "node", endpoint, prefix, "node-a")
    events = subprocess.Popen(
        [str(ZEDCTL), "events", "web", "--follow", "-o", "json", "-n", "1"],
        env=zed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = Lines(events.stdout)
    url = node.url + "/"
    try:
        # The follower has read the log once it shows the last past event (the apply).
        assert json.loads(lines.next(time.monotonic() + 30))["event"] == "apply"
        wait_for("balancing over the primary pool", lambda: _answers(url) == {"web01", "web02"})

        zed("pool", "down", "web", "primary", "--reason", "failover drill")
        wait_for("failover to dr", lambda: _answers(url) == {"dr01"}, timeout=5)
        assert _answers(node.url + "/proxy/") == {"dr01"}  # balancer_by_lua alike
        zed("pool", "up", "web", "primary")
        wait_for("primary back", lambda: _answers(url) == {"web01", "web02"}, timeout=5)

        zed("host", "down", "web", "primary", "web01", "--reason", "kernel update")
        wait_for("web01 out", lambda: _answers(url) == {"web02"}, timeout=5)
        zed("host", "up", "web", "primary", "web01")
        wait_for("web01 back", lambda: _answers(url) == {"web01", "web02"}, timeout=5)

        # web02 flaps: error counting marks it down (an event from the data plane) ...
        backend.set_broken("web02", True)
        wait_for("web02 marked down", lambda: _answers(url) == {"web01"}, timeout=10)

        def marked() -> bool:
            return any(k.endswith("/primary/web02/down") for k in consul.values(f"{prefix}/state"))

        # (the node sets web02 aside at once; the cluster-wide mark follows its sync)
        wait_for("web02 marked down in Consul", marked, timeout=10)
        # ... an apply that only changes web01's weight keeps that mark ...
        zed("apply", zed.file(CONFIG.format(weight=", weight: 2", **backend.ports)))
        assert marked()
        assert _answers(url) == {"web01"}
        # ... and once fixed, a passing check brings it back (another event).
        backend.set_broken("web02", False)

        deadline = time.monotonic() + 90
        seen: list[dict[str, object]] = []
        while not any(e["event"] == "host_up" and e.get("host") == "web02" for e in seen):
            seen.append(json.loads(lines.next(deadline)))
        kinds = [(e["event"], e.get("pool"), e.get("host")) for e in seen]
        assert kinds[:4] == [
            ("admin_pool_down", "primary", None),
            ("admin_pool_up", "primary", None),
            ("admin_host_down", "primary", "web01"),
            ("admin_host_up", "primary", "web01"),
        ], kinds
        down = next(e for e in seen if e["event"] == "host_down")
        assert down["host"] == "web02" and down["node"] == "node-a" and down.get("reason")
        up = next(e for e in seen if e["event"] == "host_up")
        assert up["node"] == "node-a" and up["reason"] == "1 passing health check(s)"
    finally:
        events.terminate()
        events.wait(timeout=10)
        node.stop()
        backend.stop()
