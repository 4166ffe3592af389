"""zedcup.metrics(): the Prometheus text format, parsed with prometheus_client's own parser,
from a real node (2 workers) in front of real backends, one of them broken and fixed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families
from zedctl.pytest_plugin import ConsulEndpoint
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
    assert samples["zedcup_consul_up"][()] == 1.0
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
        s = scrape(node.node)
        assert s["zedcup_host_state"][host("web", "primary", "web01", state="down")] == 1.0
        assert s["zedcup_host_state"][host("web", "primary", "web01", state="up")] == 0.0
        assert s["zedcup_host_up"][host("web", "primary", "web02")] == 1.0
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
