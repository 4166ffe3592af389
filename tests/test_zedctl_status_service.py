"""`zedctl status` of a pool that names a Consul service: its hosts are the service's
instances, each saying where it came from. Against dev-consul and a real Consul."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from zedctl.cli import main
from zedctl.devconsul.testing import RawConsul
from zedctl.discovered import hosts_from_health
from zedctl.testnginx.consul import ConsulEndpoint


@pytest.fixture
def service(raw_consul: RawConsul) -> Iterator[str]:
    name = f"st-{uuid.uuid4().hex[:8]}"
    yield name
    for sid in ("a", "b"):
        raw_consul.put(f"/v1/agent/service/deregister/{name}-{sid}")


def zedctl(consul: ConsulEndpoint, prefix: str, *args: str) -> str:
    base = ["--consul", consul.url, "--prefix", prefix]
    if consul.token:
        base += ["--token", consul.token]
    result = CliRunner().invoke(main, [*base, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_status_lists_the_service_instances_with_their_source(
    consul: ConsulEndpoint, raw_consul: RawConsul, service: str, tmp_path: Path
) -> None:
    prefix = f"zt/{uuid.uuid4().hex[:8]}"
    for sid, address, status in (("a", "127.0.0.2", "passing"), ("b", "127.0.0.3", "critical")):
        body = {
            "ID": f"{service}-{sid}",
            "Name": service,
            "Address": address,
            "Port": 8080,
            "Weights": {"Passing": 3, "Warning": 1},
            "Check": {"TTL": "60s", "Status": status},
        }
        resp = raw_consul.put("/v1/agent/service/register", data=json.dumps(body))
        assert resp.status_code == 200, resp.text
    config = tmp_path / "c.yaml"
    config.write_text(
        "instances:\n  disc:\n    pools:\n"
        f"      - name: p\n        service: {{name: {service}}}\n"
        "        hosts: [{name: static, host: 10.0.0.9, port: 80}]\n"
    )
    try:
        zedctl(consul, prefix, "configure", str(config))
        report = json.loads(zedctl(consul, prefix, "status", "disc", "-o", "json"))
        hosts = {h["host"]: h for h in report["instances"][0]["hosts"]}
        assert hosts["static"]["source"] == "config"
        a, b = hosts[f"{service}-a"], hosts[f"{service}-b"]
        assert (a["address"], a["state"], a["source"]) == (
            "127.0.0.2:8080",
            "up",
            f"consul:{service}",
        )
        assert b["state"] == "down" and "critical" in b["reason"]
        table = zedctl(consul, prefix, "status", "disc")
        assert f"127.0.0.2:8080 (consul:{service})" in table
    finally:
        raw_consul.delete(f"/v1/kv/{prefix}/?recurse")


def test_mapping_rules() -> None:
    entries = [
        {
            "Node": {"Address": "10.0.0.1"},
            "Service": {
                "ID": "x/1",
                "Address": "",
                "Port": 81,
                "Weights": {"Passing": 5, "Warning": 2},
            },
            "Checks": [{"Status": "passing"}, {"Status": "warning"}],
        },
        {
            "Node": {"Address": "10.0.0.1"},
            "Service": {
                "ID": "y",
                "Address": "10.0.0.2",
                "Port": 82,
                "Weights": {"Passing": 5, "Warning": 0},
            },
            "Checks": [{"Status": "warning"}],
        },
        {
            "Node": {},
            "Service": {"ID": "z", "Port": 0},
            "Checks": [],
        },  # no address, no port: skipped
    ]
    hosts = hosts_from_health(entries, {"name": "web"})
    assert hosts == [
        {
            "name": "x_1",
            "host": "10.0.0.1",
            "port": 81,
            "weight": 2,
            "up": True,
            "source": "consul:web",
        },
        {
            "name": "y",
            "host": "10.0.0.2",
            "port": 82,
            "weight": 1,
            "up": False,
            "source": "consul:web",
        },
    ]
