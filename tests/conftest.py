"""Shared fixtures for the Python tests.

The `consul` session fixture (a ConsulEndpoint) comes from the t/ harness's pytest plugin
(zedctl.testnginx.plugin, loaded by the root conftest.py): the embedded dev-consul by
default, a real `consul agent -dev` with `--consul=real`, the Consul at URL with
`--consul=URL`. Every fixture here works against each. Plain helpers live in
zedctl.devconsul.testing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from zedctl.devconsul.testing import ConsulForms, RawConsul, consul_client, free_port
from zedctl.testnginx.consul import ConsulEndpoint

ZEDCTL = Path(sys.executable).with_name("zedctl")

# Property tests never fail on a slow machine's timing (no per-example deadline). In CI the
# examples are derived from each test's name, so a red run can be reproduced exactly;
# local runs keep exploring new examples.
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def consul_forms(consul: ConsulEndpoint) -> ConsulForms:
    return ConsulForms(
        kind=consul.kind,
        version=consul.version(),
        indents=consul.kind != "dev" and consul.dev_mode(),
    )


@pytest.fixture
def raw_consul(consul: ConsulEndpoint) -> Iterator[RawConsul]:
    """Raw HTTP (requests) to the Consul in use, with its token."""
    client = RawConsul(consul.url, consul.token)
    yield client
    client.close()


@pytest.fixture
def py_consul(consul: ConsulEndpoint) -> Any:
    """A python-consul2 client for the Consul in use."""
    return consul_client(consul.host, consul.port, consul.token, consul.scheme)


@pytest.fixture
def kv_prefix(raw_consul: RawConsul) -> Iterator[str]:
    """A fresh key prefix for one test; its keys are deleted afterwards."""
    value = f"conf/{uuid.uuid4()}/"
    yield value
    raw_consul.delete(f"/v1/kv/{value}?recurse")


@pytest.fixture
def new_session(raw_consul: RawConsul) -> Iterator[Callable[..., str]]:
    """Factory: create a session from keyword fields (the JSON body); every session made
    is destroyed afterwards."""
    created: list[str] = []

    def make(**body: Any) -> str:
        resp = raw_consul.put("/v1/session/create", data=json.dumps(body) if body else b"")
        assert resp.status_code == 200, resp.text
        sid = str(resp.json()["ID"])
        created.append(sid)
        return sid

    yield make
    for sid in created:
        raw_consul.put(f"/v1/session/destroy/{sid}")


@dataclass
class DevConsulProcess:
    """`zedctl dev-consul` in a subprocess."""

    proc: subprocess.Popen[str]
    url: str
    ready_line: str

    def stop(self, sig: int | None = None, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def devconsul_process() -> Iterator[Callable[..., DevConsulProcess]]:
    """Factory: start `zedctl dev-consul --port <free> [args]`, wait for its ready line."""
    started: list[DevConsulProcess] = []

    def start(*args: str, port: int | None = None) -> DevConsulProcess:
        port = free_port() if port is None else port
        proc = subprocess.Popen(
            [str(ZEDCTL), "dev-consul", "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            proc.wait(timeout=10)
            pytest.fail(f"zedctl dev-consul exited with {proc.returncode}: {err}")
        handle = DevConsulProcess(proc, f"http://127.0.0.1:{port}", line)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        if handle.proc.poll() is None:
            handle.proc.kill()
            handle.proc.wait(timeout=10)
        for stream in (handle.proc.stdout, handle.proc.stderr):
            if stream:
                stream.close()
