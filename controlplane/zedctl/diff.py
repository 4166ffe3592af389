"""Differences between two configs by meaning: instances, pools and hosts matched by
their effective names (not by key index), fields compared by value.

Inserting one host at the top of a pool is one added host, not a shift of every key.
A host whose address (host and port) changes loses its runtime state on apply; the
change says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_ABSENT: Any = object()


@dataclass(frozen=True)
class Change:
    """One difference. `op`: '+' added, '-' removed, '~' changed. `instance` None is the
    global config; `pool`/`host` name the element (None: the level above); `field` is a
    dotted path inside it (None: the element as a whole)."""

    op: str
    instance: str | None
    pool: str | None = None
    host: str | None = None
    field: str | None = None
    old: Any = None
    new: Any = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "op": {"+": "added", "-": "removed", "~": "changed"}[self.op],
            "instance": self.instance,
        }
        for name in ("pool", "host", "field"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.op != "+":
            out["old"] = self.old
        if self.op != "-":
            out["new"] = self.new
        if self.note:
            out["note"] = self.note
        return out


def element_name(element: Mapping[str, Any], index: int) -> str:
    """A pool's or host's effective name: its own, else its 1-based index."""
    name = element.get("name")
    return name if isinstance(name, str) else str(index + 1)


def named(elements: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {element_name(e, i): e for i, e in enumerate(elements)}


def address(host: Mapping[str, Any]) -> tuple[Any, Any]:
    """What identifies a host's runtime state besides its name: host and port."""
    return host.get("host"), host.get("port")


def summary(config: Mapping[str, Any]) -> str:
    pools = config.get("pools") or []
    hosts = sum(len(p.get("hosts") or []) for p in pools if isinstance(p, Mapping))
    pools_text = f"{len(pools)} pool{'s' if len(pools) != 1 else ''}"
    return f"{pools_text}, {hosts} host{'s' if hosts != 1 else ''}"


def _fields(old: Any, new: Any, base: str, skip: Sequence[str], emit: Any) -> None:
    """Field-level changes between two values; records recurse, the rest compare whole."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = [k for k in old if k not in new] + list(new)
        for key in keys:
            if key in skip:
                continue
            _fields(
                old.get(key, _ABSENT),
                new.get(key, _ABSENT),
                f"{base}.{key}" if base else key,
                (),
                emit,
            )
        return
    if old is _ABSENT and new is _ABSENT:
        return
    if old is _ABSENT:
        emit("+", base, None, new)
    elif new is _ABSENT:
        emit("-", base, old, None)
    elif old != new or type(old) is not type(new):
        emit("~", base, old, new)


def diff_instance(
    name: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> list[Change]:
    """The changes from `old` to `new` (normalised instance configs; None: absent)."""
    if old is None and new is None:
        return []
    if old is None:
        assert new is not None
        return [Change("+", name, new=summary(new))]
    if new is None:
        return [Change("-", name, old=summary(old))]
    out: list[Change] = []

    def at(pool: str | None = None, host: str | None = None) -> Any:
        def emit(op: str, field: str, o: Any, n: Any) -> None:
            out.append(Change(op, name, pool, host, field or None, o, n))

        return emit

    _fields(old, new, "", ("pools",), at())
    old_pools, new_pools = named(old.get("pools") or []), named(new.get("pools") or [])
    common = [p for p in new_pools if p in old_pools]
    if [p for p in old_pools if p in new_pools] != common:
        out.append(Change("~", name, field="pool order", old=list(old_pools), new=list(new_pools)))
    for pname, pool in new_pools.items():
        if pname not in old_pools:
            out.append(Change("+", name, pname, new=summary({"pools": [pool]}).split(", ")[1]))
            continue
        before = old_pools[pname]
        _fields(before, pool, "", ("hosts", "name"), at(pname))
        old_hosts, new_hosts = named(before.get("hosts") or []), named(pool.get("hosts") or [])
        kept = [h for h in new_hosts if h in old_hosts]
        if [h for h in old_hosts if h in new_hosts] != kept:
            out.append(
                Change(
                    "~", name, pname, field="host order", old=list(old_hosts), new=list(new_hosts)
                )
            )
        for hname, host in new_hosts.items():
            if hname not in old_hosts:
                out.append(Change("+", name, pname, hname, new=_address_text(host)))
                continue
            first = len(out)
            _fields(old_hosts[hname], host, "", ("name",), at(pname, hname))
            if address(old_hosts[hname]) != address(host):
                out[first:] = [
                    Change(
                        c.op,
                        c.instance,
                        c.pool,
                        c.host,
                        c.field,
                        c.old,
                        c.new,
                        "its runtime state is cleared",
                    )
                    if c.field in ("host", "port")
                    else c
                    for c in out[first:]
                ]
        for hname, host in old_hosts.items():
            if hname not in new_hosts:
                out.append(Change("-", name, pname, hname, old=_address_text(host)))
    for pname, pool in old_pools.items():
        if pname not in new_pools:
            out.append(Change("-", name, pname, old=summary({"pools": [pool]}).split(", ")[1]))
    return out


def diff_global(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[Change]:
    out: list[Change] = []

    def emit(op: str, field: str, o: Any, n: Any) -> None:
        out.append(Change(op, None, field=field, old=o, new=n))

    _fields(old or {}, new or {}, "", (), emit)
    return out


def _address_text(host: Mapping[str, Any]) -> str:
    name = str(host.get("host"))
    if "port" not in host:
        return name
    if ":" in name:
        name = f"[{name}]"
    return f"{name}:{host['port']}"


def counts(changes: Sequence[Change]) -> dict[str, int]:
    out = {"added": 0, "changed": 0, "removed": 0}
    for c in changes:
        out[{"+": "added", "~": "changed", "-": "removed"}[c.op]] += 1
    return out


def describe(changes: Sequence[Change]) -> str:
    """A short summary for events: 'pool primary: host web03 added, web01 changed'."""
    parts: list[str] = []
    for c in changes:
        what = "instance"
        if c.host is not None:
            what = f"host {c.pool}/{c.host}"
        elif c.pool is not None:
            what = f"pool {c.pool}"
        if c.field:
            what += f" {c.field}"
        verb = {"+": "added", "-": "removed", "~": "changed"}[c.op]
        parts.append(f"{what} {verb}")
    text = "; ".join(parts)
    return text if len(text) <= 300 else text[:297] + "..."
