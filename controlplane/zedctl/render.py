"""Rendering for zedctl's output: YAML/JSON documents, tables, diffs, timestamps."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import yaml

from .ops import ConfigurePlan, InstanceSummary, KeyChange
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


def status_table(report: StatusReport, now: float | None = None) -> str:
    holder = report.lock_holder or "nobody (no health checks running)"
    out = [f"health-check lock: {holder}\n"]
    for inst in report.instances:
        out.append(f"\ninstance {inst.name}" + (f": {inst.note}" if inst.note else "") + "\n")
        if not inst.hosts:
            continue
        rows = []
        for h in inst.hosts:
            state = h.state
            if h.state == "down":
                # The data plane's reasons quote the last error, which can be long.
                why = [_short(h.reason, 60)] if h.reason else []
                if h.down_since:
                    why.append(ago(h.down_since, now))
                state += f" ({', '.join(why)})" if why else ""
            check = "-"
            if h.last_check is not None:
                check = f"{_short(h.last_check, 30)} ({ago(h.last_check_at, now)})"
            error = "-"
            if h.last_error is not None:
                error = f"{_short(h.last_error, 30)} ({ago(h.last_error_at, now)})"
            row = (h.pool, h.host, h.address, state, h.errors, error, check)
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


def change_line(change: KeyChange) -> str:
    if change.kind == "added":
        return f"+ {change.key} = {change.new}"
    if change.kind == "removed":
        return f"- {change.key} (was {change.old})"
    return f"~ {change.key}: {change.old} -> {change.new}"


def plan_diff(plan: ConfigurePlan) -> str:
    lines = [change_line(c) for c in plan.changes]
    return ("\n".join(lines) + "\n") if lines else "no key changes\n"


def plan_summary(plan: ConfigurePlan, dry_run: bool) -> str:
    counts = plan.counts()
    lines = []
    for write in plan.writes:
        txns = len(write.transactions)
        noun = "transaction" if txns == 1 else "transactions"
        if write.keys is None:
            lines.append(f"{'would remove' if dry_run else 'removed'} {write.label} and its state")
        elif write.unchanged:
            lines.append(f"{write.label} unchanged: nothing to write (state kept)")
        else:
            verb = "would write" if dry_run else "wrote"
            extra = " (state cleared)" if write.label.startswith("instance") else ""
            keys = f"{len(write.keys)} key{'s' if len(write.keys) != 1 else ''}"
            lines.append(f"{verb} {write.label}: {keys} in {txns} {noun}{extra}")
    tail = f"{counts['added']} added, {counts['changed']} changed, {counts['removed']} removed"
    if dry_run:
        tail = f"dry run: {tail}; nothing written"
    if not plan.writes:
        lines.append("nothing to configure")
    return "\n".join([*lines, tail]) + "\n"
