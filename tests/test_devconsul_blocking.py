"""Indexes and blocking queries: what each answer's X-Consul-Index is, and which changes
wake a blocked query. Runs against dev-consul or a real Consul (`--consul-url`)."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pytest
import requests
from zedctl.devconsul import DevConsul
from zedctl.devconsul.testing import RawConsul, wait_for

# How long a query must stay blocked to count as "not woken". Not a speed assertion: a
# woken query would answer within milliseconds, and a longer pause only slows the suite.
HOLD = 0.3


def index_of(resp: requests.Response) -> int:
    return int(resp.headers["X-Consul-Index"])


@pytest.fixture
def pool() -> Any:
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


def blocked(pool: ThreadPoolExecutor, fn: Callable[[], requests.Response]) -> Future:
    """Start fn in the background and check that it is still blocked after HOLD."""
    future = pool.submit(fn)
    with pytest.raises(FutureTimeout):
        future.result(timeout=HOLD)
    return future


def test_every_write_moves_the_index_forward(raw_consul: RawConsul, kv_prefix: str) -> None:
    seen = []
    for i in range(5):
        raw_consul.put(f"/v1/kv/{kv_prefix}k{i % 2}", data=str(i).encode())
        seen.append(index_of(raw_consul.get(f"/v1/kv/{kv_prefix}?recurse")))
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)


def test_key_index_is_its_modify_index(raw_consul: RawConsul, kv_prefix: str) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}a", data=b"1")
    first = raw_consul.get(f"/v1/kv/{kv_prefix}a")
    raw_consul.put(f"/v1/kv/{kv_prefix}b", data=b"2")  # another key: a's index stays
    again = raw_consul.get(f"/v1/kv/{kv_prefix}a")
    assert index_of(first) == index_of(again) == first.json()[0]["ModifyIndex"]


def test_listing_index_moves_forward_on_delete(raw_consul: RawConsul, kv_prefix: str) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}d/a", data=b"1")
    raw_consul.put(f"/v1/kv/{kv_prefix}d/b", data=b"2")
    before = index_of(raw_consul.get(f"/v1/kv/{kv_prefix}d/?recurse"))
    raw_consul.delete(f"/v1/kv/{kv_prefix}d/b")
    after = raw_consul.get(f"/v1/kv/{kv_prefix}d/?recurse")
    assert [e["Key"] for e in after.json()] == [f"{kv_prefix}d/a"]
    assert index_of(after) > before  # the tombstone of d/b counts
    keys_after = raw_consul.get(f"/v1/kv/{kv_prefix}d/?keys")
    assert index_of(keys_after) > before


def test_index_zero_answers_at_once(raw_consul: RawConsul, kv_prefix: str) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}z", data=b"1")
    resp = raw_consul.get(f"/v1/kv/{kv_prefix}z?index=0&wait=5s", timeout=3)
    assert resp.status_code == 200


def test_blocking_get_wakes_on_the_watched_key_not_on_others(
    raw_consul: RawConsul, kv_prefix: str, pool: ThreadPoolExecutor
) -> None:
    key = f"/v1/kv/{kv_prefix}watched"
    raw_consul.put(key, data=b"v1")
    idx = index_of(raw_consul.get(key))
    future = blocked(pool, lambda: raw_consul.get(f"{key}?index={idx}&wait=20s"))
    raw_consul.put(f"/v1/kv/{kv_prefix}unrelated", data=b"x")
    raw_consul.put(f"/v1/kv/{kv_prefix}watched2", data=b"x")  # a longer key, same prefix
    with pytest.raises(FutureTimeout):
        future.result(timeout=HOLD)
    raw_consul.put(key, data=b"v2")
    resp = future.result(timeout=10)
    assert resp.status_code == 200
    assert index_of(resp) > idx
    assert resp.json()[0]["Value"] == "djI="


def test_blocking_get_times_out_with_the_same_index(raw_consul: RawConsul, kv_prefix: str) -> None:
    key = f"/v1/kv/{kv_prefix}quiet"
    raw_consul.put(key, data=b"v")
    idx = index_of(raw_consul.get(key))
    resp = raw_consul.get(f"{key}?index={idx}&wait=100ms", timeout=10)
    assert resp.status_code == 200
    assert index_of(resp) == idx
    assert resp.json()[0]["Key"] == f"{kv_prefix}quiet"


def test_blocking_on_a_missing_key_wakes_when_it_is_created(
    raw_consul: RawConsul, kv_prefix: str, pool: ThreadPoolExecutor
) -> None:
    key = f"/v1/kv/{kv_prefix}later"
    first = raw_consul.get(key)
    assert first.status_code == 404
    idx = index_of(first)
    future = blocked(pool, lambda: raw_consul.get(f"{key}?index={idx}&wait=20s"))
    raw_consul.put(key, data=b"now")
    resp = future.result(timeout=10)
    assert resp.status_code == 200
    assert index_of(resp) > idx


def test_blocking_on_a_key_wakes_when_it_is_deleted(
    raw_consul: RawConsul, kv_prefix: str, pool: ThreadPoolExecutor
) -> None:
    key = f"/v1/kv/{kv_prefix}gone"
    raw_consul.put(key, data=b"v")
    idx = index_of(raw_consul.get(key))
    future = blocked(pool, lambda: raw_consul.get(f"{key}?index={idx}&wait=20s"))
    raw_consul.delete(key)
    resp = future.result(timeout=10)
    assert resp.status_code == 404
    assert index_of(resp) > idx


def test_prefix_watch_wakes_for_anything_under_it_and_not_outside(
    raw_consul: RawConsul, kv_prefix: str, pool: ThreadPoolExecutor
) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}tree/a", data=b"1")
    idx = index_of(raw_consul.get(f"/v1/kv/{kv_prefix}tree/?recurse"))
    future = blocked(
        pool, lambda: raw_consul.get(f"/v1/kv/{kv_prefix}tree/?recurse&index={idx}&wait=20s")
    )
    raw_consul.put(f"/v1/kv/{kv_prefix}treeX", data=b"outside")
    with pytest.raises(FutureTimeout):
        future.result(timeout=HOLD)
    raw_consul.put(f"/v1/kv/{kv_prefix}tree/deep/b", data=b"2")
    resp = future.result(timeout=10)
    assert index_of(resp) > idx
    assert len(resp.json()) == 2


def test_prefix_watch_wakes_on_delete_through_the_tombstone(
    raw_consul: RawConsul, kv_prefix: str, pool: ThreadPoolExecutor
) -> None:
    for k in ("a", "b"):
        raw_consul.put(f"/v1/kv/{kv_prefix}t/{k}", data=b"1")
    idx = index_of(raw_consul.get(f"/v1/kv/{kv_prefix}t/?recurse"))
    future = blocked(
        pool, lambda: raw_consul.get(f"/v1/kv/{kv_prefix}t/?recurse&index={idx}&wait=20s")
    )
    raw_consul.delete(f"/v1/kv/{kv_prefix}t/a")
    resp = future.result(timeout=10)
    assert index_of(resp) > idx
    assert [e["Key"] for e in resp.json()] == [f"{kv_prefix}t/b"]


def test_keys_watch_wakes_on_delete_of_the_last_key(
    raw_consul: RawConsul, kv_prefix: str, pool: ThreadPoolExecutor
) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}only/k", data=b"1")
    idx = index_of(raw_consul.get(f"/v1/kv/{kv_prefix}only/?keys"))
    future = blocked(
        pool, lambda: raw_consul.get(f"/v1/kv/{kv_prefix}only/?keys&index={idx}&wait=20s")
    )
    raw_consul.delete(f"/v1/kv/{kv_prefix}only/?recurse")
    resp = future.result(timeout=10)
    assert resp.status_code == 404
    assert index_of(resp) > idx


@pytest.mark.parametrize("wait", ["50ms", "0.1s", "100000us", ".09s", "1ms", "0"])
def test_wait_accepts_go_durations(raw_consul: RawConsul, kv_prefix: str, wait: str) -> None:
    key = f"/v1/kv/{kv_prefix}w"
    raw_consul.put(key, data=b"v")
    idx = index_of(raw_consul.get(key))
    if wait == "0":  # zero means the default (5 minutes): do not block on it
        resp = raw_consul.get(f"{key}?wait={wait}")
    else:
        resp = raw_consul.get(f"{key}?index={idx}&wait={wait}", timeout=10)
    assert resp.status_code == 200
    assert index_of(resp) == idx


@pytest.mark.parametrize("wait", ["abc", "10", "5x", "-", "1.2.3s", "s"])
def test_bad_wait_is_400(raw_consul: RawConsul, kv_prefix: str, wait: str) -> None:
    resp = raw_consul.get(f"/v1/kv/{kv_prefix}w?index=1&wait={wait}")
    assert resp.status_code == 400
    assert resp.text.strip() == "Invalid wait time"


@pytest.mark.parametrize("index", ["abc", "-1", "1.5", "0x10", "99999999999999999999999"])
def test_bad_index_is_400(raw_consul: RawConsul, kv_prefix: str, index: str) -> None:
    resp = raw_consul.get(f"/v1/kv/{kv_prefix}w?index={index}")
    assert resp.status_code == 400
    assert resp.text.strip() == "Invalid index"


def test_session_list_blocks_until_a_session_changes(
    raw_consul: RawConsul, new_session: Callable[..., str], pool: ThreadPoolExecutor
) -> None:
    first = raw_consul.get("/v1/session/list")
    idx = index_of(first)
    future = blocked(pool, lambda: raw_consul.get(f"/v1/session/list?index={idx}&wait=20s"))
    sid = new_session(Name="blocking-list")
    resp = future.result(timeout=10)
    assert index_of(resp) > idx
    assert sid in [s["ID"] for s in resp.json()]


def test_session_info_and_node_block_until_a_session_changes(
    raw_consul: RawConsul, new_session: Callable[..., str], pool: ThreadPoolExecutor
) -> None:
    sid = new_session(Name="blocking-info")
    info = raw_consul.get(f"/v1/session/info/{sid}")
    node = info.json()[0]["Node"]
    idx = index_of(info)
    fut_info = blocked(pool, lambda: raw_consul.get(f"/v1/session/info/{sid}?index={idx}&wait=20s"))
    fut_node = pool.submit(lambda: raw_consul.get(f"/v1/session/node/{node}?index={idx}&wait=20s"))
    raw_consul.put(f"/v1/session/destroy/{sid}")
    resp = fut_info.result(timeout=10)
    assert index_of(resp) > idx
    assert resp.json() == []
    by_node = fut_node.result(timeout=10)
    assert index_of(by_node) > idx
    assert sid not in [s["ID"] for s in by_node.json()]


# ------------------------------------------------------------------ embedded only

EMBEDDED = pytest.mark.devconsul_only(
    "dev-consul's own server (its watch count, keep-alive framing, an empty store)"
)


@EMBEDDED
def test_index_is_never_zero_on_an_empty_store() -> None:
    with DevConsul(port=0) as server:
        raw = RawConsul(server.url)
        missing = raw.get("/v1/kv/nothing")
        assert missing.status_code == 404
        assert index_of(missing) == 1
        assert index_of(raw.get("/v1/kv/?recurse")) == 1
        root_keys = raw.get("/v1/kv/?keys")
        assert root_keys.status_code == 200
        assert root_keys.json() == []
        assert index_of(raw.get("/v1/session/list")) == 1
        raw.close()


@EMBEDDED
def test_hundreds_of_blocking_queries_are_held_at_once() -> None:
    count = 300
    with DevConsul(port=0) as server:
        raw = RawConsul(server.url)
        raw.put("/v1/kv/many/key", data=b"0")
        idx = index_of(raw.get("/v1/kv/many/key"))
        started = threading.Barrier(count + 1)
        results: list[requests.Response | BaseException] = []
        lock = threading.Lock()

        def watcher(n: int) -> None:
            path = "/v1/kv/many/key?" if n % 2 else "/v1/kv/many/?recurse&"
            try:
                with requests.Session() as session:
                    session.trust_env = False
                    started.wait(timeout=30)
                    resp = session.get(f"{server.url}{path}index={idx}&wait=60s", timeout=60)
            except BaseException as err:  # collected and asserted below
                resp = err
            with lock:
                results.append(resp)

        threads = [threading.Thread(target=watcher, args=(n,), daemon=True) for n in range(count)]
        for t in threads:
            t.start()
        started.wait(timeout=30)
        # every watcher is connected and blocked: none answered before the write
        wait_for(lambda: server.store.watch_count() == count, 30, f"{count} blocked queries")
        assert results == []
        raw.put("/v1/kv/many/key", data=b"1")
        for t in threads:
            t.join(timeout=30)
        assert len(results) == count
        assert all(isinstance(r, requests.Response) and r.status_code == 200 for r in results)
        assert all(index_of(r) > idx for r in results)  # type: ignore[arg-type]
        raw.close()


@EMBEDDED
def test_keep_alive_and_connection_close() -> None:
    with DevConsul(port=0) as server:
        host, port = server.address
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("PUT", "/v1/kv/ka", body=b"v")
        first = conn.getresponse()
        assert first.read() == b"true"
        assert first.getheader("Content-Length") == "4"
        local = conn.sock.getsockname()
        for _ in range(3):
            conn.request("GET", "/v1/kv/ka")
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
            assert conn.sock is not None and conn.sock.getsockname() == local  # same socket
        conn.request("GET", "/v1/kv/ka", headers={"Connection": "close"})
        resp = conn.getresponse()
        assert resp.getheader("Connection") == "close"
        resp.read()
        assert resp.will_close
        conn.close()
        # the 404 answer also carries a Content-Length, so the connection stays usable
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/v1/kv/absent")
        resp = conn.getresponse()
        assert resp.status == 404
        assert resp.getheader("Content-Length") == "0"
        resp.read()
        conn.request("GET", "/v1/kv/ka?raw")
        assert conn.getresponse().read() == b"v"
        conn.close()


@EMBEDDED
def test_a_blocked_query_whose_client_left_frees_its_watch() -> None:
    with DevConsul(port=0) as server:
        raw = RawConsul(server.url)
        raw.put("/v1/kv/left", data=b"v")
        idx = index_of(raw.get("/v1/kv/left"))
        sock = socket.create_connection(server.address, timeout=10)
        sock.sendall(f"GET /v1/kv/left?index={idx}&wait=5m HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_for(lambda: server.store.watch_count() == 1, 10, "the query to block")
        sock.close()
        wait_for(lambda: server.store.watch_count() == 0, 10, "the watch to be dropped")
        raw.close()
