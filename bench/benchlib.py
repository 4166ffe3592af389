"""What the HTTP benchmarks share: the backend, the servers, wrk, and the front's CPU time.

bench_servers() starts a dev-consul and makes (without starting them) a backend nginx
serving BACKEND_CONFIG and a front nginx of the caller's configs, one worker each, in a
temporary directory; run_wrk() drives a URL with wrk and reads the front worker's CPU time
per request from /proc. Not a benchmark itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from zedctl.devconsul import DevConsul
from zedctl.testnginx import NginxServer, PortPicker

BACKEND_CONFIG = """
    location = /backend {
        return 200 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    }
"""

CLK_TCK = os.sysconf("SC_CLK_TCK")


@contextmanager
def bench_servers(
    front_http: str, front_config: str, front_port: int | None = None, **values: object
) -> Iterator[tuple[NginxServer, NginxServer, Path]]:
    """(backend, front, tmp): front_http and front_config are %-templates given
    `backend` (its port), `consul` (dev-consul's port) and `values`."""
    consul = DevConsul(host="127.0.0.1", port=0)
    consul.start()
    picker = PortPicker()
    try:
        with tempfile.TemporaryDirectory(prefix="zedcup-bench-") as tmp:
            backend_port = picker.pick()
            backend = NginxServer(
                servroot=Path(tmp) / "backend",
                config=BACKEND_CONFIG,
                port=backend_port,
                workers=1,
                error_log_level="warn",
            )
            subst = {"backend": backend_port, "consul": consul.address[1], **values}
            front = NginxServer(
                servroot=Path(tmp) / "front",
                http_config=front_http % subst,
                config=front_config % subst,
                port=front_port or 0,
                workers=1,
                error_log_level="warn",
            )
            yield backend, front, Path(tmp)
    finally:
        consul.stop()


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Sample:
    requests_per_s: float
    non_2xx: int
    errors: int
    cpu_us: float  # the front worker's CPU time per request


def run_wrk(url: str, duration: int, connections: int, pid: int) -> Sample:
    """wrk -t1 against url; pid: the front worker whose CPU time is measured."""
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    cpu = cpu_seconds(pid) - cpu0
    total = re.search(r"(\d+) requests in", out)
    n = int(total.group(1)) if total else 0
    return Sample(
        requests_per_s=float(rps.group(1)) if rps else 0.0,
        non_2xx=int(bad.group(1)) if bad else 0,
        errors=sum(int(g) for g in errs.groups()) if errs else 0,
        cpu_us=1e6 * cpu / n if n else 0.0,
    )


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def machine() -> str:
    version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"nproc {os.cpu_count()}, {version}, front nginx 1 worker, loadavg {load}"
