"""Transactions: PUT /v1/txn with every KV verb, all-or-nothing, Consul's 200/409/413
shapes. Runs against dev-consul or a real Consul (`--consul-url`)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import requests
from zedctl.devconsul.testing import RawConsul, ordered_keys, wait_for


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kv(verb: str, key: str, **fields: Any) -> dict[str, Any]:
    return {"KV": {"Verb": verb, "Key": key, **fields}}


def txn(raw_consul: RawConsul, ops: list[dict[str, Any]]) -> requests.Response:
    return raw_consul.put("/v1/txn", json=ops)


def modify_index(raw_consul: RawConsul, key: str) -> int:
    return int(raw_consul.get(f"/v1/kv/{key}").json()[0]["ModifyIndex"])


def test_set_get_and_result_shape(raw_consul: RawConsul, kv_prefix: str) -> None:
    key = kv_prefix + "a"
    resp = txn(raw_consul, [kv("set", key, Value=b64(b"one"), Flags=9), kv("get", key)])
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert body["Errors"] is None
    set_result, get_result = (r["KV"] for r in body["Results"])
    assert set_result["Value"] is None  # only get and get-tree carry values
    assert set_result["Flags"] == 9
    assert get_result["Value"] == b64(b"one")
    assert get_result["ModifyIndex"] == set_result["ModifyIndex"] == modify_index(raw_consul, key)
    assert ["LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"] in ordered_keys(
        resp.text
    )


def test_all_writes_of_a_txn_share_one_index(raw_consul: RawConsul, kv_prefix: str) -> None:
    ops = [kv("set", f"{kv_prefix}k{i}", Value=b64(b"v")) for i in range(5)]
    assert txn(raw_consul, ops).status_code == 200
    indexes = {modify_index(raw_consul, f"{kv_prefix}k{i}") for i in range(5)}
    assert len(indexes) == 1


def test_get_tree(raw_consul: RawConsul, kv_prefix: str) -> None:
    for k in ("t/b", "t/a", "u"):
        raw_consul.put(f"/v1/kv/{kv_prefix}{k}", data=k.encode())
    resp = txn(raw_consul, [kv("get-tree", kv_prefix + "t/")])
    assert resp.status_code == 200
    results = [r["KV"] for r in resp.json()["Results"]]
    assert [r["Key"] for r in results] == [kv_prefix + "t/a", kv_prefix + "t/b"]
    assert [r["Value"] for r in results] == [b64(b"t/a"), b64(b"t/b")]


def test_cas(raw_consul: RawConsul, kv_prefix: str) -> None:
    key = kv_prefix + "c"
    assert txn(raw_consul, [kv("cas", key, Value=b64(b"1"), Index=0)]).status_code == 200
    idx = modify_index(raw_consul, key)
    stale = txn(raw_consul, [kv("cas", key, Value=b64(b"2"), Index=idx + 100)])
    assert stale.status_code == 409
    assert txn(raw_consul, [kv("cas", key, Value=b64(b"2"), Index=idx)]).status_code == 200
    assert raw_consul.get(f"/v1/kv/{key}?raw").content == b"2"


def test_conflict_shape_and_atomicity(raw_consul: RawConsul, kv_prefix: str) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}keep", data=b"old")
    resp = txn(
        raw_consul,
        [
            kv("set", kv_prefix + "keep", Value=b64(b"new")),
            kv("set", kv_prefix + "fresh", Value=b64(b"x")),
            kv("delete", kv_prefix + "keep"),
            kv("get", kv_prefix + "missing"),
        ],
    )
    assert resp.status_code == 409
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert body["Results"] is None
    assert body["Errors"] == [{"OpIndex": 3, "What": f'key "{kv_prefix}missing" doesn\'t exist'}]
    # nothing was applied
    assert raw_consul.get(f"/v1/kv/{kv_prefix}keep?raw").content == b"old"
    assert raw_consul.get(f"/v1/kv/{kv_prefix}fresh").status_code == 404


def test_every_failing_op_is_reported(raw_consul: RawConsul, kv_prefix: str) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}e", data=b"v")
    resp = txn(
        raw_consul,
        [
            kv("check-not-exists", kv_prefix + "e"),
            kv("set", kv_prefix + "ok", Value=b64(b"v")),
            kv("check-index", kv_prefix + "nope", Index=1),
        ],
    )
    assert resp.status_code == 409
    errors = resp.json()["Errors"]
    assert [e["OpIndex"] for e in errors] == [0, 2]
    assert "exists" in errors[0]["What"]
    assert "doesn't exist" in errors[1]["What"]


def test_check_index(raw_consul: RawConsul, kv_prefix: str) -> None:
    key = kv_prefix + "ci"
    raw_consul.put(f"/v1/kv/{key}", data=b"v")
    idx = modify_index(raw_consul, key)
    ok = txn(raw_consul, [kv("check-index", key, Index=idx)])
    assert ok.status_code == 200
    [result] = ok.json()["Results"]
    assert result["KV"]["Key"] == key and result["KV"]["Value"] is None
    bad = txn(raw_consul, [kv("check-index", key, Index=idx + 1)])
    assert bad.status_code == 409
    assert "current modify index" in bad.json()["Errors"][0]["What"]


def test_check_not_exists(raw_consul: RawConsul, kv_prefix: str) -> None:
    key = kv_prefix + "cne"
    ok = txn(raw_consul, [kv("check-not-exists", key), kv("set", key, Value=b64(b"v"))])
    assert ok.status_code == 200
    assert len(ok.json()["Results"]) == 1  # check-not-exists answers no entry
    again = txn(raw_consul, [kv("check-not-exists", key)])
    assert again.status_code == 409
    assert again.json()["Errors"][0]["What"] == f'key "{key}" exists'


def test_lock_unlock_and_check_session(
    raw_consul: RawConsul, kv_prefix: str, new_session: Callable[..., str]
) -> None:
    a, b = new_session(), new_session()
    key = kv_prefix + "lk"
    locked = txn(raw_consul, [kv("lock", key, Value=b64(b"a"), Session=a)])
    assert locked.status_code == 200
    result = locked.json()["Results"][0]["KV"]
    assert result["Session"] == a and result["LockIndex"] == 1
    assert txn(raw_consul, [kv("check-session", key, Session=a)]).status_code == 200
    wrong = txn(raw_consul, [kv("check-session", key, Session=b)])
    assert wrong.status_code == 409
    assert "current session" in wrong.json()["Errors"][0]["What"]
    held = txn(raw_consul, [kv("lock", key, Session=b)])
    assert held.status_code == 409
    assert "lock is already held" in held.json()["Errors"][0]["What"]
    not_holder = txn(raw_consul, [kv("unlock", key, Session=b)])
    assert not_holder.status_code == 409
    assert "lock isn't held" in not_holder.json()["Errors"][0]["What"]
    unlocked = txn(raw_consul, [kv("unlock", key, Value=b64(b"free"), Session=a)])
    assert unlocked.status_code == 200
    got = raw_consul.get(f"/v1/kv/{key}").json()[0]
    assert "Session" not in got and got["LockIndex"] == 1 and got["Value"] == b64(b"free")


def test_delete_delete_tree_delete_cas(raw_consul: RawConsul, kv_prefix: str) -> None:
    for k in ("d", "tree/a", "tree/b", "dc"):
        raw_consul.put(f"/v1/kv/{kv_prefix}{k}", data=b"v")
    idx = modify_index(raw_consul, kv_prefix + "dc")
    stale = txn(raw_consul, [kv("delete-cas", kv_prefix + "dc", Index=idx + 1)])
    assert stale.status_code == 409
    assert "index is stale" in stale.json()["Errors"][0]["What"]
    resp = txn(
        raw_consul,
        [
            kv("delete", kv_prefix + "d"),
            kv("delete-tree", kv_prefix + "tree/"),
            kv("delete-cas", kv_prefix + "dc", Index=idx),
        ],
    )
    assert resp.status_code == 200
    assert resp.json()["Results"] in ([], None)
    assert raw_consul.get(f"/v1/kv/{kv_prefix}?recurse").status_code == 404
    # delete-cas of a key that is already gone succeeds
    assert txn(raw_consul, [kv("delete-cas", kv_prefix + "dc", Index=idx)]).status_code == 200


def test_ops_see_earlier_ops_of_the_same_txn(raw_consul: RawConsul, kv_prefix: str) -> None:
    key = kv_prefix + "seq"
    resp = txn(
        raw_consul,
        [kv("set", key, Value=b64(b"1")), kv("get", key), kv("delete", key), kv("set", key)],
    )
    assert resp.status_code == 200
    assert resp.json()["Results"][1]["KV"]["Value"] == b64(b"1")
    assert raw_consul.get(f"/v1/kv/{key}").json()[0]["Value"] is None


def test_unknown_verb_fails_the_txn(raw_consul: RawConsul, kv_prefix: str) -> None:
    resp = txn(
        raw_consul, [kv("set", kv_prefix + "x", Value=b64(b"v")), kv("frobnicate", kv_prefix + "y")]
    )
    assert resp.status_code == 409
    assert resp.json()["Errors"] == [{"OpIndex": 1, "What": 'unknown KV verb "frobnicate"'}]
    assert raw_consul.get(f"/v1/kv/{kv_prefix}x").status_code == 404


def test_64_operations_are_allowed(raw_consul: RawConsul, kv_prefix: str) -> None:
    ops = [kv("set", f"{kv_prefix}n{i:02d}", Value=b64(b"v")) for i in range(64)]
    resp = txn(raw_consul, ops)
    assert resp.status_code == 200
    assert len(resp.json()["Results"]) == 64


def test_more_than_64_operations_is_413(raw_consul: RawConsul, kv_prefix: str) -> None:
    ops = [kv("set", f"{kv_prefix}n{i}", Value=b64(b"v")) for i in range(65)]
    resp = txn(raw_consul, ops)
    assert resp.status_code == 413
    assert resp.text.strip() == "Transaction contains too many operations (65 > 64)"
    assert raw_consul.get(f"/v1/kv/{kv_prefix}n0").status_code == 404


def test_python_consul2_txn(py_consul: Any, kv_prefix: str) -> None:
    result = py_consul.txn.put(
        [kv("set", kv_prefix + "p", Value=b64(b"v")), kv("get", kv_prefix + "p")]
    )
    assert result["Errors"] is None
    assert result["Results"][1]["KV"]["Value"] == b64(b"v")


def test_malformed_body_is_400(raw_consul: RawConsul) -> None:
    resp = raw_consul.put("/v1/txn", data=b"[{not json")
    assert resp.status_code == 400
    assert resp.text.startswith("Failed to parse body")
    assert "Traceback" not in resp.text


def test_bad_base64_value_is_400(raw_consul: RawConsul, kv_prefix: str) -> None:
    resp = txn(raw_consul, [kv("set", kv_prefix + "b", Value="!!!not base64!!!")])
    assert resp.status_code == 400
    assert "Traceback" not in resp.text


def test_lock_respects_lock_delay(
    raw_consul: RawConsul, kv_prefix: str, new_session: Callable[..., str]
) -> None:
    holder = new_session(LockDelay="1s")
    other = new_session()
    key = kv_prefix + "ld"
    assert txn(raw_consul, [kv("lock", key, Session=holder)]).status_code == 200
    raw_consul.put(f"/v1/session/destroy/{holder}")
    refused = txn(raw_consul, [kv("lock", key, Session=other)])
    assert refused.status_code == 409
    assert refused.json()["Errors"] == [
        {"OpIndex": 0, "What": f'failed to lock key "{key}" due to lock delay'}
    ]
    wait_for(
        lambda: txn(raw_consul, [kv("lock", key, Session=other)]).status_code == 200,
        10,
        "the lock-delay to end",
        step=0.1,
    )
    assert raw_consul.get(f"/v1/kv/{key}").json()[0]["Session"] == other


def test_an_empty_key_fails_the_txn(raw_consul: RawConsul, kv_prefix: str) -> None:
    resp = txn(raw_consul, [kv("set", kv_prefix + "k", Value=b64(b"v")), kv("get", "")])
    assert resp.status_code == 409
    [error] = resp.json()["Errors"]
    assert error["OpIndex"] == 1
    assert "key" in error["What"].lower()
    assert raw_consul.get(f"/v1/kv/{kv_prefix}k").status_code == 404


def test_a_read_only_txn_is_answered_as_a_query(raw_consul: RawConsul, kv_prefix: str) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}r", data=b"v")
    resp = txn(raw_consul, [kv("get", f"{kv_prefix}r")])
    assert resp.status_code == 200
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    assert resp.headers["X-Consul-LastContact"] == "0"
    assert "X-Consul-Index" not in resp.headers  # not blockable
    stale = raw_consul.put("/v1/txn?stale&consistent", json=[kv("get", f"{kv_prefix}r")])
    assert stale.status_code == 400
    # A transaction that writes goes through raft and parses no consistency flags.
    write = raw_consul.put(
        "/v1/txn?stale&consistent", json=[kv("set", f"{kv_prefix}w", Value=b64(b"x"))]
    )
    assert write.status_code == 200
    assert "X-Consul-KnownLeader" not in write.headers
