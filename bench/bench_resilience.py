"""How fast the data plane reacts, and how much it writes to Consul: figures, no assertions.

Real nginx nodes (2 workers each), real backends, and a Consul in a subprocess
(`zedctl dev-consul`, or the real agent with --consul real: `consul agent -dev`).
Prints, per scenario:

- propagation: a change written straight to Consul until every worker of the node acts
  on it (reconfigure, host marked down, removal), median of --rounds;
- restart: Consul restarted empty (index reset), then a change: until every worker uses it;
- quit: `nginx -s quit` of the checker node of two: until the other holds the lock;
- stop: the same with `nginx -s stop` (fast shutdown: no Lua runs, the session lapses);
- outage: Consul hung (SIGSTOP) for --outage s under load: client errors, and how long
  after SIGCONT health checks run again (interval 1 s);
- cold: a node started with Consul hung: time to the first answer, Consul lookups;
- writes: Consul writes per minute with --hosts healthy hosts checked every second.

    .venv/bin/python bench/bench_resilience.py                  # all, dev-consul
    .venv/bin/python bench/bench_resilience.py --consul real --outage 60 --writes-for 300
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dataplane_cluster import (
    ConsulProc,
    Node,
    instance,
    new_prefix,
    start_node,
    wait_for,
    zedcup_http_config,
)
from zedctl.devconsul.testing import free_port
from zedctl.testnginx import NginxServer

# a counting proxy in front of Consul, inside the node's nginx: /writes answers the count
COUNTING_PROXY = """
    lua_shared_dict counts 1m;
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            access_by_lua_block {{
                local m = ngx.req.get_method()
                if m ~= "GET" then
                    local what = ngx.var.uri:match("^/v1/(%a+)") or "?"
                    if what == "kv" then what = "kv " .. m end
                    ngx.shared.counts:incr(what, 1, 0)
                    ngx.shared.counts:incr("all", 1, 0)
                end
            }}
            proxy_pass http://127.0.0.1:{consul};
            proxy_read_timeout 700s;
            proxy_buffering off;
        }}
    }}
"""

COUNTS_LOCATION = r"""
    location = /writes {
        content_by_lua_block {
            local c = ngx.shared.counts
            for _, k in ipairs(c:get_keys()) do ngx.say(k, "=", c:get(k)) end
        }
    }
"""


def median_of(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{statistics.median(ms):.0f} ms (min {min(ms):.0f}, max {max(ms):.0f})"


def bench_propagation(tmp: Path, consul: ConsulProc, rounds: int) -> None:
    a, b = free_port(), free_port()
    node = start_node(tmp, consul.port, new_prefix(), {"A": a, "B": b}, name="prop")
    try:
        node.configure_instance("inst", instance(a))
        node.until_all("A", 10)
        base = f"{node.prefix}/instances/inst/pools/1/hosts/1/port"
        took = []
        for i in range(rounds):
            want, port = ("B", b) if i % 2 == 0 else ("A", a)
            consul.put(base, str(port))
            took.append(node.until_all(want, 5) or 99)
        print("propagation, reconfigure written to Consul -> both workers:", median_of(took))
        consul.put(base, str(a))
        node.until_all("A", 5)
        down = []
        key = f"{node.prefix}/state/inst/p/h/down"
        for _ in range(rounds):
            consul.put(key, "bench")
            down.append(node.until_all("No available upstream hosts", 5) or 99)
            consul.delete(key)
            node.until_all("A", 5)
        print("propagation, host marked down in Consul -> both workers:", median_of(down))
        gone = []
        for _ in range(rounds):
            consul.delete(f"{node.prefix}/instances/inst/", recurse=True)
            gone.append(node.until_all("Instance not found", 5) or 99)
            node.configure_instance("inst", instance(a))
            node.until_all("A", 5)
        print("propagation, removal in Consul -> both workers:", median_of(gone))
    finally:
        node.server.stop()


def bench_restart(tmp: Path, consul: ConsulProc) -> None:
    a, b = free_port(), free_port()
    node = start_node(tmp, consul.port, new_prefix(), {"A": a, "B": b}, name="restart")
    try:
        for _ in range(5):
            node.configure_instance("inst", instance(a))
        node.until_all("A", 10)
        before = consul.index()
        consul.restart_empty()
        after = consul.index()
        t0 = time.monotonic()
        base = f"{node.prefix}/instances/inst/pools/1"
        for key, value in (("name", "p"), ("hosts/1/name", "h"), ("hosts/1/host", "127.0.0.1")):
            consul.put(f"{base}/{key}", value)
        consul.put(f"{base}/hosts/1/port", str(b))
        took = node.until_all("B", 10)
        print(
            f"restart: Consul restarted empty (index {before} -> {after}), change visible on both "
            f"workers {took * 1000:.0f} ms after the write"
            if took
            else "restart: change NOT visible within 10 s",
            f"({(time.monotonic() - t0) * 1000:.0f} ms after the first key)",
        )
    finally:
        node.server.stop()


def bench_quit(tmp: Path, consul: ConsulProc, stop: bool = False) -> None:
    """nginx -s quit (SIGQUIT), or with stop nginx -s stop (SIGTERM: no Lua runs)"""
    a = free_port()
    prefix = new_prefix()
    n1 = start_node(tmp, consul.port, prefix, {"A": a}, name="q1")
    n2 = None
    try:
        n1.configure({"healthcheck_interval": 1})
        n1.configure_instance("inst", instance(a, healthcheck={"interval": 1}))
        lock = f"{prefix}/locks/healthcheck"
        held, _ = wait_for(lambda: (consul.get(lock) or {}).get("Session"), 10)
        n2 = start_node(tmp, consul.port, prefix, {"A": free_port()}, name="q2")
        time.sleep(1)
        assert n1.server.proc
        t0 = time.monotonic()
        os.kill(n1.server.proc.pid, signal.SIGTERM if stop else signal.SIGQUIT)

        def taken() -> bool:
            e = consul.get(lock)
            return bool(e and e.get("Session") and e["Session"] != held)

        ok, _ = wait_for(taken, 70, step=0.005)
        took = time.monotonic() - t0
        what = "stop" if stop else "quit"
        print(
            f"{what}: nginx -s {what} of the checker node -> the other node holds the lock "
            f"after {took * 1000:.0f} ms (session_ttl 30: Consul TTL 13.5 s, lock delay 1 s)"
            if ok
            else f"{what}: no takeover within 70 s"
        )
    finally:
        n1.server.stop()
        if n2:
            n2.server.stop()


def hc_checks(node: Node) -> int:
    return node.checks()


def bench_outage(tmp: Path, consul: ConsulProc, outage: float) -> None:
    a = free_port()
    node = start_node(tmp, consul.port, new_prefix(), {"A": a}, name="outage")
    try:
        node.configure({"healthcheck_interval": 1})
        node.configure_instance("inst", instance(a, healthcheck={"interval": 1}))
        node.until_all("A", 10)
        wait_for(lambda: hc_checks(node) > 2, 15)
        stop = threading.Event()
        results = {"ok": 0, "bad": 0}

        def load() -> None:
            while not stop.is_set():
                try:
                    _, body = node.ask()
                    results["ok" if body == "A" else "bad"] += 1
                except OSError:
                    results["bad"] += 1

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        checks_at_hang = hc_checks(node)
        consul.hang()
        time.sleep(outage)
        checks_before = hc_checks(node)
        consul.resume()
        # health checks "back": the checker node's check counter moves on
        _, took = wait_for(lambda: hc_checks(node) > checks_before + 1, 30, step=0.05)
        time.sleep(1)
        print(
            f"outage: Consul hung (SIGSTOP) {outage:.0f} s under load: {results['ok']} requests "
            f"served, {results['bad']} client errors; health checks kept running during it "
            f"({checks_before - checks_at_hang} checks of 1 host every 1 s) and ran again "
            f"{took * 1000:.0f} ms after SIGCONT"
        )
        results["ok"] = results["bad"] = 0
        consul.kill()
        time.sleep(outage)
        consul.start()  # a -dev agent / dev-consul without --data: back empty, index reset
        t0 = time.monotonic()
        checks_before = hc_checks(node)
        _, took = wait_for(lambda: hc_checks(node) > checks_before + 1, 30, step=0.05)
        held, took_lock = wait_for(
            lambda: (consul.get(f"{node.prefix}/locks/healthcheck") or {}).get("Session"), 30
        )
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join()
        print(
            f"outage: Consul killed (SIGKILL) {outage:.0f} s, then back empty, under load: "
            f"{results['ok']} requests served, {results['bad']} client errors; checks ran "
            f"{took * 1000:.0f} ms after Consul was back, the checker lock was held again after "
            f"{(time.monotonic() - t0 if held else float('nan')) * 1000:.0f} ms"
        )
        del took_lock
    finally:
        node.server.stop()


def bench_cold(tmp: Path, consul: ConsulProc) -> None:
    a = free_port()
    prefix = new_prefix()
    # write the instance, then start a fresh node with Consul hung
    setup = start_node(tmp, consul.port, prefix, {"A": a}, name="cold-setup")
    setup.configure_instance("inst", instance(a))
    setup.server.stop()
    consul.hang()
    try:
        node = start_node(tmp, consul.port, prefix, {"A": a}, name="cold")
        try:
            t0 = time.monotonic()
            _, body = node.ask()
            first = time.monotonic() - t0
            t1 = time.monotonic()
            node.ask()
            second = time.monotonic() - t1
            print(
                f"cold start, Consul hung: first answer after {first * 1000:.0f} ms ({body!r}), "
                f"the next after {second * 1000:.0f} ms (failure remembered)"
            )
        finally:
            node.server.stop()
    finally:
        consul.resume()


def bench_writes(tmp: Path, consul: ConsulProc, hosts: int, seconds: float) -> None:
    a = free_port()
    proxy = free_port()
    prefix = new_prefix()
    server = NginxServer(
        tmp / "writes",
        http_config=zedcup_http_config(
            proxy, prefix, {"A": a}, extra=COUNTING_PROXY.format(listen=proxy, consul=consul.port)
        ),
        config=__import__("dataplane_cluster").NODE_CONFIG + COUNTS_LOCATION,
        workers=2,
        error_log_level="warn",
    )
    server.start()
    node = Node(server, {"A": a}, prefix)
    try:
        node.configure({"healthcheck_interval": 1})
        conf = {
            "healthcheck": {"interval": 1},
            "pools": [
                {
                    "name": "p",
                    "hosts": [
                        {"name": f"h{i}", "host": "127.0.0.1", "port": a} for i in range(hosts)
                    ],
                }
            ],
        }
        print("writes: configure", node.configure_instance("inst", conf))
        wait_for(lambda: hc_checks(node) >= hosts, 60)
        time.sleep(2)
        from zedctl.testnginx import http_request

        def counts() -> dict[str, int]:
            body = http_request(server.port, "GET", "/writes").body.decode()
            return {
                k: int(v)
                for k, v in (line.rsplit("=", 1) for line in body.splitlines() if "=" in line)
            }

        c0, h0 = counts(), hc_checks(node)
        time.sleep(seconds)
        c1, h1 = counts(), hc_checks(node)
        diff = {k: c1.get(k, 0) - c0.get(k, 0) for k in c1}
        per_min = diff.get("all", 0) * 60 / seconds
        print(
            f"writes: {hosts} healthy hosts checked every 1 s for {seconds:.0f} s: "
            f"{h1 - h0} checks, "
            f"{diff.get('all', 0)} Consul writes ({per_min:.1f} per minute; by kind: "
            f"{ {k: v for k, v in diff.items() if k != 'all' and v} })"
        )
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--consul", choices=["dev", "real"], default="dev")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--outage", type=float, default=20)
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--writes-for", type=float, default=60)
    p.add_argument(
        "--only",
        default="propagation,restart,quit,stop,outage,cold,writes",
        help="comma-separated",
    )
    args = p.parse_args()
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="zedcup-bench-") as d:
        tmp = Path(d)
        consul = ConsulProc("dev-consul" if args.consul == "dev" else "consul", workdir=tmp).start()
        print(f"Consul: {consul.kind}; nproc {os.cpu_count()}, loadavg {os.getloadavg()}")
        try:
            if "propagation" in only:
                bench_propagation(tmp, consul, args.rounds)
            if "restart" in only:
                bench_restart(tmp, consul)
            if "quit" in only:
                bench_quit(tmp, consul)
            if "stop" in only:
                bench_quit(tmp, consul, stop=True)
            if "outage" in only:
                bench_outage(tmp, consul, args.outage)
            if "cold" in only:
                bench_cold(tmp, consul)
            if "writes" in only:
                bench_writes(tmp, consul, args.hosts, args.writes_for)
        finally:
            consul.stop()


if __name__ == "__main__":
    main()
