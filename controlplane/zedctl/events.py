"""The event log in Consul: host transitions (written by the data plane's compare-and-set
winner) and operator actions (written by zedctl), kept per instance:

    <prefix>/events/<inst>/<id>    id = <unix ms, 13 digits>-<8 hex>: byte order is time order
    value: {"time": <unix s>, "node": "...", "event": "<kind>", "pool": ..., "host": ...,
            "reason": ...}   (pool, host, reason optional)

A writer keeps the log bounded: once more than KEEP + SLACK events exist, it deletes the
oldest so KEEP remain. The tree is outside `<prefix>/state/`, so writing an event never
wakes the data plane's state watchers.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .consulapi import TXN_LIMIT, ConsulKV, KVEntry, op
from .layout import Layout

KEEP = 100
SLACK = 10

# Operator actions (the data plane writes host_down and host_up).
ADMIN_HOST_DOWN = "admin_host_down"
ADMIN_HOST_UP = "admin_host_up"
ADMIN_POOL_DOWN = "admin_pool_down"
ADMIN_POOL_UP = "admin_pool_up"
APPLY = "apply"
REMOVE = "remove"


def operator_node() -> str:
    """How zedctl names itself in events: zedctl@<hostname>, with the user when known."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    who = f"{user} " if user else ""
    return f"{who}zedctl@{socket.gethostname()}".strip()


@dataclass(frozen=True)
class Event:
    instance: str
    time: float
    node: str
    event: str
    pool: str | None = None
    host: str | None = None
    reason: str | None = None
    key: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "time": self.time,
            "instance": self.instance,
            "node": self.node,
            "event": self.event,
        }
        for name in ("pool", "host", "reason"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def value(self) -> str:
        doc = self.to_json()
        del doc["instance"]
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def event_id(now: float | None = None) -> str:
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:013d}-{secrets.token_hex(4)}"


def parse(layout: Layout, entry: KVEntry) -> Event | None:
    """An event from its key; None for what is not one (a foreign key, bad JSON)."""
    rest = entry.key[len(layout.events) :]
    instance, sep, eid = rest.partition("/")
    if not sep or not eid or "/" in eid:
        return None
    try:
        doc = json.loads(entry.value or "")
    except ValueError:
        return None
    if not isinstance(doc, Mapping):
        return None

    def text(name: str) -> str | None:
        value = doc.get(name)
        return None if value is None else str(value)

    raw_time = doc.get("time")
    try:
        when = float(raw_time) if raw_time is not None else int(eid.split("-", 1)[0]) / 1000
    except (TypeError, ValueError):
        when = 0.0
    return Event(
        instance=instance,
        time=when,
        node=text("node") or "?",
        event=text("event") or "?",
        pool=text("pool"),
        host=text("host"),
        reason=text("reason"),
        key=entry.key,
    )


def record(
    kv: ConsulKV,
    layout: Layout,
    instance: str,
    event: str,
    pool: str | None = None,
    host: str | None = None,
    reason: str | None = None,
    now: float | None = None,
) -> Event:
    """Write one event and keep the instance's log bounded."""
    now = time.time() if now is None else now
    item = Event(instance, round(now, 3), operator_node(), event, pool, host, reason or None)
    tree = layout.instance_events(instance)
    key = tree + event_id(now)
    kv.put(key, item.value())
    trim(kv, tree)
    return item


def trim(kv: ConsulKV, tree: str, keep: int = KEEP, slack: int = SLACK) -> int:
    """Delete the oldest events beyond `keep` once there are more than keep + slack."""
    keys = [k for k in kv.keys(tree) if "/" not in k[len(tree) :]]
    if len(keys) <= keep + slack:
        return 0
    old = sorted(keys)[: len(keys) - keep]
    for start in range(0, len(old), TXN_LIMIT):
        kv.txn([op("delete", k) for k in old[start : start + TXN_LIMIT]], f"trimming {tree}")
    return len(old)


def read(
    kv: ConsulKV,
    layout: Layout,
    instance: str | None = None,
    index: int | None = None,
    wait: float | None = None,
) -> tuple[int, list[Event]]:
    """Events (oldest first) of one instance or all, with Consul's index; with `index`,
    a blocking query."""
    tree = layout.instance_events(instance) if instance is not None else layout.events
    new_index, entries = kv.get_tree_indexed(tree, index=index, wait=wait)
    events = [e for e in (parse(layout, entry) for entry in entries.values()) if e is not None]
    events.sort(key=lambda e: (e.key.rsplit("/", 1)[-1], e.key))
    return new_index, events


def follow(
    kv: ConsulKV,
    layout: Layout,
    instance: str | None,
    seen: set[str],
    index: int,
    wait: float = 60.0,
) -> Iterator[tuple[int, list[Event]]]:
    """Blocking queries for new events: yields (index, events not seen before)."""
    while True:
        new_index, events = read(kv, layout, instance, index=index, wait=wait)
        fresh = [e for e in events if e.key not in seen]
        seen.clear()  # trimmed events drop out; new ones have new keys
        seen.update(e.key for e in events)
        # An index that goes backwards (Consul restarted or restored): start over.
        index = new_index if new_index >= index else 0
        yield index, fresh
