"""zedctl's operations on a Consul KV store: apply (plan and write), read back, remove,
host and pool changes (operator holds, weights).

Plain functions over `ConsulKV`, `Layout` and `Schema`; the CLI only parses and prints.

Writes follow README.md: an instance (or the global config) is replaced as a whole, the
old tree (and the instance's state) deleted and the new keys set in one transaction when
that fits in `TXN_LIMIT` operations. A larger write follows the same protocol as the data
plane (zedcup.kv.write_tree), so zedctl and nginx nodes writing at once never mix trees:
the first transaction checks that `_pending` does not exist (or takes over a stale one,
older than `PENDING_STALE` seconds, with check-index), deletes, and sets `_pending` with
Flags = unix time; every later one checks with check-index that `_pending` is still
ours; the last removes it with delete-cas. A fresh `_pending` of another writer makes
the write refuse. Readers ignore a tree holding `_pending`.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import events
from .configfile import ConfigFile
from .consulapi import TXN_LIMIT, ConsulKV, KVEntry, TxnFailed, op
from .diff import Change, address, describe, diff_global, diff_instance, named, summary
from .diff import counts as diff_counts
from .errors import Conflict, ConsulError, NotFound, ZedctlError
from .kvmap import PENDING_KEY, flatten, key_of, read_config, scalar_text
from .layout import Layout
from .schema import Problem, Schema


class StoredConfigInvalid(ZedctlError):
    """What is stored in Consul does not pass the schema (hand-edited keys?)."""

    def __init__(self, tree: str, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = [f"  {tree}{key_of(p.path)}: {p.describe()}" for p in problems]
        super().__init__("\n".join([f"the config stored under {tree} is invalid:", *lines]))


class PendingWrite(ZedctlError):
    """A tree is marked `_pending`: a write is under way or was interrupted."""

    def __init__(self, tree: str, marker: str | None) -> None:
        super().__init__(
            f"{tree} is being written ({PENDING_KEY}: {marker or '?'}); readers ignore it "
            "until the write completes. If that write was interrupted, run apply again."
        )


# -- apply ------------------------------------------------------------------------------


@dataclass
class TreeWrite:
    """One tree replaced as a whole (or removed, when `keys` is None).

    A tree whose stored keys already are `keys` (and that is not marked `_pending`)
    gets no transactions. Runtime state is kept, except for hosts that are removed or
    whose address (host, port) changes, and pools that are removed: their state trees
    are in `deletes` (or, when there are many, in `cleanup`, run after the write).
    """

    label: str
    tree: str
    deletes: list[str]
    keys: dict[str, str] | None
    instance: str | None = None
    config: dict[str, Any] | None = None
    changes: list[Change] = field(default_factory=list)
    state_deletes: list[str] = field(default_factory=list)
    transactions: list[list[dict[str, Any]]] = field(default_factory=list)
    cleanup: list[list[dict[str, Any]]] = field(default_factory=list)
    # A fresh `_pending` of another writer, found when planning a multi-transaction
    # write: applying refuses with this message.
    busy: str | None = None

    @property
    def unchanged(self) -> bool:
        return self.keys is not None and not self.transactions


@dataclass
class ApplyPlan:
    writes: list[TreeWrite]
    changes: list[Change]
    stored_instances: list[str] = field(default_factory=list)
    removes_all: bool = False
    """--prune would remove every stored instance (asks for confirmation)."""

    def counts(self) -> dict[str, int]:
        return diff_counts(self.changes)

    @property
    def changed(self) -> bool:
        return any(w.transactions for w in self.writes)


def pending_marker() -> str:
    return f"zedctl {socket.gethostname()} {int(time.time())}"


def natural_key(key: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key for KV keys: list indexes in numeric order (pools/2 before pools/10)."""
    return tuple((0, int(seg), "") if seg.isdigit() else (1, 0, seg) for seg in key.split("/"))


# A `_pending` older than this (s) was left by a writer that died, and is taken over; as
# in the data plane (zedcup.kv.PENDING_STALE).
PENDING_STALE = 60
# Stands for the ModifyIndex of this writer's own `_pending` in planned transactions;
# apply_plan fills it in once the first transaction has set the marker.
OWN_PENDING_INDEX = -1


def batch_transactions(
    deletes: Sequence[str],
    pending_key: str,
    keys: Mapping[str, str],
    marker: str,
    limit: int = TXN_LIMIT,
    current: KVEntry | None = None,
    now: int | None = None,
) -> list[list[dict[str, Any]]]:
    """The transactions that replace a tree: one if it fits in `limit` operations.

    Otherwise the `_pending` protocol of the module docstring: `current` is the
    `_pending` found when planning (taken over with check-index; None: it must not
    exist). Operations on our own marker carry `OWN_PENDING_INDEX` until apply_plan
    binds them.
    """
    head = [op("delete-tree", d) for d in deletes]
    sets = [op("set", k, v) for k, v in keys.items()]
    if len(head) + len(sets) <= limit:
        return [head + sets]
    start = (
        op("check-index", pending_key, index=current.modify_index)
        if current is not None
        else op("check-not-exists", pending_key)
    )
    # Flags = the unix time the write began, as the data plane writes it.
    first = [
        start,
        *head,
        op("set", pending_key, marker, flags=int(time.time() if now is None else now)),
    ]
    room = limit - len(first)
    if room < 1:
        raise ValueError("batch_transactions: too many deletes for one transaction")
    txns = [first + sets[:room]]
    rest = sets[room:]

    def ours() -> dict[str, Any]:
        return op("check-index", pending_key, index=OWN_PENDING_INDEX)

    while len(rest) > limit - 2:
        txns.append([ours(), *rest[: limit - 1]])
        rest = rest[limit - 1 :]
    txns.append([ours(), *rest, op("delete-cas", pending_key, index=OWN_PENDING_INDEX)])
    return txns


def bind_pending(txn: Sequence[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    """`txn` with `OWN_PENDING_INDEX` replaced by the ModifyIndex of our `_pending`."""
    out = []
    for item in txn:
        kv = item["KV"]
        if kv.get("Index") == OWN_PENDING_INDEX:
            item = {"KV": {**kv, "Index": index}}
        out.append(item)
    return out


def pending_age(entry: KVEntry, now: float | None = None) -> int:
    """Seconds since the writer that holds `_pending` began (its Flags: unix time)."""
    return int((time.time() if now is None else now) - entry.flags)


def _subtree(entries: Mapping[str, KVEntry], tree: str) -> dict[str, str | None]:
    return {
        k: e.value or "" for k, e in entries.items() if k.startswith(tree) and not k.endswith("/")
    }


# State trees deleted in the config's own transaction; more go in later transactions.
STATE_DELETES_INLINE = 16


def _readable(schema: Schema, kind: str, tree: str, entries: Mapping[str, KVEntry]) -> Any:
    """The stored config under `tree` (normalised), None when absent, False when it
    cannot be read (invalid, or marked `_pending`)."""
    rel = relative_keys(entries, tree)
    if not rel:
        return None
    try:
        return check_stored(schema, kind, tree, rel)
    except (StoredConfigInvalid, PendingWrite):
        return False


def state_deletes(
    layout: Layout,
    name: str,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    state_entries: Mapping[str, KVEntry],
) -> list[str]:
    """The state trees of `name` that an apply from `old` to `new` must delete: pools
    gone, hosts gone or moved (host or port changed), anything when `old` is unknown."""
    base = layout.instance_state(name, check=False)
    existing = [k[len(base) :] for k in state_entries if k.startswith(base)]
    if not existing:
        return []
    if old is None or new is None:
        return [base]
    old_pools = named(old.get("pools") or [])
    new_pools = named(new.get("pools") or [])
    out: set[str] = set()
    for rel in existing:
        parts = rel.split("/")
        pool = parts[0]
        if pool not in new_pools:
            out.add(layout.pool_state(name, pool))
            continue
        if len(parts) < 3:
            continue  # the pool's own keys (its hold): the pool stays
        host = parts[1]
        new_hosts = named(new_pools[pool].get("hosts") or [])
        old_hosts = named(old_pools[pool].get("hosts") or []) if pool in old_pools else {}
        if (
            host not in new_hosts
            or host not in old_hosts
            or address(old_hosts[host]) != address(new_hosts[host])
        ):
            out.add(layout.host_state(name, pool, host))
    return sorted(out)


def plan_apply(
    kv: ConsulKV,
    layout: Layout,
    schema: Schema,
    config: ConfigFile,
    prune: bool = False,
    marker: str | None = None,
) -> ApplyPlan:
    """What `apply` would write, as transactions and as changes by meaning."""
    marker = marker or pending_marker()
    writes: list[TreeWrite] = []
    changes: list[Change] = []
    current_instances = kv.get_tree(layout.instances)
    stored = sorted(instance_names(layout, current_instances))
    state_entries: dict[str, KVEntry] | None = None

    def state() -> dict[str, KVEntry]:
        nonlocal state_entries
        if state_entries is None:
            state_entries = kv.get_tree(layout.state)
        return state_entries

    def schedule(write: TreeWrite, old: Mapping[str, KVEntry]) -> None:
        assert write.keys is not None
        current = _subtree(old, write.tree)
        if current == write.keys:
            return  # stored exactly as given (a leftover `_pending` differs: rewritten)
        inline = write.state_deletes if len(write.state_deletes) <= STATE_DELETES_INLINE else []
        if not inline:
            write.cleanup = [
                [op("delete-tree", d) for d in write.state_deletes[i : i + TXN_LIMIT]]
                for i in range(0, len(write.state_deletes), TXN_LIMIT)
            ]
        pending = old.get(layout.pending(write.tree))
        write.transactions = batch_transactions(
            [*write.deletes, *inline],
            layout.pending(write.tree),
            write.keys,
            marker,
            current=pending,
        )
        if pending is not None and len(write.transactions) > 1:
            age = pending_age(pending)
            if age < PENDING_STALE:
                write.busy = (
                    f"{write.tree} is being written by another writer ({PENDING_KEY}: "
                    f"{pending.value or '?'}, begun {age} s ago): nothing written; try "
                    f"again when it is done (a {PENDING_KEY} older than {PENDING_STALE} s "
                    "is taken over)"
                )

    if config.global_config is not None:
        tree = layout.config
        old_entries = kv.get_tree(tree)
        keys = {tree + k: v for k, v in flatten(schema, "global", config.global_config).items()}
        write = TreeWrite("global config", tree, [tree], keys, config=config.global_config)
        schedule(write, old_entries)
        if write.transactions:
            before = _readable(schema, "global", tree, old_entries)
            write.changes = diff_global(before or {}, config.global_config)
            if not write.changes:
                write.changes = [Change("~", None, note="stored keys rewritten")]
        writes.append(write)
        changes.extend(write.changes)

    for name in sorted(config.instances):
        tree = layout.instance(name)
        new = config.instances[name]
        keys = {tree + k: v for k, v in flatten(schema, "instance", new).items()}
        write = TreeWrite(f"instance {name}", tree, [tree], keys, instance=name, config=new)
        before = _readable(schema, "instance", tree, current_instances)
        if _subtree(current_instances, tree) != keys:
            # The state belongs to what the nodes serve: the stored config, or when that
            # cannot be read, the last one applied (the nodes keep serving it).
            served = before if before is not False else applied_config(kv, layout, schema, name)[0]
            write.state_deletes = state_deletes(layout, name, served or None, new, state())
        schedule(write, current_instances)
        if write.transactions:
            if before is False:
                write.changes = [
                    Change(
                        "~",
                        name,
                        new=summary(new),
                        note="the stored config is invalid or half-written: replaced as a whole",
                    )
                ]
            else:
                write.changes = diff_instance(name, before, new)
            if not write.changes:
                write.changes = [Change("~", name, note="stored keys rewritten")]
        writes.append(write)
        changes.extend(write.changes)

    if prune:
        removed = [n for n in stored if n not in config.instances]
        for name in removed:
            tree = layout.instance(name, check=False)
            deletes = [tree, layout.instance_state(name, check=False)]
            write = TreeWrite(f"instance {name}", tree, deletes, None, instance=name)
            write.transactions = [
                [*(op("delete-tree", d) for d in deletes), op("delete", layout.applied_copy(name))]
            ]
            before = _readable(schema, "instance", tree, current_instances)
            write.changes = [Change("-", name, old=summary(before) if before else "")]
            writes.append(write)
            changes.extend(write.changes)
        plan = ApplyPlan(writes, changes, stored, removes_all=bool(stored) and removed == stored)
        return plan
    return ApplyPlan(writes, changes, stored)


def applied_config(
    kv: ConsulKV, layout: Layout, schema: Schema, name: str
) -> tuple[dict[str, Any] | None, float | None]:
    """The last config zedctl applied to `name` (normalised) and when; (None, None) when
    there is none or it does not pass the schema."""
    entry = kv.get(layout.applied_copy(name))
    if entry is None or not entry.value:
        return None, None
    try:
        doc = json.loads(entry.value)
        normalised, problems = schema.validate("instance", doc["config"])
        when = float(doc["time"])
    except (ValueError, KeyError, TypeError):
        return None, None
    return (None, None) if problems else (normalised, when)


def _own_pending_index(results: Sequence[dict[str, Any]], pending_key: str) -> int:
    indexes = [
        int(r["KV"].get("ModifyIndex") or 0)
        for r in results
        if isinstance(r, dict)
        and isinstance(r.get("KV"), dict)
        and r["KV"].get("Key") == pending_key
    ]
    if not indexes or max(indexes) <= 0:
        raise ConsulError(f"Consul did not return the index of {pending_key} it just set")
    return max(indexes)


def apply_plan(kv: ConsulKV, plan: ApplyPlan, layout: Layout | None = None) -> list[str]:
    """Run a plan's transactions, tree by tree (none when a tree is being written by
    another writer); then record the applied copy and an event per instance written
    (with `layout`). Returns warnings (an event that could not be written)."""
    warnings: list[str] = []
    for write in plan.writes:
        if write.busy:
            raise Conflict(write.busy)
    for write in plan.writes:
        total = len(write.transactions)
        pending_key = f"{write.tree}{PENDING_KEY}"
        mine = 0
        for n, txn in enumerate(write.transactions, 1):
            what = f"writing {write.label} (transaction {n} of {total})"
            try:
                results = kv.txn(bind_pending(txn, mine) if n > 1 else txn, what)
            except TxnFailed as e:
                if n == 1:
                    raise Conflict(
                        f"{write.tree} was marked {PENDING_KEY} by another writer just now: "
                        f"nothing written; try again when it is done ({e.message})"
                    ) from None
                raise Conflict(
                    f"{write.tree} was taken over by another writer after {n - 1} of {total} "
                    f"transactions: stopped; the other write stands ({e.message})"
                ) from None
            except ConsulError as e:
                if n > 1:
                    raise ConsulError(
                        f"{e.message}\n{write.tree} is left marked {PENDING_KEY} after "
                        f"{n - 1} of {total} transactions: run apply again (a "
                        f"{PENDING_KEY} is taken over once it is {PENDING_STALE} s old)"
                    ) from None
                raise
            if n == 1 and total > 1:
                mine = _own_pending_index(results, pending_key)
        for txn in write.cleanup:
            kv.txn(txn, f"clearing the state of changed hosts of {write.label}")
        if layout is None or write.instance is None or not write.transactions:
            continue
        try:
            if write.keys is not None:
                copy = {"time": round(time.time(), 3), "config": write.config}
                kv.put(layout.applied_copy(write.instance), json.dumps(copy, ensure_ascii=False))
                events.record(
                    kv, layout, write.instance, events.APPLY, reason=describe(write.changes)
                )
            else:
                events.record(kv, layout, write.instance, events.REMOVE, reason="pruned by apply")
        except ZedctlError as e:
            warnings.append(f"{write.label} written, but its event was not: {e.message}")
    return warnings


# -- reading ----------------------------------------------------------------------------


def instance_names(layout: Layout, entries: Mapping[str, KVEntry]) -> set[str]:
    """Instances with at least one key (folder keys ending in '/' do not count, as
    for the data plane)."""
    names = set()
    for key in entries:
        rest = key[len(layout.instances) :]
        name, sep, rel = rest.partition("/")
        if name and sep and rel and not rel.endswith("/"):
            names.add(name)
    return names


def relative_keys(entries: Mapping[str, KVEntry], tree: str) -> dict[str, str | None]:
    """The keys under `tree`, relative to it; folder keys (made by UIs, ending in '/')
    are skipped, as the data plane skips them."""
    return {
        k[len(tree) :]: e.value
        for k, e in entries.items()
        if k.startswith(tree) and k != tree and not k.endswith("/")
    }


def check_stored(
    schema: Schema, kind: str, tree: str, rel: Mapping[str, str | None]
) -> dict[str, Any]:
    if PENDING_KEY in rel:
        raise PendingWrite(tree, rel[PENDING_KEY])
    normalised, problems = read_config(schema, kind, rel)
    if problems:
        raise StoredConfigInvalid(tree, problems)
    return normalised


def load_instance(kv: ConsulKV, layout: Layout, schema: Schema, name: str) -> dict[str, Any]:
    """An instance's stored config, normalised (no defaults)."""
    tree = layout.instance(name)
    rel = relative_keys(kv.get_tree(tree), tree)
    if not rel:
        raise NotFound(f"instance {name!r} not found (no keys under {tree})")
    return check_stored(schema, "instance", tree, rel)


def load_global(kv: ConsulKV, layout: Layout, schema: Schema) -> dict[str, Any] | None:
    """The stored global config, normalised; None when nothing is stored."""
    tree = layout.config
    rel = relative_keys(kv.get_tree(tree), tree)
    if not rel:
        return None
    return check_stored(schema, "global", tree, rel)


@dataclass(frozen=True)
class InstanceSummary:
    name: str
    pools: int | None
    hosts: int | None
    note: str = ""


def list_instances(kv: ConsulKV, layout: Layout, schema: Schema) -> list[InstanceSummary]:
    entries = kv.get_tree(layout.instances)
    out = []
    for name in sorted(instance_names(layout, entries)):
        tree = layout.instance(name, check=False)
        rel = relative_keys(entries, tree)
        try:
            config = check_stored(schema, "instance", tree, rel)
        except PendingWrite:
            out.append(InstanceSummary(name, None, None, "being written (_pending)"))
            continue
        except StoredConfigInvalid as e:
            out.append(InstanceSummary(name, None, None, f"invalid: {len(e.problems)} problem(s)"))
            continue
        pools = config["pools"]
        out.append(InstanceSummary(name, len(pools), sum(len(p["hosts"]) for p in pools)))
    return out


def export(kv: ConsulKV, layout: Layout, schema: Schema) -> ConfigFile:
    """The whole stored configuration, as a ConfigFile that apply accepts."""
    entries = kv.get_tree(layout.instances)
    instances = {}
    for name in sorted(instance_names(layout, entries)):
        tree = layout.instance(name, check=False)
        instances[name] = check_stored(schema, "instance", tree, relative_keys(entries, tree))
    return ConfigFile(load_global(kv, layout, schema), instances)


def remove_instance(kv: ConsulKV, layout: Layout, name: str) -> tuple[int, str | None]:
    """Delete an instance's config, state and applied copy (its events stay, with a
    `remove` event): the number of config keys removed, and a warning when the event
    could not be written."""
    tree, state = layout.instance(name), layout.instance_state(name)
    config_keys = kv.get_tree(tree)
    if not config_keys and not kv.get_tree(state):
        raise NotFound(f"instance {name!r} not found (no keys under {tree} or {state})")
    deletes = [tree, state]
    kv.txn(
        [*(op("delete-tree", d) for d in deletes), op("delete", layout.applied_copy(name))],
        f"removing instance {name}",
    )
    try:
        events.record(kv, layout, name, events.REMOVE, reason="zedctl remove")
    except ZedctlError as e:
        return len(config_keys), f"instance {name} removed, but its event was not: {e.message}"
    return len(config_keys), None


# -- runtime host changes ---------------------------------------------------------------


@dataclass(frozen=True)
class HostChange:
    instance: str
    pool: str
    host: str
    key: str
    old: str | None
    new: str


def _pick(kind: str, ref: str, names: Sequence[str], where: str) -> int:
    """0-based index of the element named `ref`, else of the 1-based index `ref`."""
    if ref in names:
        return names.index(ref)
    if ref.isdigit() and 1 <= int(ref) <= len(names):
        return int(ref) - 1
    shown = ", ".join(names[:10])
    if len(names) > 10:
        shown += f", ... ({len(names)} in all)"
    raise NotFound(f"{kind} {ref!r} not found in {where} (by name or 1-based index: {shown})")


def set_host_field(
    kv: ConsulKV,
    layout: Layout,
    schema: Schema,
    instance: str,
    pool_ref: str,
    host_ref: str,
    field_name: str,
    value: Any,
) -> HostChange:
    """Set one host field (up, weight) with CAS, so a concurrent change is never lost."""
    normalised, problems = schema.check_field("host", field_name, value)
    if problems:
        raise ZedctlError(problems[0].render((field_name,)))
    tree = layout.instance(instance)
    entries = kv.get_tree(tree)
    rel = relative_keys(entries, tree)
    if not rel:
        raise NotFound(f"instance {instance!r} not found (no keys under {tree})")
    config = schema.effective("instance", check_stored(schema, "instance", tree, rel))
    pools = config["pools"]
    p = _pick("pool", pool_ref, [x["name"] for x in pools], f"instance {instance!r}")
    hosts = pools[p]["hosts"]
    pool_name = pools[p]["name"]
    h = _pick("host", host_ref, [x["name"] for x in hosts], f"pool {pool_name!r}")
    host_tree = f"{tree}pools/{p + 1}/hosts/{h + 1}/"
    anchor = entries[host_tree + "host"]
    key = host_tree + field_name
    current = entries.get(key)
    text = scalar_text(normalised)
    ops = [
        op("check-not-exists", layout.pending(tree)),
        op("check-index", anchor.key, index=anchor.modify_index),
    ]
    if current is None:
        ops += [op("check-not-exists", key), op("set", key, text)]
    else:
        ops.append(op("cas", key, text, index=current.modify_index))
    try:
        kv.txn(ops, f"setting {key}")
    except TxnFailed:
        raise Conflict(
            f"{key} or its host changed while it was being set (or an apply is under "
            "way): nothing written; try again"
        ) from None
    return HostChange(
        instance, pool_name, hosts[h]["name"], key, current.value if current else None, text
    )


# -- operator holds: host down/up, pool down/up -----------------------------------------


@dataclass(frozen=True)
class HoldChange:
    instance: str
    pool: str
    host: str | None
    key: str
    down: bool
    reason: str
    was_held: bool
    previous_reason: str | None
    config_up: bool
    """What the config itself says (host/pool `up`): false keeps it down after `up`."""
    warning: str | None = None

    @property
    def target(self) -> str:
        return f"{self.instance}/{self.pool}" + (f"/{self.host}" if self.host else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "pool": self.pool,
            "host": self.host,
            "key": self.key,
            "held": self.down,
            "reason": self.reason if self.down else None,
            "was_held": self.was_held,
            "config_up": self.config_up,
        }


def set_hold(
    kv: ConsulKV,
    layout: Layout,
    schema: Schema,
    instance: str,
    pool_ref: str,
    host_ref: str | None,
    down: bool,
    reason: str = "",
) -> HoldChange:
    """Take a pool or host out of service (`down`) or give it back, through its
    `admin_down` state key: runtime state, so apply keeps it. One transaction that also
    checks the host (or pool) is still in the config as read."""
    tree = layout.instance(instance)
    entries = kv.get_tree(tree)
    rel = relative_keys(entries, tree)
    if not rel:
        raise NotFound(f"instance {instance!r} not found (no keys under {tree})")
    config = schema.effective("instance", check_stored(schema, "instance", tree, rel))
    pools = config["pools"]
    p = _pick("pool", pool_ref, [x["name"] for x in pools], f"instance {instance!r}")
    pool = pools[p]
    anchor_host = 0
    host_name = None
    config_up = bool(pool["up"])
    if host_ref is not None:
        hosts = pool["hosts"]
        anchor_host = _pick("host", host_ref, [x["name"] for x in hosts], f"pool {pool['name']!r}")
        host_name = hosts[anchor_host]["name"]
        config_up = bool(hosts[anchor_host]["up"])
        key = layout.host_hold(instance, pool["name"], host_name)
    else:
        key = layout.pool_hold(instance, pool["name"])
    anchor = entries[f"{tree}pools/{p + 1}/hosts/{anchor_host + 1}/host"]
    current = kv.get(key)
    checks = [
        op("check-not-exists", layout.pending(tree)),
        op("check-index", anchor.key, index=anchor.modify_index),
    ]
    now = int(time.time())
    if down:
        write = [op("set", key, reason, flags=now)]
    elif current is not None:
        write = [op("delete", key)]
    else:
        write = []
    if write:
        try:
            kv.txn([*checks, *write], f"{'setting' if down else 'deleting'} {key}")
        except TxnFailed:
            raise Conflict(
                f"the config of {instance!r} changed while {key} was being written (or an "
                "apply is under way): nothing written; try again"
            ) from None
    warning = None
    if write:
        kind = {
            (True, True): events.ADMIN_HOST_DOWN,
            (True, False): events.ADMIN_HOST_UP,
            (False, True): events.ADMIN_POOL_DOWN,
            (False, False): events.ADMIN_POOL_UP,
        }[(host_name is not None, down)]
        try:
            events.record(kv, layout, instance, kind, pool["name"], host_name, reason or None)
        except ZedctlError as e:
            warning = f"{key} written, but its event was not: {e.message}"
    return HoldChange(
        instance,
        pool["name"],
        host_name,
        key,
        down,
        reason,
        current is not None,
        current.value if current else None,
        config_up,
        warning,
    )
