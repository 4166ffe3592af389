"""The data plane against a Consul that restarts, comes back empty, hangs, and nodes that stop.

Real nginx (two workers), real backends, and both Consuls: the embedded dev-consul
(restarted without --data) and the real agent (`consul agent -dev`, restarted: it keeps
nothing). Bounds here are generous (the machine is shared); bench/bench_resilience.py
prints the measured times.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from dataplane_cluster import (
    ConsulProc,
    Node,
    instance,
    new_prefix,
    real_consul_binary,
    start_node,
    wait_for,
)
from zedctl.devconsul.testing import free_port
from zedctl.testnginx import NginxNotFound, find_nginx

try:
    find_nginx()
except NginxNotFound as exc:  # pragma: no cover - depends on the machine
    pytest.skip(f"no nginx with Lua: {exc}", allow_module_level=True)

NO_REAL = pytest.mark.skipif(
    real_consul_binary() is None, reason="no real Consul (make deps links one at .tools/bin/consul)"
)
KINDS = ["dev-consul", pytest.param("consul", marks=NO_REAL)]


@pytest.fixture(params=KINDS)
def consul(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConsulProc]:
    c = ConsulProc(request.param, workdir=tmp_path).start()
    yield c
    c.stop()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for n in started:
        n.server.stop()


def test_restart_with_lower_index_then_a_change_reaches_every_worker(
    consul: ConsulProc, nodes: list[Node], tmp_path: Path
) -> None:
    a, b = free_port(), free_port()
    node = start_node(tmp_path, consul.port, new_prefix(), {"A": a, "B": b})
    nodes.append(node)
    # push the index up, so that the restarted Consul's is lower
    assert node.configure({"watcher_interval": 10}) == "ok"
    for _ in range(5):
        assert node.configure_instance("other", instance(a)) == "ok"
    assert node.configure_instance("inst", instance(a)) == "ok"
    assert node.until_all("A", 10) is not None
    before = consul.index()

    consul.restart_empty()
    assert consul.index() < before
    # the node keeps serving what it has while Consul is empty
    assert node.until_all("A", 5) is not None
    # a change written straight to the new Consul, as zedctl would (not through this node)
    base = f"{node.prefix}/instances/inst/pools/1"
    for key, value in (("name", "p"), ("hosts/1/host", "127.0.0.1"), ("hosts/1/port", str(b))):
        consul.put(f"{base}/{key}", value)
    took = node.until_all("B", 10)
    assert took is not None and took < 5, took


def test_consul_back_empty_keeps_the_instances_and_says_so(
    consul: ConsulProc, nodes: list[Node], tmp_path: Path
) -> None:
    a, b = free_port(), free_port()
    node = start_node(tmp_path, consul.port, new_prefix(), {"A": a, "B": b})
    nodes.append(node)
    assert node.configure({"healthcheck_interval": 1}) == "ok"
    for _ in range(3):
        assert node.configure_instance("inst", instance(a)) == "ok"
    assert node.until_all("A", 10) is not None
    mark = node.server.error_log.mark()

    consul.restart_empty()
    wanted = "keeping the 1 instance(s) this node serves (inst)"
    wait_for(lambda: wanted in node.server.error_log.read(mark), 10)
    log = node.server.error_log.read(mark)
    assert (
        "Consul came back empty" in log
        and "keeping the 1 instance(s) this node serves (inst)" in log
    )
    # the global config (its intervals) is kept too, not reset to the defaults
    kept = "keeping this node's global config"
    wait_for(lambda: kept in node.server.error_log.read(mark), 5)
    assert kept in node.server.error_log.read(mark)
    # still served, on every worker, for a while
    for _ in range(40):
        assert node.ask()[1] == "A"
    # a deliberate write afterwards is followed again
    assert node.configure_instance("inst", instance(b)) == "ok"
    assert node.until_all("B", 5) is not None


def test_quit_of_the_checker_node_hands_the_lock_over_at_once(
    consul: ConsulProc, nodes: list[Node], tmp_path: Path
) -> None:
    a = free_port()
    prefix = new_prefix()
    n1 = start_node(tmp_path, consul.port, prefix, {"A": a}, name="n1")
    nodes.append(n1)
    assert n1.configure({"healthcheck_interval": 1}) == "ok"
    assert n1.configure_instance("inst", instance(a, healthcheck={"interval": 1})) == "ok"
    lock = f"{prefix}/locks/healthcheck"
    held, _ = wait_for(lambda: (consul.get(lock) or {}).get("Session"), 10)
    assert held
    n2 = start_node(tmp_path, consul.port, prefix, {"A": free_port()}, name="n2")
    nodes.append(n2)
    first = consul.get(lock)
    assert first and first["Session"] == held
    registry = f"{prefix}/registry/{held}"
    assert consul.get(registry)

    # reload of the holder: same session keeps the lock, no second checker
    assert n1.server.proc
    old_workers = set(n1.server.worker_pids())
    os.kill(n1.server.proc.pid, signal.SIGHUP)
    wait_for(lambda: not (set(n1.server.worker_pids()) & old_workers), 10)
    e = consul.get(lock)
    assert e and e["Session"] == held
    # no old worker destroyed the session on its way out (the registry entry would go with it)
    reg = consul.get(registry)
    assert reg and reg["Session"] == held
    # the reloaded node goes on checking (interval 1 s); the other node does not check
    before = n1.checks()
    more, _ = wait_for(lambda: n1.checks() >= before + 2, 10)
    assert more, "no checks after the reload"
    assert n2.checks() == 0

    t0 = time.monotonic()
    os.kill(n1.server.proc.pid, signal.SIGQUIT)
    other, took = wait_for(
        lambda: (
            (e := consul.get(lock)) and e.get("Session") and e["Session"] != held and e["Value"]
        ),
        10,
    )
    assert other, "no takeover"
    assert took < 2.5, took
    # the stopped node's registry entry went with its session
    # (released first, so that the takeover has no lock-delay; destroyed right after)
    gone, _ = wait_for(lambda: consul.get(registry) is None, 5)
    assert gone
    assert time.monotonic() - t0 < 10


def node_sessions(consul: ConsulProc, prefix: str) -> list[dict[str, Any]]:
    """The sessions holding the node registry's entries, as Consul reports them."""
    r = requests.get(f"{consul.url}/v1/kv/{prefix}/registry/?recurse", timeout=5)
    if r.status_code == 404:
        return []
    r.raise_for_status()
    out = []
    for e in r.json():
        if e.get("Session"):
            info = requests.get(f"{consul.url}/v1/session/info/{e['Session']}", timeout=5).json()
            out.extend(info or [])
    return out


def test_session_ttl_fits_session_ttl_and_only_the_ttl_ends_it(
    consul: ConsulProc, nodes: list[Node], tmp_path: Path
) -> None:
    prefix = new_prefix()
    # the global config is in Consul before the node starts: its first session has its TTL
    consul.put(f"{prefix}/config/session_ttl", "24")
    consul.put(f"{prefix}/config/session_renew_interval", "1")
    node = start_node(tmp_path, consul.port, prefix, {"A": free_port()})
    nodes.append(node)
    found, _ = wait_for(lambda: node_sessions(consul, prefix), 15)
    assert found and len(found) == 1, found
    first = found[0]
    # Consul ends a lapsed session up to 2 x TTL after its last renewal, then holds its
    # locks for the lock delay: 2 x 10.5 s + 1 s + 2 s to take over = session_ttl (24 s)
    assert (first["TTL"], first["LockDelay"], first["Behavior"]) == ("10.5s", 10**9, "delete")
    # no health checks (Consul's default is serfHealth): the TTL alone ends it
    assert not first.get("NodeChecks") and not first.get("Checks"), first

    # a changed session_ttl replaces the session at its next renewal (every 1 s)
    assert node.configure({"session_ttl": 30}) == "ok"
    replaced, _ = wait_for(
        lambda: [s for s in node_sessions(consul, prefix) if s["ID"] != first["ID"]], 15
    )
    assert replaced and replaced[0]["TTL"] == "13.5s", replaced
    assert not replaced[0].get("NodeChecks") and not replaced[0].get("Checks"), replaced
    # the old one is destroyed (its registry entry went with it)
    gone, _ = wait_for(
        lambda: not requests.get(f"{consul.url}/v1/session/info/{first['ID']}", timeout=5).json(),
        10,
    )
    assert gone
    assert [s["ID"] for s in node_sessions(consul, prefix)] == [replaced[0]["ID"]]
