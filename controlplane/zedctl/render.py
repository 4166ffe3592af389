"""Rendering for zedctl's output: YAML/JSON documents, tables, diffs, timestamps."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import yaml

from .diff import Change
from .events import Event
from .ops import ApplyPlan, HoldChange, InstanceSummary
from .status import StatusReport


class _Dumper(yaml.SafeDumper):
    """Block style, lists indented under their key (as people write YAML)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)


def document(value: Any, fmt: str) -> str:
    """A config or report as YAML or JSON text (ending in a newline)."""
    if fmt == "json":
        return json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return yaml.dump(
            value, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
        )
    raise ValueError(f"unknown output format {fmt!r}")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def ago(unix: int | None, now: float | None = None) -> str:
    """How long ago a unix time was, briefly: '42s ago', '5m ago', '3h ago', '2d ago'."""
    if not unix:
        return "?"
    seconds = int((time.time() if now is None else now) - unix)
    if seconds < 0:
        return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(unix))
    for unit, size, limit in (("s", 1, 120), ("m", 60, 7200), ("h", 3600, 172800)):
        if seconds < limit:
            return f"{seconds // size}{unit} ago"
    return f"{seconds // 86400}d ago"


def _short(text: str | None, width: int = 40) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def timestamp(unix: float | None = None) -> str:
    """A UTC time as shown in frames and events: 2026-12-04 21:50:03Z."""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(time.time() if unix is None else unix))


def instance_list(items: Sequence[InstanceSummary]) -> str:
    if not items:
        return "no instances\n"
    rows = [
        (
            i.name,
            i.pools if i.pools is not None else "-",
            i.hosts if i.hosts is not None else "-",
            i.note,
        )
        for i in items
    ]
    return table(("INSTANCE", "POOLS", "HOSTS", "NOTE"), rows)


def status_table(report: StatusReport, now: float | None = None, wide: bool = False) -> str:
    holder = report.lock_holder or "nobody (no health checks running)"
    out = [f"health-check lock: {holder}\n"]
    for inst in report.instances:
        out.append(f"\ninstance {inst.name}" + (f": {inst.note}" if inst.note else "") + "\n")
        for problem in inst.problems:
            out.append(f"  {problem}\n")
        if inst.serving and inst.hosts:
            out.append(f"hosts of {inst.serving}:\n")
        if not inst.hosts:
            continue
        rows = []
        for h in inst.hosts:
            state = h.state
            if h.state == "down":
                # The data plane's reasons quote the last error, which can be long.
                why = [h.reason if wide else _short(h.reason, 60)] if h.reason else []
                since = h.held_since or h.down_since
                if since:
                    why.append(ago(since, now))
                state += f" ({', '.join(why)})" if why else ""
            check = "-"
            if h.last_check is not None:
                text = h.last_check if wide else _short(h.last_check, 30)
                check = f"{text} ({ago(h.last_check_at, now)})"
            error = "-"
            if h.last_error is not None:
                text = h.last_error if wide else _short(h.last_error, 30)
                error = f"{text} ({ago(h.last_error_at, now)})"
            address = h.address if h.source == "config" else f"{h.address} ({h.source})"
            row = (h.pool, h.host, address, state, h.errors, error, check)
            if report.nodes_seen:
                row += (", ".join(h.seen_differently) or "-",)
            rows.append(row)
        headers = ("POOL", "HOST", "ADDRESS", "STATE", "ERRORS", "LAST ERROR", "LAST CHECK")
        if report.nodes_seen:
            headers += ("SEEN DIFFERENTLY BY",)
        out.append(table(headers, rows))
    if not report.instances:
        out.append("no instances\n")
    return "".join(out)


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def change_line(c: Change) -> str:
    """One change by meaning: '+ instance web pool primary host web03: 10.0.0.3:80'."""
    where = "global config" if c.instance is None else f"instance {c.instance}"
    if c.pool is not None:
        where += f" pool {c.pool}"
    if c.host is not None:
        where += f" host {c.host}"
    if c.field:
        where += f" {c.field}"
    if c.op == "+":
        text = f"+ {where}" + (f": {_value(c.new)}" if c.new not in (None, "") else "")
    elif c.op == "-":
        text = f"- {where}" + (f" (was {_value(c.old)})" if c.old not in (None, "") else "")
    elif c.field:
        text = f"~ {where}: {_value(c.old)} -> {_value(c.new)}"
    else:
        text = f"~ {where}"
    return text + (f" ({c.note})" if c.note else "")


def plan_diff(plan: ApplyPlan) -> str:
    lines = [change_line(c) for c in plan.changes]
    return ("\n".join(lines) + "\n") if lines else "no changes\n"


def plan_summary(plan: ApplyPlan, dry_run: bool) -> str:
    counts = plan.counts()
    lines = []
    for write in plan.writes:
        txns = len(write.transactions)
        noun = "transaction" if txns == 1 else "transactions"
        if write.keys is None:
            lines.append(f"{'would remove' if dry_run else 'removed'} {write.label} and its state")
        elif write.unchanged:
            lines.append(f"{write.label} unchanged: nothing to write")
        else:
            verb = "would write" if dry_run else "wrote"
            keys = f"{len(write.keys)} key{'s' if len(write.keys) != 1 else ''}"
            extra = ""
            if write.instance is not None:
                cleared = len(write.state_deletes)
                extra = (
                    f" (state kept; cleared for {cleared} removed or moved pool/host"
                    f"{'s' if cleared != 1 else ''})"
                    if cleared
                    else " (state kept)"
                )
            lines.append(f"{verb} {write.label}: {keys} in {txns} {noun}{extra}")
    tail = f"{counts['added']} added, {counts['changed']} changed, {counts['removed']} removed"
    if dry_run:
        tail = f"dry run: {tail}; nothing written"
    if not plan.writes:
        lines.append("nothing to apply")
    return "\n".join([*lines, tail]) + "\n"


def plan_json(plan: ApplyPlan, dry_run: bool) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "changed": plan.changed,
        "counts": plan.counts(),
        "changes": [c.to_json() for c in plan.changes],
        "writes": [
            {
                "tree": w.tree,
                "label": w.label,
                "action": "remove" if w.keys is None else ("none" if w.unchanged else "write"),
                "keys": len(w.keys) if w.keys is not None else None,
                "transactions": len(w.transactions),
                "state_cleared": w.state_deletes,
            }
            for w in plan.writes
        ],
    }


def hold_line(change: HoldChange) -> str:
    what = "host" if change.host else "pool"
    if change.down:
        why = f" ({change.reason})" if change.reason else ""
        was = " (it was already held; reason updated)" if change.was_held else ""
        return f"{what} {change.target}: held down by operator{why}{was}"
    if not change.was_held:
        text = f"{what} {change.target}: was not held down by an operator; nothing to undo"
    else:
        text = f"{what} {change.target}: operator hold removed"
    if not change.config_up:
        text += "; still down: its config says up = false (change the file and apply)"
    return text


def events_table(items: Sequence[Event], wide: bool = False) -> str:
    rows = []
    for e in items:
        target = "/".join(x for x in (e.pool, e.host) if x) or "-"
        reason = e.reason or "-"
        rows.append(
            (
                timestamp(e.time),
                e.instance,
                target,
                e.event,
                e.node,
                reason if wide else _short(reason, 60),
            )
        )
    return table(("TIME", "INSTANCE", "POOL/HOST", "EVENT", "NODE", "REASON"), rows)


def hosts_table(configs: dict[str, Any], wide: bool = False) -> str:
    """Effective instance configs as one row per host."""
    rows = []
    for name, config in configs.items():
        for pool in config["pools"]:
            for h in pool["hosts"]:
                row = [name, pool["name"], h["name"], h["host"], h.get("port", "-"), h["weight"]]
                row.append("yes" if h["up"] and pool["up"] else "no (config)")
                if wide:
                    hc = h.get("healthcheck", pool.get("healthcheck", config.get("healthcheck")))
                    row += [
                        pool["timeout"],
                        pool["max_errors"],
                        pool["error_timeout"],
                        "yes" if hc else "no",
                    ]
                rows.append(row)
    headers = ["INSTANCE", "POOL", "HOST", "ADDRESS", "PORT", "WEIGHT", "UP"]
    if wide:
        headers += ["TIMEOUT", "MAX_ERRORS", "ERROR_TIMEOUT", "HEALTHCHECK"]
    return table(headers, rows) if rows else "no hosts\n"


def fields_table(config: dict[str, Any]) -> str:
    rows = [(k, _value(v)) for k, v in config.items()]
    return table(("FIELD", "VALUE"), rows)
