"""Declarative apply, diff by meaning, operator holds, events and status, as an operator
runs them: the real `zedctl` binary against dev-consul AND the real Consul (each test
runs on both). What Consul holds is read straight from its HTTP API.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time

import yaml
from zedctl_consuls import ZEDCTL, Consul, Lines, Zedctl, operator_fixtures

FILE = """\
instances:
  web:
    pools:
      - name: primary
        hosts:
          - { name: web01, host: 10.0.0.1, port: 80 }
          - { name: web02, host: 10.0.0.2, port: 80 }
          - { name: web03, host: 10.0.0.3, port: 80 }
      - name: dr
        hosts:
          - { name: dr01, host: 10.0.1.1, port: 80 }
"""


# the fixtures: `consul` (module-wide, dev-consul and the real one), `zed` (a fresh prefix)
consul, zed = operator_fixtures()


def prefix(zed: Zedctl) -> str:
    return zed.env["ZEDCUP_PREFIX"]


def test_apply_keeps_the_state_of_hosts_whose_address_did_not_change(
    zed: Zedctl, consul: Consul
) -> None:
    p = prefix(zed)
    zed("apply", zed.file(FILE))
    now = int(time.time())
    for host in ("web01", "web02", "web03"):
        consul.put(f"{p}/state/web/primary/{host}/down", "3 errors within 60s", flags=now)
        consul.put(f"{p}/state/web/primary/{host}/errors", "3", flags=now)
    zed("host", "down", "web", "dr", "dr01", "--reason", "maintenance")
    zed("pool", "down", "web", "dr", "--reason", "drill")
    before = consul.values(f"{p}/state")

    # Same file again: nothing written at all.
    out = zed("apply", zed.file(FILE)).stdout
    assert "instance web unchanged: nothing to write" in out
    assert consul.values(f"{p}/state") == before

    # web01: only its weight changes (state kept); web02 moves to another port (state
    # cleared); web03 goes (state cleared); web04 is new; dr (its holds) untouched.
    changed = (
        FILE.replace("host: 10.0.0.1, port: 80 }", "host: 10.0.0.1, port: 80, weight: 5 }")
        .replace("host: 10.0.0.2, port: 80", "host: 10.0.0.2, port: 8080")
        .replace("          - { name: web03, host: 10.0.0.3, port: 80 }\n",
                 "          - { name: web04, host: 10.0.0.4, port: 80 }\n")
    )  # fmt: skip
    out = zed("apply", zed.file(changed)).stdout
    assert "state kept; cleared for 2 removed or moved pool/hosts" in out
    after = consul.values(f"{p}/state")
    assert {k: v for k, v in before.items() if "/web02/" not in k and "/web03/" not in k} == after
    assert consul.values(f"{p}/instances/web")[f"{p}/instances/web/pools/1/hosts/1/weight"] == "5"
    # A removed pool takes its state (and its hold) with it.
    no_dr = changed.split("      - name: dr\n")[0]
    zed("apply", zed.file(no_dr))
    assert not any(k.startswith(f"{p}/state/web/dr/") for k in consul.values(f"{p}/state"))


def test_diff_by_meaning_with_kubectl_exit_codes(zed: Zedctl) -> None:
    path = zed.file(FILE)
    res = zed("diff", path, code=1)
    assert res.stdout == "+ instance web: 2 pools, 4 hosts\n"
    zed("apply", path)
    assert zed("diff", path).stdout == "no changes\n"

    # A host inserted at the top is one added host, not a shift of every key.
    top = FILE.replace(
        "        hosts:\n          - { name: web01",
        "        hosts:\n          - { name: web00, host: 10.0.0.9, port: 80 }\n"
        "          - { name: web01",
    )
    assert zed("diff", zed.file(top), code=1).stdout == (
        "+ instance web pool primary host web00: 10.0.0.9:80\n"
    )
    edited = FILE.replace("port: 80 }\n      - name: dr", "port: 81 }\n      - name: dr").replace(
        "- name: dr\n", "- name: dr\n        timeout: 500\n"
    )
    lines = zed("diff", zed.file(edited), code=1).stdout.splitlines()
    assert lines == [
        "~ instance web pool primary host web03 port: 80 -> 81 (its runtime state is cleared)",
        "+ instance web pool dr timeout: 500",
    ]
    doc = zed.json("diff", zed.file(edited), "-o", "json", code=1)
    assert doc["changed"] is True and doc["counts"] == {"added": 1, "changed": 1, "removed": 0}
    assert doc["changes"][0] == {
        "op": "changed", "instance": "web", "pool": "primary", "host": "web03",
        "field": "port", "old": 80, "new": 81, "note": "its runtime state is cleared",
    }  # fmt: skip
    # diff --prune names what apply --prune would remove; a bad file is exit 2.
    assert zed("diff", zed.file("instances: {}\n"), "--prune", code=1).stdout == (
        "- instance web (was 2 pools, 4 hosts)\n"
    )
    assert (
        "port: must be at most 65535"
        in zed("diff", zed.file(FILE.replace(": 80 }", ": 80000 }", 1)), code=2).stderr
    )
    # --dry-run prints the same diff and writes nothing.
    assert zed("apply", zed.file(top), "--dry-run").stdout.startswith(
        "+ instance web pool primary host web00: 10.0.0.9:80\n"
    )
    assert zed("diff", path).returncode == 0


def _on_a_terminal(zed: Zedctl, args: list[str], answer: str) -> tuple[int, str]:
    """Run zedctl with a pseudo-terminal as stdin, answer its question, return (exit, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(ZEDCTL), *args], stdin=slave, stdout=subprocess.PIPE, stderr=slave, env=zed.env
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 30
    while b"[y/N]" not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            seen += os.read(master, 1024)
    os.write(master, answer.encode() + b"\n")
    out, _ = proc.communicate(timeout=30)
    while select.select([master], [], [], 0.2)[0]:  # what it wrote to the terminal since
        try:
            chunk = os.read(master, 1024)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    return proc.returncode, seen.decode() + out.decode()


def test_prune_of_everything_and_remove_ask_on_a_terminal_and_need_yes_elsewhere(
    zed: Zedctl, consul: Consul
) -> None:
    p = prefix(zed)
    zed("apply", zed.file(FILE + "  api:\n    pools: [{hosts: [{host: 10.0.2.1, port: 80}]}]\n"))
    empty = zed.file("")
    # Not on a terminal: refused without --yes, nothing removed.
    err = zed("apply", empty, "--prune", code=1).stderr
    assert "--prune would remove every stored instance (api, web)" in err and "--yes" in err
    err = zed("apply", "-", "--prune", input="", code=1).stderr
    assert "give --yes to confirm" in err
    assert "would remove" in zed("apply", empty, "--prune", "--dry-run").stdout
    assert "give --yes" in zed("remove", "web", code=1).stderr
    assert len(consul.values(f"{p}/instances")) == 16

    # On a terminal: asked; "n" keeps, "y" removes.
    code, out = _on_a_terminal(zed, ["remove", "api"], "n")
    assert code == 1 and "Remove instance 'api'" in out and "not confirmed" in out
    code, out = _on_a_terminal(zed, ["remove", "api"], "y")
    assert code == 0 and "removed instance api" in out
    assert not any("/api/" in k for k in consul.values(f"{p}/instances"))
    # A prune that keeps an instance does not ask.
    zed("apply", zed.file(FILE), "--prune")
    zed("apply", empty, "--prune", "--yes")
    assert consul.values(f"{p}/instances") == {}


def test_holds_survive_apply_and_up_restores_what_down_wrote(zed: Zedctl, consul: Consul) -> None:
    p = prefix(zed)
    path = zed.file(FILE)
    zed("apply", path)
    before = consul.keys(p)
    config_before = consul.values(f"{p}/instances")

    out = zed("host", "down", "web", "primary", "web02", "--reason", "kernel 6.9").stdout
    assert out == "host web/primary/web02: held down by operator (kernel 6.9)\n"
    hold = consul.keys(f"{p}/state")[f"{p}/state/web/primary/web02/admin_down"]
    assert hold[0] == "kernel 6.9" and abs(hold[1] - time.time()) < 60
    zed("pool", "down", "web", "2", "--reason", "dc move")  # by 1-based index
    assert consul.values(f"{p}/state")[f"{p}/state/web/dr/admin_down"] == "dc move"
    assert consul.values(f"{p}/instances") == config_before  # holds are not config

    # apply of the unchanged file keeps both holds; status shows them with the reason.
    assert "unchanged" in zed("apply", path).stdout
    report = zed.json("status", "web", "-o", "json")
    hosts = {h["host"]: h for h in report["instances"][0]["hosts"]}
    assert hosts["web02"]["reason"] == "held down by operator: kernel 6.9"
    assert hosts["dr01"]["reason"] == "pool drained by operator: dc move"
    assert hosts["web01"]["state"] == "up"
    assert "held down by operator: kernel 6.9" in zed("status", "web", "-o", "wide").stdout

    # up deletes exactly what down wrote.
    assert zed("host", "up", "web", "primary", "web02").stdout == (
        "host web/primary/web02: operator hold removed\n"
    )
    doc = yaml.safe_load(zed("pool", "up", "web", "dr", "-o", "yaml").stdout)
    assert doc["was_held"] is True and doc["held"] is False
    after = {k: v for k, v in consul.keys(p).items() if "/events/" not in k}
    assert after == {k: v for k, v in before.items() if "/events/" not in k}
    assert zed("diff", path).returncode == 0

    # Unknown pools and hosts are refused by name, nothing written.
    err = zed("host", "down", "web", "primary", "web09", code=1).stderr
    assert "host 'web09' not found in pool 'primary'" in err
    assert "pool 'nope' not found" in zed("pool", "down", "web", "nope", code=1).stderr


def test_events_record_operator_actions_and_follow_with_blocking_queries(
    zed: Zedctl, consul: Consul
) -> None:
    p = prefix(zed)
    zed("apply", zed.file(FILE))
    follower = subprocess.Popen(
        [str(ZEDCTL), "events", "web", "--follow", "-o", "json", "-n", "1"],
        env=zed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = Lines(follower.stdout)
    try:
        # The follower has read the log once it shows the last past event (the apply).
        assert json.loads(lines.next(time.monotonic() + 30))["event"] == "apply"
        zed("host", "down", "web", "primary", "web01", "--reason", "flapping")
        # What the data plane's compare-and-set winner writes on a transition.
        now = time.time()
        consul.put(
            f"{p}/events/web/{int(now * 1000):013d}-0badcafe",
            json.dumps({"time": now, "node": "nginx-a", "event": "host_down",
                        "pool": "primary", "host": "web02", "reason": "3 errors within 60s"}),
        )  # fmt: skip
        zed("host", "up", "web", "primary", "web01")
        deadline = time.monotonic() + 30
        got = [json.loads(lines.next(deadline)) for _ in range(3)]
        kinds = [(e["event"], e["host"]) for e in got]
        assert kinds == [
            ("admin_host_down", "web01"),
            ("host_down", "web02"),
            ("admin_host_up", "web01"),
        ], got
        assert got[0]["reason"] == "flapping" and "zedctl@" in str(got[0]["node"])
        assert got[1]["node"] == "nginx-a" and got[1]["instance"] == "web"
    finally:
        follower.terminate()
        follower.wait(timeout=10)
    table = zed("events").stdout.splitlines()
    assert table[0].split() == ["TIME", "INSTANCE", "POOL/HOST", "EVENT", "NODE", "REASON"]
    assert [line.split()[4] for line in table[1:]] == [
        "apply", "admin_host_down", "host_down", "admin_host_up",
    ]  # fmt: skip
    assert len(zed.json("events", "web", "-n", "2", "-o", "json")) == 2

    # The log stays bounded: past 110 events a writer trims to the newest 100.
    base = int(time.time() * 1000) - 10_000_000
    for i in range(115):
        consul.put(f"{p}/events/web/{base + i:013d}-00000000", json.dumps({"event": "old"}))
    zed("host", "down", "web", "primary", "web03")
    events = zed.json("events", "web", "-n", "1000", "-o", "json")
    assert len(events) == 100 and events[-1]["event"] == "admin_host_down"


def test_status_of_an_invalid_stored_config_shows_every_problem_and_the_last_good_hosts(
    zed: Zedctl, consul: Consul
) -> None:
    p = prefix(zed)
    zed("apply", zed.file(FILE))
    consul.put(f"{p}/instances/web/pools/1/hosts/1/port", "eighty")
    consul.put(f"{p}/instances/web/pools/2/timeout", "-3")
    res = zed("status", "web", code=1)
    assert "the config stored under" in res.stdout and "is invalid" in res.stdout
    assert (
        f'{p}/instances/web/pools/1/hosts/1/port: expected an integer, got "eighty"' in res.stdout
    )
    assert f"{p}/instances/web/pools/2/timeout: must be at least 1, got -3" in res.stdout
    assert "hosts of the last config zedctl applied" in res.stdout
    assert "web01" in res.stdout and "dr01" in res.stdout
    doc = zed.json("status", "-o", "json", code=1)
    (inst,) = doc["instances"]
    assert len(inst["problems"]) == 2 and len(inst["hosts"]) == 4
    assert inst["hosts_from"].startswith("the last config zedctl applied")
    # Applying a good file fixes it; the state of what the nodes kept serving (the last
    # config applied) is kept for the hosts whose address did not change.
    for host in ("web01", "web02"):
        consul.put(f"{p}/state/web/primary/{host}/down", "3 errors within 60s", flags=1)
    zed("apply", zed.file(FILE.replace("host: 10.0.0.2, port: 80", "host: 10.0.0.2, port: 81")))
    assert list(consul.values(f"{p}/state")) == [f"{p}/state/web/primary/web01/down"]
    assert zed("status", "web").returncode == 0
