"""zedcup.metrics(): the Prometheus text format, parsed with prometheus_client's own parser,
from a real node (2 workers) in front of real backends, one of them broken and fixed."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families
from zedctl.testnginx.consul import ConsulEndpoint
from zedctl.testnginx.runner import NginxServer, PortPicker
from zedcup_nodes import Backends, configure, get, start_node, wait_for

Labels = tuple[tuple[str, str], ...]


@dataclass
class Node:
    backends: Backends
    node: NginxServer


@pytest.fixture(scope="module")
def node(consul: ConsulEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("metrics")
    prefix = f"obs-{uuid.uuid4().hex[:12]}"
    backends = Backends(root / "backends", ["web01", "web02", "dr01"], PortPicker()).start()
    server = None
    try:
        configure(
            consul,
            prefix,
            {
                "config": {"healthcheck_interval": 0.2},
                "instances": {
                    "web": {
                        "pools": [
                            {
                                "name": "primary",
                                "timeout": 500,
                                "status_codes": ["5xx"],
                                "healthcheck": {"interval": 0.3, "fall": 2, "rise": 2},
                                "hosts": [
                                    {"name": n, "host": "127.0.0.1", "port": backends.ports[n]}
                                    for n in ("web01", "web02")
                                ],
                            },
                            {
                                "name": "secondary",
                                "hosts": [
                                    {
                                        "name": "dr01",
                                        "host": "127.0.0.1",
                                        "port": backends.ports["dr01"],
                                    }
                                ],
                            },
                        ]
                    },
                    # names that need escaping in label values
                    'odd"name': {
                        "pools": [
                            {
                                "name": "p\\1",
                                "hosts": [{"name": "h 1", "host": "127.0.0.1", "port": 1}],
                            }
                        ]
                    },
                },
            },
            root,
        )
        server = start_node(root / "node", consul, prefix, "node-m")
        wait_for(
            "both instances on the node", lambda: 'instance="odd\\"name"' in scrape_text(server)
        )
        yield Node(backends, server)
    finally:
        if server is not None:
            server.stop()
        backends.stop()


def scrape_text(server: NginxServer) -> str:
    code, body, headers = get(server.url + "/metrics")
    assert code == 200, body
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return body


def scrape(server: NginxServer) -> dict[str, dict[Labels, float]]:
    """Every sample, by sample name and labels, as prometheus_client parses them."""
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(scrape_text(server)):
        assert family.documentation, family.name
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def host(inst: str, pool: str, name: str, **extra: str) -> Labels:
    return tuple(sorted({"instance": inst, "pool": pool, "host": name, **extra}.items()))


def test_parses_with_prometheus_client_and_names_follow_conventions(node: Node) -> None:
    families = list(text_string_to_metric_families(scrape_text(node.node)))
    names = {f.name for f in families}
    for want in (
        "zedcup_host_up", "zedcup_host_requests", "zedcup_host_failures", "zedcup_requests",
        "zedcup_tries", "zedcup_failovers", "zedcup_healthchecks", "zedcup_host_transitions",
        "zedcup_config_index", "zedcup_config_age_seconds", "zedcup_consul_up",
        "zedcup_consul_last_contact_age_seconds", "zedcup_timers_running",
    ):  # fmt: skip
        assert want in names
    for f in families:
        assert f.name.startswith("zedcup_")
        assert f.type in ("counter", "gauge"), f.name
        if f.type == "counter":
            assert all(s.name == f.name + "_total" for s in f.samples), f.name
    samples = scrape(node.node)
    # label values are escaped as the format says, and parse back to the names
    assert samples["zedcup_host_up"][host('odd"name', "p\\1", "h 1")] in (0.0, 1.0)
    # the node reads the cluster's records every 5 s, the first time 5 s after it starts and
    # only once its session exists (a loaded machine can add seconds to both)
    wait_for("Consul seen up", lambda: scrape(node.node)["zedcup_consul_up"][()] == 1.0, timeout=30)
    assert samples["zedcup_timers_running"][()] >= 4


def test_host_state_follows_a_broken_and_fixed_backend(node: Node) -> None:
    web01 = host("web", "primary", "web01")
    wait_for("web01 up", lambda: scrape(node.node)["zedcup_host_up"][web01] == 1.0)
    before = scrape(node.node)["zedcup_host_transitions_total"][
        host("web", "primary", "web01", state="down")
    ]
    node.backends.set_broken("web01", True)
    try:
        wait_for(
            "web01 down in /metrics", lambda: scrape(node.node)["zedcup_host_up"][web01] == 0.0, 10
        )

        # both workers answer /metrics: wait until the one that answers agrees too
        def consistent() -> dict[str, dict[Labels, float]] | None:
            s = scrape(node.node)
            ok = (
                s["zedcup_host_state"][host("web", "primary", "web01", state="down")] == 1.0
                and s["zedcup_host_state"][host("web", "primary", "web01", state="up")] == 0.0
                and s["zedcup_host_up"][host("web", "primary", "web02")] == 1.0
            )
            return s if ok else None

        s = wait_for("web01 down in every worker", consistent, 5)
        assert s["zedcup_healthchecks_total"][(("result", "fail"),)] >= 2
        wait_for(
            "the transition counted",
            lambda: (
                scrape(node.node)["zedcup_host_transitions_total"][
                    host("web", "primary", "web01", state="down")
                ]
                == before + 1
            ),
            5,
        )
    finally:
        node.backends.set_broken("web01", False)
    wait_for("web01 back up", lambda: scrape(node.node)["zedcup_host_up"][web01] == 1.0, 10)
    wait_for(
        "the transition back counted",
        lambda: (
            scrape(node.node)["zedcup_host_transitions_total"][
                host("web", "primary", "web01", state="up")
            ]
            >= 1
        ),
        5,
    )


def delta(after: dict[str, dict[Labels, float]], before: dict[str, dict[Labels, float]]):
    """after - before of one sample (a missing one counts as 0)."""

    def d(name: str, labels: Labels) -> float:
        return after.get(name, {}).get(labels, 0.0) - before.get(name, {}).get(labels, 0.0)

    return d


def send(url: str, n: int) -> list[str]:
    bodies = []
    for _ in range(n):
        code, body, _ = get(url)
        assert code == 200, (url, code, body)
        bodies.append(body.strip())
    return bodies


WEB = (("instance", "web"),)


def test_counts_match_the_requests_sent_on_both_paths(node: Node) -> None:
    web01, web02 = host("web", "primary", "web01"), host("web", "primary", "web02")
    dr01 = host("web", "secondary", "dr01")
    wait_for("web01 and web02 up", lambda: scrape(node.node)["zedcup_host_up"][web02] == 1.0)
    wait_for("web01 and web02 up", lambda: scrape(node.node)["zedcup_host_up"][web01] == 1.0)

    # all healthy: one try per request, both primaries used, nothing failed
    before = scrape(node.node)
    bodies = send(node.node.url + "/", 40) + send(node.node.url + "/proxy/", 40)
    assert set(bodies) == {"web01", "web02"}

    def settled(total: float) -> dict[str, dict[Labels, float]] | None:
        s = scrape(node.node)
        return s if delta(s, before)("zedcup_requests_total", WEB) >= total else None

    after = wait_for("80 requests counted", lambda: settled(80), timeout=5)
    d = delta(after, before)
    assert d("zedcup_requests_total", WEB) == 80
    assert d("zedcup_tries_total", WEB) == 80
    assert d("zedcup_failovers_total", WEB) == 0 and d("zedcup_unanswered_total", WEB) == 0
    assert d("zedcup_host_requests_total", web01) == bodies.count("web01")
    assert d("zedcup_host_requests_total", web02) == bodies.count("web02")
    for name in ("web01", "web02"):
        for kind in ("connect", "request", "status"):
            assert d("zedcup_host_failures_total", host("web", "primary", name, kind=kind)) == 0

    # both primaries broken and marked down: every request fails over to dr01
    node.backends.set_broken("web01", True)
    node.backends.set_broken("web02", True)
    try:
        wait_for(
            "both primaries down",
            lambda: (
                scrape(node.node)["zedcup_host_up"][web01]
                + scrape(node.node)["zedcup_host_up"][web02]
                == 0.0
            ),
            10,
        )
        before = scrape(node.node)
        assert set(send(node.node.url + "/", 10) + send(node.node.url + "/proxy/", 10)) == {"dr01"}
        after = wait_for("20 requests counted", lambda: settled(20), timeout=5)
        d = delta(after, before)
        assert d("zedcup_requests_total", WEB) == 20
        assert d("zedcup_failovers_total", WEB) == 20
        assert d("zedcup_host_requests_total", dr01) == 20
        # a worker that had not yet seen a primary down tried it first: one more try each
        primaries = sum(d("zedcup_host_requests_total", h) for h in (web01, web02))
        status_failures = sum(
            d("zedcup_host_failures_total", host("web", "primary", n, kind="status"))
            for n in ("web01", "web02")
        )
        assert primaries == status_failures
        assert d("zedcup_tries_total", WEB) == 20 + primaries
    finally:
        node.backends.set_broken("web01", False)
        node.backends.set_broken("web02", False)
    wait_for("web01 back up", lambda: scrape(node.node)["zedcup_host_up"][web01] == 1.0, 10)
    wait_for("web02 back up", lambda: scrape(node.node)["zedcup_host_up"][web02] == 1.0, 10)

    # a broken web01 before its health check notices: each 503 is retried on another
    # host, counted as a status failure and one more try; every try either failed or
    # gave the request's answer, and answers from dr01 are failovers
    node.backends.set_broken("web01", True)
    try:
        before = scrape(node.node)
        bodies = send(node.node.url + "/", 20)
        assert "web01" not in bodies
        after = wait_for("20 requests counted", lambda: settled(20), timeout=5)
        d = delta(after, before)
        hosts = (web01, web02, dr01)
        names = (("primary", "web01"), ("primary", "web02"), ("secondary", "dr01"))
        failures = sum(
            d("zedcup_host_failures_total", host("web", pool, name, kind=kind))
            for pool, name in names
            for kind in ("connect", "request", "status")
        )
        assert failures == d(
            "zedcup_host_failures_total", host("web", "primary", "web01", kind="status")
        )
        assert d("zedcup_requests_total", WEB) == 20
        assert d("zedcup_tries_total", WEB) == 20 + failures
        assert sum(d("zedcup_host_requests_total", h) for h in hosts) == 20 + failures
        assert d("zedcup_host_requests_total", web02) == bodies.count("web02")
        assert d("zedcup_failovers_total", WEB) == bodies.count("dr01")
        assert d("zedcup_unanswered_total", WEB) == 0
    finally:
        node.backends.set_broken("web01", False)
    wait_for("web01 back up", lambda: scrape(node.node)["zedcup_host_up"][web01] == 1.0, 10)


def test_a_reload_keeps_the_counts_of_its_last_second(node: Node) -> None:
    before = scrape(node.node)
    send(node.node.url + "/", 50)
    # at once, before the workers' next flush: the old workers flush as they exit
    assert node.node.proc is not None
    os.kill(node.node.proc.pid, signal.SIGHUP)

    def counted() -> float:
        return delta(scrape(node.node), before)("zedcup_requests_total", WEB)

    wait_for("the 50 requests counted after the reload", lambda: counted() == 50, timeout=10)
