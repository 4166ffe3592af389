"""Sessions, locks and lock-delay: /v1/session/* and KV acquire/release.
Runs against dev-consul or a real Consul (`--consul-url`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from zedctl.devconsul.testing import RawConsul, ordered_keys, wait_for

SESSION_KEYS = [
    "ID",
    "Name",
    "Node",
    "LockDelay",
    "Behavior",
    "TTL",
    "NodeChecks",
    "ServiceChecks",
    "CreateIndex",
    "ModifyIndex",
]
SECOND = 1_000_000_000


def node_name(raw_consul: RawConsul) -> str:
    return str(raw_consul.get("/v1/agent/self").json()["Config"]["NodeName"])


def info(raw_consul: RawConsul, sid: str) -> list[dict[str, Any]]:
    resp = raw_consul.get(f"/v1/session/info/{sid}")
    assert resp.status_code == 200
    return resp.json()


def entry(raw_consul: RawConsul, key: str) -> dict[str, Any] | None:
    resp = raw_consul.get(f"/v1/kv/{key}")
    return resp.json()[0] if resp.status_code == 200 else None


def acquire(raw_consul: RawConsul, key: str, sid: str, value: bytes = b"") -> bool:
    resp = raw_consul.put(f"/v1/kv/{key}?acquire={sid}", data=value)
    assert resp.status_code == 200, resp.text
    return bool(resp.json())


def release(raw_consul: RawConsul, key: str, sid: str, value: bytes = b"") -> bool:
    resp = raw_consul.put(f"/v1/kv/{key}?release={sid}", data=value)
    assert resp.status_code == 200, resp.text
    return bool(resp.json())


def test_create_with_an_empty_body_uses_the_defaults(raw_consul: RawConsul) -> None:
    resp = raw_consul.put("/v1/session/create")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    sid = resp.json()["ID"]
    try:
        [sess] = info(raw_consul, sid)
        assert sess["ID"] == sid
        assert sess["Node"] == node_name(raw_consul)
        assert sess["LockDelay"] == 15 * SECOND
        assert sess["Behavior"] == "release"
        assert sess["TTL"] == ""
        assert sess["NodeChecks"] == ["serfHealth"]
        assert sess["CreateIndex"] == sess["ModifyIndex"] > 0
    finally:
        raw_consul.put(f"/v1/session/destroy/{sid}")


def test_session_json_fields(raw_consul: RawConsul, new_session: Callable[..., str]) -> None:
    sid = new_session(Name="fields", TTL="15s", Behavior="delete", LockDelay="2s")
    resp = raw_consul.get(f"/v1/session/info/{sid}")
    assert resp.headers["Content-Type"] == "application/json"
    assert int(resp.headers["X-Consul-Index"]) > 0
    keys = ordered_keys(resp.text)[-1]
    assert all(k in keys for k in SESSION_KEYS)
    [sess] = resp.json()
    assert sess["Name"] == "fields"
    assert sess["TTL"] == "15s"
    assert sess["Behavior"] == "delete"
    assert sess["LockDelay"] == 2 * SECOND


def test_field_names_are_case_insensitive(
    raw_consul: RawConsul, new_session: Callable[..., str]
) -> None:
    sid = new_session(name="lower", ttl="20s", behavior="delete", lockdelay="3s")
    [sess] = info(raw_consul, sid)
    assert (sess["Name"], sess["TTL"], sess["Behavior"], sess["LockDelay"]) == (
        "lower",
        "20s",
        "delete",
        3 * SECOND,
    )


@pytest.mark.parametrize(
    ("lock_delay", "expected"),
    [(2, 2 * SECOND), ("1500ms", 1_500_000_000), (2 * SECOND, 2 * SECOND), ("0s", 0), (0, 0)],
)
def test_lock_delay_forms(
    raw_consul: RawConsul, new_session: Callable[..., str], lock_delay: Any, expected: int
) -> None:
    sid = new_session(LockDelay=lock_delay)
    assert info(raw_consul, sid)[0]["LockDelay"] == expected


def test_lock_delay_over_60s_is_kept_as_given(
    raw_consul: RawConsul, new_session: Callable[..., str]
) -> None:
    # Consul stores the LockDelay it was given; the 60s cap applies only when the
    # delay is enforced (see test_devconsul_store for the enforcement).
    sid = new_session(LockDelay="120s")
    assert info(raw_consul, sid)[0]["LockDelay"] == 120 * SECOND


@pytest.mark.parametrize(("lock_delay", "expected"), [("5ns", 5 * SECOND), ("999ns", 999 * SECOND)])
def test_lock_delay_string_below_1000ns_is_seconds(
    raw_consul: RawConsul, new_session: Callable[..., str], lock_delay: str, expected: int
) -> None:
    sid = new_session(LockDelay=lock_delay)
    assert info(raw_consul, sid)[0]["LockDelay"] == expected


@pytest.mark.parametrize("ttl", ["10s", "86400s", "24h", "1m", "0s"])
def test_ttl_within_bounds_is_accepted(
    raw_consul: RawConsul, new_session: Callable[..., str], ttl: str
) -> None:
    sid = new_session(TTL=ttl)
    assert info(raw_consul, sid)[0]["TTL"] == ttl


@pytest.mark.parametrize("ttl", ["9s", "5s", "86401s", "25h"])
def test_ttl_out_of_bounds_is_500(raw_consul: RawConsul, ttl: str) -> None:
    resp = raw_consul.put("/v1/session/create", json={"TTL": ttl})
    assert resp.status_code == 500
    assert "Invalid Session TTL" in resp.text
    assert "Traceback" not in resp.text


def test_unknown_behavior_is_500(raw_consul: RawConsul) -> None:
    resp = raw_consul.put("/v1/session/create", json={"Behavior": "explode"})
    assert resp.status_code == 500
    assert "Invalid Behavior setting 'explode'" in resp.text


def test_renew_answers_the_session(raw_consul: RawConsul, new_session: Callable[..., str]) -> None:
    sid = new_session(TTL="30s")
    resp = raw_consul.put(f"/v1/session/renew/{sid}")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    [sess] = resp.json()
    assert sess["ID"] == sid
    assert sess["TTL"] == "30s"


def test_renew_of_an_unknown_session_is_404(raw_consul: RawConsul) -> None:
    sid = "4ac5d4fc-0000-4000-8000-000000000000"
    resp = raw_consul.put(f"/v1/session/renew/{sid}")
    assert resp.status_code == 404
    assert resp.text.strip() == f"Session id '{sid}' not found"


def test_destroy_answers_true_also_for_unknown_ids(
    raw_consul: RawConsul, new_session: Callable[..., str]
) -> None:
    sid = new_session()
    resp = raw_consul.put(f"/v1/session/destroy/{sid}")
    assert resp.status_code == 200
    assert resp.json() is True
    assert info(raw_consul, sid) == []
    assert raw_consul.put(f"/v1/session/destroy/{sid}").json() is True


def test_list_and_node(raw_consul: RawConsul, new_session: Callable[..., str]) -> None:
    a = new_session(Name="a")
    b = new_session(Name="b")
    listed = raw_consul.get("/v1/session/list")
    assert listed.status_code == 200
    assert int(listed.headers["X-Consul-Index"]) > 0
    ids = [s["ID"] for s in listed.json()]
    assert a in ids and b in ids
    node = node_name(raw_consul)
    by_node = [s["ID"] for s in raw_consul.get(f"/v1/session/node/{node}").json()]
    assert a in by_node and b in by_node
    assert raw_consul.get("/v1/session/node/no-such-node-zz").json() == []


def test_python_consul2_sessions(py_consul: Any, kv_prefix: str) -> None:
    sid = py_consul.session.create(name="pc2", ttl=30, lock_delay=1, behavior="delete")
    try:
        _, sess = py_consul.session.info(sid)
        assert sess["Name"] == "pc2"
        assert sess["LockDelay"] == SECOND
        assert sess["Behavior"] == "delete"
        assert py_consul.session.renew(sid)["ID"] == sid
        assert py_consul.kv.put(kv_prefix + "l", "me", acquire=sid) is True
        assert py_consul.kv.get(kv_prefix + "l")[1]["Session"] == sid
    finally:
        py_consul.session.destroy(sid)
    assert py_consul.session.info(sid)[1] is None


# ------------------------------------------------------------------ locks


def test_acquire_new_key_sets_lock_index_1_and_session(
    raw_consul: RawConsul, kv_prefix: str, new_session: Callable[..., str]
) -> None:
    sid = new_session()
    key = kv_prefix + "lock"
    assert acquire(raw_consul, key, sid, b"holder") is True
    resp = raw_consul.get(f"/v1/kv/{key}")
    assert ordered_keys(resp.text) == [
        ["LockIndex", "Key", "Flags", "Value", "Session", "CreateIndex", "ModifyIndex"]
    ]
    got = resp.json()[0]
    assert got["LockIndex"] == 1
    assert got["Session"] == sid
    assert got["Value"] == "aG9sZGVy"


def test_acquire_by_the_holder_updates_the_value_only(
    raw_consul: RawConsul, kv_prefix: str, new_session: Callable[..., str]
) -> None:
    sid = new_session()
    key = kv_prefix + "lock"
    assert acquire(raw_consul, key, sid, b"one")
    assert acquire(raw_consul, key, sid, b"two")
    got = entry(raw_consul, key)
    assert got is not None
    assert (got["LockIndex"], got["Session"], got["Value"]) == (1, sid, "dHdv")


def test_acquire_held_by_another_session_is_false(
    raw_consul: RawConsul, kv_prefix: str, new_session: Callable[..., str]
) -> None:
    a, b = new_session(), new_session()
    key = kv_prefix + "lock"
    assert acquire(raw_consul, key, a, b"a")
    assert acquire(raw_consul, key, b, b"b") is False
    got = entry(raw_consul, key)
    assert got is not None and got["Session"] == a and got["Value"] == "YQ=="


def test_release_clears_session_keeps_lock_index_and_writes_value(
    raw_consul: RawConsul, kv_prefix: str, new_session: Callable[..., str]
) -> None:
    a, b = new_session(), new_session()
    key = kv_prefix + "lock"
    assert acquire(raw_consul, key, a, b"held")
    assert release(raw_consul, key, b, b"x") is False  # not the holder
    assert release(raw_consul, key, a, b"free") is True
    got = entry(raw_consul, key)
    assert got is not None
    assert "Session" not in got
    assert got["LockIndex"] == 1
    assert got["Value"] == "ZnJlZQ=="
    assert release(raw_consul, key, a) is False  # nobody holds it now
    # an explicit release starts no lock-delay: b takes it at once, LockIndex + 1
    assert acquire(raw_consul, key, b, b"b")
    got = entry(raw_consul, key)
    assert got is not None and got["LockIndex"] == 2 and got["Session"] == b


def test_release_of_a_missing_key_is_false(
    raw_consul: RawConsul, kv_prefix: str, new_session: Callable[..., str]
) -> None:
    assert release(raw_consul, kv_prefix + "none", new_session()) is False


def test_plain_put_on_a_held_key_keeps_the_holder_but_not_the_lock_index(
    raw_consul: RawConsul, kv_prefix: str, new_session: Callable[..., str]
) -> None:
    sid = new_session()
    key = kv_prefix + "lock"
    assert acquire(raw_consul, key, sid, b"a")
    assert raw_consul.put(f"/v1/kv/{key}", data=b"overwritten").json() is True
    got = entry(raw_consul, key)
    assert got is not None and got["Session"] == sid and got["Value"] == "b3ZlcndyaXR0ZW4="
    assert got["LockIndex"] == 0  # Consul's plain set writes LockIndex 0
    # the holder still holds it: another session cannot take it
    assert acquire(raw_consul, key, new_session()) is False


@pytest.mark.parametrize("flag", ["acquire", "release"])
def test_acquire_or_release_without_a_session_is_500(
    raw_consul: RawConsul, kv_prefix: str, flag: str
) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}lock", data=b"v")
    resp = raw_consul.put(f"/v1/kv/{kv_prefix}lock?{flag}=", data=b"x")
    assert resp.status_code == 500
    assert "missing session" in resp.text
    assert raw_consul.get(f"/v1/kv/{kv_prefix}lock?raw").content == b"v"


def test_acquire_with_an_unknown_session_is_500(raw_consul: RawConsul, kv_prefix: str) -> None:
    resp = raw_consul.put(
        f"/v1/kv/{kv_prefix}lock?acquire=4ac5d4fc-0000-4000-8000-000000000000", data=b"x"
    )
    assert resp.status_code == 500
    assert "Traceback" not in resp.text
    assert raw_consul.get(f"/v1/kv/{kv_prefix}lock").status_code == 404


def test_destroy_with_behavior_release_releases_and_starts_lock_delay(
    raw_consul: RawConsul, kv_prefix: str, new_session: Callable[..., str]
) -> None:
    holder = new_session(LockDelay="1s")
    other = new_session()
    key = kv_prefix + "lock"
    assert acquire(raw_consul, key, holder, b"v")
    before = entry(raw_consul, key)
    raw_consul.put(f"/v1/session/destroy/{holder}")
    got = entry(raw_consul, key)
    assert got is not None
    assert "Session" not in got
    assert got["ModifyIndex"] > before["ModifyIndex"]  # type: ignore[index]
    assert got["LockIndex"] == 1
    # the key is in lock-delay: acquire answers false until the delay is over
    assert acquire(raw_consul, key, other) is False
    wait_for(lambda: acquire(raw_consul, key, other), 10, "the lock-delay to end", step=0.1)
    got = entry(raw_consul, key)
    assert got is not None and got["Session"] == other and got["LockIndex"] == 2


def test_destroy_with_behavior_delete_deletes_held_keys(
    raw_consul: RawConsul, kv_prefix: str, new_session: Callable[..., str]
) -> None:
    holder = new_session(Behavior="delete", LockDelay="1s")
    other = new_session()
    for k in ("a", "b"):
        assert acquire(raw_consul, kv_prefix + k, holder, b"v")
    raw_consul.put(f"/v1/kv/{kv_prefix}free", data=b"v")
    raw_consul.put(f"/v1/session/destroy/{holder}")
    assert raw_consul.get(f"/v1/kv/{kv_prefix}a").status_code == 404
    assert raw_consul.get(f"/v1/kv/{kv_prefix}b").status_code == 404
    assert raw_consul.get(f"/v1/kv/{kv_prefix}free").status_code == 200
    assert acquire(raw_consul, kv_prefix + "a", other) is False  # lock-delay applies
    wait_for(lambda: acquire(raw_consul, kv_prefix + "a", other), 10, "the lock-delay to end")


def test_lock_delay_zero_disables_it(
    raw_consul: RawConsul, kv_prefix: str, new_session: Callable[..., str]
) -> None:
    holder = new_session(LockDelay="0s")
    other = new_session()
    assert acquire(raw_consul, kv_prefix + "k", holder)
    raw_consul.put(f"/v1/session/destroy/{holder}")
    assert acquire(raw_consul, kv_prefix + "k", other) is True


def test_ttl_lapse_invalidates_the_session(
    raw_consul: RawConsul, kv_prefix: str, new_session: Callable[..., str]
) -> None:
    """The one slow test: Consul invalidates "not before TTL" (and by 2 x TTL)."""
    start = time.monotonic()
    released = new_session(TTL="10s", LockDelay="5s")
    deleted = new_session(TTL="10s", Behavior="delete", LockDelay="0s")
    other = new_session()
    assert acquire(raw_consul, kv_prefix + "rel", released, b"r")
    assert acquire(raw_consul, kv_prefix + "del", deleted, b"d")

    def gone() -> bool:
        return info(raw_consul, released) == [] and info(raw_consul, deleted) == []

    wait_for(gone, 2 * 10 + 10, "TTL sessions to be invalidated", step=0.2)
    assert time.monotonic() - start >= 10.0  # not before the TTL
    rel = entry(raw_consul, kv_prefix + "rel")
    assert rel is not None and "Session" not in rel and rel["Value"] == "cg=="
    assert raw_consul.get(f"/v1/kv/{kv_prefix}del").status_code == 404
    assert acquire(raw_consul, kv_prefix + "rel", other) is False  # 5 s lock-delay
    assert acquire(raw_consul, kv_prefix + "del", other) is True  # no lock-delay
