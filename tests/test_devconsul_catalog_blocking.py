"""Blocking queries on the catalog and health endpoints: which changes wake them and the
index they answer. Runs against dev-consul or a real Consul (`--consul-url`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pytest
import requests
from zedctl.devconsul.testing import RawConsul

# How long a query must stay blocked to count as "not woken" (a woken query answers
# within milliseconds; this is no speed assertion).
HOLD = 0.3
WOKEN = 10  # seconds a woken query has to answer


def index_of(resp: requests.Response) -> int:
    return int(resp.headers["X-Consul-Index"])


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


@pytest.fixture
def register(raw_consul: RawConsul) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def reg(**body: Any) -> str:
        body.setdefault("Name", f"blk-{uuid.uuid4().hex[:8]}")
        resp = raw_consul.put("/v1/agent/service/register", data=json.dumps(body))
        assert resp.status_code == 200, resp.text
        sid = str(body.get("ID") or body["Name"])
        made.append(sid)
        return sid

    yield reg
    for sid in made:
        raw_consul.put(f"/v1/agent/service/deregister/{sid}")


def blocked(pool: ThreadPoolExecutor, raw: RawConsul, path: str, index: int) -> Future:
    """GET path?index=..&wait=20s in the background; check it is still blocked after HOLD."""
    sep = "&" if "?" in path else "?"
    future = pool.submit(raw.get, f"{path}{sep}index={index}&wait=20s")
    with pytest.raises(FutureTimeout):
        future.result(timeout=HOLD)
    return future


def test_health_service_wakes_on_its_check_not_on_other_services(
    raw_consul: RawConsul, register: Callable[..., str], pool: ThreadPoolExecutor
) -> None:
    sid = register(Port=80, Check={"TTL": "30s"})
    path = f"/v1/health/service/{sid}"
    first = raw_consul.get(path)
    waiting = blocked(pool, raw_consul, path, index_of(first))
    register(Port=81)  # another service: the query stays blocked
    with pytest.raises(FutureTimeout):
        waiting.result(timeout=HOLD)
    raw_consul.put(f"/v1/agent/check/pass/service:{sid}")
    woken = waiting.result(timeout=WOKEN)
    assert woken.status_code == 200
    assert index_of(woken) > index_of(first)
    assert woken.json()[0]["Checks"][1]["Status"] == "passing"


def test_wait_elapses_with_the_same_index(
    raw_consul: RawConsul, register: Callable[..., str]
) -> None:
    sid = register(Port=80)
    first = raw_consul.get(f"/v1/health/service/{sid}")
    again = raw_consul.get(f"/v1/health/service/{sid}?index={index_of(first)}&wait=200ms")
    assert again.status_code == 200
    assert index_of(again) == index_of(first)
    assert again.json() == first.json()


def test_catalog_services_wakes_on_a_new_service(
    raw_consul: RawConsul, register: Callable[..., str], pool: ThreadPoolExecutor
) -> None:
    first = raw_consul.get("/v1/catalog/services")
    waiting = blocked(pool, raw_consul, "/v1/catalog/services", index_of(first))
    sid = register(Port=80, Tags=["x"])
    woken = waiting.result(timeout=WOKEN)
    assert woken.json()[sid] == ["x"]
    assert index_of(woken) > index_of(first)


def test_missing_service_wakes_when_it_registers_and_when_it_goes(
    raw_consul: RawConsul, register: Callable[..., str], pool: ThreadPoolExecutor
) -> None:
    name = f"blk-{uuid.uuid4().hex[:8]}"
    path = f"/v1/health/service/{name}"
    first = raw_consul.get(path)
    assert first.json() == [] and index_of(first) > 0
    waiting = blocked(pool, raw_consul, path, index_of(first))
    register(Name=name, Port=80)
    woken = waiting.result(timeout=WOKEN)
    assert [e["Service"]["ID"] for e in woken.json()] == [name]
    waiting = blocked(pool, raw_consul, path, index_of(woken))
    raw_consul.put(f"/v1/agent/service/deregister/{name}")
    gone = waiting.result(timeout=WOKEN)
    assert gone.json() == [] and index_of(gone) > index_of(woken)


def test_health_checks_and_catalog_service_wake(
    raw_consul: RawConsul, register: Callable[..., str], pool: ThreadPoolExecutor
) -> None:
    sid = register(Port=80, Check={"TTL": "30s"})
    checks = raw_consul.get(f"/v1/health/checks/{sid}")
    waiting = blocked(pool, raw_consul, f"/v1/health/checks/{sid}", index_of(checks))
    raw_consul.put(f"/v1/agent/check/warn/service:{sid}")
    assert waiting.result(timeout=WOKEN).json()[0]["Status"] == "warning"

    catalog = raw_consul.get(f"/v1/catalog/service/{sid}")
    waiting = blocked(pool, raw_consul, f"/v1/catalog/service/{sid}", index_of(catalog))
    register(ID=sid, Name=sid, Port=81, Check={"TTL": "30s"})  # re-registration, new port
    woken = waiting.result(timeout=WOKEN)
    assert woken.json()[0]["ServicePort"] == 81
    assert woken.json()[0]["ModifyIndex"] == index_of(woken)
