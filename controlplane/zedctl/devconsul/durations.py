"""Go duration strings (`time.ParseDuration`), as Consul reads `wait`, TTL and LockDelay."""

from __future__ import annotations

from fractions import Fraction

NANOSECOND = 1
MICROSECOND = 1000 * NANOSECOND
MILLISECOND = 1000 * MICROSECOND
SECOND = 1000 * MILLISECOND
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,  # micro sign
    "\u03bcs": MICROSECOND,  # Greek small letter mu
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
_MAX_NS = (1 << 63) - 1


class DurationError(ValueError):
    """A string that Go's time.ParseDuration would reject."""


def parse_duration(text: str) -> int:
    """Parse a Go duration (`"1h2m3.5s"`, `"20ms"`, `"0"`) into nanoseconds.

    Follows Go's grammar: an optional sign, then one or more decimal numbers each with
    a unit (ns, us, µs, ms, s, m, h); `"0"` alone needs no unit.
    """
    orig = text
    if not text:
        raise DurationError(f'time: invalid duration "{orig}"')
    neg = False
    if text[0] in "+-":
        neg = text[0] == "-"
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise DurationError(f'time: invalid duration "{orig}"')
    total = Fraction(0)
    pos = 0
    n = len(text)
    while pos < n:
        start = pos
        while pos < n and text[pos].isascii() and text[pos].isdigit():
            pos += 1
        whole = text[start:pos]
        frac = ""
        if pos < n and text[pos] == ".":
            pos += 1
            fstart = pos
            while pos < n and text[pos].isascii() and text[pos].isdigit():
                pos += 1
            frac = text[fstart:pos]
        if not whole and not frac:
            raise DurationError(f'time: invalid duration "{orig}"')
        ustart = pos
        while pos < n and text[pos] != "." and not (text[pos].isascii() and text[pos].isdigit()):
            pos += 1
        unit = text[ustart:pos]
        if not unit:
            raise DurationError(f'time: missing unit in duration "{orig}"')
        scale = _UNITS.get(unit)
        if scale is None:
            raise DurationError(f'time: unknown unit "{unit}" in duration "{orig}"')
        value = Fraction(int(whole or "0"))
        if frac:
            value += Fraction(int(frac), 10 ** len(frac))
        total += value * scale
        if total > _MAX_NS:
            raise DurationError(f'time: invalid duration "{orig}"')
    ns = int(total)
    return -ns if neg else ns


def format_duration(ns: int) -> str:
    """Format nanoseconds the way Go's Duration.String does (`"15s"`, `"1m30s"`, `"24h0m0s"`)."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < SECOND:
        for unit, scale in (("ms", MILLISECOND), ("\u00b5s", MICROSECOND), ("ns", NANOSECOND)):
            if ns >= scale:
                return sign + _trim(Fraction(ns, scale)) + unit
    hours, rest = divmod(ns, HOUR)
    minutes, rest = divmod(rest, MINUTE)
    secs = _trim(Fraction(rest, SECOND)) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}"
    if minutes:
        return f"{sign}{minutes}m{secs}"
    return sign + secs


def _trim(value: Fraction) -> str:
    whole = int(value)
    frac = value - whole
    if not frac:
        return str(whole)
    digits = f"{float(frac):.9f}"[2:].rstrip("0")
    return f"{whole}.{digits}"
