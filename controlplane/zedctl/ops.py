"""zedctl's operations on a Consul KV store: configure, read back, remove, host changes.

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

import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .configfile import ConfigFile
from .consulapi import TXN_LIMIT, ConsulKV, KVEntry, TxnFailed, op
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
            "until the write completes. If that write was interrupted, run configure again."
        )


# -- configure --------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyChange:
    key: str
    old: str | None
    new: str | None

    @property
    def kind(self) -> str:
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        return "changed"


@dataclass
class TreeWrite:
    """One tree replaced as a whole (or removed, when `keys` is None).

    A tree whose stored keys already are `keys` (and that is not marked `_pending`)
    gets no transactions: rewriting it would change nothing but clear its state.
    """

    label: str
    tree: str
    deletes: list[str]
    keys: dict[str, str] | None
    transactions: list[list[dict[str, Any]]] = field(default_factory=list)
    # A fresh `_pending` of another writer, found when planning a multi-transaction
    # write: applying refuses with this message.
    busy: str | None = None

    @property
    def unchanged(self) -> bool:
        return self.keys is not None and not self.transactions


@dataclass
class ConfigurePlan:
    writes: list[TreeWrite]
    changes: list[KeyChange]

    def counts(self) -> dict[str, int]:
        out = {"added": 0, "changed": 0, "removed": 0}
        for change in self.changes:
            out[change.kind] += 1
        return out


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


def _diff(old: Mapping[str, str | None], new: Mapping[str, str]) -> list[KeyChange]:
    changes = []
    for key, value in new.items():
        if key not in old:
            changes.append(KeyChange(key, None, value))
        elif (old[key] or "") != value:
            changes.append(KeyChange(key, old[key] or "", value))
    for key, value in old.items():
        if key not in new:
            changes.append(KeyChange(key, value or "", None))
    return changes


def _subtree(entries: Mapping[str, KVEntry], tree: str) -> dict[str, str | None]:
    return {k: e.value for k, e in entries.items() if k.startswith(tree) and not k.endswith("/")}


def plan_configure(
    kv: ConsulKV,
    layout: Layout,
    schema: Schema,
    config: ConfigFile,
    prune: bool = False,
    marker: str | None = None,
) -> ConfigurePlan:
    """What `configure` would write, as transactions and as a diff against Consul."""
    marker = marker or pending_marker()
    writes: list[TreeWrite] = []
    changes: list[KeyChange] = []
    current_instances = kv.get_tree(layout.instances)

    def replace(
        label: str, tree: str, deletes: list[str], keys: dict[str, str], old: Mapping[str, KVEntry]
    ) -> None:
        diff = _diff(_subtree(old, tree), keys)
        write = TreeWrite(label, tree, deletes, keys)
        if diff:  # a leftover `_pending` shows as a removed key, so it is rewritten
            pending = old.get(layout.pending(tree))
            write.transactions = batch_transactions(
                deletes, layout.pending(tree), keys, marker, current=pending
            )
            if pending is not None and len(write.transactions) > 1:
                age = pending_age(pending)
                if age < PENDING_STALE:
                    write.busy = (
                        f"{tree} is being written by another writer ({PENDING_KEY}: "
                        f"{pending.value or '?'}, begun {age} s ago): nothing written; try "
                        f"again when it is done (a {PENDING_KEY} older than {PENDING_STALE} s "
                        "is taken over)"
                    )
        writes.append(write)
        changes.extend(sorted(diff, key=lambda c: natural_key(c.key)))

    if config.global_config is not None:
        tree = layout.config
        keys = {tree + k: v for k, v in flatten(schema, "global", config.global_config).items()}
        replace("global config", tree, [tree], keys, kv.get_tree(tree))

    for name in sorted(config.instances):
        tree = layout.instance(name)
        deletes = [tree, layout.instance_state(name)]
        keys = {tree + k: v for k, v in flatten(schema, "instance", config.instances[name]).items()}
        replace(f"instance {name}", tree, deletes, keys, current_instances)

    if prune:
        for name in sorted(instance_names(layout, current_instances)):
            if name in config.instances:
                continue
            tree = layout.instance(name, check=False)
            deletes = [tree, layout.instance_state(name, check=False)]
            write = TreeWrite(f"instance {name}", tree, deletes, None)
            write.transactions = [[op("delete-tree", d) for d in deletes]]
            writes.append(write)
            removed = _diff(_subtree(current_instances, tree), {})
            changes.extend(sorted(removed, key=lambda c: natural_key(c.key)))
    return ConfigurePlan(writes, changes)


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


def apply_plan(kv: ConsulKV, plan: ConfigurePlan) -> None:
    """Run a plan's transactions, tree by tree (none when a tree is being written by
    another writer)."""
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
                        f"{n - 1} of {total} transactions: run configure again (a "
                        f"{PENDING_KEY} is taken over once it is {PENDING_STALE} s old)"
                    ) from None
                raise
            if n == 1 and total > 1:
                mine = _own_pending_index(results, pending_key)


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
    """The whole stored configuration, as a ConfigFile that configure accepts."""
    entries = kv.get_tree(layout.instances)
    instances = {}
    for name in sorted(instance_names(layout, entries)):
        tree = layout.instance(name, check=False)
        instances[name] = check_stored(schema, "instance", tree, relative_keys(entries, tree))
    return ConfigFile(load_global(kv, layout, schema), instances)


def remove_instance(kv: ConsulKV, layout: Layout, name: str) -> int:
    """Delete an instance's config and state; the number of config keys removed."""
    tree, state = layout.instance(name), layout.instance_state(name)
    config_keys = kv.get_tree(tree)
    if not config_keys and not kv.get_tree(state):
        raise NotFound(f"instance {name!r} not found (no keys under {tree} or {state})")
    kv.txn([op("delete-tree", tree), op("delete-tree", state)], f"removing instance {name}")
    return len(config_keys)


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
            f"{key} or its host changed while it was being set (or a configure is under "
            "way): nothing written; try again"
        ) from None
    return HostChange(
        instance, pool_name, hosts[h]["name"], key, current.value if current else None, text
    )
