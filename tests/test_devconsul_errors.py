"""Bad requests get Consul's status codes and messages, never a traceback; plus the
endpoints clients probe (status, agent/self, catalog/datacenters).
Runs against dev-consul or a real Consul (`--consul-url`)."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import pytest
from zedctl.devconsul.testing import ConsulForms, RawConsul


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


def test_conflicting_flags_message_lists_the_query_sorted_by_name(
    raw_consul: RawConsul, kv_prefix: str
) -> None:
    resp = raw_consul.put(f"/v1/kv/{kv_prefix}k?cas=2&acquire=x&cas=1", data=b"v")
    assert resp.status_code == 400
    assert resp.text.rstrip("\n") == "Conflicting flags: acquire=x&cas=2&cas=1"  # Values.Encode


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
    assert resp.text == "Cannot specify ?stale with ?consistent, conflicting semantics."


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


def test_txn_body_over_512kib_is_413_even_with_small_values(
    raw_consul: RawConsul, kv_prefix: str
) -> None:
    # Consul's txn_max_req_len (default 512 KiB) bounds the whole request body.
    import base64

    value = base64.b64encode(b"z" * (150 * 1024)).decode()
    ops = [{"KV": {"Verb": "set", "Key": f"{kv_prefix}{i}", "Value": value}} for i in range(3)]
    resp = raw_consul.put("/v1/txn", json=ops)
    assert resp.status_code == 413
    size = len(resp.request.body or b"")
    # then ". See <Consul's documentation of txn_max_req_len>." (the link moved in 1.9)
    expected = f"Request body({size} bytes) too large, max size: 524288 bytes. See "
    assert resp.text.startswith(expected)
    assert raw_consul.get(f"/v1/kv/{kv_prefix}?recurse").status_code == 404
    assert raw_consul.put("/v1/txn", json=ops[:2]).status_code == 200


def test_txn_with_an_empty_body_is_400(raw_consul: RawConsul) -> None:
    resp = raw_consul.put("/v1/txn", data=b"")
    assert resp.status_code == 400
    assert resp.text.startswith("Failed to parse body")


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


def test_405_names_the_methods_as_consul_does(raw_consul: RawConsul, kv_prefix: str) -> None:
    resp = raw_consul.request("POST", f"/v1/kv/{kv_prefix}k")
    assert resp.status_code == 405
    assert resp.text == "method POST not allowed"
    assert resp.headers["Allow"] == "OPTIONS,GET,PUT,DELETE"
    assert raw_consul.request("GET", "/v1/txn").headers["Allow"] == "OPTIONS,PUT"


def test_options_answers_the_allowed_methods(raw_consul: RawConsul) -> None:
    resp = raw_consul.request("OPTIONS", "/v1/session/create")
    assert resp.status_code == 200
    assert resp.headers["Allow"] == "OPTIONS,PUT"
    assert resp.content == b""


def test_unknown_endpoint_is_404(raw_consul: RawConsul, consul_forms: ConsulForms) -> None:
    resp = raw_consul.get("/v1/no/such/endpoint")
    outside = raw_consul.get("/nope")
    assert resp.status_code == outside.status_code == 404
    if consul_forms.older_forms and resp.text == outside.text == "":
        return  # Consul 1.8 answers both with an empty body
    assert resp.text == "Invalid URL path: not a recognized HTTP API endpoint\n"
    assert outside.text.startswith("Invalid URL path: if attempting to use the HTTP API")


def send_verbatim(raw_consul: RawConsul, method: str, path: str) -> http.client.HTTPResponse:
    """One request with the path exactly as given (requests would remove dot segments)."""
    url = urlsplit(raw_consul.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    headers = {"X-Consul-Token": raw_consul.token} if raw_consul.token else {}
    conn.request(method, path, body=b"v" if method == "PUT" else None, headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


@pytest.mark.parametrize(
    ("path", "clean"),
    [
        ("/v1/kv/{p}a//b", "/v1/kv/{p}a/b"),
        ("/v1/kv/{p}a/./b", "/v1/kv/{p}a/b"),
        ("/v1/kv/{p}a/x/../b", "/v1/kv/{p}a/b"),
        ("/v1/kv", "/v1/kv/"),
        ("/v1/session/info", "/v1/session/info/"),
    ],
)
def test_unclean_paths_are_redirected_not_served(
    raw_consul: RawConsul, kv_prefix: str, path: str, clean: str
) -> None:
    # Go's ServeMux redirects before Consul sees the request: a key with `//`, `.` or
    # `..` segments cannot be written or read through the HTTP API.
    path, clean = path.format(p=kv_prefix), clean.format(p=kv_prefix)
    put = send_verbatim(raw_consul, "PUT", path + "?flags=1")
    assert put.status == 301
    assert put.getheader("Location") == clean + "?flags=1"
    get = send_verbatim(raw_consul, "GET", path)
    assert get.status == 301
    assert get.getheader("Location") == clean
    assert raw_consul.get(f"/v1/kv/{kv_prefix}?recurse").status_code == 404  # nothing written


def test_a_path_with_a_broken_escape_is_400(raw_consul: RawConsul, kv_prefix: str) -> None:
    resp = send_verbatim(raw_consul, "PUT", f"/v1/kv/{kv_prefix}100%")
    assert resp.status == 400
    assert raw_consul.get(f"/v1/kv/{kv_prefix}?recurse").status_code == 404


@pytest.mark.parametrize("query", ["recurse;keys", "flags=%zz", "a=%4"])
def test_a_query_go_cannot_parse_is_500(
    raw_consul: RawConsul, kv_prefix: str, query: str, consul_forms: ConsulForms
) -> None:
    resp = send_verbatim(raw_consul, "PUT", f"/v1/kv/{kv_prefix}k?{query}")
    if ";" in query and consul_forms.older_forms and resp.status == 200:
        # Go before 1.17 (Consul 1.10 and older) splits a query at `;` as at `&`
        assert raw_consul.get(f"/v1/kv/{kv_prefix}k?raw").content == b"v"
        return
    assert resp.status == 500
    assert raw_consul.get(f"/v1/kv/{kv_prefix}?recurse").status_code == 404


def test_a_hash_in_the_request_path_is_part_of_the_key(
    raw_consul: RawConsul, kv_prefix: str
) -> None:
    # The server reads the request target as it comes: no #fragment is cut off.
    assert send_verbatim(raw_consul, "PUT", f"/v1/kv/{kv_prefix}a#b").status == 200
    assert raw_consul.get(f"/v1/kv/{kv_prefix}a%23b").json()[0]["Key"] == f"{kv_prefix}a#b"


def test_unprintable_path_is_400(raw_consul: RawConsul, kv_prefix: str) -> None:
    resp = raw_consul.put(f"/v1/kv/{kv_prefix}a%0Ab", data=b"v")
    assert resp.status_code == 400
    assert raw_consul.get(f"/v1/kv/{kv_prefix}?recurse").status_code == 404


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
