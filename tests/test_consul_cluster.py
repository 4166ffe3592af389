"""zedcup on a real Consul cluster: three servers on loopback (`-server -bootstrap-expect 3
-retry-join`, their own ports, data directories and `-node` names; one cluster for this
module) and nginx with two workers running zedcup, under a steady flow of requests.

zedcup is given one Consul address: a Consul client agent joined to the cluster, the way
Consul is deployed (every application node runs a client agent on localhost and talks
only to it; the agent forwards to the servers and follows the leader). Any server can
then die or restart without zedcup's one address going away. Pointing zedcup straight at
one server behaves the same until that server is down, which is a Consul outage for
that node (t/29-outage.t).

Each scenario prints its figures (run with `-s` to see them): client errors, when Consul
took writes again, when a change made afterwards reached every worker, the longest pause
of health checks, whether the node kept its session and its health-check lock.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from zedctl.configfile import check_document
from zedctl.consulapi import ConsulKV, ConsulSettings
from zedctl.devconsul.testing import RawConsul
from zedctl.errors import ZedctlError
from zedctl.layout import Layout
from zedctl.ops import apply_plan, plan_apply
from zedctl.schema import Schema
from zedctl.testnginx import NginxServer, PortPicker, http_request
from zedctl.testnginx.consul import ConsulAgent, ConsulCluster, ConsulNotFound, find_consul

SCHEMA = Schema.load()
SESSION_TTL = 10  # Consul's shortest; invalidation comes by 2 x TTL
PROPAGATION_LIMIT = 2.0  # s from a write Consul took to every worker acting on it


@dataclass
class Consuls:
    cluster: ConsulCluster
    client: ConsulAgent

    def start_client(self) -> None:
        self.client.join = [a.serf_address for a in self.cluster.agents]
        self.client.start()


@pytest.fixture(scope="module")
def consuls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consuls]:
    try:
        binary = find_consul()
    except ConsulNotFound as err:
        pytest.skip(f"no real Consul for the cluster tests: {err}")
    root = tmp_path_factory.mktemp("consul-cluster")
    picker = PortPicker()
    cluster = ConsulCluster(root, 3, binary=binary, picker=picker, name="server")
    client = ConsulAgent(root / "client", binary=binary, picker=picker, mode="client")
    both = Consuls(cluster, client)
    try:
        t0 = time.monotonic()
        cluster.start()
        both.start_client()
        print(
            f"\n[cluster] 3 servers and a client agent up, leader elected in "
            f"{time.monotonic() - t0:.1f}s"
        )
        yield both
    finally:
        client.stop()
        cluster.stop()


HTTP_CONFIG = """
    lua_shared_dict zedcup_cache 4m;
    lua_shared_dict zedcup_locks 1m;
    lua_shared_dict zedcup_ipc 1m;
    lua_shared_dict hits 1m;
    lua_socket_log_errors off;
    init_by_lua_block {
        assert(require("zedcup").init({
            prefix = "%(prefix)s", node_name = "node1",
            consul = { host = "127.0.0.1", port = %(consul_port)d },
        }))
    }
    init_worker_by_lua_block { require("zedcup").run_workers() }
    server {
        listen 127.0.0.1:%(a)d;
        location = /health {
            content_by_lua_block { ngx.shared.hits:rpush("health", ngx.now()) }
        }
        location / { return 200 "a"; }
    }
    server {
        listen 127.0.0.1:%(b)d;
        location = /health {
            content_by_lua_block { ngx.shared.hits:rpush("health", ngx.now()) }
        }
        location / { return 200 "b"; }
    }
"""

CONFIG = """
    location = /t {
        content_by_lua_block {
            local h, err = require("zedcup").create_handler("app")
            if not h then
                ngx.status = 503
                return ngx.say(err)
            end
            local res
            res, err = h:request({ path = "/" })
            if not res then
                ngx.status = 502
                return ngx.say(err)
            end
            ngx.header["X-Worker"] = ngx.worker.pid()
            ngx.print(res:read_body())
        }
    }
    location = /_health_hits {
        content_by_lua_block {
            local hits = ngx.shared.hits
            local out = {}
            for i = 0, hits:llen("health") - 1 do
                out[#out + 1] = hits:lpop("health")
            end
            for _, t in ipairs(out) do hits:rpush("health", t) end
            ngx.print(require("cjson").encode(out))
        }
    }
"""


def instance(port: int, name: str) -> dict[str, Any]:
    return {
        "healthcheck": {"path": "/health", "interval": 0.5},
        "pools": [{"name": "p", "hosts": [{"name": name, "host": "127.0.0.1", "port": port}]}],
    }


def write_config(url: str, prefix: str, document: dict[str, Any], deadline: float) -> float:
    """Write a config document (`config:`, `instances:`) as zedctl does, straight to
    Consul (not through the node under test), retried until Consul takes it; answers
    when it did (monotonic)."""
    config, problems = check_document(SCHEMA, document)
    assert not problems, problems
    kv = ConsulKV(ConsulSettings(address=url, timeout=5))
    layout = Layout.for_prefix(prefix)
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            apply_plan(kv, plan_apply(kv, layout, SCHEMA, config))
            return time.monotonic()
        except ZedctlError as err:
            last = err
        time.sleep(0.05)
    raise AssertionError(f"Consul took no write before the deadline: {last}")


@dataclass
class Node:
    """nginx with zedcup, its two backends (`a`, `b`) and the Consul it was given."""

    server: NginxServer
    prefix: str
    a: int
    b: int
    consul: RawConsul

    def configure(self, document: dict[str, Any], deadline: float) -> float:
        return write_config(self.consul.url, self.prefix, document, deadline)

    def serve(self, backend: str, deadline: float) -> float:
        """Configure instance `app` with the one host `backend`; answers when written."""
        port = {"a": self.a, "b": self.b}[backend]
        return self.configure({"instances": {"app": instance(port, backend)}}, deadline)

    def every_worker_serves(self, backend: str, since: float, limit: float) -> float:
        """Seconds from `since` until every worker answered from `backend` (requests on
        fresh connections spread over the workers); AssertionError after `limit`."""
        workers = set(self.server.worker_pids())
        seen: dict[int, float] = {}
        deadline = since + limit
        while time.monotonic() < deadline:
            resp = http_request(self.server.port, uri="/t", timeout=2)
            pid = int(resp.header("X-Worker") or 0)
            if resp.status == 200 and resp.text == backend:
                seen.setdefault(pid, time.monotonic())
            else:
                seen.pop(pid, None)
            if workers <= seen.keys():
                return max(seen[w] for w in workers) - since
        raise AssertionError(
            f"after {limit}s, workers answering {backend!r}: {sorted(seen)} of {sorted(workers)}"
        )

    def session(self) -> str | None:
        """The session holding the node's health-check lock (`<prefix>/locks/healthcheck`)."""
        resp = self.consul.get(f"/v1/kv/{self.prefix}/locks/healthcheck")
        if resp.status_code != 200:
            return None
        return resp.json()[0].get("Session")

    def session_alive(self, sid: str) -> bool:
        resp = self.consul.get(f"/v1/session/info/{sid}")
        return resp.status_code == 200 and bool(resp.json())

    def health_hits(self) -> list[float]:
        return [
            float(t) for t in json.loads(http_request(self.server.port, uri="/_health_hits").text)
        ]


@dataclass
class Load:
    """Requests to /t one after the other from a thread until stopped; every answer
    that is not a 200 from a backend is a client-visible error."""

    port: int
    answers: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            resp = http_request(self.port, uri="/t", timeout=5)
            self.answers += 1
            if resp.status != 200 or resp.text not in ("a", "b") or resp.problem:
                self.errors.append(f"{resp.status} {resp.text!r} {resp.problem or ''}".strip())
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


@pytest.fixture
def node(consuls: Consuls, tmp_path: Path) -> Iterator[Node]:
    consuls.cluster.wait_healthy(60)  # whatever the test before did to it
    picker = PortPicker()
    a, b = picker.pick(), picker.pick()
    prefix = f"zc/{uuid.uuid4().hex[:8]}"
    # short intervals, before the node starts (a session's TTL is fixed when it is made)
    write_config(
        consuls.client.url,
        prefix,
        {
            "config": {
                "session_ttl": SESSION_TTL,
                "session_renew_interval": 1,
                "healthcheck_interval": 0.5,
            }
        },
        time.monotonic() + 30,
    )
    server = NginxServer(
        tmp_path / "nginx",
        http_config=HTTP_CONFIG
        % {"prefix": prefix, "consul_port": consuls.client.http_port, "a": a, "b": b},
        config=CONFIG,
        workers=2,
    ).start(picker)
    raw = RawConsul(consuls.client.url)
    made = Node(server, prefix, a, b, raw)
    try:
        made.serve("a", time.monotonic() + 30)
        made.every_worker_serves("a", time.monotonic(), 10)
        # the node checks its backends: it holds the health-check lock
        deadline = time.monotonic() + 15
        while made.session() is None or not made.health_hits():
            assert time.monotonic() < deadline, "the node never took the health-check lock"
            time.sleep(0.1)
        yield made
    finally:
        server.stop()
        raw.delete(f"/v1/kv/{prefix}/?recurse")
        raw.close()


def longest_gap(times: list[float], start: float, end: float) -> float:
    inside = [t for t in times if start <= t <= end]
    points = [start, *inside, end]
    return max(b - a for a, b in zip(points, points[1:]))


def wall_to_monotonic() -> Callable[[float], float]:
    offset = time.time() - time.monotonic()
    return lambda wall: wall - offset


def test_leader_killed_under_load(consuls: Consuls, node: Node) -> None:
    sid = node.session()
    assert sid
    load = Load(node.server.port).start()
    time.sleep(1)
    leader = consuls.cluster.leader()
    assert leader is not None
    t_kill = time.monotonic()
    leader.kill()
    try:
        # the change is written as soon as Consul takes writes again
        t_write = node.serve("b", t_kill + 30)
        new_leader = consuls.cluster.wait_leader(30)
        seen = node.every_worker_serves("b", t_write, PROPAGATION_LIMIT)
        leader.start(wait=False)  # it rejoins while the session is watched
        # the node's session outlives the election by more than Consul's 2 x TTL: it
        # was renewed through the new leader (else Consul would have invalidated it)
        t_check = t_kill + 2 * SESSION_TTL + 2
        while time.monotonic() < t_check:
            time.sleep(0.2)
        kept_session = node.session() == sid and node.session_alive(sid)
        to_mono = wall_to_monotonic()
        hits = [to_mono(t) for t in node.health_hits()]
        gap = longest_gap(hits, t_kill, time.monotonic())
    finally:
        load.stop()
        if not leader.running():
            leader.start(wait=False)
    consuls.cluster.wait_healthy(60)
    print(
        f"\n[leader killed] {load.answers} requests, {len(load.errors)} errors; "
        f"new leader {new_leader.node}; Consul took writes again after {t_write - t_kill:.2f}s; "
        f"the change made then reached every worker in {seen:.2f}s; "
        f"health checks paused at most {gap:.2f}s (interval 0.5s); "
        f"session and health-check lock kept: {kept_session}"
    )
    assert load.errors == [], load.errors[:10]
    assert load.answers > 100
    assert kept_session
    assert node.session() == sid  # no second checker, no new session
    assert gap < SESSION_TTL  # checks resumed without a reload or a new session


def test_follower_restarted_under_load(consuls: Consuls, node: Node) -> None:
    leader = consuls.cluster.leader()
    follower = next(a for a in consuls.cluster.agents if a is not leader)
    load = Load(node.server.port).start()
    time.sleep(0.5)
    t_stop = time.monotonic()
    follower.stop()
    try:
        t_write = node.serve("b", t_stop + 30)
        seen_down = node.every_worker_serves("b", t_write, PROPAGATION_LIMIT)
        follower.start(wait=False)
        consuls.cluster.wait_healthy(60)
        t_back = time.monotonic()
        t_write2 = node.serve("a", t_back + 30)
        seen_back = node.every_worker_serves("a", t_write2, PROPAGATION_LIMIT)
    finally:
        load.stop()
    print(
        f"\n[follower restarted] {load.answers} requests, {len(load.errors)} errors; "
        f"with the follower down, a change reached every worker in {seen_down:.2f}s; "
        f"it rejoined after {t_back - t_stop:.2f}s and the next change took {seen_back:.2f}s"
    )
    assert load.errors == [], load.errors[:10]
    assert load.answers > 50


def test_cluster_rebuilt_with_a_lower_index(consuls: Consuls, node: Node) -> None:
    for i in range(30):  # an index well above what a rebuilt cluster starts from
        node.consul.put(f"/v1/kv/{node.prefix}/pad/{i}", data=b"x")
    index_before = int(node.consul.get(f"/v1/kv/{node.prefix}/?recurse").headers["X-Consul-Index"])
    load = Load(node.server.port).start()
    t_down = time.monotonic()
    try:
        # the whole cluster (and the client agent) rebuilt from nothing: empty, index reset
        consuls.client.stop()
        consuls.cluster.stop()
        consuls.client.wipe()
        consuls.cluster.wipe()
        consuls.cluster.start()
        consuls.start_client()
        t_back = time.monotonic()
        # the operator restores the instance, then changes it
        node.serve("a", t_back + 30)
        index_after = int(
            node.consul.get(f"/v1/kv/{node.prefix}/?recurse").headers["X-Consul-Index"]
        )
        t_write = node.serve("b", t_back + 30)
        seen = node.every_worker_serves("b", t_write, PROPAGATION_LIMIT)
    finally:
        load.stop()
    print(
        f"\n[cluster rebuilt] {load.answers} requests, {len(load.errors)} errors; "
        f"Consul away {t_back - t_down:.1f}s, index {index_before} -> {index_after}; "
        f"a change made afterwards reached every worker in {seen:.2f}s"
    )
    assert index_after < index_before
    assert load.errors == [], load.errors[:10]  # the node kept serving while Consul was away
