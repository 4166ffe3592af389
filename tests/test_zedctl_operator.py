"""An operator's script, end to end: the real `zedctl` console script in subprocesses,
against `zedctl dev-consul` servers (one open, one ACL-protected), configured through
the environment as in a shell (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ZEDCUP_PREFIX,
CONSUL_CACERT) and through flags, which beat it.

What Consul holds is read straight from its HTTP API, never through zedctl.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from zedctl.devconsul.testing import free_port

ZEDCTL = Path(sys.executable).with_name("zedctl")
ACL_TOKEN = f"operator-{uuid.uuid4()}"

FILE = """\
config:
  session_ttl: 20
instances:
  web:
    healthcheck: { path: /health }
    pools:
      - name: primary
        hosts:
          - { name: web01, host: 10.0.0.1, port: 80 }
          - { name: web02, host: 10.0.0.2, port: 80, weight: 5 }
      - name: dr
        hosts:
          - { host: 10.0.1.1, port: "8080" }
  web2:
    pools:
      - hosts: [{ host: /run/app.sock }]
"""


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    token: str | None

    def keys(
        self, prefix: str, bookkeeping: bool = False
    ) -> dict[str, tuple[str | None, int, int]]:
        """Every key under prefix/: (value, flags, ModifyIndex); without zedctl's
        bookkeeping (applied copies, events) unless asked."""
        headers = {"X-Consul-Token": self.token} if self.token else {}
        resp = requests.get(f"{self.url}/v1/kv/{prefix}/?recurse", headers=headers, timeout=10)
        if resp.status_code == 404:
            return {}
        assert resp.status_code == 200, resp.text
        return {
            e["Key"]: (
                base64.b64decode(e["Value"]).decode() if e["Value"] is not None else None,
                e["Flags"],
                e["ModifyIndex"],
            )
            for e in resp.json()
            if bookkeeping or not any(f"/{t}/" in e["Key"] for t in ("applied", "events"))
        }

    def values(self, prefix: str) -> dict[str, str | None]:
        return {k: v for k, (v, _, _) in self.keys(prefix).items()}

    def put(self, key: str, value: str, **params: Any) -> None:
        headers = {"X-Consul-Token": self.token} if self.token else {}
        resp = requests.put(
            f"{self.url}/v1/kv/{key}", data=value.encode(), params=params, headers=headers
        )
        assert resp.status_code == 200 and resp.json() is True, resp.text

    def session(self) -> str:
        resp = requests.put(f"{self.url}/v1/session/create", json={"Name": "op", "TTL": "60s"})
        assert resp.status_code == 200, resp.text
        return str(resp.json()["ID"])


def _start(*args: str) -> Server:
    port = free_port()
    proc = subprocess.Popen(
        [str(ZEDCTL), "dev-consul", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the ready line, once it listens
    assert f"127.0.0.1:{port}" in line, proc.stderr.read() if proc.stderr else line
    token = args[args.index("--acl-token") + 1] if "--acl-token" in args else None
    return Server(proc, f"http://127.0.0.1:{port}", token)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    started = [_start(), _start("--acl-token", ACL_TOKEN)]
    yield started[0], started[1]
    for server in started:
        server.proc.terminate()
        server.proc.wait(timeout=10)
        for stream in (server.proc.stdout, server.proc.stderr):
            if stream:
                stream.close()


@dataclass
class Shell:
    """zedctl as an operator's shell runs it: settings in the environment."""

    env: dict[str, str]
    tmp: Path

    def __call__(
        self, *args: str, code: int = 0, input: str | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(ZEDCTL), *args],
            capture_output=True,
            text=True,
            input=input,
            env={**self.env, **env},
            timeout=60,
        )
        assert result.returncode == code, (
            f"zedctl {' '.join(args)}: exit {result.returncode}, wanted {code}\n"
            f"{result.stdout}{result.stderr}"
        )
        assert "Traceback" not in result.stderr
        return result

    def file(self, text: str, name: str = "zedcup.yaml") -> str:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return str(path)


def _shell(server: Server, tmp_path: Path) -> Shell:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "CONSUL_HTTP_ADDR": server.url.removeprefix("http://"),
        "ZEDCUP_PREFIX": f"op/{uuid.uuid4()}",
    }
    if server.token:
        env["CONSUL_HTTP_TOKEN"] = server.token
    return Shell(env, tmp_path)


@pytest.fixture
def sh(servers: tuple[Server, Server], tmp_path: Path) -> Shell:
    return _shell(servers[0], tmp_path)


@pytest.fixture
def consul(servers: tuple[Server, Server]) -> Server:
    return servers[0]


def test_validate_configure_inspect_status_remove(sh: Shell, consul: Server) -> None:
    p = sh.env["ZEDCUP_PREFIX"]
    path = sh.file(FILE)
    assert sh("validate", path).stdout == f"{path}: valid (2 instances, global config)\n"

    # --dry-run: the changes by meaning, and nothing written.
    plan = sh("configure", path, "--dry-run").stdout.splitlines()
    assert plan[:3] == [
        "+ global config session_ttl: 20",
        "+ instance web: 2 pools, 3 hosts",
        "+ instance web2: 1 pool, 1 host",
    ]
    assert plan[-1] == "dry run: 3 added, 0 changed, 0 removed; nothing written"
    assert consul.keys(p) == {}

    out = sh("configure", path).stdout
    assert "wrote instance web: 12 keys in 1 transaction (state kept)" in out
    assert out.endswith("3 added, 0 changed, 0 removed\n")
    stored = consul.values(p)
    assert stored[f"{p}/instances/web/pools/1/hosts/2/weight"] == "5"
    assert stored[f"{p}/instances/web/healthcheck/path"] == "/health"
    assert stored[f"{p}/config/session_ttl"] == "20"

    rows = [line.split() for line in sh("list").stdout.splitlines()]
    assert rows == [["INSTANCE", "POOLS", "HOSTS", "NOTE"], ["web", "2", "3"], ["web2", "1", "1"]]

    effective = yaml.safe_load(sh("get", "web").stdout)
    assert effective["healthcheck"]["interval"] == 60
    assert effective["pools"][1]["hosts"][0] == {
        "name": "1",
        "host": "10.0.1.1",
        "port": 8080,
        "up": True,
        "weight": 1,
    }
    raw = json.loads(sh("get", "web2", "--raw", "-o", "json").stdout)
    assert raw == {"pools": [{"hosts": [{"host": "/run/app.sock"}]}]}
    assert yaml.safe_load(sh("config", "show").stdout)["session_ttl"] == 20
    assert "instance 'nope' not found" in sh("get", "nope", code=1).stderr

    # export -> configure -> export gives the same file, in both formats.
    exported = sh("export").stdout
    out = sh("configure", "-", input=exported).stdout
    assert "instance web unchanged: nothing to write" in out
    assert sh("export").stdout == exported
    as_json = sh("export", "-o", "json").stdout
    sh("configure", sh.file(as_json, "export.json"))
    assert sh("export", "-o", "json").stdout == as_json

    # Status from the state keys the data plane writes, and the health-check lock.
    now = int(time.time())
    state = f"{p}/state/web"
    consul.put(f"{state}/primary/web01/errors", "2", flags=now - 5)
    consul.put(f"{state}/primary/web01/last_error", "connection refused", flags=now - 5)
    consul.put(f"{state}/primary/web02/down", "3 errors within 60s", flags=now - 120)
    consul.put(f"{state}/primary/web02/check", "Bad status code: 503", flags=now - 2)
    consul.put(f"{state}/dr/1/check", "ok", flags=now - 2)
    consul.put(f"{state}/dr/1/errors", "9", flags=now - 3600)  # window over: 0
    consul.put(f"{p}/state/web2/1/1/check", "ok", flags=now)
    # web2's state under the same pool and host names must not leak into web's.
    consul.put(f"{p}/state/web2/primary/web01/errors", "7", flags=now)
    consul.put(f"{p}/state/web2/primary/web01/down", "elsewhere", flags=now)
    consul.put(f"{p}/locks/healthcheck", "node-a", acquire=consul.session())

    report = json.loads(sh("status", "web", "-o", "json").stdout)
    assert report["healthcheck_lock"] == "node-a"
    assert [i["name"] for i in report["instances"]] == ["web"]  # not web2
    hosts = {h["host"]: h for h in report["instances"][0]["hosts"]}
    assert (hosts["web01"]["state"], hosts["web01"]["errors"]) == ("up", 2)
    assert hosts["web01"]["last_error"] == "connection refused"
    assert hosts["web02"]["state"] == "down" and hosts["web02"]["down_since"] == now - 120
    assert hosts["web02"]["reason"] == "marked down: 3 errors within 60s"
    assert (hosts["1"]["last_check"], hosts["1"]["errors"]) == ("ok", 0)
    table = sh("status").stdout.splitlines()
    assert table[0] == "health-check lock: node-a"
    web02 = next(line for line in table if line.split()[:2] == ["primary", "web02"])
    assert "down (marked down: 3 errors within 60s, 2m ago)" in web02
    assert "Bad status code: 503" in web02

    # Runtime changes, then remove: web goes with its state, web2 stays with its own.
    assert sh("host", "down", "web", "primary", "web01").stdout == (
        "host web/primary/web01: held down by operator\n"
    )
    assert sh("host", "weight", "web", "dr", "1", "7").stdout == "web/dr/1: weight (default) -> 7\n"
    assert "must be at least 1, got 0" in sh("host", "weight", "web", "dr", "1", "0", code=1).stderr
    status = json.loads(sh("status", "web", "-o", "json").stdout)["instances"][0]["hosts"]
    assert status[0]["state"] == "down" and status[0]["reason"] == "held down by operator"
    assert (
        sh("remove", "web", "--yes").stdout
        == "removed instance web (13 config keys) and its state\n"
    )
    left = consul.values(p)
    assert not any(k.startswith((f"{p}/instances/web/", f"{p}/state/web/")) for k in left)
    assert f"{p}/state/web2/1/1/check" in left
    assert sum(k.startswith(f"{p}/instances/web2/") for k in left) == 1
    assert "instance 'web' not found" in sh("remove", "web", "--yes", code=1).stderr
    assert [line.split()[0] for line in sh("list").stdout.splitlines()] == ["INSTANCE", "web2"]


def test_a_300_host_instance(sh: Shell, consul: Server) -> None:
    p = sh.env["ZEDCUP_PREFIX"]
    hosts = [
        {"name": f"h{i:03}", "host": f"10.1.{i // 250}.{i % 250}", "port": 80} for i in range(300)
    ]
    doc = {"instances": {"big": {"pools": [{"name": "main", "hosts": hosts}]}}}
    path = sh.file(yaml.safe_dump(doc))
    out = sh("configure", path).stdout
    assert "wrote instance big: 901 keys in 15 transactions (state kept)" in out
    stored = consul.keys(p)
    assert len(stored) == 901 and f"{p}/instances/big/_pending" not in stored
    assert stored[f"{p}/instances/big/pools/1/hosts/300/name"][0] == "h299"

    hosts[150]["weight"] = 3
    changed = sh.file(yaml.safe_dump(doc), "changed.yaml")
    diff = sh("configure", changed, "--dry-run").stdout.splitlines()
    assert diff == [
        "+ instance big pool main host h150 weight: 3",
        "would write instance big: 902 keys in 15 transactions (state kept)",
        "dry run: 1 added, 0 changed, 0 removed; nothing written",
    ]
    assert consul.keys(p) == stored
    sh("configure", changed)
    report = json.loads(sh("status", "big", "-o", "json").stdout)
    assert len(report["instances"][0]["hosts"]) == 300
    exported = sh("export").stdout
    assert yaml.safe_load(exported)["instances"]["big"]["pools"][0]["hosts"][150]["weight"] == 3
    sh("configure", sh.file(exported, "exported.yaml"))
    assert sh("export").stdout == exported


HOST0 = ("instances", "web", "pools", 0, "hosts", 0)
POOL0 = ("instances", "web", "pools", 0)
BAD_INPUTS: list[tuple[str, tuple[Any, ...], Any, str]] = [
    ("an unknown key", (*HOST0, "colour"), "red", "pools[1].hosts[1].colour: unknown field"),
    (
        "a wrong type",
        (*HOST0, "up"),
        "maybe",
        'pools[1].hosts[1].up: expected a boolean (true or false), got "maybe"',
    ),
    ("a port out of range", (*HOST0, "port"), 70000, "port: must be at most 65535, got 70000"),
    ("a weight of 0", (*HOST0, "weight"), 0, "hosts[1].weight: must be at least 1, got 0"),
    ("a negative timeout", (*POOL0, "timeout"), -5, "pools[1].timeout: must be at least 1, got -5"),
    (
        "an unknown method",
        (*POOL0, "method"),
        "hash",
        'must be one of: weighted_rr, chash, least_conn, ewma, got "hash"',
    ),
    (
        "a malformed status code",
        (*POOL0, "status_codes"),
        ["5xx", "5x0"],
        "pools[1].status_codes[2]: not a status code pattern: expected three characters like "
        "'500', '50x' or '5xx' (first digit 1-5), got \"5x0\"",
    ),
    (
        "a host without address",
        (*POOL0, "hosts", 1),
        {"name": "b", "port": 81},
        "pools[1].hosts[2].host: required field is missing",
    ),
    (
        "a zero health-check interval",
        ("instances", "web", "healthcheck"),
        {"interval": 0},
        "instances.web.healthcheck.interval: must be greater than 0, got 0",
    ),
    (
        "a bad global value",
        ("config", "consul_wait_time"),
        0,
        "config.consul_wait_time: must be at least 1",
    ),
    ("a name with '/'", ("instances", "a/b"), {}, 'instances["a/b"]: an instance name must not'),
]


def _bad_file(path: tuple[Any, ...], value: Any) -> str:
    doc: dict[str, Any] = {
        "instances": {
            "web": {"pools": [{"name": "p", "hosts": [{"name": "a", "host": "h", "port": 80}]}]}
        }
    }
    node: Any = doc
    for seg in path[:-1]:
        node = node.setdefault(seg, {}) if isinstance(node, dict) else node[seg]
    if isinstance(node, list) and path[-1] == len(node):
        node.append(value)
    else:
        node[path[-1]] = value
    return yaml.safe_dump(doc)


def test_bad_input_is_refused_with_the_field_named_and_consul_untouched(
    sh: Shell, consul: Server
) -> None:
    p = sh.env["ZEDCUP_PREFIX"]
    sh("configure", sh.file(FILE))
    before = consul.keys(p)
    for n, (kind, where, value, message) in enumerate(BAD_INPUTS):
        path = sh.file(_bad_file(where, value), "bad.yaml")
        other = ("validate", path) if n % 2 else ("configure", path, "--dry-run")
        for args in (("configure", path), other):
            err = sh(*args, code=1).stderr
            assert message in err, f"{kind}: {err}"
            assert err.startswith(f"Error: {path}: 1 problem\n"), f"{kind}: {err}"
        assert consul.keys(p) == before, f"{kind}: Consul changed"

    # Every problem at once, and syntax errors with file, line and column.
    both = yaml.safe_load(_bad_file((*HOST0, "port"), 0))
    both["instances"]["web"]["pools"][0]["hosts"][0]["weight"] = 0
    err = sh("configure", sh.file(yaml.safe_dump(both), "both.yaml"), code=1).stderr
    assert "2 problems" in err and "port: must be at least 1, got 0" in err
    assert "weight: must be at least 1, got 0" in err
    broken = sh.file("instances:\n  web:\n    pools: [\n  - x\n", "broken.yaml")
    assert sh("configure", broken, code=1).stderr == (
        f"Error: {broken}:4:3: invalid YAML: while parsing a flow node: "
        "expected the node content, but found '-'\n"
    )
    err = sh("validate", "-", code=1, input="instances:\n\tweb: {}\n").stderr
    assert err.startswith("Error: <stdin>:2:1: invalid YAML")
    assert sh("validate", "-", input=FILE).stdout == "<stdin>: valid (2 instances, global config)\n"
    assert consul.keys(p) == before


def test_errors_and_environment(sh: Shell, consul: Server, tmp_path: Path) -> None:
    p = sh.env["ZEDCUP_PREFIX"]
    path = sh.file(FILE)
    missing = str(tmp_path / "missing.yaml")
    assert (
        sh("configure", missing, code=2).stderr == f"Error: cannot read {missing}: no such file\n"
    )
    closed = f"127.0.0.1:{free_port()}"
    for args in (("list",), ("configure", path), ("status",)):
        err = sh(*args, code=3, CONSUL_HTTP_ADDR=closed).stderr
        assert f"cannot reach Consul at http://{closed}" in err and "Connection refused" in err
    assert "unknown scheme 'ftp'" in sh("--consul", "ftp://x", "list", code=2).stderr

    # Flags beat the environment.
    sh("configure", path, CONSUL_HTTP_ADDR=closed, code=3)
    sh("--consul", consul.url, "configure", path, CONSUL_HTTP_ADDR=closed)
    other = f"op/{uuid.uuid4()}"
    sh(
        "--prefix",
        other,
        "configure",
        sh.file("instances:\n  solo: {pools: [{hosts: [{host: /s}]}]}\n", "solo.yaml"),
    )
    assert set(consul.values(other)) == {f"{other}/instances/solo/pools/1/hosts/1/host"}
    assert [row.split()[0] for row in sh("list").stdout.splitlines()[1:]] == ["web", "web2"]

    # CONSUL_CACERT: used for HTTPS only; a plain HTTP Consul works with it set.
    ca = sh.file("not a certificate", "ca.pem")
    assert "web" in sh("list", CONSUL_CACERT=ca).stdout
    https = f"https://127.0.0.1:{free_port()}"
    err = sh("--consul", https, "list", code=2, CONSUL_CACERT=str(tmp_path / "none.pem")).stderr
    assert "(--ca-cert / CONSUL_CACERT): no such file" in err
    err = sh("--consul", consul.url.replace("http:", "https:"), "list", code=3).stderr
    assert "TLS error" in err and "does not seem to speak TLS: use http://" in err
    # Only the --prefix run wrote elsewhere: ZEDCUP_PREFIX's tree holds web and web2 alone.
    assert {k.split("/")[3] for k in consul.values(f"{p}/instances")} == {"web", "web2"}


def test_an_acl_protected_consul(servers: tuple[Server, Server], tmp_path: Path) -> None:
    acl = servers[1]
    sh = _shell(acl, tmp_path)
    p = sh.env["ZEDCUP_PREFIX"]
    path = sh.file(FILE)
    no_token = {**sh.env}
    del no_token["CONSUL_HTTP_TOKEN"]
    bare = Shell(no_token, tmp_path)
    err = bare("configure", path, code=3).stderr
    assert f"Consul at {acl.url} denied access" in err and "403" in err
    assert (
        "an ACL token is needed: --token, --token-file, CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE"
        in err
    )
    err = sh("list", code=3, CONSUL_HTTP_TOKEN="wrong").stderr
    assert "Consul does not know the token given" in err
    assert acl.keys(p) == {}

    assert sh("configure", path).stdout.endswith("3 added, 0 changed, 0 removed\n")
    assert [row.split()[0] for row in sh("list").stdout.splitlines()[1:]] == ["web", "web2"]
    # --token beats CONSUL_HTTP_TOKEN.
    sh("--token", ACL_TOKEN, "status", CONSUL_HTTP_TOKEN="wrong")
    bare("--token", ACL_TOKEN, "remove", "web2", "--yes")
    assert not any("/web2/" in k for k in acl.keys(p))
