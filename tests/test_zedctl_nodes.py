"""`zedctl nodes` and the cluster part of `zedctl status`, through the real zedctl binary,
against three real zedcup nodes sharing the session's Consul: one stays, one is killed with
SIGKILL, one stops cleanly. Records and sessions written by hand stand for a lock holder
that is gone and for a node that sees a host differently."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from zedctl.devconsul.testing import RawConsul
from zedctl.testnginx.consul import ConsulEndpoint
from zedctl.testnginx.runner import PortPicker
from zedcup_nodes import Backends, configure, start_node, wait_for

ZEDCTL = Path(sys.executable).with_name("zedctl")
SESSION_TTL = 10  # the shortest Consul allows


def zedctl(consul: ConsulEndpoint, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONSUL_HTTP_ADDR": consul.url, "ZEDCUP_PREFIX": prefix}
    if consul.token:
        env["CONSUL_HTTP_TOKEN"] = consul.token
    res = subprocess.run(
        [str(ZEDCTL), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    return res


def nodes_json(consul: ConsulEndpoint, prefix: str) -> dict[str, Any]:
    return json.loads(zedctl(consul, prefix, "nodes", "-o", "json").stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in report["nodes"]}


def record_index(raw: RawConsul, prefix: str, name: str) -> int:
    return int(raw.get(f"/v1/kv/{prefix}/nodes/{name}").json()[0]["ModifyIndex"])


def session(raw: RawConsul, name: str) -> str:
    # a short lock-delay: once this session goes, a node may take its lock at once
    body = {"Name": name, "TTL": "60s", "LockDelay": "1s"}
    resp = raw.put("/v1/session/create", data=json.dumps(body))
    return str(resp.json()["ID"])


def test_nodes_live_killed_stopped_and_a_gone_lock_holder(
    consul: ConsulEndpoint, raw_consul: RawConsul, tmp_path: Path
) -> None:
    prefix = f"obs-{uuid.uuid4().hex[:12]}"
    backends = Backends(tmp_path / "backends", ["web01"], PortPicker()).start()
    phantom = session(raw_consul, "phantom")
    observer = session(raw_consul, "observer")
    nodes = {}
    try:
        configure(
            consul,
            prefix,
            {
                "config": {
                    "healthcheck_interval": 0.2,
                    "session_ttl": SESSION_TTL,
                    "session_renew_interval": 1,
                },
                "instances": {
                    "web": {
                        "pools": [
                            {
                                "name": "primary",
                                "hosts": [
                                    {
                                        "name": "web01",
                                        "host": "127.0.0.1",
                                        "port": backends.ports["web01"],
                                    }
                                ],
                            }
                        ]
                    }
                },
            },
            tmp_path,
        )
        # a lock holder no live node accounts for, and a record that sees web01 down
        lock = f"/v1/kv/{prefix}/locks/healthcheck?acquire={phantom}"
        assert raw_consul.put(lock, data="phantom-node").json() is True
        record = {"name": "observer-x", "version": "0.1.0", "down": ["web/primary/web01"]}
        url = f"/v1/kv/{prefix}/nodes/observer-x?acquire={observer}"
        assert raw_consul.put(url, data=json.dumps(record)).json() is True

        for name in ("node-a", "node-b", "node-c"):
            nodes[name] = start_node(tmp_path / name, consul, prefix, name)

        def all_live() -> dict[str, Any] | None:
            report = nodes_json(consul, prefix)
            live = {n["name"] for n in report["nodes"] if n["live"]}
            return report if {"node-a", "node-b", "node-c", "observer-x"} <= live else None

        report = wait_for("every node's record", all_live, timeout=20, step=0.3)
        written_at = time.monotonic()
        indexes = {name: record_index(raw_consul, prefix, name) for name in nodes}
        a = by_name(report)["node-a"]
        assert a["version"] == "0.1.0" and a["configs"]["web"]["applied"] and a["down"] == []
        assert a["record_age"] is not None and a["consul"]["reachable"] is True
        assert report["session_ttl"] == SESSION_TTL
        lock_info = report["healthcheck_lock"]
        assert lock_info["holder"] == "phantom-node" and "gone" in lock_info["problem"]
        table = zedctl(consul, prefix, "nodes").stdout
        assert "GONE HOLDER" in table and "node-b" in table and "live" in table

        status = zedctl(consul, prefix, "status", "web").stdout
        row = next(line for line in status.splitlines() if line.split()[:2] == ["primary", "web01"])
        assert "SEEN DIFFERENTLY BY" in status and "observer-x: down" in row
        (host,) = json.loads(zedctl(consul, prefix, "status", "-o", "json").stdout)["instances"][0][
            "hosts"
        ]
        assert host["state"] == "up" and host["seen_differently"] == ["observer-x: down"]

        # the phantom goes: a real node takes the lock, nothing is flagged
        raw_consul.put(f"/v1/session/destroy/{phantom}")
        raw_consul.put(f"/v1/session/destroy/{observer}")

        def real_holder() -> dict[str, Any] | None:
            lk = nodes_json(consul, prefix)["healthcheck_lock"]
            return lk if lk["holder"] in nodes and not lk["problem"] else None

        holder = wait_for("a real node holding the lock", real_holder, timeout=20, step=0.3)[
            "holder"
        ]
        wait_for(
            "the holder's record to say so",
            lambda: by_name(nodes_json(consul, prefix))[holder]["checker"],
            timeout=12,
            step=0.3,
        )
        # records are rewritten on change only: the others' are as they were after more than
        # one publishing interval (5 s) of watching them (an observation window, not a wait)
        time.sleep(max(0.0, written_at + 6 - time.monotonic()))
        for name in nodes:
            if name != holder:
                assert record_index(raw_consul, prefix, name) == indexes[name], name

        # node-b dies (SIGKILL to master and worker), node-c stops cleanly (SIGQUIT)
        killed, stopped = nodes["node-b"], nodes["node-c"]
        assert killed.proc is not None and stopped.proc is not None
        os.killpg(killed.proc.pid, signal.SIGKILL)
        stopped.proc.send_signal(signal.SIGQUIT)
        stopped.proc.wait(timeout=10)
        t0 = time.monotonic()

        def gone(name: str) -> bool:
            n = by_name(nodes_json(consul, prefix)).get(name)
            return n is None or not n["live"]

        # a clean stop destroys the session at once: its record goes with it
        wait_for("node-c gone", lambda: gone("node-c"), timeout=3, step=0.2)
        stopped_after = time.monotonic() - t0
        # a killed node's session is the liveness bound: gone within its TTL (up to twice
        # that on a real Consul)
        wait_for("node-b gone", lambda: gone("node-b"), timeout=2 * SESSION_TTL + 15, step=0.3)
        killed_after = time.monotonic() - t0
        print(
            f"zedctl nodes: clean stop gone after {stopped_after:.1f}s, "
            f"SIGKILL after {killed_after:.1f}s"
        )
        final = nodes_json(consul, prefix)
        assert by_name(final)["node-a"]["live"]
        lk = final["healthcheck_lock"]
        assert lk["holder"] in (None, "node-a") and not lk["problem"]
    finally:
        for server in nodes.values():
            server.stop()
        backends.stop()
        raw_consul.put(f"/v1/session/destroy/{phantom}")
        raw_consul.put(f"/v1/session/destroy/{observer}")
        raw_consul.delete(f"/v1/kv/{prefix}/?recurse")
