"""KV conformance: /v1/kv/<key> with every parameter zedcup and its clients use.

Runs against the embedded dev-consul, or a real Consul with `--consul-url`."""

from __future__ import annotations

import base64
from urllib.parse import quote

import consul as pyconsul
import pytest
from zedctl.devconsul.testing import ConsulForms, RawConsul, ordered_keys

ENTRY_KEYS = ["LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"]


def index_of(resp) -> int:
    return int(resp.headers["X-Consul-Index"])


def test_put_then_get_answers_consul_entry_json(
    raw_consul: RawConsul, kv_prefix: str, consul_forms: ConsulForms
) -> None:
    key = kv_prefix + "a"
    put = raw_consul.put(f"/v1/kv/{key}", data=b"hello")
    assert put.status_code == 200
    assert put.headers["Content-Type"] == "application/json"
    assert put.text == consul_forms.scalar("true")

    resp = raw_consul.get(f"/v1/kv/{key}")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    assert resp.headers["X-Consul-LastContact"] == "0"
    assert ordered_keys(resp.text) == [ENTRY_KEYS]
    [entry] = resp.json()
    assert entry["Key"] == key
    assert entry["Flags"] == 0
    assert entry["LockIndex"] == 0
    assert base64.b64decode(entry["Value"]) == b"hello"
    assert entry["CreateIndex"] == entry["ModifyIndex"] == index_of(resp) > 0


def test_value_is_padded_base64_and_empty_value_is_null(
    raw_consul: RawConsul, kv_prefix: str
) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}one", data=b"x")
    raw_consul.put(f"/v1/kv/{kv_prefix}empty", data=b"")
    assert raw_consul.get(f"/v1/kv/{kv_prefix}one").json()[0]["Value"] == "eA=="
    assert raw_consul.get(f"/v1/kv/{kv_prefix}empty").json()[0]["Value"] is None


def test_binary_value_round_trips(raw_consul: RawConsul, kv_prefix: str) -> None:
    data = bytes(range(256)) * 4
    raw_consul.put(f"/v1/kv/{kv_prefix}bin", data=data)
    assert base64.b64decode(raw_consul.get(f"/v1/kv/{kv_prefix}bin").json()[0]["Value"]) == data
    assert raw_consul.get(f"/v1/kv/{kv_prefix}bin?raw").content == data


def test_missing_key_is_404_with_empty_body_and_index_headers(
    raw_consul: RawConsul, kv_prefix: str
) -> None:
    resp = raw_consul.get(f"/v1/kv/{kv_prefix}missing")
    assert resp.status_code == 404
    assert resp.content == b""
    assert index_of(resp) >= 1
    assert resp.headers["X-Consul-KnownLeader"] == "true"


def test_empty_key_without_recurse_is_400(raw_consul: RawConsul) -> None:
    resp = raw_consul.get("/v1/kv/")
    assert resp.status_code == 400
    assert resp.text.strip() == "Missing key name"


def test_raw_answers_bare_value_as_text_plain(raw_consul: RawConsul, kv_prefix: str) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}r", data=b"plain text")
    resp = raw_consul.get(f"/v1/kv/{kv_prefix}r?raw")
    assert resp.status_code == 200
    assert resp.content == b"plain text"
    assert resp.headers["Content-Type"] == "text/plain"
    assert index_of(resp) > 0
    # Consul's guard against serving stored HTML/JS as a page (consul#3462, #12048).
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Content-Security-Policy"] == "sandbox"


def test_answers_of_1400_bytes_or_more_are_gzipped_for_clients_that_ask(
    raw_consul: RawConsul, kv_prefix: str, consul_forms: ConsulForms
) -> None:
    # Consul wraps its endpoints in gziphandler (minimum size 1400 bytes; Consul 1.8
    # used no minimum and gzips small answers too).
    value = bytes(range(256)) * 8
    raw_consul.put(f"/v1/kv/{kv_prefix}big", data=value)
    plain = raw_consul.get(f"/v1/kv/{kv_prefix}big?raw", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert plain.headers["Vary"] == "Accept-Encoding"
    zipped = raw_consul.get(f"/v1/kv/{kv_prefix}big?raw", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.content == plain.content == value  # requests decompresses
    small = raw_consul.get(f"/v1/kv/{kv_prefix}big?keys", headers={"Accept-Encoding": "gzip"})
    assert small.json() == [f"{kv_prefix}big"]
    if not consul_forms.older_forms:
        assert "Content-Encoding" not in small.headers
    refused = raw_consul.get(f"/v1/kv/{kv_prefix}big?raw", headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers


def test_keys_with_special_characters(raw_consul: RawConsul, kv_prefix: str) -> None:
    key = kv_prefix + "sp ace/ü+ñ%"
    assert raw_consul.put("/v1/kv/" + quote(key), data=b"v").json() is True
    [entry] = raw_consul.get("/v1/kv/" + quote(key)).json()
    assert entry["Key"] == key


def test_recurse_is_a_plain_string_prefix_sorted_by_key(
    raw_consul: RawConsul, kv_prefix: str
) -> None:
    for key in ("foo1", "foo/b", "foo", "fo", "foo/a", "foo/B"):
        raw_consul.put(f"/v1/kv/{kv_prefix}{key}", data=key.encode())
    resp = raw_consul.get(f"/v1/kv/{kv_prefix}foo?recurse")
    assert resp.status_code == 200
    keys = [e["Key"][len(kv_prefix) :] for e in resp.json()]
    assert keys == ["foo", "foo/B", "foo/a", "foo/b", "foo1"]
    assert index_of(resp) == max(e["ModifyIndex"] for e in resp.json())
    assert all(ordered_keys(resp.text)[i] == ENTRY_KEYS for i in range(len(keys)))


def test_recurse_with_no_match_is_404(raw_consul: RawConsul, kv_prefix: str) -> None:
    resp = raw_consul.get(f"/v1/kv/{kv_prefix}nothing/?recurse")
    assert resp.status_code == 404
    assert resp.content == b""
    assert index_of(resp) >= 1


def test_recurse_flag_counts_when_given_a_value(raw_consul: RawConsul, kv_prefix: str) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}x/1", data=b"1")
    assert len(raw_consul.get(f"/v1/kv/{kv_prefix}x/?recurse=").json()) == 1
    assert len(raw_consul.get(f"/v1/kv/{kv_prefix}x/?recurse=false").json()) == 1


def test_keys_lists_key_names(raw_consul: RawConsul, kv_prefix: str) -> None:
    for key in ("base/foo", "base/base/x", "base/base/y", "base/bar/z", "other"):
        raw_consul.put(f"/v1/kv/{kv_prefix}{key}", data=b"v")
    resp = raw_consul.get(f"/v1/kv/{kv_prefix}base/?keys")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert [k[len(kv_prefix) :] for k in resp.json()] == [
        "base/bar/z",
        "base/base/x",
        "base/base/y",
        "base/foo",
    ]
    assert index_of(resp) > 0


def test_keys_with_separator_cuts_after_the_first_separator(
    raw_consul: RawConsul, kv_prefix: str
) -> None:
    for key in ("base/foo", "base/base/x", "base/base/y", "base/bar/z/w"):
        raw_consul.put(f"/v1/kv/{kv_prefix}{key}", data=b"v")
    resp = raw_consul.get(f"/v1/kv/{kv_prefix}base/?keys&separator=/")
    assert [k[len(kv_prefix) :] for k in resp.json()] == ["base/bar/", "base/base/", "base/foo"]


def test_keys_for_a_missing_prefix_is_404(raw_consul: RawConsul, kv_prefix: str) -> None:
    resp = raw_consul.get(f"/v1/kv/{kv_prefix}none/?keys")
    assert resp.status_code == 404
    assert index_of(resp) >= 1


def test_put_flags_are_stored_and_reset_by_a_plain_put(
    raw_consul: RawConsul, kv_prefix: str
) -> None:
    key = f"/v1/kv/{kv_prefix}f"
    raw_consul.put(key + "?flags=42", data=b"v")
    assert raw_consul.get(key).json()[0]["Flags"] == 42
    raw_consul.put(key + f"?flags={2**64 - 1}", data=b"v")
    assert raw_consul.get(key).json()[0]["Flags"] == 2**64 - 1
    raw_consul.put(key, data=b"w")
    assert raw_consul.get(key).json()[0]["Flags"] == 0


def test_cas_zero_writes_only_when_absent(raw_consul: RawConsul, kv_prefix: str) -> None:
    key = f"/v1/kv/{kv_prefix}c"
    assert raw_consul.put(key + "?cas=0", data=b"first").json() is True
    assert raw_consul.put(key + "?cas=0", data=b"second").json() is False
    assert raw_consul.get(key + "?raw").content == b"first"


def test_cas_n_writes_only_at_that_modify_index(raw_consul: RawConsul, kv_prefix: str) -> None:
    key = f"/v1/kv/{kv_prefix}c"
    assert raw_consul.put(key + "?cas=5", data=b"nope").json() is False  # absent
    assert raw_consul.get(key).status_code == 404
    raw_consul.put(key, data=b"v1")
    idx = raw_consul.get(key).json()[0]["ModifyIndex"]
    assert raw_consul.put(key + f"?cas={idx + 1000}", data=b"stale").json() is False
    assert raw_consul.put(key + f"?cas={idx}", data=b"v2").json() is True
    assert raw_consul.put(key + f"?cas={idx}", data=b"v3").json() is False
    assert raw_consul.get(key + "?raw").content == b"v2"


def test_identical_write_does_not_bump_modify_index(raw_consul: RawConsul, kv_prefix: str) -> None:
    key = f"/v1/kv/{kv_prefix}same"
    raw_consul.put(key + "?flags=3", data=b"v")
    before = raw_consul.get(key).json()[0]
    assert raw_consul.put(key + "?flags=3", data=b"v").json() is True
    assert raw_consul.get(key).json()[0]["ModifyIndex"] == before["ModifyIndex"]
    raw_consul.put(key + "?flags=3", data=b"changed")
    after = raw_consul.get(key).json()[0]
    assert after["ModifyIndex"] > before["ModifyIndex"]
    assert after["CreateIndex"] == before["CreateIndex"]


def test_every_write_takes_a_raft_index_even_when_it_changes_nothing(
    raw_consul: RawConsul, kv_prefix: str
) -> None:
    # One global raft index: an identical PUT and a refused cas are still raft writes,
    # so the next real write lands at least one index further on.
    key = f"/v1/kv/{kv_prefix}k"
    raw_consul.put(key, data=b"v")
    first = raw_consul.get(key).json()[0]["ModifyIndex"]
    assert raw_consul.put(key, data=b"v").json() is True
    assert raw_consul.get(key).json()[0]["ModifyIndex"] == first
    assert raw_consul.put(key + "?cas=1", data=b"w").json() is False
    raw_consul.put(f"/v1/kv/{kv_prefix}other", data=b"x")
    assert raw_consul.get(f"/v1/kv/{kv_prefix}other").json()[0]["ModifyIndex"] >= first + 3


def test_delete_answers_true_even_for_missing_keys(raw_consul: RawConsul, kv_prefix: str) -> None:
    key = f"/v1/kv/{kv_prefix}d"
    raw_consul.put(key, data=b"v")
    resp = raw_consul.delete(key)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() is True
    assert raw_consul.get(key).status_code == 404
    assert raw_consul.delete(key).json() is True


def test_delete_recurse_deletes_the_prefix_only(raw_consul: RawConsul, kv_prefix: str) -> None:
    for key in ("t/a", "t/b/c", "t2", "u"):
        raw_consul.put(f"/v1/kv/{kv_prefix}{key}", data=b"v")
    assert raw_consul.delete(f"/v1/kv/{kv_prefix}t/?recurse").json() is True
    left = [
        e["Key"][len(kv_prefix) :] for e in raw_consul.get(f"/v1/kv/{kv_prefix}?recurse").json()
    ]
    assert left == ["t2", "u"]


def test_delete_cas(raw_consul: RawConsul, kv_prefix: str) -> None:
    key = f"/v1/kv/{kv_prefix}dc"
    raw_consul.put(key, data=b"v")
    idx = raw_consul.get(key).json()[0]["ModifyIndex"]
    assert raw_consul.delete(key + "?cas=0").json() is False
    assert raw_consul.delete(key + f"?cas={idx + 1000}").json() is False
    assert raw_consul.get(key).status_code == 200
    assert raw_consul.delete(key + f"?cas={idx}").json() is True
    assert raw_consul.get(key).status_code == 404
    # nothing left to delete counts as done, whatever the index
    assert raw_consul.delete(key + f"?cas={idx}").json() is True


def test_python_consul2_kv_round_trip(py_consul: pyconsul.Consul, kv_prefix: str) -> None:
    c = py_consul
    assert c.kv.put(kv_prefix + "p/a", "1", flags=7) is True
    assert c.kv.put(kv_prefix + "p/b", "2") is True
    index, entry = c.kv.get(kv_prefix + "p/a")
    assert int(index) == entry["ModifyIndex"]
    assert entry["Value"] == b"1"
    assert entry["Flags"] == 7
    index, entries = c.kv.get(kv_prefix + "p/", recurse=True)
    assert [e["Key"] for e in entries] == [kv_prefix + "p/a", kv_prefix + "p/b"]
    index, keys = c.kv.get(kv_prefix, keys=True, separator="/")
    assert keys == [kv_prefix + "p/"]
    assert c.kv.put(kv_prefix + "p/a", "x", cas=entry["ModifyIndex"]) is True
    assert c.kv.delete(kv_prefix + "p/", recurse=True) is True
    index, missing = c.kv.get(kv_prefix + "p/a")
    assert missing is None
    assert int(index) > entry["ModifyIndex"]


@pytest.mark.parametrize("size", [512 * 1024])
def test_value_at_the_limit_is_accepted(raw_consul: RawConsul, kv_prefix: str, size: int) -> None:
    data = b"z" * size
    assert raw_consul.put(f"/v1/kv/{kv_prefix}big", data=data).json() is True
    assert raw_consul.get(f"/v1/kv/{kv_prefix}big?raw").content == data


def test_value_over_512kib_is_413(raw_consul: RawConsul, kv_prefix: str) -> None:
    resp = raw_consul.put(f"/v1/kv/{kv_prefix}huge", data=b"z" * (512 * 1024 + 1))
    assert resp.status_code == 413
    assert "too large" in resp.text
    assert raw_consul.get(f"/v1/kv/{kv_prefix}huge").status_code == 404
    # the connection stays usable after a refused body
    assert raw_consul.put(f"/v1/kv/{kv_prefix}small", data=b"ok").json() is True


def test_dc_parameter(raw_consul: RawConsul, kv_prefix: str) -> None:
    dc = raw_consul.get("/v1/agent/self").json()["Config"]["Datacenter"]
    raw_consul.put(f"/v1/kv/{kv_prefix}dc?dc={dc}", data=b"v")
    assert raw_consul.get(f"/v1/kv/{kv_prefix}dc?dc={dc}").status_code == 200
    resp = raw_consul.get(f"/v1/kv/{kv_prefix}dc?dc=no-such-dc")
    assert resp.status_code == 500
    assert "No path to datacenter" in resp.text


def test_pretty_answers_the_same_json_indented(
    raw_consul: RawConsul, kv_prefix: str, consul_forms: ConsulForms
) -> None:
    raw_consul.put(f"/v1/kv/{kv_prefix}p", data=b"v")
    compact = raw_consul.get(f"/v1/kv/{kv_prefix}p")
    pretty = raw_consul.get(f"/v1/kv/{kv_prefix}p?pretty")
    assert pretty.json() == compact.json()
    assert "\n" in pretty.text
    # a `consul agent -dev` indents every answer, asked or not
    assert ("\n" in compact.text) == consul_forms.indents
