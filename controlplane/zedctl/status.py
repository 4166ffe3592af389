"""Live status of instances: per host up or down, error count, last error, last check,
and which node holds the health-check lock; read from the state keys of README.md:

    <prefix>/state/<inst>/<pool>/<host>/errors      count; Flags = unix time of the last error
                                                    (a count older than the pool's error_timeout
                                                    is over: the data plane starts again from 0)
    <prefix>/state/<inst>/<pool>/<host>/last_error  message; Flags = its unix time
    <prefix>/state/<inst>/<pool>/<host>/down        present while down; Flags = since when
    <prefix>/state/<inst>/<pool>/<host>/check       "ok" or the failure; Flags = its unix time
    <prefix>/state/<inst>/<pool>/<host>/admin_down  `zedctl host down`: the reason; Flags = since
    <prefix>/state/<inst>/<pool>/admin_down         `zedctl pool down`: the reason; Flags = since
    <prefix>/applied/<inst>                         the last config zedctl applied (JSON)
    <prefix>/locks/healthcheck                      holder's node name, held by a session
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .consulapi import ConsulKV, KVEntry
from .discovered import discovered_hosts
from .errors import NotFound, ZedctlError
from .kvmap import PENDING_KEY
from .layout import ADMIN_DOWN, Layout
from .nodes import read_nodes, seen_differently
from .ops import (
    StoredConfigInvalid,
    applied_config,
    check_stored,
    instance_names,
    relative_keys,
)
from .schema import Schema

HEALTHCHECK_LOCK = "healthcheck"


@dataclass(frozen=True)
class HostStatus:
    pool: str
    host: str
    address: str
    state: str
    reason: str = ""
    errors: int = 0
    errors_at: int | None = None
    last_error: str | None = None
    last_error_at: int | None = None
    down_since: int | None = None
    last_check: str | None = None
    last_check_at: int | None = None
    held: str | None = None
    """The operator's hold (`zedctl host down` or `pool down`): its reason ("" if none)."""
    held_since: int | None = None
    source: str = "config"
    """Where the host comes from: "config", or "consul:<service>" for a pool's service."""
    # live nodes whose own view differs from the cluster's: "<node>: up|down"
    seen_differently: tuple[str, ...] = ()


@dataclass
class InstanceStatus:
    name: str
    hosts: list[HostStatus] = field(default_factory=list)
    note: str = ""
    problems: list[str] = field(default_factory=list)
    """Why the stored config is invalid: every problem, key by key."""
    serving: str | None = None
    """Where `hosts` come from when the stored config cannot be read."""


@dataclass
class StatusReport:
    lock_holder: str | None
    instances: list[InstanceStatus]
    # live nodes that publish records (then each host says which of them see it differently)
    nodes_seen: int = 0

    @property
    def ok(self) -> bool:
        """False when a stored config is invalid (status then exits non-zero)."""
        return not any(i.problems for i in self.instances)

    def to_json(self) -> dict[str, Any]:
        return {
            "healthcheck_lock": self.lock_holder,
            "nodes_seen": self.nodes_seen,
            "instances": [
                {
                    "name": i.name,
                    "note": i.note or None,
                    "problems": i.problems,
                    "hosts_from": i.serving or "stored config",
                    "hosts": [asdict(h) for h in i.hosts],
                }
                for i in self.instances
            ],
        }


def _address(host: Mapping[str, Any]) -> str:
    if "port" in host:
        name = str(host["host"])
        if ":" in name and not name.startswith("["):
            name = f"[{name}]"  # an IPv6 address
        return f"{name}:{host['port']}"
    return str(host["host"])


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _errors_in_window(errors: KVEntry | None, error_timeout: float, now: float) -> int:
    """The error count as the data plane counts it: 0 once error_timeout has passed
    since the last error (the count's Flags)."""
    if errors is None:
        return 0
    if errors.flags and now - errors.flags >= error_timeout:
        return 0
    return _int(errors.value)


def host_status(
    pool: Mapping[str, Any],
    host: Mapping[str, Any],
    state: dict[str, KVEntry],
    now: float | None = None,
    pool_hold: KVEntry | None = None,
) -> HostStatus:
    """One host's status from its effective config and its state keys (by leaf name)."""
    now = time.time() if now is None else now
    errors, last_error = state.get("errors"), state.get("last_error")
    down, check = state.get("down"), state.get("check")
    hold = state.get(ADMIN_DOWN)
    held = pool_hold or hold
    if pool_hold is not None:
        status = "down"
        reason = "pool drained by operator" + (f": {pool_hold.value}" if pool_hold.value else "")
    elif hold is not None:
        status = "down"
        reason = "held down by operator" + (f": {hold.value}" if hold.value else "")
    elif down is not None:
        status, reason = "down", f"marked down: {down.value}" if down.value else "marked down"
    elif not host["up"] and host.get("source", "config") != "config":
        status, reason = "down", f"{host['source']}: a check is critical (or warns at weight 0)"
    elif not host["up"]:
        status, reason = "down", "config: host up = false"
    elif not pool["up"]:
        status, reason = "down", "config: pool up = false"
    else:
        status, reason = "up", ""
    last_error_at = None
    if last_error is not None:
        last_error_at = last_error.flags or None
    elif errors is not None:
        last_error_at = errors.flags or None
    return HostStatus(
        pool=pool["name"],
        host=host["name"],
        address=_address(host),
        state=status,
        reason=reason,
        errors=_errors_in_window(errors, pool["error_timeout"], now),
        errors_at=(errors.flags or None) if errors else None,
        last_error=last_error.value if last_error else None,
        last_error_at=last_error_at,
        down_since=(down.flags or None) if down else None,
        last_check=check.value if check else None,
        last_check_at=(check.flags or None) if check else None,
        held=(held.value or "") if held else None,
        held_since=(held.flags or None) if held else None,
        source=str(host.get("source", "config")),
    )


def read_status(
    kv: ConsulKV,
    layout: Layout,
    schema: Schema,
    instance: str | None = None,
    now: float | None = None,
) -> StatusReport:
    now = time.time() if now is None else now
    if instance is not None:
        config_tree = layout.instance(instance)
        entries = kv.get_tree(config_tree)
        names = [instance] if relative_keys(entries, config_tree) else []
        if not names:
            raise NotFound(f"instance {instance!r} not found (no keys under {config_tree})")
        state_entries = kv.get_tree(layout.instance_state(instance))
    else:
        entries = kv.get_tree(layout.instances)
        names = sorted(instance_names(layout, entries))
        state_entries = kv.get_tree(layout.state)
    lock = kv.get(layout.lock(HEALTHCHECK_LOCK))
    holder = lock.value if lock is not None and lock.session else None

    nodes = read_nodes(kv, layout, now=now).live

    report = StatusReport(holder, [], nodes_seen=len(nodes))
    for name in names:
        tree = layout.instance(name, check=False)
        rel = relative_keys(entries, tree)
        item = InstanceStatus(name)
        report.instances.append(item)
        config: dict[str, Any] | None = None
        if PENDING_KEY in rel:
            item.note = "being written (_pending): nodes keep serving the last good config"
        else:
            try:
                config = schema.effective("instance", check_stored(schema, "instance", tree, rel))
            except StoredConfigInvalid as e:
                item.note = (
                    f"the config stored under {tree} is invalid: nodes keep serving the last "
                    "good config"
                )
                item.problems = [line.strip() for line in e.message.splitlines()[1:]]
            except ZedctlError as e:  # shown, not raised: status shows the other instances
                item.note = e.message.splitlines()[0]
        if config is None:
            config, item.serving = _applied(kv, layout, schema, name)
            if config is None:
                continue
        state_tree = layout.instance_state(name, check=False)
        for pool in config["pools"]:
            pool_hold = state_entries.get(f"{state_tree}{pool['name']}/{ADMIN_DOWN}")
            for host in _pool_hosts(kv, pool, item):
                base = f"{state_tree}{pool['name']}/{host['name']}/"
                state = {k[len(base) :]: e for k, e in state_entries.items() if k.startswith(base)}
                status = host_status(pool, host, state, now, pool_hold)
                if nodes:
                    cluster_down = status.state == "down" and not status.reason.startswith("config")
                    key = f"{name}/{pool['name']}/{host['name']}"
                    differ = tuple(seen_differently(key, cluster_down, nodes))
                    status = replace(status, seen_differently=differ)
                item.hosts.append(status)
    return report


def _pool_hosts(kv: ConsulKV, pool: Mapping[str, Any], item: InstanceStatus) -> list[Any]:
    """The pool's hosts: its config's, then those of its Consul service (a config host of
    the same name wins, as on the data plane)."""
    hosts = list(pool["hosts"])
    if pool.get("service"):
        names = {h["name"] for h in hosts}
        try:
            found = discovered_hosts(kv, pool["service"])
        except ZedctlError as e:
            item.note = item.note or f"pool {pool['name']}: {e.message.splitlines()[0]}"
            found = []
        hosts += [h for h in found if h["name"] not in names]
    return hosts


def _applied(
    kv: ConsulKV, layout: Layout, schema: Schema, name: str
) -> tuple[dict[str, Any] | None, str | None]:
    """The last config zedctl applied to `name` (effective), and a label saying so."""
    normalised, when = applied_config(kv, layout, schema, name)
    if normalised is None or when is None:
        return None, None
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(when))
    return (
        schema.effective("instance", normalised),
        f"the last config zedctl applied ({stamp}, {layout.applied_copy(name)})",
    )
