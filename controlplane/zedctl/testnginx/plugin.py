"""The pytest plugin of the t/ harness: `t/**/*.t` files become collectors, blocks become
test items; the session's Consul; the `nginx_server` fixture.

Opt-in: the repository's root `conftest.py` loads it (`pytest_plugins`); elsewhere
`pytest -p zedctl.testnginx.plugin`. Installing zedctl registers nothing with pytest.

Options:
    --consul=dev|real|URL  the Consul of the run: the embedded dev-consul (default), a
                           real `consul agent -dev` started for the run (binary from
                           $CONSUL_BINARY, .tools/bin/consul or PATH), or the Consul at
                           URL (ACL token from CONSUL_HTTP_TOKEN)
    --consul-url URL       the same as --consul=URL
    --consul-only          run only the tests that talk to the session's Consul (the
                           `consul` fixture, t/ blocks that use $TEST_NGINX_CONSUL_*):
                           a second run against another Consul skips what the first
                           already proved

Markers:
    devconsul_only(reason)  the test checks dev-consul itself (its CLI, --data, ACL
                            setup...): skipped, with the reason, when --consul is not dev
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .block import BlockFailure, BlockRun, Consul
from .config import NginxBinary, NginxNotFound, find_nginx
from .consul import ConsulAgent, ConsulEndpoint, ConsulNotFound, ConsulStartError
from .parser import Block, ParseError, parse_file
from .runner import NginxServer, PortPicker, default_repo

_BINARY_KEY = pytest.StashKey[Any]()
_PICKER_KEY = pytest.StashKey[PortPicker]()
_K_TEST_RE = re.compile(r"\bTEST\s+(\d+)\b(?:\s*:)?")


def keyword_for(number: int) -> str:
    """The extra -k keyword of block `TEST <number>`: `-k "TEST 3"` selects exactly it."""
    return f"TEST_{number}:"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("zedcup")
    group.addoption(
        "--consul",
        default="dev",
        metavar="dev|real|URL",
        help="The Consul of the run: dev (the embedded dev-consul, default), real (a "
        "`consul agent -dev` started for the run) or a URL (ACL token from CONSUL_HTTP_TOKEN).",
    )
    group.addoption(
        "--consul-url",
        default=None,
        metavar="URL",
        help="The same as --consul=URL.",
    )
    group.addoption(
        "--consul-only",
        action="store_true",
        help="Run only the tests that talk to the session's Consul.",
    )


def consul_choice(config: pytest.Config) -> tuple[str, str | None]:
    """(kind, url) of the run's Consul: ("dev", None), ("real", None) or ("url", URL)."""
    url = config.getoption("--consul-url")
    choice = str(config.getoption("--consul") or "dev")
    if url:
        if choice not in ("dev", url):
            raise pytest.UsageError(f"--consul={choice} and --consul-url={url}: give one")
        return "url", url
    if choice in ("dev", "real"):
        return choice, None
    if "://" in choice or ":" in choice:
        return "url", choice
    raise pytest.UsageError(f"--consul: expected dev, real or a URL, got {choice!r}")


def pytest_configure(config: pytest.Config) -> None:
    consul_choice(config)  # a bad --consul is a usage error before anything runs
    config.addinivalue_line(
        "markers",
        "devconsul_only(reason): checks dev-consul itself; skipped when --consul is not dev",
    )
    # `-k "TEST 3"` is not a valid -k expression (two words): rewrite `TEST <n>` to
    # the keyword every block `TEST <n>: ...` carries.
    keyword = getattr(config.option, "keyword", "")
    if keyword and _K_TEST_RE.search(keyword):
        config.option.keyword = _K_TEST_RE.sub(lambda m: keyword_for(int(m.group(1))), keyword)
    _stop_servers_on_sigterm(config)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum} ({signal.Signals(signum).name})")


def _stop_servers_on_sigterm(config: pytest.Config) -> None:
    """SIGTERM/SIGHUP (a CI timeout, a closed terminal) end the run like Ctrl-C does.

    nginx runs in a session of its own (so the terminal's Ctrl-C reaches only
    pytest); Python's default for SIGTERM would end pytest without running the
    `finally` blocks that stop the nginx servers, leaving them (and their ports)
    behind. As a KeyboardInterrupt, the block in progress stops its nginx first.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_DFL:
            continue  # someone else handles it
        signal.signal(signum, _interrupt)
        config.add_cleanup(lambda signum=signum: signal.signal(signum, signal.SIG_DFL))


def nginx_binary(config: pytest.Config) -> NginxBinary:
    """find_nginx() once per session; raises pytest.skip when there is none."""
    found = config.stash.get(_BINARY_KEY, None)
    if found is None:
        try:
            found = find_nginx()
        except NginxNotFound as err:
            found = err
        config.stash[_BINARY_KEY] = found
    if isinstance(found, NginxNotFound):
        pytest.skip(f"t/ suite skipped: no nginx with Lua: {found}")
    return found


def port_picker(config: pytest.Config) -> PortPicker:
    picker = config.stash.get(_PICKER_KEY, None)
    if picker is None:
        picker = config.stash[_PICKER_KEY] = PortPicker()
    return picker


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix == ".t" and "t" in file_path.parent.parts:
        return TFile.from_parent(parent, path=file_path)
    return None


def talks_to_consul(item: pytest.Item) -> bool:
    """Whether a test uses the session's Consul (this plugin's `consul` fixture, not a
    test module's own fixture of that name)."""
    if isinstance(item, BlockItem):
        return item.block.needs_consul
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.get("consul") if info is not None else None
    if not defs:
        return False
    func = getattr(defs[-1], "func", None)
    return getattr(func, "__module__", None) == __name__


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kind, _url = consul_choice(config)
    if kind != "dev":
        for item in items:
            mark = item.get_closest_marker("devconsul_only")
            if mark is not None:
                why = mark.args[0] if mark.args else mark.kwargs.get("reason", "")
                item.add_marker(pytest.mark.skip(reason=f"dev-consul only: {why}"))
    if config.getoption("--consul-only"):
        keep, dropped = [], []
        for item in items:
            wanted = talks_to_consul(item) and not item.get_closest_marker("devconsul_only")
            (keep if wanted else dropped).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep


def pytest_report_header(config: pytest.Config) -> str:
    kind, url = consul_choice(config)
    text = {"dev": "the embedded dev-consul", "real": "a real `consul agent -dev`"}.get(
        kind, f"the Consul at {url}"
    )
    only = ""
    if config.getoption("--consul-only"):
        only = " (--consul-only: only the tests that talk to it)"
    return f"zedcup: Consul is {text}{only}"


@pytest.fixture
def nginx_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Factory `nginx_server(config=..., http_config=..., workers=..., name=...)`: a started
    NginxServer, stopped at teardown (skips the test when there is no nginx with Lua)."""
    yield from server_factory(request, tmp_path)


@pytest.fixture(scope="session")
def consul(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsulEndpoint]:
    """The session's Consul (a ConsulEndpoint): see --consul."""
    kind, url = consul_choice(request.config)
    if kind == "url":
        yield ConsulEndpoint.from_url(str(url), token=os.environ.get("CONSUL_HTTP_TOKEN") or None)
        return
    if kind == "real":
        try:
            agent = ConsulAgent(tmp_path_factory.mktemp("consul-agent"), node="zedcup-test")
        except ConsulNotFound as err:
            pytest.fail(f"--consul=real: {err}", pytrace=False)
        try:
            agent.start()
        except ConsulStartError as err:
            agent.stop()
            pytest.fail(f"--consul=real: {err}", pytrace=False)
        try:
            yield agent.endpoint()
        finally:
            agent.stop()
        return

    from ..devconsul import DevConsul

    server = DevConsul(host="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.address
        yield ConsulEndpoint(url=f"http://{host}:{port}", host=host, port=port)
    finally:
        server.stop()


class TFile(pytest.File):
    """A Test::Nginx-style `.t` file: one item per block, in file order."""

    def collect(self) -> Iterator[pytest.Item]:
        try:
            blocks = parse_file(self.path)
            for block in blocks:
                block.path = self._relpath()
                block.validate()
        except ParseError as err:
            raise self.CollectError(str(err)) from None
        only = [b for b in blocks if "ONLY" in b]
        last_seen = False
        for block in blocks:
            item = BlockItem.from_parent(self, name=block.title, callobj=_run_block)
            item.block = block
            if block.number is not None:
                item.extra_keyword_matches.add(keyword_for(block.number))
            if "SKIP" in block:
                item.add_marker(pytest.mark.skip(reason="--- SKIP"))
            elif only and block not in only:
                item.add_marker(pytest.mark.skip(reason="another block of this file has --- ONLY"))
            elif last_seen:
                item.add_marker(pytest.mark.skip(reason="after a block with --- LAST"))
            if "LAST" in block:
                last_seen = True
            yield item

    def _relpath(self) -> str:
        try:
            return os.path.relpath(self.path, self.config.rootpath)
        except ValueError:
            return str(self.path)


def _run_block(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    item = request.node
    assert isinstance(item, BlockItem)
    item.run(request, tmp_path)


class BlockItem(pytest.Function):
    """One block: a fresh nginx (or `nodes: N` of them), a request and checks."""

    block: Block

    def run(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        binary = nginx_binary(self.config)
        if self.block.needs_dns:
            pytest.importorskip("dnslib", reason="dnslib (the t/ DNS server) missing: make deps")
        consul = None
        if self.block.needs_consul:
            endpoint = request.getfixturevalue("consul")
            consul = Consul(
                host=endpoint.host,
                port=endpoint.port,
                token=endpoint.token,
                scheme=endpoint.scheme,
            )
        BlockRun(
            block=self.block,
            binary=binary,
            tmp=tmp_path,
            repo=default_repo(),
            picker=port_picker(self.config),
            consul=consul,
            env=dict(os.environ),
        ).run()

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, max(0, self.block.line - 1), self.name

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> Any:
        if isinstance(excinfo.value, BlockFailure):
            return f"{excinfo.value.report()}\n\n(block at {self.block.path}:{self.block.line})"
        if isinstance(excinfo.value, ParseError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)


def server_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Body of the `nginx_server` fixture: start NginxServers, stop them at teardown."""
    binary = nginx_binary(request.config)
    picker = port_picker(request.config)
    started: list[NginxServer] = []

    def start(**kwargs: Any) -> NginxServer:
        name = kwargs.pop("name", f"nginx{len(started) + 1}")
        kwargs.setdefault("binary", binary)
        server = NginxServer(servroot=tmp_path / name, **kwargs)
        started.append(server)
        return server.start(picker)

    try:
        yield start
    finally:
        for server in started:
            server.stop()
