"""zedctl's commands against a real (embedded or external) Consul, through click's CliRunner.

Every test uses a fresh key prefix (zt/<uuid>) and reads what zedctl wrote straight from
Consul's HTTP API.
"""

from __future__ import annotations

import base64
import json
import queue
import shutil
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner, Result
from zedctl.cli import main
from zedctl.configfile import check_document, parse_text
from zedctl.consulapi import ConsulKV, ConsulSettings, KVEntry
from zedctl.devconsul import DevConsul
from zedctl.devconsul.testing import RawConsul, free_port
from zedctl.errors import Conflict, ConsulError
from zedctl.layout import Layout
from zedctl.ops import set_host_field
from zedctl.schema import Schema
from zedctl.testnginx.consul import ConsulEndpoint

SCHEMA = Schema.load()
ZEDCTL = Path(sys.executable).with_name("zedctl")
ENV_VARS = ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "ZEDCUP_PREFIX", "CONSUL_CACERT")
VECTORS = json.loads((Path(__file__).parent / "vectors" / "schema.json").read_text("utf-8"))

README_FILE = """\
# The seed README's example, as a zedctl config file (port given as "80").
instances:
  test:
    pools:
      - name: primary
        timeout: 100
        healthcheck:
          path: /_health
        hosts:
          - { name: web01, host: 10.10.10.1, port: 80 }
          - { name: web02, host: 10.10.10.2, port: 80 }
      - name: secondary
        hosts:
          - name: dr01
            host: 10.20.20.1
            weight: 10
            port: "80"
            healthcheck:
              path: /dr_check
              headers:
                Host: www.example.com
"""

RICH_FILE = """\
config:
  session_ttl: 20
  cache_update_interval: 0.5
instances:
  web:
    ssl: { ssl_verify: false, sni_name: www.example.com }
    healthcheck: true
    pools:
      - name: primary
        status_codes: []
        error_timeout: 2.5
        hosts:
          - { name: web01, host: 10.0.0.1, port: 8080, weight: 3 }
          - { host: unix:/run/web.sock, up: false, healthcheck: false }
      - hosts:
          - { name: "2", host: 10.0.0.3, port: "80" }
        healthcheck: { method: HEAD, headers: { Host: www.example.com }, status_codes: [50x] }
  web2:
    pools:
      - hosts: [{ host: 10.9.9.9, port: 9 }]
"""


def state_of(
    raw: RawConsul, prefix: str, bookkeeping: bool = False
) -> dict[str, tuple[str | None, int]]:
    """Every key under prefix/ with its value and ModifyIndex; without zedctl's
    bookkeeping (the applied copies and the event log) unless asked."""
    resp = raw.get(f"/v1/kv/{prefix}/?recurse")
    if resp.status_code == 404:
        return {}
    assert resp.status_code == 200, resp.text
    out = {}
    for entry in resp.json():
        if not bookkeeping and any(f"/{t}/" in entry["Key"] for t in ("applied", "events")):
            continue
        value = entry["Value"]
        out[entry["Key"]] = (
            base64.b64decode(value).decode() if value is not None else None,
            entry["ModifyIndex"],
        )
    return out


def values_of(raw: RawConsul, prefix: str) -> dict[str, str | None]:
    return {k: v for k, (v, _) in state_of(raw, prefix).items()}


def put(raw: RawConsul, key: str, value: str, flags: int = 0, **params: str) -> None:
    query = "&".join([f"flags={flags}", *(f"{k}={v}" for k, v in params.items())])
    resp = raw.put(f"/v1/kv/{key}?{query}", data=value.encode())
    assert resp.status_code == 200 and resp.json() is True, resp.text


@dataclass
class Zed:
    """zedctl pointed at the test's Consul and prefix."""

    url: str
    prefix: str
    token: str | None
    tmp: Path

    def __call__(
        self,
        *args: str,
        code: int = 0,
        input: str | None = None,
        env: dict[str, str] | None = None,
        globals_: bool = True,
    ) -> Result:
        base: list[str] = []
        if globals_:
            base = ["--consul", self.url, "--prefix", self.prefix]
            if self.token:
                base += ["--token", self.token]
        environment: dict[str, str | None] = dict.fromkeys(ENV_VARS)
        environment.update(env or {})
        result = CliRunner().invoke(
            main, [*base, *args], input=input, env=environment, catch_exceptions=False
        )
        assert result.exit_code == code, (
            f"zedctl {' '.join(args)}: exit {result.exit_code}, wanted {code}\n{result.output}"
        )
        assert "Traceback" not in result.output
        return result

    def file(self, text: str, name: str = "config.yaml") -> str:
        path = self.tmp / name
        path.write_text(text, encoding="utf-8")
        return str(path)


@pytest.fixture
def zprefix(raw_consul: RawConsul) -> Iterator[str]:
    prefix = f"zt/{uuid.uuid4()}"
    yield prefix
    raw_consul.delete(f"/v1/kv/{prefix}/?recurse")


@pytest.fixture
def zed(consul: ConsulEndpoint, zprefix: str, tmp_path: Path) -> Zed:
    return Zed(consul.url, zprefix, consul.token, tmp_path)


def normalised_file(text: str) -> Any:
    config, problems = check_document(SCHEMA, parse_text(text, "x.yaml"))
    assert problems == []
    return config


# -- configure and read back ------------------------------------------------------------


def test_configure_writes_the_readme_key_layout(zed: Zed, raw_consul: RawConsul) -> None:
    result = zed("configure", zed.file(README_FILE))
    assert "wrote instance test: 16 keys in 1 transaction (state kept)" in result.output
    assert "1 added, 0 changed, 0 removed" in result.output
    # The same keys as the shared vector for the README example (which the Lua suite checks).
    case = next(c for c in VECTORS["cases"] if c["name"].startswith("README example"))
    expected = {f"{zed.prefix}/instances/test/{k}": v for k, v in case["kv"].items()}
    assert values_of(raw_consul, zed.prefix) == expected


def test_get_and_export_round_trip(zed: Zed, raw_consul: RawConsul) -> None:
    zed("configure", zed.file(RICH_FILE))
    config = normalised_file(RICH_FILE)
    raw = json.loads(zed("get", "web", "--raw", "-o", "json").stdout)
    assert raw == config.instances["web"]
    assert raw["ssl"] == {"verify": False, "sni_name": "www.example.com"}  # alias mapped
    effective = json.loads(zed("get", "web", "-o", "json").stdout)
    assert effective == SCHEMA.effective("instance", config.instances["web"])
    assert effective["healthcheck"]["headers"] == {"User-Agent": "zedcup/0.1.0 HTTP Check (lua)"}
    assert effective["pools"][0]["status_codes"] == []
    assert effective["pools"][1]["name"] == "2" and effective["pools"][1]["hosts"][0]["port"] == 80
    assert yaml.safe_load(zed("get", "web").stdout) == effective

    exported = zed("export").stdout
    assert yaml.safe_load(exported)["config"] == {"cache_update_interval": 0.5, "session_ttl": 20}
    stored = values_of(raw_consul, zed.prefix)
    zed("configure", "-", input=exported)
    assert values_of(raw_consul, zed.prefix) == stored
    assert zed("export").stdout == exported
    as_json = zed("export", "-o", "json").stdout
    zed("configure", zed.file(as_json, "export.json"))
    assert zed("export").stdout == exported


def test_configure_replaces_an_instance_as_a_whole_and_only_it(
    zed: Zed, raw_consul: RawConsul
) -> None:
    p = zed.prefix
    zed("configure", zed.file(RICH_FILE))
    put(raw_consul, f"{p}/instances/web/stray", "x")
    for inst in ("web", "web2"):
        put(raw_consul, f"{p}/state/{inst}/1/1/errors", "2", flags=1700000000)
    before = values_of(raw_consul, p)

    one_host = "instances:\n  web:\n    pools:\n      - hosts: [{host: 10.1.1.1, port: 1}]\n"
    zed("configure", zed.file(one_host))
    after = values_of(raw_consul, p)
    assert {k: v for k, v in after.items() if k.startswith(f"{p}/instances/web/")} == {
        f"{p}/instances/web/pools/1/hosts/1/host": "10.1.1.1",
        f"{p}/instances/web/pools/1/hosts/1/port": "1",
    }
    assert not any(k.startswith(f"{p}/state/web/") for k in after)
    # web2 (whose name starts with "web"), its state and the global config are untouched.
    for k, v in before.items():
        if not k.startswith((f"{p}/instances/web/", f"{p}/state/web/")):
            assert after[k] == v


def test_dry_run_prints_the_diff_and_writes_nothing(zed: Zed, raw_consul: RawConsul) -> None:
    zed("configure", zed.file(README_FILE))
    before = state_of(raw_consul, zed.prefix)
    changed = (
        README_FILE.replace("timeout: 100", "timeout: 200")
        .replace("      - name: secondary\n", "      - \n")
        .replace("weight: 10", "weight: 10\n            up: false")
    )
    result = zed("configure", zed.file(changed), "--dry-run")
    # By meaning: pools matched by name (the unnamed second pool is "2", a new pool).
    assert result.output.splitlines()[:3] == [
        "~ instance test pool primary timeout: 100 -> 200",
        "+ instance test pool 2: 1 host",
        "- instance test pool secondary (was 1 host)",
    ]
    assert "dry run: 1 added, 1 changed, 1 removed; nothing written" in result.output
    assert state_of(raw_consul, zed.prefix) == before


def test_prune_removes_instances_the_file_does_not_name(zed: Zed, raw_consul: RawConsul) -> None:
    p = zed.prefix
    host = "{pools: [{hosts: [{host: h, port: 1}]}]}"
    zed("configure", zed.file(f"instances:\n  a: {host}\n  b: {host}\n  ab: {host}\n"))
    put(raw_consul, f"{p}/state/b/1/1/errors", "1")
    only_a = zed.file(f"instances:\n  a: {host}\n")
    zed("configure", only_a)
    assert {k.split("/")[3] for k in values_of(raw_consul, f"{p}/instances")} == {"a", "b", "ab"}

    result = zed("configure", only_a, "--prune")
    assert "removed instance ab and its state" in result.output
    assert "removed instance b and its state" in result.output
    keys = values_of(raw_consul, p)
    assert {k.split("/")[3] for k in keys if k.startswith(f"{p}/instances/")} == {"a"}
    assert not any(k.startswith(f"{p}/state/") for k in keys)


def test_global_config_is_replaced_only_when_the_file_has_it(
    zed: Zed, raw_consul: RawConsul
) -> None:
    p = zed.prefix
    zed("configure", zed.file("config:\n  session_ttl: 20\n  watcher_interval: 2\n"))
    assert values_of(raw_consul, f"{p}/config") == {
        f"{p}/config/session_ttl": "20",
        f"{p}/config/watcher_interval": "2",
    }
    zed("configure", zed.file("config:\n  session_ttl: 40\n"))
    assert values_of(raw_consul, f"{p}/config") == {f"{p}/config/session_ttl": "40"}
    zed("configure", zed.file("instances: {}\n"))
    assert values_of(raw_consul, f"{p}/config") == {f"{p}/config/session_ttl": "40"}

    shown = yaml.safe_load(zed("config", "show").stdout)
    assert shown == {**SCHEMA.effective("global", {}), "session_ttl": 40}
    assert json.loads(zed("config", "show", "--raw", "-o", "json").stdout) == {"session_ttl": 40}


def test_config_show_without_a_stored_config_shows_defaults(zed: Zed) -> None:
    assert yaml.safe_load(zed("config", "show").stdout)["consul_wait_time"] == 600
    assert json.loads(zed("config", "show", "--raw", "-o", "json").stdout) == {}


def test_a_300_host_instance_takes_several_transactions(zed: Zed, raw_consul: RawConsul) -> None:
    hosts = [
        {"name": f"h{i}", "host": f"10.0.{i // 250}.{i % 250}", "port": 8000 + i}
        for i in range(300)
    ]
    doc = {"instances": {"big": {"pools": [{"name": "all", "hosts": hosts}]}}}
    result = zed("configure", zed.file(json.dumps(doc), "big.json"))
    keys = 1 + 300 * 3
    txns = -(-(keys + 4) // 63)  # one check-index per transaction besides the 4 ops
    assert f"wrote instance big: {keys} keys in {txns} transactions" in result.output
    stored = values_of(raw_consul, f"{zed.prefix}/instances/big")
    assert len(stored) == keys and f"{zed.prefix}/instances/big/_pending" not in stored

    got = json.loads(zed("get", "big", "-o", "json").stdout)
    assert [h["name"] for h in got["pools"][0]["hosts"]] == [f"h{i}" for i in range(300)]
    assert got["pools"][0]["hosts"][299] == {
        "name": "h299",
        "host": "10.0.1.49",
        "port": 8299,
        "up": True,
        "weight": 1,
    }
    assert "big       1      300" in zed("list").stdout


def test_a_tree_marked_pending_is_not_read(zed: Zed, raw_consul: RawConsul) -> None:
    zed("configure", zed.file(README_FILE))
    put(raw_consul, f"{zed.prefix}/instances/test/_pending", "zedctl elsewhere 1700000000")
    result = zed("get", "test", code=1)
    assert "is being written (_pending: zedctl elsewhere 1700000000)" in result.output
    assert "being written (_pending)" in zed("list").stdout
    zed("export", code=1)
    # status says so, and shows the hosts of the last config zedctl applied.
    shown = zed("status").stdout
    assert "being written (_pending): nodes keep serving the last good config" in shown
    assert "hosts of the last config zedctl applied" in shown and "web01" in shown
    zed("host", "down", "test", "primary", "web01", code=1)
    # A configure replaces the tree, marker included.
    zed("configure", zed.file(README_FILE))
    zed("get", "test")


def test_a_hand_edited_invalid_value_is_reported_with_its_key(
    zed: Zed, raw_consul: RawConsul
) -> None:
    zed("configure", zed.file(README_FILE))
    put(raw_consul, f"{zed.prefix}/instances/test/pools/1/hosts/1/port", "eighty")
    result = zed("get", "test", code=1)
    assert (
        f'{zed.prefix}/instances/test/pools/1/hosts/1/port: expected an integer, got "eighty"'
        in (result.output)
    )


def test_list(zed: Zed) -> None:
    assert zed("list").stdout == "no instances\n"
    zed("configure", zed.file(RICH_FILE))
    lines = zed("list").stdout.splitlines()
    assert lines[0].split() == ["INSTANCE", "POOLS", "HOSTS", "NOTE"]
    assert [line.split() for line in lines[1:]] == [["web", "2", "3"], ["web2", "1", "1"]]


# -- status -----------------------------------------------------------------------------


def test_status_reads_the_state_keys_and_the_lock(
    zed: Zed, raw_consul: RawConsul, consul: ConsulEndpoint
) -> None:
    p = zed.prefix
    zed("configure", zed.file(README_FILE))
    now = int(time.time())
    put(raw_consul, f"{p}/state/test/primary/web01/errors", "2", flags=now - 5)
    put(raw_consul, f"{p}/state/test/primary/web01/last_error", "connection refused", flags=now - 5)
    put(raw_consul, f"{p}/state/test/primary/web02/down", "max_errors", flags=now - 30)
    put(raw_consul, f"{p}/state/test/primary/web02/check", "Bad status code: 500", flags=now - 3)
    put(raw_consul, f"{p}/state/test/secondary/dr01/check", "ok", flags=now - 1)
    resp = raw_consul.put("/v1/session/create", data=json.dumps({"Name": "zt", "TTL": "60s"}))
    session = resp.json()["ID"]
    try:
        put(raw_consul, f"{p}/locks/healthcheck", "node-a", acquire=session)
        report = json.loads(zed("status", "-o", "json").stdout)
        assert report["healthcheck_lock"] == "node-a"
        (inst,) = report["instances"]
        hosts = {h["host"]: h for h in inst["hosts"]}
        assert hosts["web01"] == {
            "pool": "primary",
            "host": "web01",
            "address": "10.10.10.1:80",
            "state": "up",
            "reason": "",
            "errors": 2,
            "errors_at": now - 5,
            "last_error": "connection refused",
            "last_error_at": now - 5,
            "down_since": None,
            "last_check": None,
            "last_check_at": None,
            "held": None,
            "held_since": None,
            "source": "config",
            "seen_differently": [],
        }
        assert hosts["web02"]["state"] == "down" and hosts["web02"]["down_since"] == now - 30
        assert hosts["web02"]["last_check"] == "Bad status code: 500"
        assert hosts["dr01"]["last_check"] == "ok" and hosts["dr01"]["pool"] == "secondary"

        table = zed("status", "test").stdout
        assert "health-check lock: node-a" in table
        row = next(line for line in table.splitlines() if line.split()[:2] == ["primary", "web02"])
        assert "down (marked down: max_errors, 3" in row and "Bad status code: 500" in row
    finally:
        raw_consul.put(f"/v1/session/destroy/{session}")
    assert "nobody" in zed("status").stdout

    zed("host", "down", "test", "secondary", "dr01", "--reason", "disk swap")
    dr01 = json.loads(zed("status", "-o", "json").stdout)["instances"][0]["hosts"][2]
    assert dr01["state"] == "down" and dr01["reason"] == "held down by operator: disk swap"
    assert dr01["held"] == "disk swap" and dr01["held_since"] >= now
    assert "instance 'nope' not found" in zed("status", "nope", code=1).output


def test_status_watch_prints_again_on_change(zed: Zed, raw_consul: RawConsul) -> None:
    zed("configure", zed.file(README_FILE))
    proc = subprocess.Popen(
        [
            str(ZEDCTL),
            "--consul",
            zed.url,
            "--prefix",
            zed.prefix,
            "status",
            "--watch",
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", **({"CONSUL_HTTP_TOKEN": zed.token} if zed.token else {})},
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True).start()
    try:
        first = json.loads(lines.get(timeout=20))
        assert first["instances"][0]["hosts"][0]["errors"] == 0
        now = int(time.time())
        put(raw_consul, f"{zed.prefix}/state/test/primary/web01/errors", "4", flags=now)
        deadline = time.monotonic() + 20
        while True:
            update = json.loads(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            if update["instances"][0]["hosts"][0]["errors"] == 4:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        stdout.close()
        if proc.stderr:
            proc.stderr.close()


# -- runtime host changes ---------------------------------------------------------------


def test_host_down_up_and_weight(zed: Zed, raw_consul: RawConsul) -> None:
    zed("configure", zed.file(README_FILE))
    base = f"{zed.prefix}/instances/test/pools/1/hosts/2"
    hold = f"{zed.prefix}/state/test/primary/web02/admin_down"
    before = values_of(raw_consul, zed.prefix)

    # host down writes runtime state (the operator's hold), never the config tree.
    out = zed("host", "down", "test", "primary", "web02", "--reason", "kernel update").stdout
    assert out == "host test/primary/web02: held down by operator (kernel update)\n"
    after = values_of(raw_consul, zed.prefix)
    assert after == {**before, hold: "kernel update"}
    assert state_of(raw_consul, zed.prefix)  # flags: since when
    resp = raw_consul.get(f"/v1/kv/{hold}")
    assert abs(resp.json()[0]["Flags"] - time.time()) < 60

    # host up deletes exactly what host down wrote: Consul is as before.
    assert zed("host", "up", "test", "1", "2").stdout == (
        "host test/primary/web02: operator hold removed\n"
    )
    assert values_of(raw_consul, zed.prefix) == before
    assert "nothing to undo" in zed("host", "up", "test", "1", "2").stdout
    # ... so applying the unchanged file again changes nothing.
    assert "instance test unchanged" in zed("apply", zed.file(README_FILE)).stdout

    zed("host", "weight", "test", "primary", "web02", "7")
    assert values_of(raw_consul, zed.prefix)[f"{base}/weight"] == "7"
    assert (
        json.loads(zed("get", "test", "-o", "json").stdout)["pools"][0]["hosts"][1]["weight"] == 7
    )

    # By index when no name matches: pool 2, host 1.
    zed("host", "weight", "test", "2", "1", "3")
    assert (
        values_of(raw_consul, zed.prefix)[f"{zed.prefix}/instances/test/pools/2/hosts/1/weight"]
        == "3"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("host", "down", "nope", "1", "1"), "instance 'nope' not found"),
        (
            ("host", "down", "test", "tertiary", "1"),
            "pool 'tertiary' not found in instance 'test'"
            " (by name or 1-based index: primary, secondary)",
        ),
        (("host", "up", "test", "primary", "9"), "host '9' not found in pool 'primary'"),
        (("host", "weight", "test", "primary", "web01", "0"), "weight: must be at least 1, got 0"),
        (
            ("host", "weight", "test", "primary", "web01", "heavy"),
            'weight: expected an integer, got "heavy"',
        ),
    ],
)
def test_host_changes_refused(
    zed: Zed, raw_consul: RawConsul, args: tuple[str, ...], message: str
) -> None:
    zed("configure", zed.file(README_FILE))
    before = state_of(raw_consul, zed.prefix)
    assert message in zed(*args, code=1).output
    assert state_of(raw_consul, zed.prefix) == before


class _RacingKV(ConsulKV):
    """A ConsulKV that lets another writer change a key right after each tree read."""

    def __init__(self, settings: ConsulSettings, key: str, value: str) -> None:
        super().__init__(settings)
        self.race = (key, value)

    def get_tree(self, prefix: str) -> dict[str, KVEntry]:
        entries = super().get_tree(prefix)
        other = ConsulKV(self.settings)
        assert other.put(*self.race)
        return entries


def test_host_change_never_overwrites_a_concurrent_change(zed: Zed, raw_consul: RawConsul) -> None:
    zed("configure", zed.file(README_FILE))
    key = f"{zed.prefix}/instances/test/pools/1/hosts/1/weight"
    settings = ConsulSettings(address=zed.url, token=zed.token)
    racing = _RacingKV(settings, key, "50")
    with pytest.raises(Conflict, match="changed while it was being set"):
        set_host_field(racing, Layout(zed.prefix), SCHEMA, "test", "primary", "web01", "weight", 9)
    assert values_of(raw_consul, zed.prefix)[key] == "50"
    # Without a race, the same change goes through.
    set_host_field(
        ConsulKV(settings), Layout(zed.prefix), SCHEMA, "test", "primary", "web01", "weight", 9
    )
    assert values_of(raw_consul, zed.prefix)[key] == "9"


# -- remove -----------------------------------------------------------------------------


def test_remove_takes_config_and_state_and_nothing_else(zed: Zed, raw_consul: RawConsul) -> None:
    p = zed.prefix
    host = "{pools: [{hosts: [{host: h, port: 1}]}]}"
    zed(
        "configure",
        zed.file(
            f"config: {{session_ttl: 20}}\ninstances:\n  web: {host}\n"
            f"  web2: {host}\n  we: {host}\n"
        ),
    )
    for inst in ("web", "web2", "we"):
        put(raw_consul, f"{p}/state/{inst}/1/1/errors", "1")
    before = values_of(raw_consul, p)
    assert (
        "removed instance web (2 config keys) and its state" in zed("remove", "web", "--yes").stdout
    )
    after = values_of(raw_consul, p)
    assert after == {
        k: v
        for k, v in before.items()
        if not k.startswith((f"{p}/instances/web/", f"{p}/state/web/"))
    }
    assert f"{p}/instances/web2/pools/1/hosts/1/host" in after
    assert f"{p}/state/web2/1/1/errors" in after
    assert "instance 'web' not found" in zed("remove", "web", "--yes", code=1).output


# -- validate ---------------------------------------------------------------------------


def test_validate_exit_codes(zed: Zed) -> None:
    out = zed("validate", zed.file(RICH_FILE), globals_=False).stdout
    assert out.endswith(": valid (2 instances, global config)\n")
    bad = zed.file(
        "instances:\n  web:\n    pools:\n      - hosts: [{host: a, port: 0}, {port: 1}]\n"
    )
    result = zed("validate", bad, code=1, globals_=False)
    assert "instances.web.pools[1].hosts[1].port: must be at least 1, got 0" in result.output
    assert "instances.web.pools[1].hosts[2].host: required field is missing" in result.output
    assert "no such file" in zed("validate", str(zed.tmp / "nope.yaml"), code=2).output
    assert "valid (0 instances)" in zed("validate", "-", input="{}", globals_=False).stdout
    syntax = zed("validate", "-", input='{"instances": [}', code=1, globals_=False).output
    assert "<stdin>:1:16: invalid JSON" in syntax
    zed("validate", code=2)  # no FILE: a usage error
    assert "Exit codes:" in zed("--help").stdout


# -- bad input never reaches Consul -----------------------------------------------------


BAD_INPUTS = {
    "wrong type": (
        "instances:\n  test:\n    pools:\n      - hosts: [{host: a, port: http}]\n",
        'instances.test.pools[1].hosts[1].port: expected an integer, got "http"',
    ),
    "out of range": (
        "instances:\n  test:\n    pools:\n      - hosts: [{host: a, port: 70000}]\n",
        "instances.test.pools[1].hosts[1].port: must be at most 65535, got 70000",
    ),
    "unknown method": (
        "instances:\n  test:\n    pools:\n      - method: random\n"
        "        hosts: [{host: a, port: 1}]\n",
        "instances.test.pools[1].method: must be one of: weighted_rr, chash, least_conn, ewma,"
        ' got "random"',
    ),
    "malformed status code": (
        "instances:\n  test:\n    pools:\n      - status_codes: [5x0]\n"
        "        hosts: [{host: a, port: 1}]\n",
        "instances.test.pools[1].status_codes[1]: not a status code pattern",
    ),
    "unknown key": (
        "instances:\n  test:\n    pools:\n      - hosts: [{host: a, prot: 1}]\n",
        "instances.test.pools[1].hosts[1].prot: unknown field",
    ),
    "host without address": (
        "instances:\n  test:\n    pools:\n      - hosts: [{name: a, port: 1}]\n",
        "instances.test.pools[1].hosts[1].host: required field is missing",
    ),
    "port missing": (
        "instances:\n  test:\n    pools:\n      - hosts: [{host: 10.0.0.1}]\n",
        'instances.test.pools[1].hosts[1].port: a port is required for host "10.0.0.1"',
    ),
    "duplicate names": (
        "instances:\n  test:\n    pools:\n      - {name: a, hosts: [{host: a, port: 1}]}\n"
        "      - {name: a, hosts: [{host: b, port: 1}]}\n",
        "instances.test.pools[2].name: duplicate name",
    ),
    "boolean as text": (
        "instances:\n  test:\n    pools:\n      - hosts: [{host: a, port: 1, up: 'false'}]\n",
        'instances.test.pools[1].hosts[1].up: expected a boolean (true or false), got "false"',
    ),
    "no pools": (
        "instances:\n  test:\n    pools: []\n",
        "instances.test.pools: expected at least 1 item(s), got []",
    ),
    "bad instance name": (
        "instances:\n  a/b:\n    pools:\n      - hosts: [{host: a, port: 1}]\n",
        "instances[\"a/b\"]: an instance name must not contain '/'",
    ),
    "global out of range": (
        "config:\n  session_ttl: 5\n",
        "config.session_ttl: must be at least 10, got 5",
    ),
    "syntax error": ("instances:\n  test: {pools: [}\n", "bad.yaml:2:"),
    "one good instance, one bad": (
        "instances:\n  good:\n    pools: [{hosts: [{host: a, port: 1}]}]\n"
        "  test:\n    pools: [{hosts: [{host: a, port: 0}]}]\n",
        "instances.test.pools[1].hosts[1].port: must be at least 1, got 0",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_consul_left_untouched(
    zed: Zed, raw_consul: RawConsul, kind: str
) -> None:
    text, message = BAD_INPUTS[kind]
    zed("configure", zed.file("config: {session_ttl: 30}\n" + README_FILE))
    before = state_of(raw_consul, zed.prefix)
    bad = zed.file(text, "bad.yaml")
    assert message in zed("configure", bad, code=1).output
    assert message in zed("configure", bad, "--prune", "--dry-run", code=1).output
    assert message in zed("validate", bad, code=1).output
    assert state_of(raw_consul, zed.prefix) == before


def test_missing_file_is_a_usage_error(zed: Zed, raw_consul: RawConsul) -> None:
    result = zed("configure", str(zed.tmp / "missing.yaml"), code=2)
    assert "cannot read" in result.output and "missing.yaml: no such file" in result.output
    assert state_of(raw_consul, zed.prefix) == {}


# -- global options and Consul errors ---------------------------------------------------


def test_global_options_from_env_and_flags(zed: Zed, consul: ConsulEndpoint) -> None:
    zed("configure", zed.file(README_FILE))
    token = {"CONSUL_HTTP_TOKEN": consul.token} if consul.token else {}
    closed = f"127.0.0.1:{free_port()}"
    env = {"CONSUL_HTTP_ADDR": f"{consul.host}:{consul.port}", "ZEDCUP_PREFIX": zed.prefix, **token}
    assert "test" in zed("list", env=env, globals_=False).stdout
    # Flags beat the environment.
    env_wrong = {**env, "CONSUL_HTTP_ADDR": closed, "ZEDCUP_PREFIX": "zt/elsewhere"}
    out = zed(
        "--consul", consul.url, "--prefix", zed.prefix, "list", env=env_wrong, globals_=False
    ).stdout
    assert "test" in out
    assert (
        zed("--consul", consul.url, "--prefix", "zt/empty", "list", env=env, globals_=False).stdout
        == "no instances\n"
    )
    assert (
        f"cannot reach Consul at http://{closed}"
        in zed("list", env=env_wrong, code=3, globals_=False).output
    )
    assert (
        "unknown scheme 'ftp'"
        in zed("--consul", "ftp://x:1", "list", code=2, globals_=False).output
    )
    missing_ca = str(zed.tmp / "nope.pem")
    https = f"https://127.0.0.1:{free_port()}"
    out = zed("--consul", https, "--ca-cert", missing_ca, "list", code=2, globals_=False).output
    assert f"CA certificate {missing_ca} (--ca-cert / CONSUL_CACERT): no such file" in out
    # A CONSUL_CACERT left in the environment breaks neither validate nor plain HTTP.
    zed("validate", zed.file(README_FILE), env={"CONSUL_CACERT": missing_ca}, globals_=False)
    assert "test" in zed("list", env={**env, "CONSUL_CACERT": missing_ca}, globals_=False).stdout


COMMANDS = [
    ("list",),
    ("get", "web"),
    ("configure", "{file}"),
    ("configure", "{file}", "--dry-run"),
    ("config", "show"),
    ("export",),
    ("status",),
    ("remove", "web", "--yes"),
    ("host", "down", "web", "1", "1"),
    ("host", "weight", "web", "1", "1", "5"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_unreachable_consul_is_named(zed: Zed, command: tuple[str, ...]) -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = [a.format(file=zed.file(README_FILE)) for a in command]
    result = zed("--consul", address, *args, code=3, globals_=False)
    assert result.output.startswith(f"Error: cannot reach Consul at {address} while ")
    assert "Connection refused" in result.output


@pytest.fixture(scope="module")
def acl_consul() -> Iterator[DevConsul]:
    server = DevConsul(host="127.0.0.1", port=0, acl_token="s3cret-token")
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_acl_denied_says_a_token_is_needed(
    acl_consul: DevConsul, tmp_path: Path, command: tuple[str, ...]
) -> None:
    zed = Zed(acl_consul.url, f"zt/{uuid.uuid4()}", None, tmp_path)
    args = [a.format(file=zed.file(README_FILE)) for a in command]
    result = zed(*args, code=3)
    assert f"Consul at {acl_consul.url} denied access" in result.output
    assert (
        "an ACL token is needed: --token, --token-file, CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE"
        in result.output
    )


def test_acl_token_from_flag_or_env(acl_consul: DevConsul, tmp_path: Path) -> None:
    zed = Zed(acl_consul.url, f"zt/{uuid.uuid4()}", "s3cret-token", tmp_path)
    zed("configure", zed.file(README_FILE))
    assert "test" in zed("list").stdout
    anonymous = Zed(acl_consul.url, zed.prefix, None, tmp_path)
    assert "test" in anonymous("list", env={"CONSUL_HTTP_TOKEN": "s3cret-token"}).stdout
    wrong = Zed(acl_consul.url, zed.prefix, "wrong", tmp_path)
    assert "Consul does not know the token given" in wrong("list", code=3).output
    # The flag beats the environment.
    assert "test" in zed("list", env={"CONSUL_HTTP_TOKEN": "wrong"}).stdout


class _FailingConsul(BaseHTTPRequestHandler):
    """Stands in for a Consul server that is failing: 500 to every request."""

    def _fail(self) -> None:
        body = b"rpc error: No cluster leader"
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_DELETE = _fail

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_consul_server_errors_are_reported(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingConsul)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        zed = Zed(url, "zt/x", None, tmp_path)
        for args in (("list",), ("configure", zed.file(README_FILE)), ("remove", "x", "--yes")):
            result = zed(*args, code=3)
            assert f"Consul at {url} failed while" in result.output
            assert "500 rpc error: No cluster leader" in result.output
    finally:
        server.shutdown()
        server.server_close()


def test_https_to_a_plain_http_consul_is_a_tls_error(zed: Zed, consul: ConsulEndpoint) -> None:
    if consul.scheme != "http":
        pytest.skip("needs a plain-HTTP Consul")
    result = zed("--consul", f"https://{consul.host}:{consul.port}", "list", code=3, globals_=False)
    assert f"TLS error talking to Consul at https://{consul.host}:{consul.port}" in result.output


# -- through a forwarding proxy: HTTPS, and a Consul that fails part-way ----------------------


class _ProxyServer(ThreadingHTTPServer):
    """Forwards to a real Consul; optionally answers 500 to every /v1/txn past a budget."""

    daemon_threads = True

    def __init__(self, upstream: str, txn_budget: int | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.txn_budget = txn_budget
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> _ProxyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Forward(BaseHTTPRequestHandler):
    server: _ProxyServer

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/v1/txn") and self.server.txn_budget is not None:
            if self.server.txn_budget <= 0:
                self._answer(500, b"rpc error: leadership lost", {})
                return
            self.server.txn_budget -= 1
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("x-consul-token",)}
        resp = requests.request(
            self.command, self.server.upstream + self.path, data=body, headers=headers, timeout=30
        )
        keep = {
            k: v
            for k, v in resp.headers.items()
            if k.lower() in ("content-type", "x-consul-index", "x-consul-knownleader")
        }
        self._answer(resp.status_code, resp.content, keep)

    def _answer(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_DELETE = _forward

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_write_interrupted_part_way_stays_pending(
    zed: Zed, raw_consul: RawConsul, consul: ConsulEndpoint
) -> None:
    hosts = [{"host": f"10.0.0.{i}", "port": 80} for i in range(1, 101)]
    big = zed.file(json.dumps({"instances": {"big": {"pools": [{"hosts": hosts}]}}}), "big.json")
    with _ProxyServer(consul.url, txn_budget=2) as proxy:
        result = zed("--consul", f"127.0.0.1:{proxy.port}", "configure", big, code=3)
    assert "(transaction 3 of 4)" in result.output  # 200 keys + 4 operations: 4 transactions
    assert "500 rpc error: leadership lost" in result.output
    assert f"{zed.prefix}/instances/big/ is left marked _pending after 2 of 4 transactions" in (
        result.output
    )
    assert "run apply again" in result.output
    assert "is being written" in zed("get", "big", code=1).output
    # Running it again at once is refused: a fresh marker may be a write under way.
    refused = zed("configure", big, code=1)
    assert "is being written by another writer" in refused.output
    assert "nothing written" in refused.output
    # Once the marker is older than 60 s it is taken over, and the write completes.
    marker = f"{zed.prefix}/instances/big/_pending"
    put(raw_consul, marker, "zedctl elsewhere", flags=int(time.time()) - 61)
    zed("configure", big)
    assert len(json.loads(zed("get", "big", "-o", "json").stdout)["pools"][0]["hosts"]) == 100
    assert f"{zed.prefix}/instances/big/_pending" not in values_of(raw_consul, zed.prefix)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_consul_with_ca_cert_or_insecure(
    zed: Zed, consul: ConsulEndpoint, tls_files: tuple[Path, Path]
) -> None:
    cert, key = tls_files
    zed("configure", zed.file(README_FILE))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    with _ProxyServer(consul.url) as proxy:
        proxy.socket = context.wrap_socket(proxy.socket, server_side=True)
        url = f"https://127.0.0.1:{proxy.port}"
        failed = zed("--consul", url, "list", code=3, globals_=False).output
        assert f"TLS error talking to Consul at {url}" in failed
        assert "--ca-cert" in failed
        assert "test" in zed("--consul", url, "--ca-cert", str(cert), "list").stdout
        assert "test" in zed("--consul", url, "list", env={"CONSUL_CACERT": str(cert)}).stdout
        insecure = zed("--consul", url, "--insecure", "list")
        assert "test" in insecure.stdout and "Warning" not in insecure.output


# -- regressions found by the independent check -------------------------------------------


def test_configuring_the_same_file_again_writes_nothing_and_keeps_state(
    zed: Zed, raw_consul: RawConsul
) -> None:
    # Re-applying an unchanged file (every deploy does) used to rewrite each instance
    # and clear its state: hosts marked down came back into service.
    p = zed.prefix
    path = zed.file(RICH_FILE)
    zed("configure", path)
    put(raw_consul, f"{p}/state/web/primary/web01/down", "3 errors", flags=int(time.time()))
    put(raw_consul, f"{p}/state/web2/1/1/errors", "2", flags=int(time.time()))
    before = state_of(raw_consul, p)

    result = zed("configure", path)
    assert "global config unchanged: nothing to write" in result.output
    assert "instance web unchanged: nothing to write" in result.output
    assert "0 added, 0 changed, 0 removed" in result.output
    assert state_of(raw_consul, p) == before, "no key written, not even with the same value"
    assert "unchanged" in zed("configure", path, "--dry-run").output

    # A changed instance is replaced as a whole; the state of the host whose address
    # changed is cleared, the other instance's is kept.
    result = zed("configure", zed.file(RICH_FILE.replace("port: 9 }", "port: 10 }")))
    assert (
        "wrote instance web2: 2 keys in 1 transaction "
        "(state kept; cleared for 1 removed or moved pool/host)"
    ) in result.output
    assert "instance web unchanged" in result.output
    after = values_of(raw_consul, p)
    assert f"{p}/state/web/primary/web01/down" in after
    assert f"{p}/state/web2/1/1/errors" not in after


def test_a_large_write_respects_a_fresh_pending_of_the_data_plane(
    zed: Zed, raw_consul: RawConsul
) -> None:
    """zedcup.kv marks a multi-transaction write `_pending` = unix time, Flags = the same."""
    hosts = [{"host": f"10.0.0.{i}", "port": 80} for i in range(1, 101)]
    big = zed.file(json.dumps({"instances": {"big": {"pools": [{"hosts": hosts}]}}}), "big.json")
    marker = f"{zed.prefix}/instances/big/_pending"
    now = int(time.time())
    put(raw_consul, f"{zed.prefix}/instances/big/pools/1/hosts/1/host", "10.9.9.9")
    put(raw_consul, marker, str(now), flags=now)
    result = zed("configure", big, code=1)
    assert f"{zed.prefix}/instances/big/ is being written by another writer" in result.output
    assert f"(_pending: {now}, begun " in result.output
    stored = values_of(raw_consul, zed.prefix)
    assert stored[marker] == str(now), "the other writer's marker is left alone"
    assert stored[f"{zed.prefix}/instances/big/pools/1/hosts/1/host"] == "10.9.9.9"
    assert f"{zed.prefix}/instances/big/pools/1/hosts/2/host" not in stored
    # A small write (one transaction) is atomic: it replaces the tree, marker included,
    # and the other writer's next check-index fails.
    small = zed.file(json.dumps({"instances": {"big": {"pools": [{"hosts": hosts[:2]}]}}}))
    zed("configure", small)
    assert marker not in values_of(raw_consul, zed.prefix)


def test_an_interrupted_write_with_the_same_keys_is_finished(
    zed: Zed, raw_consul: RawConsul
) -> None:
    path = zed.file(README_FILE)
    zed("configure", path)
    put(raw_consul, f"{zed.prefix}/instances/test/_pending", "zedctl elsewhere 1")
    result = zed("configure", path)
    assert f"- {zed.prefix}/instances/test/_pending (was zedctl elsewhere 1)" not in result.output
    assert "wrote instance test: 16 keys in 1 transaction" in result.output
    assert "0 added, 1 changed, 0 removed" in result.output
    assert f"{zed.prefix}/instances/test/_pending" not in values_of(raw_consul, zed.prefix)
    zed("get", "test")


def test_tiny_numbers_are_written_so_that_they_read_back(zed: Zed, raw_consul: RawConsul) -> None:
    text = (
        "config:\n  cache_update_interval: 0.00001\n"
        "instances:\n  t:\n    pools: [{error_timeout: 1.5e-7, hosts: [{host: a, port: 1}]}]\n"
    )
    zed("configure", zed.file(text))
    stored = values_of(raw_consul, zed.prefix)
    assert stored[f"{zed.prefix}/config/cache_update_interval"] == "0.00001"
    assert stored[f"{zed.prefix}/instances/t/pools/1/error_timeout"] == "0.00000015"
    assert json.loads(zed("config", "show", "-o", "json").stdout)["cache_update_interval"] == 1e-05
    exported = zed("export").stdout
    zed("configure", "-", input=exported)
    assert zed("export").stdout == exported


def test_folder_keys_are_ignored_as_the_data_plane_ignores_them(
    zed: Zed, raw_consul: RawConsul
) -> None:
    p = zed.prefix
    put(raw_consul, f"{p}/instances/ghost/", "")
    assert zed("list").stdout == "no instances\n"
    assert "instance 'ghost' not found" in zed("get", "ghost", code=1).output
    zed("configure", zed.file(README_FILE))
    put(raw_consul, f"{p}/instances/test/", "")
    put(raw_consul, f"{p}/instances/test/pools/", "")
    assert [line.split() for line in zed("list").stdout.splitlines()[1:]] == [["test", "2", "3"]]
    zed("get", "test")
    zed("status", "test")


def test_a_stored_instance_with_a_refused_name_does_not_break_the_others(
    zed: Zed, raw_consul: RawConsul
) -> None:
    p = zed.prefix
    zed("configure", zed.file(README_FILE))
    # Written in a transaction: in a URL path the '.' segment would be resolved away.
    key, value = f"{p}/instances/./pools/1/hosts/1/host", base64.b64encode(b"/run/x.sock")
    txn = [{"KV": {"Verb": "set", "Key": key, "Value": value.decode()}}]
    assert raw_consul.put("/v1/txn", data=json.dumps(txn)).status_code == 200
    assert [line.split()[0] for line in zed("list").stdout.splitlines()[1:]] == [".", "test"]
    assert "instance test" in zed("status").stdout
    assert "must not be '.' or '..'" in zed("get", ".", code=2).output
    assert (
        "must not be '.' or '..'" in zed("validate", zed.file("instances: {..: {}}"), code=1).output
    )
    result = zed("configure", zed.file(README_FILE), "--prune")
    assert "removed instance . and its state" in result.output
    assert {k.split("/")[3] for k in values_of(raw_consul, f"{p}/instances")} == {"test"}


def test_the_dry_run_diff_is_by_meaning(zed: Zed) -> None:
    hosts = ", ".join(f"{{host: h{i}, port: {i + 1}}}" for i in range(12))
    result = zed("configure", zed.file(f"instances:\n  w:\n    pools: [{{hosts: [{hosts}]}}]\n"))
    assert "1 added" in result.output
    result = zed("configure", zed.file("instances: {}\n"), "--prune", "--dry-run")
    assert result.output.splitlines()[0] == "- instance w (was 1 pool, 12 hosts)"


def test_a_long_list_of_known_hosts_is_cut_short(zed: Zed) -> None:
    hosts = ", ".join(f"{{name: n{i}, host: h, port: {i + 1}}}" for i in range(40))
    zed("configure", zed.file(f"instances:\n  w:\n    pools: [{{hosts: [{hosts}]}}]\n"))
    out = zed("host", "down", "w", "1", "nope", code=1).output
    assert "n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, ... (40 in all)" in out
    assert "n10" not in out


class _NotConsul(BaseHTTPRequestHandler):
    """Some other web server: HTML 404 to reads, HTML 501 to writes, no Consul headers."""

    def _answer(self, code: int) -> None:
        body = b"<!DOCTYPE HTML>\n<html><body><h1>Error response</h1></body></html>\n"
        self.send_response(code)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(404)

    def do_PUT(self) -> None:
        self._answer(501)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_server_that_is_not_consul_is_not_read_as_an_empty_one(tmp_path: Path) -> None:
    # A bare 404 read as "no keys": `list` said "no instances" and `status` showed an
    # empty cluster for an address where no Consul answers.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotConsul)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        zed = Zed(url, "zt/x", None, tmp_path)
        for args in (("list",), ("status",), ("export",), ("get", "web"), ("config", "show")):
            out = zed(*args, code=3).output
            assert f"unexpected answer from {url} while reading zt/x/" in out
            assert "is it a Consul HTTP API?" in out
        kv = ConsulKV(ConsulSettings(address=url))
        with pytest.raises(ConsulError, match="no X-Consul-Index"):
            kv.get("zt/x/locks/healthcheck")
        with pytest.raises(ConsulError) as failed:
            kv.txn([{"KV": {"Verb": "delete-tree", "Key": "zt/x/"}}], "writing")
        assert str(failed.value.message).endswith(
            "failed while writing: 501 (an HTML page: is it a Consul HTTP API?)"
        )
    finally:
        server.shutdown()
        server.server_close()


def test_names_with_url_characters_are_escaped_in_key_paths(
    zed: Zed, raw_consul: RawConsul
) -> None:
    """As in the data plane (zedcup.consul escapes each key segment): ' ', '?', '#', '%'
    and '+' in names reach Consul as the keys they are."""
    p = zed.prefix
    inst = "web 01?x=1#a%2F"
    doc = {
        "instances": {
            inst: {
                "pools": [
                    {"name": "p 1?", "hosts": [{"name": "a%2F+", "host": "10.0.0.1", "port": 80}]}
                ]
            }
        }
    }
    zed("configure", zed.file(json.dumps(doc), "odd.json"))
    assert values_of(raw_consul, f"{p}/instances") == {
        f"{p}/instances/{inst}/pools/1/name": "p 1?",
        f"{p}/instances/{inst}/pools/1/hosts/1/name": "a%2F+",
        f"{p}/instances/{inst}/pools/1/hosts/1/host": "10.0.0.1",
        f"{p}/instances/{inst}/pools/1/hosts/1/port": "80",
    }
    got = json.loads(zed("get", inst, "-o", "json").stdout)
    assert got["pools"][0]["hosts"][0]["name"] == "a%2F+"
    zed("host", "down", inst, "p 1?", "a%2F+", "--reason", "r?&=")
    assert values_of(raw_consul, f"{p}/state") == {
        f"{p}/state/{inst}/p 1?/a%2F+/admin_down": "r?&="
    }
    zed("remove", inst, "--yes")
    assert values_of(raw_consul, f"{p}/instances") == {}
