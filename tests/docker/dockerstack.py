"""The compose stack under test, seen from the test process: containers by service,
their addresses, Consul's view (leader, health-check lock), the nodes' view (/_status),
their logs, and load from Python threads. Traffic goes only to the containers' addresses.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dockerengine import Engine

CONSULS = ("consul1", "consul2", "consul3")
NODES = ("node1", "node2")
BACKENDS = ("web01", "web02", "dr01")
PREFIX = "zedcup"


def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """(status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:
            return res.status, res.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (OSError, ValueError) as e:
        return 0, str(e)


def wait_for(what: str, check: Callable[[], Any], deadline_s: float, pause: float = 0.1) -> float:
    """Poll `check` until it returns something true; the seconds it took. Fails with `what`."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < deadline_s:
        last = check()
        if last:
            return time.monotonic() - started
        time.sleep(pause)
    raise AssertionError(f"{what}: not within {deadline_s} s (last: {last!r})")


class Cluster:
    def __init__(self, engine: Engine, project: str) -> None:
        self.engine = engine
        self.project = project

    # -- containers --------------------------------------------------------------------

    def container(self, service: str) -> str:
        out = self.engine.docker(
            "ps", "-aq",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout.split()  # fmt: skip
        assert len(out) == 1, f"{service}: expected one container, got {out}"
        return out[0]

    def network(self, name: str) -> str:
        out = self.engine.docker(
            "network", "ls", "-q",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.network={name}",
        ).stdout.split()  # fmt: skip
        assert len(out) == 1, f"network {name}: expected one, got {out}"
        return out[0]

    def inspect(self, service: str) -> dict[str, Any]:
        return json.loads(self.engine.docker("inspect", self.container(service)).stdout)[0]

    def ip(self, service: str, network: str) -> str:
        for name, net in self.inspect(service)["NetworkSettings"]["Networks"].items():
            if name.endswith(f"_{network}") and net.get("IPAddress"):
                return net["IPAddress"]
        raise AssertionError(f"{service} has no address on network {network}")

    def docker(self, *args: str, **kw: Any):
        return self.engine.docker(*args, **kw)

    def kill(self, service: str) -> None:
        self.docker("kill", self.container(service))

    def start(self, service: str) -> None:
        self.docker("start", self.container(service))

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return state.get("Health", {}).get("Status", state["Status"])

    def logs(self, service: str) -> str:
        proc = self.docker("logs", self.container(service), timeout=30)
        return proc.stdout + proc.stderr

    def events(self, event: str, target: str) -> int:
        """How many times `event` (host_down / host_up) for `target` (inst/pool/host) was
        logged by all nodes together."""
        line = f"zedcup event: {event} {target}"
        return sum(self.logs(node).count(line) for node in NODES)

    # -- the nodes ---------------------------------------------------------------------

    def node_url(self, node: str, path: str = "/", port: int = 8080) -> str:
        return f"http://{self.ip(node, 'backends')}:{port}{path}"

    def status(self, node: str, instance: str = "demo") -> dict[str, Any] | None:
        """`instance` as `node` sees it, from its zedcup.status_page() JSON:
        {"pools": {pool: {host: state}}, "weights": {"pool/host": weight}}."""
        code, body = http_get(self.node_url(node, "/_status?format=json"), timeout=2)
        if code != 200:
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        for inst in doc.get("instances", []):
            if inst.get("name") == instance:
                pools = {
                    p["name"]: {h["name"]: h["state"] for h in p["hosts"]} for p in inst["pools"]
                }
                weights = {
                    f"{p['name']}/{h['name']}": h.get("weight")
                    for p in inst["pools"]
                    for h in p["hosts"]
                }
                return {"pools": pools, "weights": weights}
        return {"pools": {}, "weights": {}}

    def host_state(self, node: str, pool: str, host: str) -> str | None:
        st = self.status(node)
        return st and st.get("pools", {}).get(pool, {}).get(host)

    def weight(self, node: str, pool: str, host: str) -> int | None:
        """The host's weight in the config `node` serves with."""
        st = self.status(node)
        return st and st.get("weights", {}).get(f"{pool}/{host}")

    # -- Consul ------------------------------------------------------------------------

    def consul_url(self, server: str) -> str:
        return f"http://{self.ip(server, 'consul')}:8500"

    def live_consuls(self) -> list[str]:
        return [s for s in CONSULS if self.inspect(s)["State"]["Running"]]

    def consul_get(self, path: str) -> tuple[int, str]:
        """GET from the first live server that answers."""
        last = (0, "no live Consul server")
        for server in self.live_consuls():
            last = http_get(self.consul_url(server) + path, timeout=3)
            if last[0] in (200, 404):
                return last
        return last

    def leader(self, servers: tuple[str, ...] | list[str] | None = None) -> str | None:
        """The leader's service name, as `servers` (default: the live ones) all see it."""
        names = {}
        for s in CONSULS:
            with contextlib.suppress(AssertionError):
                names[self.ip(s, "consul")] = s
        seen = set()
        for server in servers or self.live_consuls():
            code, body = http_get(self.consul_url(server) + "/v1/status/leader", timeout=2)
            addr = json.loads(body) if code == 200 else ""
            seen.add(names.get(addr.rsplit(":", 1)[0]) if addr else None)
        return seen.pop() if len(seen) == 1 else None

    def checker(self) -> str | None:
        """The node (service name) holding the health-check lock, per Consul."""
        code, body = self.consul_get(f"/v1/kv/{PREFIX}/locks/healthcheck")
        if code != 200:
            return None
        entry = json.loads(body)[0]
        if not entry.get("Session"):
            return None
        value = base64.b64decode(entry.get("Value") or "").decode()
        return value.split(":", 1)[0] or None

    def checker_session_ttl(self) -> float | None:
        """The TTL (seconds) of the session holding the health-check lock, as Consul has it."""
        code, body = self.consul_get(f"/v1/kv/{PREFIX}/locks/healthcheck")
        session = json.loads(body)[0].get("Session") if code == 200 else None
        if not session:
            return None
        code, body = self.consul_get(f"/v1/session/info/{session}")
        info = json.loads(body) if code == 200 else None
        ttl = info[0].get("TTL", "") if info else ""
        return float(ttl[:-1]) if ttl.endswith("s") and ttl[:-1] else None

    def zedctl(self, *args: str, timeout: float = 30) -> str:
        """zedctl in the image (a one-off container on the Consul network)."""
        server = self.live_consuls()[0]
        proc = self.docker(
            "run", "--rm", "--network", self.network("consul"), "--entrypoint", "zedctl",
            "zedcup", "--consul", self.consul_url(server), *args,
            timeout=timeout,
        )  # fmt: skip
        return proc.stdout

    # -- readiness ---------------------------------------------------------------------

    def wait_ready(self, deadline_s: float) -> None:
        def all_healthy() -> bool:
            services = (*CONSULS, *NODES, *BACKENDS)
            return all(self.health(s) == "healthy" for s in services)

        wait_for("every container healthy", all_healthy, deadline_s, pause=0.5)

        def configured() -> bool:
            state = self.inspect("configure")["State"]
            assert state["Status"] != "exited" or state["ExitCode"] == 0, self.logs("configure")
            return state["Status"] == "exited"

        wait_for("the configure service applied the demo config", configured, deadline_s, 0.5)
        for node in NODES:
            wait_for(
                f"{node} serves the demo",
                lambda node=node: http_get(self.node_url(node))[1].strip() in ("web01", "web02"),
                30,
            )


@dataclass
class Load:
    """Clients in threads, each looping GETs over `urls` at about `rate` requests per
    second (a new connection each); every answer that is not 200 with a body `ok` accepts
    is an error."""

    urls: list[str]
    ok: Callable[[str], bool]
    threads: int = 4
    rate: float = 100.0
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    max_latency: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self, index: int) -> None:
        pause = self.threads / self.rate
        i = index
        while not self._stop.is_set():
            url = self.urls[i % len(self.urls)]
            i += 1
            started = time.monotonic()
            code, body = http_get(url, timeout=10)
            took = time.monotonic() - started
            with self._lock:
                self.requests += 1
                self.max_latency = max(self.max_latency, took)
                if code != 200 or not self.ok(body):
                    self.errors.append(f"{url}: {code} {body.strip()[:120]}")
            self._stop.wait(max(0.0, pause - took))

    def __enter__(self) -> Load:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(15)

    def summary(self) -> str:
        return (
            f"{self.requests} requests, {len(self.errors)} errors, "
            f"slowest {self.max_latency * 1000:.0f} ms"
        )
