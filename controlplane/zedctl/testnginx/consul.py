"""The Consul a test run uses: the embedded dev-consul, a real `consul agent` started
for the run, or an external one; and real Consul agents and clusters for tests that
need to kill, restart or rebuild Consul.

A real agent listens on loopback only, on ports picked free (HTTP, serf LAN and WAN,
server RPC; no DNS, no gRPC), keeps its files in a directory of its own and is ready
when `/v1/status/leader` names a leader. The binary is `$CONSUL_BINARY`, else the
checkout's `.tools/bin/consul` (`make deps`), else `consul` on PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from .runner import PortPicker, default_repo

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class ConsulNotFound(RuntimeError):
    """No Consul binary: set CONSUL_BINARY or run `make deps`."""


class ConsulStartError(RuntimeError):
    """A Consul agent exited or found no leader in time; carries its log."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(f"{message}\n----- consul log (tail) -----\n{log}" if log else message)
        self.log = log


@dataclass(frozen=True)
class ConsulEndpoint:
    """Where the Consul of a test session listens, and what it is.

    kind: `dev` (zedctl's embedded dev-consul), `real` (a `consul agent -dev` started
    for the run) or `url` (an external Consul, given by `--consul=URL`).
    """

    url: str
    host: str
    port: int
    scheme: str = "http"
    token: str | None = None
    kind: str = "dev"

    @property
    def embedded(self) -> bool:
        return self.kind == "dev"

    @classmethod
    def from_url(cls, url: str, token: str | None = None, kind: str = "url") -> ConsulEndpoint:
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        return cls(
            url=url.rstrip("/"),
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (443 if parts.scheme == "https" else 8500),
            scheme=parts.scheme,
            token=token,
            kind=kind,
        )

    def version(self) -> tuple[int, ...]:
        """The Consul version the agent reports (`/v1/agent/self`), e.g. (1, 8, 7)."""
        self_info = http_json(self.url + "/v1/agent/self", self.token)
        text = str(self_info["Config"]["Version"])
        return tuple(int(p) for p in text.split("-")[0].split(".") if p.isdigit())

    def dev_mode(self) -> bool:
        """Whether the agent runs in dev mode (`consul agent -dev`, and dev-consul): a
        dev agent indents every JSON answer and ends it with a newline."""
        self_info = http_json(self.url + "/v1/agent/self", self.token)
        return bool((self_info.get("DebugConfig") or {}).get("DevMode"))


def http_json(url: str, token: str | None = None, timeout: float = 5.0) -> object:
    req = urllib.request.Request(url, headers={"X-Consul-Token": token} if token else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def find_consul() -> str:
    """The real Consul binary: $CONSUL_BINARY, the checkout's .tools/bin/consul, or
    `consul` on PATH. Raises ConsulNotFound naming what was tried."""
    env = os.environ.get("CONSUL_BINARY")
    if env:
        if os.access(env, os.X_OK) and not os.path.isdir(env):
            return env
        raise ConsulNotFound(f"CONSUL_BINARY={env!r} is not an executable")
    tools = default_repo() / ".tools" / "bin" / "consul"
    if os.access(tools, os.X_OK):
        return str(tools)
    found = shutil.which("consul")
    if found:
        return found
    raise ConsulNotFound(
        f"no real Consul: CONSUL_BINARY is unset, {tools} is missing (run `make deps`) "
        "and there is no `consul` on PATH"
    )


def _udp_bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_ports(picker: PortPicker, count: int) -> list[int]:
    """`count` free ports, each free for UDP too (serf gossips over both)."""
    ports: list[int] = []
    while len(ports) < count:
        port = picker.pick()
        if _udp_bindable(picker.host, port):
            ports.append(port)
    return ports


class ConsulAgent:
    """One real `consul agent` on loopback. mode `dev`: `-dev` (in memory); `server`: a
    server that keeps its Raft data in `root/data` (`bootstrap_expect` servers, joined
    through `join`); `client`: a client agent joined through `join` (what each
    application node runs in production, forwarding to the servers).

    `extra_args` go after the agent's own (e.g. `-hcl` lines for ACLs, TLS or more
    listen addresses).

    `start()` returns once the agent names a leader and answers a KV read (unless
    `wait=False`);
    `stop()` ends it with SIGTERM (SIGKILL after STOP_TIMEOUT), `kill()` with SIGKILL;
    `start()` again restarts it on the same ports and data directory.
    """

    def __init__(
        self,
        root: Path,
        *,
        binary: str | None = None,
        picker: PortPicker | None = None,
        mode: str = "dev",
        node: str | None = None,
        bootstrap_expect: int = 0,
        join: Iterable[str] = (),
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.root = Path(root)
        self.binary = binary or find_consul()
        if mode not in ("dev", "server", "client"):
            raise ValueError(f"mode: expected dev, server or client, got {mode!r}")
        self.mode = mode
        self.node = node or self.root.name
        self.bootstrap_expect = bootstrap_expect
        self.join = list(join)
        self.host = host
        self.extra_args = list(extra_args)
        self.picker = picker or PortPicker(host)
        self.http_port, self.serf_lan_port, self.serf_wan_port, self.server_port = pick_ports(
            self.picker, 4
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def serf_address(self) -> str:
        return f"{self.host}:{self.serf_lan_port}"

    @property
    def server_address(self) -> str:
        """The Raft address `/v1/status/leader` names when this agent leads."""
        return f"{self.host}:{self.server_port}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "consul.log"

    def endpoint(self, token: str | None = None) -> ConsulEndpoint:
        return ConsulEndpoint(
            url=self.url, host=self.host, port=self.http_port, token=token, kind="real"
        )

    # ------------------------------------------------------------------ lifecycle

    def command(self) -> list[str]:
        cmd = [self.binary, "agent"]
        if self.mode == "dev":
            cmd.append("-dev")
        else:
            if self.mode == "server":
                cmd += ["-server", f"-bootstrap-expect={self.bootstrap_expect or 1}"]
                # Raft timing for production (Consul's default multiplier of 5 is
                # for small machines): a dead leader is replaced in a few seconds.
                cmd.append("-hcl=performance { raft_multiplier = 1 }")
            for address in self.join:
                cmd.append(f"-retry-join={address}")
            cmd.append("-retry-interval=1s")
        cmd += [
            f"-node={self.node}",
            f"-data-dir={self.data_dir}",
            f"-bind={self.host}",
            f"-client={self.host}",
            f"-http-port={self.http_port}",
            f"-serf-lan-port={self.serf_lan_port}",
            f"-serf-wan-port={self.serf_wan_port}",
            f"-server-port={self.server_port}",
            "-dns-port=-1",
            "-grpc-port=-1",
            "-disable-host-node-id",
            "-log-level=info",
            *self.extra_args,
        ]
        return cmd

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True, timeout: float = START_TIMEOUT) -> ConsulAgent:
        if self.running():
            raise RuntimeError(f"consul agent {self.node} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            started = time.strftime("%H:%M:%S")
            log.write(f"==== {started}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # Ctrl-C in the terminal reaches pytest only
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def leader(self, timeout: float = 2.0) -> str:
        """The leader's Raft address as this agent sees it; "" when none (or no answer)."""
        try:
            got = http_json(self.url + "/v1/status/leader", timeout=timeout)
        except (OSError, ValueError, urllib.error.URLError):
            return ""
        return got if isinstance(got, str) else ""

    def answers_kv(self, timeout: float = 2.0) -> bool:
        """Whether a KV read is answered (found, not found or denied by ACLs): a -dev
        agent names its leader a moment before it serves KV."""
        req = urllib.request.Request(self.url + "/v1/kv/zedcup-ready-probe")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=timeout):
                return True
        except urllib.error.HTTPError as err:
            return err.code in (403, 404)
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        """Wait until the agent names a leader and answers a KV read; answers the
        leader's address."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise ConsulStartError(
                    f"consul agent {self.node} exited with {self.proc.returncode}", self.log_tail()
                )
            leader = self.leader(timeout=1.0)
            if leader and self.answers_kv(timeout=1.0):
                return leader
            if time.monotonic() > deadline:
                raise ConsulStartError(
                    f"consul agent {self.node} named no leader within {timeout:g}s",
                    self.log_tail(),
                )
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (a server does not leave the cluster on it), SIGKILL after `timeout`."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        return self._end(signal.SIGKILL, STOP_TIMEOUT)

    def _end(self, sig: int, timeout: float) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        return proc.returncode

    def wipe(self) -> None:
        """Remove the agent's data (stopped agents only): it comes back empty."""
        if self.running():
            raise RuntimeError(f"consul agent {self.node} is running")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ConsulAgent:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ConsulCluster:
    """`size` real Consul servers on loopback (`-server -bootstrap-expect size`, each
    with its own ports, data directory and `-node` name `<name>-<i>`), joined to one
    another with `-retry-join`. Ready when every server names the same leader."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        binary: str | None = None,
        picker: PortPicker | None = None,
        name: str = "consul",
    ) -> None:
        binary = binary or find_consul()
        picker = picker or PortPicker()
        self.root = Path(root)
        self.agents = [
            ConsulAgent(
                self.root / f"{name}-{i}",
                binary=binary,
                picker=picker,
                mode="server",
                node=f"{name}-{i}",
                bootstrap_expect=size,
            )
            for i in range(1, size + 1)
        ]
        for agent in self.agents:
            agent.join = [other.serf_address for other in self.agents if other is not agent]

    def start(self, timeout: float = START_TIMEOUT) -> ConsulCluster:
        for agent in self.agents:
            agent.start(wait=False)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> ConsulAgent:
        """Wait until every server runs, and the leader's autopilot counts each as a
        healthy voter (a restarted server has caught up): the cluster survives losing
        any one server. Answers the leader."""
        deadline = time.monotonic() + timeout
        seen: object = None
        while True:
            leader = self.wait_leader(max(deadline - time.monotonic(), 0.1))
            try:
                seen = http_json(leader.url + "/v1/operator/autopilot/health", timeout=2.0)
            except (OSError, ValueError, urllib.error.URLError) as err:
                seen = str(err)
            if isinstance(seen, dict) and seen.get("Healthy"):
                servers = seen.get("Servers") or []
                voters = [s for s in servers if s.get("Voter") and s.get("Healthy")]
                if len(voters) == len(self.agents):
                    return leader
            if time.monotonic() > deadline:
                raise ConsulStartError(
                    f"the cluster was not healthy within {timeout:g}s: {seen}",
                    "\n".join(a.log_tail(15) for a in self.agents),
                )
            time.sleep(0.1)

    def running(self) -> list[ConsulAgent]:
        return [a for a in self.agents if a.running()]

    def wait_leader(
        self, timeout: float = START_TIMEOUT, among: Sequence[ConsulAgent] | None = None
    ) -> ConsulAgent:
        """Wait until every running server (or those of `among`) names one leader that
        is one of them; answers the leader."""
        deadline = time.monotonic() + timeout
        while True:
            agents = list(among) if among is not None else self.running()
            for agent in agents:
                if agent.proc is not None and agent.proc.poll() is not None:
                    raise ConsulStartError(
                        f"consul server {agent.node} exited with {agent.proc.returncode}",
                        agent.log_tail(),
                    )
            seen = {agent.leader(timeout=1.0) for agent in agents}
            if len(seen) == 1:
                (address,) = seen
                for agent in agents:
                    if agent.server_address == address:
                        return agent
            if time.monotonic() > deadline:
                raise ConsulStartError(
                    f"no common leader within {timeout:g}s (seen: {sorted(seen)})",
                    "\n".join(a.log_tail(15) for a in agents),
                )
            time.sleep(0.05)

    def leader(self) -> ConsulAgent | None:
        for agent in self.running():
            address = agent.leader()
            for candidate in self.agents:
                if address and candidate.server_address == address:
                    return candidate
        return None

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()

    def wipe(self) -> None:
        for agent in self.agents:
            agent.wipe()

    def __enter__(self) -> ConsulCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
