"""Helpers for tests that talk to dev-consul or to a real Consul: raw HTTP with the ACL
token, python-consul2 clients, polling with a deadline. Used by tests/ (and free for any
other test suite of the project)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests


@dataclass
class RawConsul:
    """Raw HTTP to Consul (for status codes, headers and bodies), token sent as a header."""

    url: str
    token: str | None = None
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.trust_env = False  # no proxies from the environment for 127.0.0.1

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if self.token and "X-Consul-Token" not in headers:
            headers["X-Consul-Token"] = self.token
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.url + path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def close(self) -> None:
        self.session.close()


@dataclass(frozen=True)
class ConsulForms:
    """How the Consul in use words what Consul versions word differently (the README's
    list). dev-consul answers exactly as current Consul does; a real Consul may answer
    in its own version's form, which a test then accepts too."""

    kind: str  # dev, real or url (see ConsulEndpoint)
    version: tuple[int, ...]
    indents: bool  # a real `consul agent -dev` indents every JSON answer, "\n" at the end

    @property
    def older_forms(self) -> bool:
        """Whether answers may come in an older Consul's form (not dev-consul)."""
        return self.kind != "dev"

    def scalar(self, text: str) -> str:
        """The body of a JSON scalar answer (`true`) as this Consul writes it."""
        return text + "\n" if self.indents else text


def consul_client(host: str, port: int, token: str | None = None, scheme: str = "http") -> Any:
    """A python-consul2 client that sends exactly `token` (the library on its own prefers
    CONSUL_HTTP_TOKEN from the environment)."""
    import consul

    client = consul.Consul(host=host, port=port, scheme=scheme, token=token)
    client.token = token
    client.http.session.trust_env = False
    return client


def wait_for(check: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll `check` until it answers something truthy; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ordered_keys(text: str) -> list[list[str]]:
    """The key order of every JSON object in `text`, innermost first."""
    out: list[list[str]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out.append([k for k, _ in pairs])
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return out
