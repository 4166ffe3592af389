"""zedcup.status_page(): JSON or the live dashboard, against a real node, real backends and
the session's Consul; the dashboard is opened in real headless Chromium.

The dashboard screenshot is kept at test-artifacts/dashboard.png (and in the test's tmp dir).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from headless import Browser, find_chromium
from zedctl.testnginx.consul import ConsulEndpoint
from zedctl.testnginx.runner import NginxServer, PortPicker
from zedcup_nodes import Backends, configure, get, host_of, start_node, status_json, wait_for

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SECRET_TOKEN = "zedcup-test-secret-token-7f3a"
SECRET_HEADER = "Bearer zedcup-test-secret-header-91c2"


@dataclass
class Cluster:
    consul: ConsulEndpoint
    prefix: str
    backends: Backends
    node: NginxServer


@pytest.fixture(scope="module")
def cluster(consul: ConsulEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("dashboard")
    prefix = f"obs-{uuid.uuid4().hex[:12]}"
    picker = PortPicker()
    backends = Backends(root / "backends", ["web01", "web02", "dr01"], picker).start()
    node = None
    try:
        check = {
            "path": "/",
            "interval": 0.3,
            "fall": 2,
            "rise": 2,
            "headers": {"Authorization": SECRET_HEADER},
        }
        configure(
            consul,
            prefix,
            {
                "config": {"healthcheck_interval": 0.2, "host_revive_interval": 1},
                "instances": {
                    "web": {
                        "pools": [
                            {
                                "name": "primary",
                                "timeout": 500,
                                "max_errors": 100,
                                "healthcheck": check,
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
                    }
                },
            },
            root,
        )
        # with an ACL-enabled Consul the real token is the secret; without, any token works
        node = start_node(
            root / "node", consul, prefix, "node-a", token=consul.token or SECRET_TOKEN
        )

        def ready() -> bool:
            st = status_json(node)
            h = st and host_of(st, "web", "primary", "web01")
            return bool(
                h
                and h["state"] == "up"
                and st["node"]["consul"].get("reachable")
                and st["node"]["checker"].get("this_node")
                and h.get("check")
            )

        wait_for("the node to know web, reach Consul and check", ready, timeout=20)
        yield Cluster(consul, prefix, backends, node)
    finally:
        if node is not None:
            node.stop()
        backends.stop()


def test_status_page_negotiates_json_and_html(cluster: Cluster) -> None:
    url = cluster.node.url + "/_status"
    for headers, query in (({"Accept": "application/json"}, ""), ({}, "?format=json")):
        code, body, hdrs = get(url + query, headers)
        assert code == 200 and hdrs["Content-Type"] == "application/json", (headers, query)
        st = json.loads(body)
        assert [i["name"] for i in st["instances"]] == ["web"]
        assert [p["name"] for p in st["instances"][0]["pools"]] == ["primary", "secondary"]
        assert isinstance(st["transitions"], list)
    code, body, hdrs = get(url, {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert code == 200 and hdrs["Content-Type"].startswith("text/html")
    assert body.startswith("<!DOCTYPE html>")
    assert "default-src 'none'" in hdrs["Content-Security-Policy"]
    # self-contained: no external script, style, image or font
    assert not re.search(r"""(src|href)\s*=|@import|url\(|https?://""", body), "external asset"


def test_nothing_secret_in_status_or_metrics(cluster: Cluster) -> None:
    texts = [
        get(cluster.node.url + "/_status?format=json")[1],
        get(cluster.node.url + "/_status")[1],
        get(cluster.node.url + "/metrics")[1],
    ]
    secrets = [SECRET_HEADER, "secret-header"] + (
        [cluster.consul.token] if cluster.consul.token else [SECRET_TOKEN]
    )
    for text in texts:
        assert text
        for secret in secrets:
            assert secret not in text


def test_dashboard_in_chromium_shows_a_host_going_down(cluster: Cluster, tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("chromium is not installed (make deps installs it)")
    node, backends = cluster.node, cluster.backends
    stop = threading.Event()

    def traffic() -> None:  # some requests, so the page shows rates
        while not stop.is_set():
            get(node.url + "/", timeout=2)
            get(node.url + "/proxy/", timeout=2)
            time.sleep(0.05)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    row = "document.querySelector('tr[data-host=\"web/primary/web01\"]')"
    try:
        with Browser.start(tmp_path) as browser:
            browser.navigate(node.url + "/_status")
            wait_for(
                "the dashboard to show web01 up",
                lambda: browser.evaluate(f"{row} && {row}.dataset.state") == "up",
                timeout=10,
            )
            header = browser.evaluate("document.querySelector('header').innerText")
            assert "node-a" in header and "reachable" in header and "(this node)" in header
            pools = browser.evaluate(
                "Array.from(document.querySelectorAll('[data-pool]')).map(e => e.dataset.pool)"
            )
            assert pools == ["primary", "secondary"]
            wait_for(
                "the cluster card to list this node",
                lambda: (
                    "node-a (this node)"
                    in (browser.evaluate("document.getElementById('cluster').innerText") or "")
                ),
                timeout=10,
            )

            backends.set_broken("web01", True)
            broken_at = time.monotonic()
            server_down = page_down = None
            deadline = time.monotonic() + 20
            while page_down is None and time.monotonic() < deadline:
                if server_down is None:
                    h = host_of(status_json(node) or {}, "web", "primary", "web01")
                    if h and h["state"] == "down":
                        server_down = time.monotonic()
                if browser.evaluate(f"{row}.dataset.state") == "down":
                    page_down = time.monotonic()
                time.sleep(0.05)
            assert server_down is not None and page_down is not None, "web01 never shown down"
            lag = max(0.0, page_down - server_down)
            print(
                f"dashboard showed web01 down {lag:.2f}s after status() did, "
                f"{page_down - broken_at:.2f}s after it broke (checks every 0.3 s, fall 2)"
            )
            assert lag < 3.0
            reason = browser.evaluate(f"{row}.innerText")
            assert "health check" in reason
            # the transition list gets it too, and the rates are numbers
            wait_for(
                "the transition list",
                lambda: (
                    "web01" in browser.evaluate("document.getElementById('transitions').innerText")
                ),
                timeout=5,
            )
            time.sleep(1.5)
            browser.screenshot(tmp_path / "dashboard.png")
            shot = browser.screenshot(ARTIFACTS / "dashboard.png")
            assert shot.stat().st_size > 10_000
    finally:
        stop.set()
        sender.join(timeout=5)
        backends.set_broken("web01", False)
