"""pytest plugin shipped with zedctl.

- `--consul-url URL`: run against an external Consul (token from CONSUL_HTTP_TOKEN)
  instead of the embedded dev-consul.
- `consul` (session fixture): a `ConsulEndpoint` for whichever Consul is in use.
- Collection of the Test::Nginx-style `t/**/*.t` files (zedctl.testnginx).
- `nginx_server` (fixture): a factory `nginx_server(config=..., http_config=...,
  workers=..., name=...)` returning a started `zedctl.testnginx.NginxServer`, stopped at
  teardown (skips the test when there is no nginx with Lua).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .testnginx import plugin as _testnginx


@dataclass(frozen=True)
class ConsulEndpoint:
    """Where the Consul (real or embedded) used by a test session listens."""

    url: str
    host: str
    port: int
    scheme: str = "http"
    token: str | None = None
    embedded: bool = True


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("zedcup")
    group.addoption(
        "--consul-url",
        default=None,
        help="Use the Consul at URL instead of an embedded dev-consul "
        "(ACL token from CONSUL_HTTP_TOKEN).",
    )


def pytest_configure(config: pytest.Config) -> None:
    _testnginx.configure(config)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    return _testnginx.collect_file(file_path, parent)


@pytest.fixture
def nginx_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    yield from _testnginx.server_factory(request, tmp_path)


@pytest.fixture(scope="session")
def consul(request: pytest.FixtureRequest) -> Iterator[ConsulEndpoint]:
    url = request.config.getoption("--consul-url")
    if url:
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        yield ConsulEndpoint(
            url=url.rstrip("/"),
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (443 if parts.scheme == "https" else 8500),
            scheme=parts.scheme,
            token=os.environ.get("CONSUL_HTTP_TOKEN") or None,
            embedded=False,
        )
        return

    from .devconsul import DevConsul

    server = DevConsul(host="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.address
        yield ConsulEndpoint(url=f"http://{host}:{port}", host=host, port=port)
    finally:
        server.stop()
