"""The state of dev-consul: KV entries, indexes, tombstones, sessions, lock-delays and
transactions, plus the watches that blocking queries wait on. No HTTP in here.

Index rules follow Consul's state store: one global raft-like index advanced by every
write; a key answers its ModifyIndex; a missing key answers the KV table index; a
listing answers the highest ModifyIndex or tombstone under its prefix, else the table
index; sessions answer the session table index. 0 is never answered (it becomes 1).
"""

from __future__ import annotations

import base64
import bisect
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from .catalog import Catalog
from .durations import SECOND, format_duration, parse_duration

T = TypeVar("T")

MAX_VALUE_SIZE = 512 * 1024
MAX_TXN_OPS = 64
WRITE_VERBS = frozenset(("set", "cas", "lock", "unlock", "delete", "delete-tree", "delete-cas"))
TOMBSTONE_TTL = 15 * 60.0  # seconds
SESSION_TTL_MIN = 10 * SECOND
SESSION_TTL_MAX = 86400 * SECOND
DEFAULT_LOCK_DELAY = 15 * SECOND
MAX_LOCK_DELAY = 60 * SECOND
# Consul promises invalidation "not before TTL" (and by 2 x TTL); we invalidate soon after.
SESSION_GRACE = 0.5  # seconds past the TTL
CLIENT_CHECK = 1.0  # seconds between checks that a blocked query's client is still there
NODE_NAME = "dev-consul"
DATACENTER = "dc1"
SERF_CHECK = "serfHealth"


class StoreError(Exception):
    """A failure Consul reports as HTTP 500 with its message as the body."""


class SessionNotFound(Exception):
    """A session id that does not exist (renew answers 404)."""


class TxnConflict(Exception):
    """A transaction that failed as a whole: `errors` is [(op_index, what)]."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        super().__init__("; ".join(what for _, what in errors))
        self.errors = errors


def quote(text: str) -> str:
    """Quote a string roughly as Go's %q does (for error messages)."""
    return json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True)
class Entry:
    """A KV entry, immutable: writes replace the whole entry."""

    key: str
    value: bytes = b""
    flags: int = 0
    lock_index: int = 0
    session: str = ""
    create_index: int = 0
    modify_index: int = 0

    def same_content(self, other: Entry) -> bool:
        return (
            self.value == other.value
            and self.flags == other.flags
            and self.session == other.session
            and self.lock_index == other.lock_index
        )


@dataclass
class Session:
    id: str
    name: str
    node: str
    lock_delay: int  # nanoseconds
    behavior: str
    ttl: str
    ttl_ns: int
    node_checks: list[str] | None
    service_checks: list[Any] | None
    create_index: int
    modify_index: int
    deadline: float | None = None  # time.monotonic() when the TTL lapses


@dataclass(frozen=True)
class TxnOp:
    verb: str
    key: str
    value: bytes = b""
    flags: int = 0
    index: int = 0
    session: str = ""


@dataclass
class TxnResult:
    """One result of a successful transaction: the entry, and whether Value is kept."""

    entry: Entry
    with_value: bool


@dataclass(eq=False)
class _Watch:
    event: threading.Event = field(default_factory=threading.Event)


class _Undo:
    """Records the original state of every key a write touches, to roll back."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry | None] = {}
        self.tombstones: dict[str, tuple[int, float] | None] = {}


class Store:
    """Thread-safe KV + session store with Consul's index and blocking semantics."""

    def __init__(self, node: str = NODE_NAME, tombstone_ttl: float = TOMBSTONE_TTL) -> None:
        self.node = node
        self.tombstone_ttl = tombstone_ttl
        self.node_id = str(uuid.uuid4())
        self._lock = threading.RLock()
        self._reaper_cond = threading.Condition(self._lock)
        self.index = 1
        self.kv_index = 0
        self.session_index = 0
        self._kv: dict[str, Entry] = {}
        self._keys: list[str] = []  # sorted
        self._tomb: dict[str, tuple[int, float]] = {}  # key -> (index, wall time)
        self._tomb_keys: list[str] = []  # sorted
        self._sessions: dict[str, Session] = {}
        self._held: dict[str, set[str]] = {}  # session id -> keys it holds
        self._lock_delay: dict[str, float] = {}  # key -> monotonic expiry
        self._key_watches: dict[str, set[_Watch]] = {}
        self._prefix_watches: dict[str, set[_Watch]] = {}
        self._session_watches: set[_Watch] = set()
        self._closed = False
        self._reaper: threading.Thread | None = None
        self.on_commit: Callable[[], None] | None = None
        self.catalog = Catalog(self)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        with self._lock:
            if self._reaper is not None:
                return
            self._closed = False
            self._reaper = threading.Thread(
                target=self._reap_loop, name="dev-consul-reaper", daemon=True
            )
        self._reaper.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            reaper, self._reaper = self._reaper, None
            self._reaper_cond.notify_all()
            for watches in self._key_watches.values():
                for w in watches:
                    w.event.set()
            for watches in self._prefix_watches.values():
                for w in watches:
                    w.event.set()
            for w in self._session_watches:
                w.event.set()
            self.catalog.close()
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join(timeout=5)

    # ---------------------------------------------------------------- reading

    @staticmethod
    def _nonzero(index: int) -> int:
        return index if index > 0 else 1

    def _range(self, keys: list[str], prefix: str) -> Iterator[str]:
        i = bisect.bisect_left(keys, prefix)
        while i < len(keys) and keys[i].startswith(prefix):
            yield keys[i]
            i += 1

    def current_index(self) -> int:
        with self._lock:
            return self._nonzero(self.index)

    def kv_get(self, key: str) -> tuple[int, Entry | None]:
        with self._lock:
            entry = self._kv.get(key)
            if entry is not None:
                return self._nonzero(entry.modify_index), entry
            return self._nonzero(self.kv_index), None

    def _prefix_index(self, prefix: str, entries: list[Entry]) -> int:
        if not prefix:
            return self._nonzero(self.kv_index)
        best = max((e.modify_index for e in entries), default=0)
        for key in self._range(self._tomb_keys, prefix):
            best = max(best, self._tomb[key][0])
        return self._nonzero(best or self.kv_index)

    def kv_list(self, prefix: str) -> tuple[int, list[Entry]]:
        with self._lock:
            entries = [self._kv[k] for k in self._range(self._keys, prefix)]
            return self._prefix_index(prefix, entries), entries

    def kv_keys(self, prefix: str, separator: str = "") -> tuple[int, list[str]]:
        with self._lock:
            entries = [self._kv[k] for k in self._range(self._keys, prefix)]
            index = self._prefix_index(prefix, entries)
        keys: list[str] = []
        plen = len(prefix)
        for e in entries:
            key = e.key
            if separator:
                cut = key.find(separator, plen)
                if cut >= 0:
                    key = key[: cut + len(separator)]
            if not keys or keys[-1] != key:
                keys.append(key)
        return index, keys

    def session_get(self, sid: str) -> tuple[int, Session | None]:
        with self._lock:
            sess = self._sessions.get(sid)
            return self._nonzero(self.session_index), (replace(sess) if sess else None)

    def session_list(self, node: str | None = None) -> tuple[int, list[Session]]:
        with self._lock:
            out = [
                replace(s)
                for s in sorted(self._sessions.values(), key=lambda s: s.id)
                if node is None or s.node == node
            ]
            return self._nonzero(self.session_index), out

    def tombstone_count(self) -> int:
        with self._lock:
            return len(self._tomb)

    def lock_delay_remaining(self, key: str) -> float:
        with self._lock:
            expiry = self._lock_delay.get(key)
            if expiry is None:
                return 0.0
            left = expiry - time.monotonic()
            if left <= 0:
                del self._lock_delay[key]
                return 0.0
            return left

    # ---------------------------------------------------------------- blocking

    def block(
        self,
        kind: str,
        target: str,
        query: Callable[[], tuple[int, T]],
        min_index: int,
        timeout: float,
        alive: Callable[[], bool] | None = None,
    ) -> tuple[int, T]:
        """Run `query` once its index exceeds `min_index` or `timeout` seconds pass.

        kind is "key" (wake when that key changes), "prefix" (anything under it),
        "session" (any session change) or "catalog" (any service or check change).
        Without min_index the query answers at once.
        `alive`, when given, is asked every CLIENT_CHECK seconds whether the client is
        still there; a query whose client left ends early, freeing its thread.
        """
        deadline = time.monotonic() + timeout
        watch = _Watch()
        with self._lock:
            result = query()
            if min_index <= 0 or result[0] > min_index or self._closed:
                return result
            self._add_watch(kind, target, watch)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if not watch.event.wait(min(remaining, CLIENT_CHECK)):
                    if alive is not None and not alive():
                        break
                    continue
                with self._lock:
                    watch.event.clear()
                    result = query()
                    if result[0] > min_index or self._closed:
                        return result
        finally:
            with self._lock:
                self._remove_watch(kind, target, watch)
        with self._lock:
            return query()

    def watch_count(self) -> int:
        """How many blocking queries are waiting right now."""
        with self._lock:
            return (
                sum(len(w) for w in self._key_watches.values())
                + sum(len(w) for w in self._prefix_watches.values())
                + len(self._session_watches)
                + self.catalog.watch_count()
            )

    def _add_watch(self, kind: str, target: str, watch: _Watch) -> None:
        if kind == "catalog":
            self.catalog.add_watch(watch.event)
        elif kind == "session":
            self._session_watches.add(watch)
        elif kind == "prefix":
            self._prefix_watches.setdefault(target, set()).add(watch)
        else:
            self._key_watches.setdefault(target, set()).add(watch)

    def _remove_watch(self, kind: str, target: str, watch: _Watch) -> None:
        if kind == "catalog":
            self.catalog.remove_watch(watch.event)
            return
        if kind == "session":
            self._session_watches.discard(watch)
            return
        table = self._prefix_watches if kind == "prefix" else self._key_watches
        watches = table.get(target)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del table[target]

    def _notify(self, keys: Iterator[str] | set[str], sessions: bool) -> None:
        for key in keys:
            for w in self._key_watches.get(key, ()):
                w.event.set()
            for prefix, watches in self._prefix_watches.items():
                if key.startswith(prefix):
                    for w in watches:
                        w.event.set()
        if sessions:
            for w in self._session_watches:
                w.event.set()

    # ---------------------------------------------------------------- low-level writes

    def _put(self, key: str, entry: Entry | None, undo: _Undo | None) -> None:
        old = self._kv.get(key)
        if undo is not None and key not in undo.entries:
            undo.entries[key] = old
        if old is not None and old.session:
            held = self._held.get(old.session)
            if held is not None:
                held.discard(key)
                if not held:
                    del self._held[old.session]
        if entry is None:
            if old is not None:
                del self._kv[key]
                i = bisect.bisect_left(self._keys, key)
                del self._keys[i]
            return
        if old is None:
            bisect.insort(self._keys, key)
        self._kv[key] = entry
        if entry.session:
            self._held.setdefault(entry.session, set()).add(key)

    def _set_tomb(self, key: str, tomb: tuple[int, float] | None, undo: _Undo | None) -> None:
        old = self._tomb.get(key)
        if undo is not None and key not in undo.tombstones:
            undo.tombstones[key] = old
        if tomb is None:
            if old is not None:
                del self._tomb[key]
                del self._tomb_keys[bisect.bisect_left(self._tomb_keys, key)]
            return
        if old is None:
            if not self._tomb:
                self._reaper_cond.notify_all()  # the reaper now has a tombstone to time
            bisect.insort(self._tomb_keys, key)
        self._tomb[key] = tomb

    def _rollback(self, undo: _Undo) -> None:
        for key, entry in undo.entries.items():
            self._put(key, entry, None)
        for key, tomb in undo.tombstones.items():
            self._set_tomb(key, tomb, None)

    def _commit(self, idx: int, keys: set[str], sessions: bool = False) -> None:
        """Close a write at index idx. Every write that reaches Consul's raft log takes
        an index, whether it changed anything or not (an identical PUT, a failed cas);
        the table indexes move only when something in them changed."""
        self.index = idx
        if keys:
            self.kv_index = idx
        if sessions:
            self.session_index = idx
        self._notify(keys, sessions)
        if self.on_commit is not None:
            self.on_commit()

    # ---------------------------------------------------------------- KV operations
    # Each _op_* works inside an open write (see _write) at index idx: it records the
    # original state in `undo` and the keys it changed in `changed`, and answers the
    # entry written (None when a lock/unlock is refused). Failures that Consul reports
    # as errors raise StoreError.

    def _op_set(
        self, idx: int, key: str, value: bytes, flags: int, undo: _Undo, changed: set[str]
    ) -> Entry:
        old = self._kv.get(key)
        # As in Consul, a plain set keeps the holder but not the LockIndex (it is 0).
        new = Entry(
            key=key,
            value=value,
            flags=flags,
            lock_index=0,
            session=old.session if old else "",
            create_index=old.create_index if old else idx,
            modify_index=idx,
        )
        return self._write_entry(old, new, undo, changed)

    def _write_entry(self, old: Entry | None, new: Entry, undo: _Undo, changed: set[str]) -> Entry:
        if old is not None and old.same_content(new):
            return old  # an identical write changes nothing (Consul 1.6+)
        self._put(new.key, new, undo)
        changed.add(new.key)
        return new

    def _op_lock(
        self,
        idx: int,
        key: str,
        value: bytes,
        flags: int,
        session: str,
        undo: _Undo,
        changed: set[str],
    ) -> Entry | None:
        if not session:
            raise StoreError("missing session")
        if session not in self._sessions:
            raise StoreError(f"invalid session {quote(session)}")
        old = self._kv.get(key)
        if old is None:
            lock_index, create = 1, idx
        elif not old.session:
            lock_index, create = old.lock_index + 1, old.create_index
        elif old.session == session:
            lock_index, create = old.lock_index, old.create_index
        else:
            return None
        new = Entry(key, value, flags, lock_index, session, create, idx)
        return self._write_entry(old, new, undo, changed)

    def _op_unlock(
        self,
        idx: int,
        key: str,
        value: bytes,
        flags: int,
        session: str,
        undo: _Undo,
        changed: set[str],
    ) -> Entry | None:
        if not session:
            raise StoreError("missing session")
        old = self._kv.get(key)
        if old is None or old.session != session:
            return None
        new = Entry(key, value, flags, old.lock_index, "", old.create_index, idx)
        return self._write_entry(old, new, undo, changed)

    def _op_delete(self, idx: int, key: str, undo: _Undo, changed: set[str]) -> None:
        if key in self._kv:
            self._put(key, None, undo)
            self._set_tomb(key, (idx, time.time()), undo)
            changed.add(key)

    def _op_delete_tree(self, idx: int, prefix: str, undo: _Undo, changed: set[str]) -> None:
        for key in list(self._range(self._keys, prefix)):
            self._op_delete(idx, key, undo, changed)

    def _write(self, fn: Callable[[int, _Undo, set[str]], T], raft: bool = True) -> T:
        """Run one KV write: commit what it changed, or roll back if it raises.

        `raft` says whether the write reaches the raft log (and so takes an index even
        when it changes nothing); a read-only transaction does not."""
        with self._lock:
            idx = self.index + 1
            undo = _Undo()
            changed: set[str] = set()
            try:
                result = fn(idx, undo, changed)
            except BaseException:
                self._rollback(undo)
                raise
            if raft or changed:
                self._commit(idx, changed)
            return result

    def kv_set(self, key: str, value: bytes, flags: int = 0, cas: int | None = None) -> bool:
        def op(idx: int, undo: _Undo, changed: set[str]) -> bool:
            if cas is not None:
                old = self._kv.get(key)
                if (old is None and cas != 0) or (old is not None and old.modify_index != cas):
                    return False
            self._op_set(idx, key, value, flags, undo, changed)
            return True

        return self._write(op)

    def kv_acquire(self, key: str, value: bytes, flags: int, session: str) -> bool:
        def op(idx: int, undo: _Undo, changed: set[str]) -> bool:
            return self._op_lock(idx, key, value, flags, session, undo, changed) is not None

        with self._lock:
            # Consul checks the lock-delay before the write goes to raft (and before it
            # looks at the session): a refused acquire takes no index.
            if self.lock_delay_remaining(key) > 0:
                return False
            return self._write(op)

    def kv_release(self, key: str, value: bytes, flags: int, session: str) -> bool:
        def op(idx: int, undo: _Undo, changed: set[str]) -> bool:
            return self._op_unlock(idx, key, value, flags, session, undo, changed) is not None

        return self._write(op)

    def kv_delete(self, key: str, cas: int | None = None) -> bool:
        def op(idx: int, undo: _Undo, changed: set[str]) -> bool:
            if cas is not None:
                old = self._kv.get(key)
                if old is None:
                    return True  # Consul: nothing to delete counts as done
                if old.modify_index != cas:
                    return False
            self._op_delete(idx, key, undo, changed)
            return True

        return self._write(op)

    def kv_delete_tree(self, prefix: str) -> bool:
        def op(idx: int, undo: _Undo, changed: set[str]) -> bool:
            self._op_delete_tree(idx, prefix, undo, changed)
            return True

        return self._write(op)

    # ---------------------------------------------------------------- transactions

    def txn(self, ops: list[TxnOp]) -> list[TxnResult]:
        """Apply `ops` all or nothing; raise TxnConflict with every failing op."""

        def run(idx: int, undo: _Undo, changed: set[str]) -> list[TxnResult]:
            # Consul's pre-check fails the transaction before any operation runs: an
            # empty key (but for delete-tree), a lock on a key in lock-delay.
            refused: list[tuple[int, str]] = []
            for i, op in enumerate(ops):
                if not op.key and op.verb != "delete-tree":
                    refused.append((i, "Must provide key"))
                elif op.verb == "lock" and self.lock_delay_remaining(op.key) > 0:
                    refused.append((i, f"failed to lock key {quote(op.key)} due to lock delay"))
            if refused:
                raise TxnConflict(refused)
            results: list[TxnResult] = []
            errors: list[tuple[int, str]] = []
            for i, op in enumerate(ops):
                try:
                    results.extend(self._txn_op(idx, op, undo, changed))
                except StoreError as err:
                    errors.append((i, str(err)))
            if errors:
                # The transaction went through raft (it takes an index) but the state
                # store aborted it: undo every operation and report.
                self._rollback(undo)
                changed.clear()
                failed.extend(errors)
                return []
            return results

        failed: list[tuple[int, str]] = []
        # Only a transaction with a write verb goes through raft; one of reads only is
        # answered from the state store.
        results = self._write(run, raft=any(op.verb in WRITE_VERBS for op in ops))
        if failed:
            raise TxnConflict(failed)
        return results

    def _txn_op(self, idx: int, op: TxnOp, undo: _Undo, changed: set[str]) -> list[TxnResult]:
        key = op.key
        verb = op.verb
        entry: Entry | None = None
        if verb == "set":
            entry = self._op_set(idx, key, op.value, op.flags, undo, changed)
        elif verb == "cas":
            old = self._kv.get(key)
            if (old is None and op.index != 0) or (
                old is not None and old.modify_index != op.index
            ):
                raise StoreError(f"failed to set key {quote(key)}, index is stale")
            entry = self._op_set(idx, key, op.value, op.flags, undo, changed)
        elif verb == "lock":
            entry = self._op_lock(idx, key, op.value, op.flags, op.session, undo, changed)
            if entry is None:
                raise StoreError(f"failed to lock key {quote(key)}, lock is already held")
        elif verb == "unlock":
            entry = self._op_unlock(idx, key, op.value, op.flags, op.session, undo, changed)
            if entry is None:
                raise StoreError(
                    f"failed to unlock key {quote(key)}, lock isn't held, "
                    "or is held by another session"
                )
        elif verb == "get":
            entry = self._kv.get(key)
            if entry is None:
                raise StoreError(f"key {quote(key)} doesn't exist")
            return [TxnResult(entry, True)]
        elif verb == "get-tree":
            return [TxnResult(self._kv[k], True) for k in self._range(self._keys, key)]
        elif verb == "check-index":
            entry = self._kv.get(key)
            if entry is None:
                raise StoreError(f"key {quote(key)} doesn't exist")
            if entry.modify_index != op.index:
                raise StoreError(f"current modify index {entry.modify_index} != {op.index}")
        elif verb == "check-session":
            entry = self._kv.get(key)
            if entry is None:
                raise StoreError(f"key {quote(key)} doesn't exist")
            if entry.session != op.session:
                raise StoreError(f"current session {quote(entry.session)} != {quote(op.session)}")
        elif verb == "check-not-exists":
            if key in self._kv:
                raise StoreError(f"key {quote(key)} exists")
        elif verb == "delete":
            self._op_delete(idx, key, undo, changed)
        elif verb == "delete-tree":
            self._op_delete_tree(idx, key, undo, changed)
        elif verb == "delete-cas":
            old = self._kv.get(key)
            if old is not None and old.modify_index != op.index:
                raise StoreError(f"failed to delete key {quote(key)}, index is stale")
            self._op_delete(idx, key, undo, changed)
        else:
            raise StoreError(f"unknown KV verb {quote(verb)}")
        return [TxnResult(entry, False)] if entry is not None else []

    # ---------------------------------------------------------------- sessions

    def session_create(
        self,
        name: str = "",
        node: str | None = None,
        lock_delay: int = DEFAULT_LOCK_DELAY,
        behavior: str = "",
        ttl: str = "",
        node_checks: list[str] | None = None,
        service_checks: list[Any] | None = None,
    ) -> Session:
        """Create a session; invalid settings raise StoreError with Consul's message."""
        behavior = behavior or "release"
        if behavior not in ("release", "delete"):
            raise StoreError(f"Invalid Behavior setting '{behavior}'")
        ttl_ns = 0
        if ttl:
            try:
                ttl_ns = parse_duration(ttl)
            except ValueError as err:
                raise StoreError(f"Session TTL '{ttl}' invalid: {err}") from None
            if ttl_ns != 0 and not SESSION_TTL_MIN <= ttl_ns <= SESSION_TTL_MAX:
                raise StoreError(
                    f"Invalid Session TTL '{ttl_ns}', must be between "
                    f"[{format_duration(SESSION_TTL_MIN)}={format_duration(SESSION_TTL_MAX)}]"
                )
        node = node or self.node
        if node != self.node:
            raise StoreError(f"Failed to create session: Missing node registration ({node})")
        if node_checks is None:
            node_checks = [SERF_CHECK]
        for check in node_checks:
            if check != SERF_CHECK:
                raise StoreError(f"Missing check '{check}' registration")
        if service_checks:
            raise StoreError("Missing check registration for service checks")
        # LockDelay is kept as given (the session JSON shows it); the 60s cap applies
        # when the delay is enforced, as in Consul.
        with self._lock:
            idx = self.index + 1
            sess = Session(
                id=str(uuid.uuid4()),
                name=name,
                node=node,
                lock_delay=lock_delay,
                behavior=behavior,
                ttl=ttl,
                ttl_ns=ttl_ns,
                node_checks=list(node_checks),
                service_checks=service_checks or None,
                create_index=idx,
                modify_index=idx,
            )
            self._arm(sess)
            self._sessions[sess.id] = sess
            self._commit(idx, set(), sessions=True)
            return replace(sess)

    def _arm(self, sess: Session) -> None:
        if sess.ttl_ns > 0:
            sess.deadline = time.monotonic() + sess.ttl_ns / SECOND + SESSION_GRACE
            self._reaper_cond.notify_all()
        else:
            sess.deadline = None

    def session_renew(self, sid: str) -> Session:
        with self._lock:
            sess = self._sessions.get(sid)
            if sess is None:
                raise SessionNotFound(sid)
            self._arm(sess)
            return replace(sess)

    def session_destroy(self, sid: str) -> None:
        with self._lock:
            if sid in self._sessions:
                self._invalidate(sid)
            else:
                self._commit(self.index + 1, set())  # still a raft write in Consul

    def _invalidate(self, sid: str) -> None:
        sess = self._sessions.pop(sid)
        idx = self.index + 1
        changed: set[str] = set()
        now = time.monotonic()
        delay = min(sess.lock_delay, MAX_LOCK_DELAY)
        for key in sorted(self._held.get(sid, ())):
            old = self._kv[key]
            if sess.behavior == "delete":
                self._op_delete(idx, key, _Undo(), changed)
            else:
                self._put(key, replace(old, session="", modify_index=idx), None)
                changed.add(key)
            if delay > 0:
                self._lock_delay[key] = now + delay / SECOND
        self._held.pop(sid, None)
        self._commit(idx, changed, sessions=True)

    # ---------------------------------------------------------------- background reaping

    def _reap_loop(self) -> None:
        with self._lock:
            while not self._closed:
                now = time.monotonic()
                expired = [
                    s.id for s in self._sessions.values() if s.deadline and s.deadline <= now
                ]
                for sid in expired:
                    self._invalidate(sid)
                self._reap_tombstones()
                deadlines = [s.deadline for s in self._sessions.values() if s.deadline]
                catalog_due = self.catalog.due(time.monotonic())
                if catalog_due is not None:
                    deadlines.append(catalog_due)
                if self._tomb:
                    oldest = min(at for _, at in self._tomb.values())
                    deadlines.append(time.monotonic() + oldest + self.tombstone_ttl - time.time())
                timeout = 30.0
                if deadlines:
                    timeout = min(timeout, max(0.01, min(deadlines) - time.monotonic()))
                self._reaper_cond.wait(timeout)

    def _reap_tombstones(self) -> None:
        cutoff = time.time() - self.tombstone_ttl
        old = [k for k, (_, at) in self._tomb.items() if at <= cutoff]
        for key in old:
            self._set_tomb(key, None, None)
        for key in [k for k, t in self._lock_delay.items() if t <= time.monotonic()]:
            del self._lock_delay[key]

    # ---------------------------------------------------------------- persistence

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of everything that survives a restart."""
        with self._lock:
            return {
                "version": 1,
                "index": self.index,
                "kv_index": self.kv_index,
                "session_index": self.session_index,
                "kv": [
                    {
                        "Key": e.key,
                        "Value": base64.b64encode(e.value).decode("ascii"),
                        "Flags": e.flags,
                        "LockIndex": e.lock_index,
                        "Session": e.session,
                        "CreateIndex": e.create_index,
                        "ModifyIndex": e.modify_index,
                    }
                    for e in (self._kv[k] for k in self._keys)
                ],
                "tombstones": [[k, self._tomb[k][0], self._tomb[k][1]] for k in self._tomb_keys],
                "sessions": [
                    {
                        "ID": s.id,
                        "Name": s.name,
                        "Node": s.node,
                        "LockDelay": s.lock_delay,
                        "Behavior": s.behavior,
                        "TTL": s.ttl,
                        "NodeChecks": s.node_checks,
                        "ServiceChecks": s.service_checks,
                        "CreateIndex": s.create_index,
                        "ModifyIndex": s.modify_index,
                    }
                    for s in self._sessions.values()
                ],
            }

    def restore(self, data: dict[str, Any]) -> None:
        """Load a snapshot() (raises ValueError/KeyError/TypeError when malformed)."""
        if data.get("version") != 1:
            raise ValueError(f"unsupported data file version {data.get('version')!r}")
        with self._lock:
            self.index = int(data["index"])
            self.kv_index = int(data["kv_index"])
            self.session_index = int(data["session_index"])
            self._kv.clear()
            self._keys.clear()
            self._held.clear()
            self._tomb.clear()
            self._tomb_keys.clear()
            self._sessions.clear()
            for s in data.get("sessions", []):
                sess = Session(
                    id=str(s["ID"]),
                    name=str(s["Name"]),
                    node=str(s["Node"]),
                    lock_delay=int(s["LockDelay"]),
                    behavior=str(s["Behavior"]),
                    ttl=str(s["TTL"]),
                    ttl_ns=parse_duration(s["TTL"]) if s["TTL"] else 0,
                    node_checks=s["NodeChecks"],
                    service_checks=s["ServiceChecks"],
                    create_index=int(s["CreateIndex"]),
                    modify_index=int(s["ModifyIndex"]),
                )
                self._arm(sess)  # TTL timers restart on load, as on a Consul leader change
                self._sessions[sess.id] = sess
            for e in data["kv"]:
                session = str(e["Session"])
                entry = Entry(
                    key=str(e["Key"]),
                    value=base64.b64decode(e["Value"], validate=True),
                    flags=int(e["Flags"]),
                    lock_index=int(e["LockIndex"]),
                    session=session if session in self._sessions else "",
                    create_index=int(e["CreateIndex"]),
                    modify_index=int(e["ModifyIndex"]),
                )
                self._put(entry.key, entry, None)
            for key, index, at in data.get("tombstones", []):
                self._set_tomb(str(key), (int(index), float(at)), None)
