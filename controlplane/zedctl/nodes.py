"""The cluster's nodes, from the records they publish (README "cluster view"):

    <prefix>/nodes/<node name>   JSON, held by the node's Consul session; rewritten by the
                                 node when its content changes (at most every 5 s):
        {"name", "hostname", "version", "started", "written", "checker": bool,
         "configs": {"<inst>": {"index", "applied"}}, "down": ["<inst>/<pool>/<host>", ...],
         "consul": {"reachable", "last_contact"}}
    <prefix>/locks/healthcheck   the health-check lock: holder's node name, held by its session

A record whose session is gone (the node stopped, or died and its session expired) has
no Session: it is listed as gone, and the nodes delete such records. A live session means
the node renewed it within `session_ttl` (its Consul TTL is sized so that Consul ends a
dead node's session within that, or within 23 s for a smaller `session_ttl`): that is the
liveness bound; `written` only tells how old the content
is (it is rewritten on change, never to show liveness).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .consulapi import ConsulKV, KVEntry
from .errors import ZedctlError
from .layout import Layout
from .ops import load_global
from .schema import Schema

HEALTHCHECK_LOCK = "healthcheck"


@dataclass(frozen=True)
class NodeRecord:
    key: str
    name: str
    session: str | None
    hostname: str = ""
    version: str = ""
    started: float | None = None
    written: float | None = None
    checker: bool = False
    configs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    down: tuple[str, ...] = ()
    consul_reachable: bool | None = None
    last_contact: float | None = None
    problem: str = ""

    @property
    def live(self) -> bool:
        return self.session is not None

    def age(self, now: float) -> float | None:
        """Seconds since the node last rewrote its record."""
        return None if self.written is None else max(0.0, now - self.written)


@dataclass(frozen=True)
class LockHolder:
    name: str | None
    session: str | None
    # "" when the holder is one of the live nodes; else why it is suspicious
    problem: str = ""


@dataclass
class NodesReport:
    nodes: list[NodeRecord]
    lock: LockHolder
    session_ttl: float | None = None
    now: float = field(default_factory=time.time)

    @property
    def live(self) -> list[NodeRecord]:
        return [n for n in self.nodes if n.live]

    def to_json(self) -> dict[str, Any]:
        return {
            "session_ttl": self.session_ttl,
            "healthcheck_lock": {
                "holder": self.lock.name,
                "session": self.lock.session,
                "problem": self.lock.problem or None,
            },
            "nodes": [
                {
                    "name": n.name,
                    "live": n.live,
                    "session": n.session,
                    "hostname": n.hostname,
                    "version": n.version,
                    "started": n.started,
                    "written": n.written,
                    "record_age": n.age(self.now),
                    "checker": n.checker,
                    "configs": dict(n.configs),
                    "down": list(n.down),
                    "consul": {"reachable": n.consul_reachable, "last_contact": n.last_contact},
                    "problem": n.problem or None,
                }
                for n in self.nodes
            ],
        }


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def parse_record(entry: KVEntry, prefix: str) -> NodeRecord:
    """A node record from its key; a record that is not JSON is kept, with the problem."""
    name = entry.key[len(prefix) :]
    try:
        raw = json.loads(entry.value or "")
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        return NodeRecord(entry.key, name, entry.session, problem="record is not a JSON object")
    consul = raw.get("consul") if isinstance(raw.get("consul"), dict) else {}
    configs = raw.get("configs") if isinstance(raw.get("configs"), dict) else {}
    down = raw.get("down") if isinstance(raw.get("down"), list) else []
    reachable = consul.get("reachable")
    return NodeRecord(
        key=entry.key,
        name=str(raw.get("name") or name),
        session=entry.session,
        hostname=str(raw.get("hostname") or ""),
        version=str(raw.get("version") or ""),
        started=_number(raw.get("started")),
        written=_number(raw.get("written")),
        checker=raw.get("checker") is True,
        configs={str(k): v for k, v in configs.items() if isinstance(v, dict)},
        down=tuple(str(d) for d in down),
        consul_reachable=reachable if isinstance(reachable, bool) else None,
        last_contact=_number(consul.get("last_contact")),
    )


def judge_lock(lock: KVEntry | None, nodes: Sequence[NodeRecord]) -> LockHolder:
    """Who holds the health-check lock, and whether that holder is one of the live nodes."""
    if lock is None or not lock.session:
        return LockHolder(None, None)
    holder = lock.value or "?"
    by_session = {n.session: n for n in nodes if n.live}
    if lock.session in by_session:
        return LockHolder(holder, lock.session)
    named = [n for n in nodes if n.name == holder]
    if named and named[0].live:
        problem = (
            f"held by session {lock.session}, but node {holder} now runs session "
            f"{named[0].session}: the holder is gone (restarted); the lock is released "
            "when the old session expires"
        )
    elif named:
        problem = f"node {holder} is gone (its session ended) but the lock still names it"
    else:
        problem = (
            f"no live node publishes a record for session {lock.session}: the holder is gone, "
            "or runs a zedcup without node records"
        )
    return LockHolder(holder, lock.session, problem)


def read_nodes(
    kv: ConsulKV, layout: Layout, session_ttl: float | None = None, now: float | None = None
) -> NodesReport:
    prefix = f"{layout.prefix}/nodes/"
    entries = kv.get_tree(prefix)
    nodes = sorted(
        (parse_record(e, prefix) for e in entries.values() if e.key != prefix),
        key=lambda n: (not n.live, n.name),
    )
    lock = kv.get(layout.lock(HEALTHCHECK_LOCK))
    return NodesReport(
        nodes=nodes,
        lock=judge_lock(lock, nodes),
        session_ttl=session_ttl,
        now=time.time() if now is None else now,
    )


def seen_differently(host_key: str, cluster_down: bool, nodes: Sequence[NodeRecord]) -> list[str]:
    """Live nodes whose own view of `<inst>/<pool>/<host>` (down or not) differs from the
    cluster's, e.g. ["node-b: up"]."""
    out = []
    for n in nodes:
        if not n.live:
            continue
        sees_down = host_key in n.down
        if sees_down != cluster_down:
            out.append(f"{n.name}: {'down' if sees_down else 'up'}")
    return out


def session_ttl(kv: ConsulKV, layout: Layout, schema: Schema) -> float | None:
    """The cluster's session_ttl (the stored global config, else its default)."""
    try:
        stored = load_global(kv, layout, schema)
    except ZedctlError:
        return None  # an invalid global config is zedctl config show's business
    return float(schema.effective("global", stored or {})["session_ttl"])


def nodes_table(report: NodesReport) -> str:
    # render imports status, which imports this module: import it when first used
    from .render import ago, table

    now = report.now
    lock = report.lock
    if lock.name is None:
        head = "health-check lock: nobody (no health checks running)\n"
    else:
        head = f"health-check lock: {lock.name}\n"
        if lock.problem:
            head += f"  GONE HOLDER: {lock.problem}\n"
    # Consul ends a dead node's session within max(session_ttl, 23 s) (lua/zedcup/session.lua)
    ttl = f"{max(report.session_ttl, 23):g}s" if report.session_ttl else "session_ttl"
    head += f"live = its Consul session is valid: Consul drops a dead node's within {ttl}\n\n"
    if not report.nodes:
        return head + "no nodes (none has published a record under <prefix>/nodes/)\n"
    rows = []
    for n in report.nodes:
        configs = ", ".join(
            f"{inst}"
            + (f"@{c['index']}" if c.get("index") else "")
            + (f" ({ago(_number(c.get('applied')), now)})" if c.get("applied") else "")
            for inst, c in sorted(n.configs.items())
        )
        contact = "-"
        if n.consul_reachable is False:
            contact = "unreachable"
        elif n.last_contact:
            contact = ago(n.last_contact, now)
        rows.append(
            (
                n.name,
                "live" if n.live else "GONE",
                n.version or "?",
                ago(n.started, now) if n.started else "?",
                "yes" if n.checker else "-",
                configs or "-",
                ", ".join(n.down) if n.down else "-",
                contact,
                ago(n.written, now) if n.written else "?",
                n.problem or "",
            )
        )
    headers = (
        "NODE", "STATE", "VERSION", "STARTED", "CHECKER", "CONFIGS", "SEES DOWN",
        "CONSUL CONTACT", "RECORD WRITTEN", "NOTE",
    )  # fmt: skip
    return head + table(headers, rows)


def show(kv: ConsulKV, layout: Layout, schema: Schema, output: str) -> str:
    report = read_nodes(kv, layout, session_ttl(kv, layout, schema))
    if output == "json":
        return json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
    return nodes_table(report)
