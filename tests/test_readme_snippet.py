"""The README's nginx configuration, run as pasted (only paths and ports replaced).

Real dev-consul, the Debian nginx (or OpenResty) with the snippet as its nginx.conf,
and two real backends: one answering, one a closed port. Both request paths of the
snippet answer the backend's body; a pool with no usable host gives the status the
snippet promises (502); failures are counted through zedcup.log().
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from zedctl.devconsul import DevConsul
from zedctl.devconsul.testing import free_port

ROOT = Path(__file__).resolve().parent.parent


def snippet() -> str:
    text = (ROOT / "README.md").read_text("utf-8")
    section = text.split("### nginx configuration", 1)[1]
    return re.search(r"```nginx\n(.*?)```", section, re.S).group(1)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def put_instance(consul: int, prefix: str, hosts: list[tuple[str, int]]) -> None:
    for i, (name, port) in enumerate(hosts, 1):
        for key, value in (("name", name), ("host", "127.0.0.1"), ("port", str(port))):
            req = urllib.request.Request(
                f"http://127.0.0.1:{consul}/v1/kv/{prefix}/instances/web/pools/1/hosts/{i}/{key}",
                data=value.encode(),
                method="PUT",
            )
            urllib.request.urlopen(req, timeout=5).read()


def test_readme_nginx_snippet_works_as_pasted(tmp_path: Path) -> None:
    binary = shutil.which("openresty") or shutil.which("nginx")
    if not binary:
        pytest.skip("no nginx")
    conf = snippet()
    if shutil.which("openresty"):
        conf = re.sub(r"(?m)^load_module .*\n", "", conf)
    front, live, dead = free_port(), free_port(), free_port()
    consul = DevConsul(host="127.0.0.1", port=0)
    consul.start()
    cport = consul.address[1]
    conf = conf.replace("/path/to/zedcup/lua/", f"{ROOT}/lua/")
    conf = conf.replace("port = 8500", f"port = {cport}")
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{front};")
    # the backend, in the same nginx
    conf = conf.rstrip().removesuffix("}") + (
        f"    server {{ listen 127.0.0.1:{live}; location / {{ return 200 'backend'; }} }}\n}}\n"
    )
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(conf)
    globals_ = f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/logs/error.log info;"
    proc = subprocess.Popen(
        [binary, "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf"), "-g", globals_],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        wait_port(front, deadline)
        put_instance(cport, "zedcup", [("web01", live)])
        # both paths answer the backend once the node's watcher has the instance
        while time.monotonic() < deadline:
            if get(f"http://127.0.0.1:{front}/proxy/")[1] == "backend":
                break
            time.sleep(0.1)
        assert get(f"http://127.0.0.1:{front}/proxy/") == (200, "backend")
        assert get(f"http://127.0.0.1:{front}/") == (200, "backend")
        # the only host on a closed port: 502 on both paths, never 500
        put_instance(cport, "zedcup", [("web01", dead)])
        statuses = set()
        while time.monotonic() < deadline + 10:
            status, _ = get(f"http://127.0.0.1:{front}/proxy/")
            statuses.add(status)
            log = (tmp_path / "logs" / "error.log").read_text()
            if "zedcup: No available upstream hosts" in log and "is down" in log:
                break
            time.sleep(0.05)
        log = (tmp_path / "logs" / "error.log").read_text()
        assert statuses <= {200, 502}, statuses
        # max_errors (3) connect errors counted by zedcup.log(): the host went down
        assert "web/1/web01 is down" in log
        assert "zedcup: No available upstream hosts" in log
        assert get(f"http://127.0.0.1:{front}/proxy/")[0] == 502
        assert "[emerg]" not in log and "[alert]" not in log
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        consul.stop()
