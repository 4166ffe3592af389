"""Bad requests get Consul's status codes and messages, never a traceback; plus the
endpoints clients probe (status, agent/self, catalog/datacenters).
Runs against dev-consul or a real Consul (`--consul-url`)."""

from __future__ import annotations

import pytest
from zedctl.devconsul.testing import RawConsul


def no_traceback(text: str) -> bool:
    return "Traceback" not in text and 'File "' not in text


@pytest.mark.parametrize(
    "query",
    ["cas=0&acquire=x", "acquire=x&release=x", "cas=1&release=x", "cas=0&acquire=x&release=y"],
)
def test_conflicting_put_flags_are_400(raw_consul: RawConsul, kv_prefix: str, query: str) -> None:
    resp = raw_consul.put(f"/v1/kv/{kv_prefix}k?{query}", data=b"v")
    assert resp.status_code == 400
    assert resp.text.startswith("Conflicting flags")
    assert raw_consul.get(f"/v1/kv/{kv_prefix}k").status_code == 404


def test_delete_with_recurse_and_cas_is_400(raw_consul: RawConsul, kv_prefix: str) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}k", data=b"v")
    resp = raw_consul.delete(f"/v1/kv/{kv_prefix}?recurse&cas=1")
    assert resp.status_code == 400
    assert resp.text.startswith("Conflicting flags")
    assert raw_consul.get(f"/v1/kv/{kv_prefix}k").status_code == 200


def test_put_and_delete_need_a_key(raw_consul: RawConsul) -> None:
    for resp in (raw_consul.put("/v1/kv/", data=b"v"), raw_consul.delete("/v1/kv/")):
        assert resp.status_code == 400
        assert resp.text.strip() == "Missing key name"


@pytest.mark.parametrize("param", ["flags=abc", "flags=-1", "cas=x", "cas="])
def test_unparsable_numbers_are_refused_without_traceback(
    raw_consul: RawConsul, kv_prefix: str, param: str
) -> None:
    resp = raw_consul.put(f"/v1/kv/{kv_prefix}k?{param}", data=b"v")
    assert resp.status_code in (400, 500)
    assert "strconv.ParseUint" in resp.text or "Invalid" in resp.text
    assert no_traceback(resp.text)
    assert raw_consul.get(f"/v1/kv/{kv_prefix}k").status_code == 404


def test_stale_with_consistent_is_400(raw_consul: RawConsul, kv_prefix: str) -> None:
    resp = raw_consul.get(f"/v1/kv/{kv_prefix}k?stale&consistent")
    assert resp.status_code == 400
    assert "conflicting consistency modes" in resp.text


def test_stale_alone_and_consistent_alone_are_fine(raw_consul: RawConsul, kv_prefix: str) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}k", data=b"v")
    assert raw_consul.get(f"/v1/kv/{kv_prefix}k?stale").status_code == 200
    assert raw_consul.get(f"/v1/kv/{kv_prefix}k?consistent").status_code == 200


def test_duplicate_parameters_use_the_first(raw_consul: RawConsul, kv_prefix: str) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}k?flags=1&flags=2", data=b"v")
    assert raw_consul.get(f"/v1/kv/{kv_prefix}k").json()[0]["Flags"] == 1


def test_session_create_with_malformed_json_is_400(raw_consul: RawConsul) -> None:
    resp = raw_consul.put("/v1/session/create", data=b"{nope")
    assert resp.status_code == 400
    assert resp.text.startswith("Request decode failed")
    assert no_traceback(resp.text)


def test_session_create_with_unparsable_ttl_is_refused(raw_consul: RawConsul) -> None:
    resp = raw_consul.put("/v1/session/create", json={"TTL": "soon"})
    assert resp.status_code in (400, 500)
    assert no_traceback(resp.text)


def test_txn_that_is_not_a_list_is_400(raw_consul: RawConsul) -> None:
    resp = raw_consul.put("/v1/txn", json={"KV": {"Verb": "get", "Key": "x"}})
    assert resp.status_code == 400
    assert no_traceback(resp.text)


def test_txn_value_over_the_limit_is_413(raw_consul: RawConsul, kv_prefix: str) -> None:
    import base64

    value = base64.b64encode(b"z" * (512 * 1024 + 1)).decode()
    resp = raw_consul.put(
        "/v1/txn", json=[{"KV": {"Verb": "set", "Key": kv_prefix + "big", "Value": value}}]
    )
    assert resp.status_code == 413
    assert raw_consul.get(f"/v1/kv/{kv_prefix}big").status_code == 404


def test_wrong_method_is_405(raw_consul: RawConsul) -> None:
    resp = raw_consul.request("POST", "/v1/session/list")
    assert resp.status_code == 405
    assert no_traceback(resp.text)


def test_status_leader_and_peers(raw_consul: RawConsul) -> None:
    leader = raw_consul.get("/v1/status/leader")
    assert leader.status_code == 200
    assert leader.headers["Content-Type"] == "application/json"
    address = leader.json()
    assert isinstance(address, str) and ":" in address
    peers = raw_consul.get("/v1/status/peers").json()
    assert address in peers


def test_agent_self(raw_consul: RawConsul) -> None:
    resp = raw_consul.get("/v1/agent/self")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    for section in ("Config", "DebugConfig", "Coord", "Member", "Meta", "Stats"):
        assert section in body
    for field in ("Datacenter", "NodeName", "NodeID", "Server", "Revision", "Version"):
        assert field in body["Config"]


def test_catalog_datacenters(raw_consul: RawConsul) -> None:
    resp = raw_consul.get("/v1/catalog/datacenters")
    assert resp.status_code == 200
    datacenters = resp.json()
    assert isinstance(datacenters, list) and datacenters
    assert raw_consul.get("/v1/agent/self").json()["Config"]["Datacenter"] in datacenters
