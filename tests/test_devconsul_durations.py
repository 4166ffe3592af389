"""Go duration parsing, as Consul reads `wait`, TTL and LockDelay (no server needed)."""

from __future__ import annotations

import pytest
from zedctl.devconsul.durations import DurationError, format_duration, parse_duration
from zedctl.devconsul.http import HTTPError, blocking_params

pytestmark = pytest.mark.devconsul_only("its Go-duration parsing, tested without a server")

MS = 1_000_000
S = 1000 * MS


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("0s", 0),
        ("20ms", 20 * MS),
        ("10s", 10 * S),
        ("5m", 300 * S),
        ("1h", 3600 * S),
        ("1.5s", 1500 * MS),
        (".5s", 500 * MS),
        ("1.s", S),
        ("1h2m3s", 3723 * S),
        ("1m30s", 90 * S),
        ("100us", 100_000),
        ("100\u00b5s", 100_000),
        ("100\u03bcs", 100_000),
        ("7ns", 7),
        ("-2s", -2 * S),
        ("+2s", 2 * S),
        ("86400s", 86400 * S),
        ("1.0000000001s", S),  # below a nanosecond is dropped
    ],
)
def test_parse(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize(
    "text", ["", "10", "s", "5x", "-", "1.2.3s", ".s", "1 s", "abc", "1e3s", "9999999999999h"]
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(DurationError) as err:
        parse_duration(text)
    assert "duration" in str(err.value)


@pytest.mark.parametrize(
    ("ns", "text"),
    [(0, "0s"), (10 * S, "10s"), (86400 * S, "24h0m0s"), (90 * S, "1m30s"), (1500 * MS, "1.5s")],
)
def test_format(ns: int, text: str) -> None:
    assert format_duration(ns) == text


# ------------------------------------------------------------------ wait as Consul reads it


@pytest.mark.parametrize(
    ("wait", "low", "high"),
    [
        (None, 300, 300 * 17 / 16),  # default 5m
        ("0s", 300, 300 * 17 / 16),  # zero: the default
        ("-5s", 300, 300 * 17 / 16),  # negative: the default
        ("20m", 600, 600 * 17 / 16),  # capped at 10m
        ("10s", 10, 10 * 17 / 16),
        ("20ms", 0.02, 0.02 * 17 / 16),
    ],
)
def test_wait_default_cap_and_jitter(wait: str | None, low: float, high: float) -> None:
    query = {"index": "7"}
    if wait is not None:
        query["wait"] = wait
    assert blocking_params(query, rand=lambda: 0.0) == (7, low)
    index, most = blocking_params(query, rand=lambda: 0.999999)
    assert index == 7
    assert low <= most <= high


def test_bad_index_and_wait_raise_400() -> None:
    for query, message in (
        ({"wait": "10"}, "Invalid wait time"),
        ({"index": "-1"}, "Invalid index"),
        ({"stale": "", "consistent": ""}, "conflicting semantics"),
    ):
        with pytest.raises(HTTPError) as err:
            blocking_params(query)
        assert err.value.status == 400
        assert message in err.value.message
