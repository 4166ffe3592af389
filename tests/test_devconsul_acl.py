"""ACL enforcement with a token we set: only meaningful for the embedded dev-consul, which
each test starts itself (a real Consul's tokens are not ours to choose)."""

from __future__ import annotations

from collections.abc import Iterator

import consul as pyconsul
import pytest
from zedctl.devconsul import DevConsul
from zedctl.devconsul.testing import RawConsul, consul_client

pytestmark = pytest.mark.devconsul_only("ACL enforcement with a token it is started with")

TOKEN = "s3cr3t-t0ken"


@pytest.fixture
def secured() -> Iterator[DevConsul]:
    with DevConsul(port=0, acl_token=TOKEN) as server:
        yield server


@pytest.fixture
def anonymous(secured: DevConsul) -> Iterator[RawConsul]:
    raw = RawConsul(secured.url)
    yield raw
    raw.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/kv/k"),
        ("PUT", "/v1/kv/k"),
        ("DELETE", "/v1/kv/k"),
        ("GET", "/v1/kv/?recurse"),
        ("PUT", "/v1/txn"),
        ("PUT", "/v1/session/create"),
        ("GET", "/v1/session/list"),
        ("GET", "/v1/status/leader"),
        ("GET", "/v1/agent/self"),
        ("GET", "/v1/catalog/datacenters"),
    ],
)
def test_missing_token_is_403_permission_denied(
    anonymous: RawConsul, method: str, path: str
) -> None:
    resp = anonymous.request(method, path, data=b"[]" if path == "/v1/txn" else b"v")
    assert resp.status_code == 403
    assert resp.text == "Permission denied"


def test_wrong_token_is_403_acl_not_found(anonymous: RawConsul) -> None:
    for resp in (
        anonymous.get("/v1/kv/k?token=wrong"),
        anonymous.get("/v1/kv/k", headers={"X-Consul-Token": "wrong"}),
        anonymous.get("/v1/kv/k", headers={"Authorization": "Bearer wrong"}),
    ):
        assert resp.status_code == 403
        assert resp.text == "ACL not found"


def test_all_three_token_carriers_are_accepted(anonymous: RawConsul) -> None:
    assert anonymous.put(f"/v1/kv/k?token={TOKEN}", data=b"v").json() is True
    assert anonymous.get("/v1/kv/k", headers={"X-Consul-Token": TOKEN}).status_code == 200
    assert (
        anonymous.get("/v1/kv/k", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    )
    assert anonymous.get("/v1/kv/missing", headers={"X-Consul-Token": TOKEN}).status_code == 404


def test_query_token_comes_before_the_header(anonymous: RawConsul) -> None:
    resp = anonymous.get(f"/v1/kv/k?token={TOKEN}", headers={"X-Consul-Token": "wrong"})
    assert resp.status_code == 404  # authorised: the key just does not exist
    resp = anonymous.get("/v1/kv/k?token=wrong", headers={"X-Consul-Token": TOKEN})
    assert resp.status_code == 403


def test_header_token_comes_before_bearer(anonymous: RawConsul) -> None:
    resp = anonymous.get(
        "/v1/kv/k", headers={"X-Consul-Token": TOKEN, "Authorization": "Bearer wrong"}
    )
    assert resp.status_code == 404


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (f"Bearer {TOKEN} trailing words", 404),  # only the first word is the token
        (f"bearer  {TOKEN}", 404),  # scheme case-insensitive, value trimmed
        (f"Basic {TOKEN}", 403),
        (f"Bearer{TOKEN}", 403),
    ],
)
def test_bearer_header_is_split_as_consul_does(
    anonymous: RawConsul, header: str, status: int
) -> None:
    assert anonymous.get("/v1/kv/k", headers={"Authorization": header}).status_code == status


def test_refused_writes_change_nothing(anonymous: RawConsul) -> None:
    anonymous.put("/v1/kv/guarded", data=b"x")
    anonymous.put("/v1/kv/guarded?token=wrong", data=b"x")
    assert anonymous.get(f"/v1/kv/guarded?token={TOKEN}").status_code == 404


def test_python_consul2_with_the_token(secured: DevConsul, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    host, port = secured.address
    good = consul_client(host, port, TOKEN)
    assert good.kv.put("pc2", "v") is True
    assert good.kv.get("pc2")[1]["Value"] == b"v"
    bad = consul_client(host, port, None)
    with pytest.raises(pyconsul.ACLPermissionDenied):
        bad.kv.get("pc2")
