"""Hosts of pools that name a Consul service (`pool.service`), as the data plane finds
them (lua/zedcup/discovery.lua): for `zedctl status`. The mapping, on both sides:

- name = the service ID ('/' becomes '_'); host = the service's address, else its node's;
  port = the service's port;
- weight = Weights.Passing, or Weights.Warning while a check warns;
- up = false while a check is critical (maintenance counts as critical), or when it warns
  with a warning weight of 0; passing_only asks Consul for passing instances only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .consulapi import ConsulKV

_RANK = {"passing": 1, "warning": 2, "critical": 3, "maintenance": 3}


def _status(checks: Any) -> str:
    worst, rank = "passing", 1
    for check in checks or []:
        status = check.get("Status") if isinstance(check, Mapping) else None
        r = _RANK.get(str(status), 3)
        if r > rank:
            worst, rank = ("critical" if status == "maintenance" else str(status)), r
    return worst


def hosts_from_health(entries: Any, service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The hosts of /v1/health/service/<name>'s answer, sorted by name."""
    out = []
    source = f"consul:{service['name']}"
    for entry in entries if isinstance(entries, list) else []:
        svc = entry.get("Service") or {}
        node = entry.get("Node") or {}
        address = svc.get("Address") or node.get("Address")
        port = svc.get("Port")
        sid = svc.get("ID")
        if not isinstance(sid, str) or not address or not isinstance(port, int) or port <= 0:
            continue
        status = _status(entry.get("Checks"))
        weights = svc.get("Weights") or {}
        weight = weights.get("Passing", 1)
        if status == "warning":
            weight = weights.get("Warning", 1)
        out.append(
            {
                "name": sid.replace("/", "_"),
                "host": address,
                "port": port,
                "weight": weight if weight > 0 else 1,
                "up": status != "critical" and weight > 0,
                "source": source,
            }
        )
    return sorted(out, key=lambda h: h["name"])


def discovered_hosts(kv: ConsulKV, service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Read the service's instances from Consul with the pool's filters."""
    params: list[tuple[str, str]] = []
    if service.get("passing_only"):
        params.append(("passing", ""))
    if service.get("tag"):
        params.append(("tag", str(service["tag"])))
    if service.get("datacenter"):
        params.append(("dc", str(service["datacenter"])))
    for key, value in sorted((service.get("node_meta") or {}).items()):
        params.append(("node-meta", f"{key}:{value}"))
    return hosts_from_health(kv.health_service(str(service["name"]), params), service)
