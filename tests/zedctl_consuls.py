"""Consuls for zedctl's operator tests, and the real `zedctl` binary to drive them.

- `start_dev_consul`: `zedctl dev-consul` in a subprocess (optionally ACL-protected or
  on another host address such as ::1).
- `start_real_consul`: `consul agent -dev` (a ConsulAgent) on free loopback ports, with a
  unix socket next to its TCP address, and optionally ACLs (master token "root") and
  HTTPS (a throwaway CA, a server certificate for "consul.test" only, a client
  certificate; client certificates required on HTTPS).
- `Zedctl`: runs the console script, never accepting a traceback.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from zedctl.devconsul.testing import free_port
from zedctl.testnginx.consul import ConsulAgent, ConsulNotFound, ConsulStartError, find_consul

ZEDCTL = Path(sys.executable).with_name("zedctl")
REPO = Path(__file__).resolve().parents[1]
CONSUL_ENV = (
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN_FILE",
    "CONSUL_HTTP_SSL",
    "CONSUL_HTTP_SSL_VERIFY",
    "CONSUL_CACERT",
    "CONSUL_CAPATH",
    "CONSUL_CLIENT_CERT",
    "CONSUL_CLIENT_KEY",
    "CONSUL_TLS_SERVER_NAME",
    "ZEDCUP_PREFIX",
)


@dataclass
class Consul:
    """One running Consul (dev-consul or the real one) and how to reach it."""

    kind: str
    proc: subprocess.Popen[bytes]
    url: str
    token: str | None = None
    socket: str | None = None
    https_url: str | None = None
    tls: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    ipv6: bool = False
    """Also listens on [::1] (same port)."""

    def _headers(self) -> dict[str, str]:
        return {"X-Consul-Token": self.token} if self.token else {}

    def keys(self, prefix: str) -> dict[str, tuple[str | None, int]]:
        """Every key under prefix/: (value, Flags), read straight from the HTTP API."""
        resp = requests.get(
            f"{self.url}/v1/kv/{prefix}/", params={"recurse": ""}, headers=self._headers(),
            timeout=10,
        )  # fmt: skip
        if resp.status_code == 404:
            return {}
        assert resp.status_code == 200, resp.text
        return {
            e["Key"]: (
                base64.b64decode(e["Value"]).decode() if e["Value"] is not None else None,
                e["Flags"],
            )
            for e in resp.json()
        }

    def values(self, prefix: str) -> dict[str, str | None]:
        return {k: v for k, (v, _) in self.keys(prefix).items()}

    def put(self, key: str, value: str, flags: int = 0) -> None:
        resp = requests.put(
            f"{self.url}/v1/kv/{key}", data=value.encode(), params={"flags": str(flags)},
            headers=self._headers(), timeout=10,
        )  # fmt: skip
        assert resp.status_code == 200 and resp.json() is True, resp.text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def wait_ready(consul: Consul, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if consul.proc.poll() is not None:
            raise RuntimeError(f"{consul.kind} exited with {consul.proc.returncode}")
        try:
            resp = requests.get(
                f"{consul.url}/v1/status/leader", timeout=1, headers=consul._headers()
            )
            if resp.status_code == 200 and resp.json():
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    consul.stop()
    raise RuntimeError(f"{consul.kind} at {consul.url} not ready within {timeout:g}s")


def start_dev_consul(*args: str, host: str = "127.0.0.1", port: int | None = None) -> Consul:
    port = free_port() if port is None else port
    proc = subprocess.Popen(
        [str(ZEDCTL), "dev-consul", "--host", host, "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    shown = f"[{host}]" if ":" in host else host
    token = args[args.index("--acl-token") + 1] if "--acl-token" in args else None
    consul = Consul("dev-consul", proc, f"http://{shown}:{port}", token, args=list(args))
    wait_ready(consul)
    return consul


def make_certificates(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for the name consul.test only (not 127.0.0.1), and a
    client certificate, all signed by the CA."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=zedctl test CA")  # fmt: skip
    uses = {"server": "serverAuth,clientAuth", "client": "clientAuth"}
    for name, usage in uses.items():
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}.consul.test")  # fmt: skip
        ext = folder / f"{name}.ext"
        san = "subjectAltName=DNS:consul.test\n" if name == "server" else ""
        ext.write_text(f"{san}extendedKeyUsage={usage}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1",
            "-extfile", str(ext))  # fmt: skip
    return {
        n: str(folder / n)
        for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    }


def ipv6_loopback() -> bool:
    """Whether ::1 can be listened on here."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def start_real_consul(folder: Path, acl: bool = False, tls: bool = False) -> Consul:
    """`consul agent -dev` on free loopback ports, plus a unix socket (and ::1 when the
    machine has it: `Consul.ipv6`)."""
    try:
        binary = find_consul()
    except ConsulNotFound as err:
        pytest.skip(f"no real Consul: {err}")
    folder.mkdir(parents=True, exist_ok=True)
    sock = str(folder / "http.sock")
    v6 = " ::1" if ipv6_loopback() else ""
    args = ["-hcl", f'addresses {{ http = "127.0.0.1{v6} unix://{sock}" }}']
    token = None
    if acl:
        token = "root"
        args += [
            "-hcl",
            'acl { enabled = true, default_policy = "deny", tokens { master = "root" } }',
        ]
    certs: dict[str, str] = {}
    https = None
    if tls:
        certs = make_certificates(folder)
        port = free_port()
        https = f"https://127.0.0.1:{port}"
        args += [
            "-hcl", f"ports {{ https = {port} }}",
            "-hcl", f'ca_file = "{certs["ca.pem"]}"',
            "-hcl", f'cert_file = "{certs["server.pem"]}"',
            "-hcl", f'key_file = "{certs["server.key"]}"',
            "-hcl", "verify_incoming_https = true",
        ]  # fmt: skip
    agent = ConsulAgent(folder, binary=binary, mode="dev", extra_args=args).start(wait=False)
    try:
        agent.wait_ready(timeout=30)
    except ConsulStartError:
        agent.stop()
        raise
    assert agent.proc is not None
    consul = Consul("consul", agent.proc, agent.url, token, sock, https, certs)
    consul.ipv6 = bool(v6)
    return consul


def acl_token(consul: Consul, description: str) -> str:
    """A token with no policy: known to Consul, allowed nothing."""
    resp = requests.put(
        f"{consul.url}/v1/acl/token", json={"Description": description},
        headers=consul._headers(), timeout=10,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    return str(resp.json()["SecretID"])


@dataclass
class Zedctl:
    """The real zedctl console script, with an environment like an operator's shell."""

    env: dict[str, str]
    folder: Path

    def run(
        self,
        *args: str,
        code: int | None = 0,
        input: str | None = None,
        timeout: float = 60,
        **env: str | None,
    ) -> subprocess.CompletedProcess[str]:
        environment = {**self.env}
        for name, value in env.items():
            if value is None:
                environment.pop(name, None)
            else:
                environment[name] = value
        res = subprocess.run(
            [str(ZEDCTL), *args], env=environment, input=input if input is not None else "",
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert "Traceback" not in res.stderr + res.stdout, res.stderr
        if code is not None:
            assert res.returncode == code, (
                f"zedctl {' '.join(args)}: exit {res.returncode}, wanted {code}\n"
                f"{res.stdout}\n{res.stderr}"
            )
        return res

    def __call__(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run(*args, **kwargs)

    def file(self, text: str, name: str | None = None) -> str:
        """Write a file (a fresh name each time unless given) and return its path."""
        if name is None:
            name = f"config-{len(list(self.folder.glob('config-*')))}.yaml"
        path = self.folder / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def json(self, *args: str, **kwargs: Any) -> Any:
        return json.loads(self.run(*args, **kwargs).stdout)


def operator_env(
    consul: Consul, prefix: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The process environment without any CONSUL_* of the caller's, pointed at `consul`."""
    env = {k: v for k, v in os.environ.items() if k not in CONSUL_ENV}
    env["CONSUL_HTTP_ADDR"] = consul.url
    env["ZEDCUP_PREFIX"] = prefix
    if consul.token:
        env["CONSUL_HTTP_TOKEN"] = consul.token
    env.update(extra or {})
    return env


def backends(tmp_path_factory: pytest.TempPathFactory, kind: str) -> Iterator[Consul]:
    """A module-wide Consul of `kind` ("dev-consul" or "consul")."""
    if kind == "dev-consul":
        consul = start_dev_consul()
    else:
        consul = start_real_consul(tmp_path_factory.mktemp("consul"))
    try:
        yield consul
    finally:
        consul.stop()


def operator_fixtures() -> tuple[Any, Any]:
    """The fixtures of a zedctl operator test module, bound to its names there
    (`consul, zed = operator_fixtures()`): `consul`, a module-wide Consul of each kind
    (dev-consul, then the real one), and `zed`, the zedctl of an operator's shell
    pointed at it with a fresh key prefix."""

    @pytest.fixture(scope="module", params=["dev-consul", "consul"])
    def consul(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Consul]:
        yield from backends(tmp_path_factory, request.param)

    @pytest.fixture
    def zed(consul: Consul, tmp_path: Path) -> Zedctl:
        return Zedctl(operator_env(consul, f"op/{uuid.uuid4()}"), tmp_path)

    return consul, zed


class Lines:
    """The lines a long-running process writes to one stream, read by a thread (select()
    on a buffered pipe misses lines already buffered)."""

    def __init__(self, stream: Any) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in iter(stream.readline, ""):
            self.queue.put(line)
        self.queue.put("")  # EOF

    def next(self, deadline: float) -> str:
        """The next line; AssertionError at the deadline or at EOF."""
        try:
            line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no line in time; seen: {self.seen}") from None
        if line == "":
            raise AssertionError(f"the stream ended; seen: {self.seen}")
        self.seen.append(line)
        return line

    def until(self, wanted: str, deadline: float) -> str:
        """Lines up to and including the first that holds `wanted`."""
        text = ""
        while wanted not in text:
            text += self.next(deadline)
        return text
