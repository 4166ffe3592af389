"""`make run`: zedcup on a laptop, with nothing installed but nginx and the virtualenv.

Starts an embedded dev-consul, nginx with `nginx/demo.conf` (zedcup in front of three
demo backends served by the same nginx on ports 9001-9003), applies `nginx/demo.yaml`
with zedctl's library, prints the curl commands that show balancing and failover, and
stops everything on Ctrl-C (SIGINT) or SIGTERM.

    python -m zedctl.demo [--port 8080] [--consul-port 8500] [--smoke]

`--smoke` runs the walk-through itself (balancing, failover to the second primary and
to the secondary pool, recovery through health checks) and exits 0 when it all held.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import click

from .configfile import load_config_file
from .consulapi import ConsulKV, ConsulSettings, KVEntry
from .devconsul import DevConsul
from .errors import ZedctlError
from .layout import Layout
from .ops import apply_plan, plan_apply
from .schema import Schema
from .testnginx.config import NginxBinary, find_nginx
from .testnginx.runner import NginxServer, NginxStartError

#: The demo backends' ports, fixed in nginx/demo.conf and nginx/demo.yaml.
BACKENDS: dict[str, int] = {"web01": 9001, "web02": 9002, "dr01": 9003}
INSTANCE = "demo"
READY_TIMEOUT = 15.0


class DemoError(ZedctlError):
    """The demo could not start or a smoke check failed: the message says what to fix."""


def repo_root() -> Path:
    """The zedcup checkout holding this package (where nginx/ and lua/ are)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "nginx" / "demo.conf").is_file() and (parent / "lua" / "zedcup").is_dir():
            return parent
    raise DemoError(f"cannot find the zedcup checkout (nginx/demo.conf) above {here}")


@dataclass
class DemoSettings:
    """Where the demo listens and what it reads."""

    repo: Path
    port: int = 8080
    consul_port: int = 8500
    prefix: str = "zedcup"

    @property
    def conf_template(self) -> Path:
        return self.repo / "nginx" / "demo.conf"

    @property
    def config_file(self) -> Path:
        return self.repo / "nginx" / "demo.yaml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def render_conf(template: str, values: Mapping[str, str]) -> str:
    """Fill the @NAME@ placeholders of nginx/demo.conf; every one must be known."""
    text = template
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    leftover = sorted({part.split("@")[0] for part in text.split("@")[1::2] if part.isupper()})
    if leftover:
        raise DemoError(f"nginx/demo.conf: unknown placeholder(s): {', '.join(leftover)}")
    return text


def conf_values(
    settings: DemoSettings, servroot: Path, binary: NginxBinary, consul_host: str, consul_port: int
) -> dict[str, str]:
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    return {
        "LOAD_MODULES": "\n".join(f"load_module {m};" for m in binary.modules),
        # workers would run as nobody and could not read the servroot or the repo
        "USER": "user root root;" if is_root else "",
        "SERVROOT": str(servroot),
        "REPO": str(settings.repo),
        "PORT": str(settings.port),
        "PREFIX": settings.prefix,
        "CONSUL_HOST": consul_host,
        "CONSUL_PORT": str(consul_port),
    }


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(settings: DemoSettings) -> None:
    busy = [p for p in (settings.port, *BACKENDS.values()) if not port_free(p)]
    if busy:
        raise DemoError(
            f"port(s) {', '.join(map(str, busy))} on 127.0.0.1 are in use: stop what uses "
            "them (the backends need 9001-9003; --port moves nginx)"
        )


def start_consul(port: int) -> DevConsul:
    """A dev-consul on `port`, or on a free port when that one is taken."""
    try:
        return DevConsul(port=port).start()
    except OSError:
        return DevConsul(port=0).start()


def apply_config(consul_url: str, prefix: str, path: Path) -> None:
    """What `zedctl configure PATH` does, through zedctl's library."""
    schema = Schema.load()
    config = load_config_file(schema, str(path))
    kv = ConsulKV(ConsulSettings(address=consul_url))
    layout = Layout.for_prefix(prefix)
    apply_plan(kv, plan_apply(kv, layout, schema, config), layout)


def get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """(status, body) of a GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as res:
            return res.status, res.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except OSError as err:
        return 0, str(err)


def wait_until(what: str, check: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise DemoError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Demo:
    """The running pieces: dev-consul, nginx and its servroot."""

    settings: DemoSettings
    consul: DevConsul | None = None
    nginx: NginxServer | None = None
    servroot: Path | None = None
    keep: bool = False
    stopped: list[str] = field(default_factory=list)

    def start(self) -> Demo:
        settings = self.settings
        check_ports(settings)
        binary = find_nginx()
        self.consul = start_consul(settings.consul_port)
        consul_host, consul_port = self.consul.address
        self.servroot = Path(tempfile.mkdtemp(prefix="zedcup-demo-"))
        text = render_conf(
            settings.conf_template.read_text(),
            conf_values(settings, self.servroot, binary, consul_host, consul_port),
        )
        # the config goes in first, so that nginx finds it on its first watch
        apply_config(self.consul.url, settings.prefix, settings.config_file)
        self.nginx = NginxServer(
            servroot=self.servroot,
            conf_text=text,
            port=settings.port,
            workers=2,
            binary=binary,
            repo=settings.repo,
        )
        try:
            self.nginx.start()
        except NginxStartError as err:
            raise DemoError(f"{err}\n{err.log}") from None
        wait_until(
            f"{settings.url}/ to answer from a backend",
            lambda: get(settings.url + "/")[1].strip() in BACKENDS,
        )
        return self

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
            self.stopped.append("nginx")
            self.nginx = None
        if self.consul is not None:
            self.consul.stop()
            self.stopped.append("dev-consul")
            self.consul = None
        if self.servroot is not None and not self.keep:
            shutil.rmtree(self.servroot, ignore_errors=True)
            self.servroot = None

    @property
    def error_log(self) -> Path:
        assert self.servroot is not None
        return self.servroot / "logs" / "error.log"


@contextmanager
def running(settings: DemoSettings, keep: bool = False) -> Iterator[Demo]:
    demo = Demo(settings, keep=keep)
    try:
        yield demo.start()
    finally:
        demo.stop()


def walkthrough(demo: Demo) -> str:
    """The commands to try, as printed when the demo is up."""
    s = demo.settings
    assert demo.consul is not None
    consul = demo.consul.url
    port = s.port
    zedctl = f".venv/bin/zedctl --consul {consul} --prefix {s.prefix}"
    return f"""\
zedcup demo is up.
  nginx       {s.url}        (error log: {demo.error_log})
  dev-consul  {consul}   (prefix {s.prefix})
  backends    web01 :9001, web02 :9002 (pool primary), dr01 :9003 (pool secondary)

Balancing over the primary pool:
  for i in 1 2 3 4; do curl -s localhost:{port}/; done
  for i in 1 2 3 4; do curl -s localhost:{port}/proxy/; done   # balancer_by_lua + proxy_pass

Break web01 (it answers 503): each request web01 fails is retried on web02 within the
same request, so clients only see web02; after 2 failures within 10 s (max_errors,
error_timeout) web01 is marked down cluster-wide, and its failing health checks keep it
down:
  curl -s localhost:9001/_break
  for i in 1 2 3 4; do curl -s localhost:{port}/; done
  curl -s localhost:{port}/_status?format=json     # or open {s.url}/_status in a browser
  curl -s localhost:{port}/metrics                 # Prometheus text format
  {zedctl} status {INSTANCE}

Break web02 too: the primary pool has no usable host left, so requests fail over to the
secondary pool (dr01):
  curl -s localhost:9002/_break
  for i in 1 2 3 4; do curl -s localhost:{port}/; done

Fix them: a host with a health check comes back only through checks: 2 passing checks
in a row (rise: 2, one a second) bring each back:
  curl -s localhost:9001/_fix; curl -s localhost:9002/_fix
  sleep 3; for i in 1 2 3 4; do curl -s localhost:{port}/; done

The control plane: live state, what happened, and what a file would change:
  {zedctl} status {INSTANCE}
  {zedctl} events {INSTANCE}
  {zedctl} diff nginx/demo.yaml

Ctrl-C stops everything.
"""


def host_state(demo: Demo, pool: str, host: str) -> str | None:
    """The host's state ("up", "down", "disabled") as nginx's /_status (zedcup.status_page)
    tells, None when it cannot tell."""
    status, body = get(demo.settings.url + "/_status?format=json")
    if status != 200:
        return None
    try:
        (inst,) = [i for i in json.loads(body)["instances"] if i["name"] == INSTANCE]
        (p,) = [p for p in inst["pools"] if p["name"] == pool]
        (h,) = [h for h in p["hosts"] if h["name"] == host]
        return str(h["state"])
    except (ValueError, KeyError, TypeError):
        return None


def _seen(url: str, n: int) -> list[str]:
    return [get(url)[1].strip() for _ in range(n)]


def smoke(demo: Demo) -> None:
    """The walk-through, checked. Raises DemoError naming the step that did not hold."""
    url = demo.settings.url + "/"
    proxy = demo.settings.url + "/proxy/"

    def expect(step: str, got: list[str], allowed: set[str], required: set[str]) -> None:
        if not set(got) <= allowed or not required <= set(got):
            raise DemoError(f"smoke: {step}: got {got}, expected only {sorted(allowed)}")

    expect("balancing", _seen(url, 6), {"web01", "web02"}, {"web01", "web02"})
    expect("balancing through proxy_pass", _seen(proxy, 6), {"web01", "web02"}, {"web01", "web02"})

    get("http://127.0.0.1:9001/_break")
    expect("web01 broken", _seen(url, 6), {"web02"}, {"web02"})
    wait_until("web01 to be marked down", lambda: host_state(demo, "primary", "web01") == "down")
    up = 'zedcup_host_up{instance="demo",pool="primary",host="web01"} 0\n'
    wait_until("/metrics to show web01 down", lambda: up in get(demo.settings.url + "/metrics")[1])

    # The walk-through says error counting marks web01 down: check what Consul recorded.
    assert demo.consul is not None
    kv = ConsulKV(ConsulSettings(address=demo.consul.url))
    layout = Layout.for_prefix(demo.settings.prefix)
    key = f"{layout.state}{INSTANCE}/primary/web01/down"
    # The node sets web01 aside at once; the cluster-wide mark follows its error sync.
    marks: list[KVEntry] = []

    def recorded() -> bool:
        entry = kv.get(key)
        if entry is not None:
            marks.append(entry)
        return entry is not None

    wait_until("Consul to record web01 down", recorded)
    mark = marks[0]
    if "errors within" not in (mark.value or ""):
        raise DemoError(f"smoke: web01 marked down, but not by error counting: {mark}")

    get("http://127.0.0.1:9002/_break")
    expect("both primaries broken", _seen(url, 6), {"dr01"}, {"dr01"})

    get("http://127.0.0.1:9001/_fix")
    get("http://127.0.0.1:9002/_fix")
    wait_until(
        "web01 and web02 to come back",
        lambda: set(_seen(url, 4)) == {"web01", "web02"},
        timeout=30,
    )


@click.command()
@click.option("--port", default=8080, show_default=True, help="Port of the demo nginx.")
@click.option(
    "--consul-port",
    default=8500,
    show_default=True,
    help="Port of the dev-consul (a free one when it is taken).",
)
@click.option("--prefix", default="zedcup", show_default=True, help="Consul key prefix.")
@click.option("--smoke", is_flag=True, help="Run the walk-through as a check, then exit.")
@click.option("--keep", is_flag=True, help="Keep the servroot (config and logs) on exit.")
def main(port: int, consul_port: int, prefix: str, smoke: bool, keep: bool) -> None:
    """Run the zedcup demo until Ctrl-C (or SIGTERM)."""
    try:
        run(port, consul_port, prefix, smoke, keep)
    except ZedctlError as e:  # the library's errors become click's here, and only here
        raise click.ClickException(e.message) from None


def run(port: int, consul_port: int, prefix: str, smoke: bool, keep: bool) -> None:
    settings = DemoSettings(repo=repo_root(), port=port, consul_port=consul_port, prefix=prefix)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        click.echo("starting dev-consul, nginx and the demo backends...")
        with running(settings, keep=keep) as demo:
            if smoke:
                _smoke_run(demo)
                return
            click.echo(walkthrough(demo))
            while not stop.wait(0.5):
                if demo.nginx is not None and not demo.nginx.running:
                    raise DemoError(f"nginx exited: see {demo.error_log}")
        click.echo("stopped nginx and dev-consul")
    finally:
        for sig, handler in previous.items():
            with suppress(ValueError):
                signal.signal(sig, handler)


def printed_commands_run(demo: Demo) -> None:
    """Every zedctl command the walk-through prints runs as printed (its options included)
    against the running demo, from the checkout, and exits 0."""
    zedctl = str(Path(sys.executable).with_name("zedctl"))
    for line in walkthrough(demo).splitlines():
        line = line.strip()
        if not line.startswith(".venv/bin/zedctl "):
            continue
        args = shlex.split(line)[1:]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "ZEDCUP_"))}
        res = subprocess.run(
            [zedctl, *args], cwd=demo.settings.repo, env=env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise DemoError(f"smoke: `{line}` exited {res.returncode}: {res.stderr.strip()}")


def _smoke_run(demo: Demo) -> None:
    smoke(demo)
    printed_commands_run(demo)
    click.echo("smoke: balancing, failover and recovery all held; the printed zedctl commands ran")


if __name__ == "__main__":
    main(prog_name="python -m zedctl.demo")
