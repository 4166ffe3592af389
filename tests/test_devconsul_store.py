"""dev-consul's store without HTTP: the parts whose timing the HTTP tests cannot reach
(tombstone reaping after its TTL, rollback of a failed transaction, watches)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from zedctl.devconsul.durations import SECOND
from zedctl.devconsul.store import Store, TxnConflict, TxnOp
from zedctl.devconsul.testing import wait_for

pytestmark = pytest.mark.devconsul_only("its store, tested without HTTP")


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store(tombstone_ttl=0.2)
    s.start()
    yield s
    s.close()


def test_tombstones_move_the_prefix_index_and_are_reaped(store: Store) -> None:
    store.kv_set("d/a", b"1")
    store.kv_set("d/b", b"2")
    store.kv_delete("d/b")
    deleted_at = store.index
    store.kv_set("other", b"x")
    index, entries = store.kv_list("d/")
    assert [e.key for e in entries] == ["d/a"]
    assert index == deleted_at  # the tombstone, above d/a's ModifyIndex
    assert store.tombstone_count() == 1
    wait_for(lambda: store.tombstone_count() == 0, 10, "the tombstone to be reaped")
    index, _ = store.kv_list("d/")
    assert index == store.kv_list("d/a")[1][0].modify_index


def test_a_failed_txn_leaves_no_trace(store: Store) -> None:
    store.kv_set("t/keep", b"old")
    before = (store.index, store.kv_list("t/"))
    with pytest.raises(TxnConflict) as err:
        store.txn(
            [
                TxnOp("set", "t/keep", b"new"),
                TxnOp("delete-tree", "t/"),
                TxnOp("set", "t/fresh", b"x"),
                TxnOp("check-index", "t/keep", index=1),
            ]
        )
    assert [i for i, _ in err.value.errors] == [3]
    # It went through raft (the global index moves on) but left no data behind.
    assert store.index == before[0] + 1
    assert store.kv_list("t/") == before[1]
    assert store.tombstone_count() == 0


def test_reads_only_and_refused_writes_take_no_index(store: Store) -> None:
    store.kv_set("r/k", b"v")
    before = store.index
    store.txn([TxnOp("get", "r/k"), TxnOp("check-not-exists", "r/none")])
    with pytest.raises(TxnConflict):
        store.txn([TxnOp("get", "r/missing")])
    with pytest.raises(TxnConflict):
        store.txn([TxnOp("set", "", b"x")])  # refused by the pre-check, before raft
    assert store.index == before


def test_lock_delay_is_kept_as_given_but_enforced_for_at_most_60s(store: Store) -> None:
    sess = store.session_create(lock_delay=120 * SECOND)
    assert sess.lock_delay == 120 * SECOND
    assert store.kv_acquire("l/k", b"", 0, sess.id)
    store.session_destroy(sess.id)
    assert 59 < store.lock_delay_remaining("l/k") <= 60
    other = store.session_create()
    assert not store.kv_acquire("l/k", b"", 0, other.id)


def test_block_wakes_only_for_its_key(store: Store) -> None:
    store.kv_set("w/k", b"1")
    idx = store.kv_get("w/k")[0]
    got: list[int] = []

    def run() -> None:
        got.append(store.block("key", "w/k", lambda: store.kv_get("w/k"), idx, 30)[0])

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: store.watch_count() == 1, 10, "the query to block")
    store.kv_set("w/k2", b"other")
    store.kv_set("w", b"parent")
    assert store.watch_count() == 1 and got == []
    store.kv_set("w/k", b"2")
    thread.join(timeout=10)
    assert got and got[0] > idx
    assert store.watch_count() == 0
