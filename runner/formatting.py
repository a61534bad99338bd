"""Numbers for people: floats (or None/NaN) in, the strings every report prints out.

The terminal tables, the HTML report, `runner compare` and the quality gate all format through
these, so a dollar amount, a duration or a rate reads the same wherever it appears.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "-"   # a value that is not there (None, NaN): no data, not zero


def missing(value: Any) -> bool:
    """True for None and NaN (pandas' missing numbers)."""
    return value is None or value != value


def usd(value: Any) -> str:
    """US dollars with six decimals, enough for one cheap request: `$0.000120`, `$1,234.500000`."""
    if missing(value):
        return MISSING
    number = float(value)
    return f"{'-' if number < 0 else ''}${abs(number):,.6f}"


def seconds(value: Any) -> str:
    """A duration to the millisecond: `0.412s`."""
    return MISSING if missing(value) else f"{float(value):.3f}s"


def percent(value: Any) -> str:
    """A rate 0..1 as a percentage with one decimal: `92.5%`."""
    return MISSING if missing(value) else f"{float(value):.1%}"


def whole(value: Any) -> str:
    """A count or a speed rounded to a whole number: `2400`."""
    return MISSING if missing(value) else f"{float(value):.0f}"


def relative_change(value: Any) -> str:
    """A relative change, signed: `+12.3%`; an increase from zero is `from 0`."""
    if missing(value):
        return MISSING
    if math.isinf(value):
        return "from 0" if value > 0 else "to 0"
    return f"{float(value):+.1%}"


def points(value: Any, *, signed: bool = True) -> str:
    """A difference of two rates in percentage points: 0.05 -> `+5.0 points`."""
    if missing(value):
        return MISSING
    return f"{float(value) * 100:{'+' if signed else ''}.1f} points"


def limit_percent(value: Any) -> str:
    """A relative limit: 0.2 -> `20%` (one decimal only when needed: 0.125 -> `12.5%`)."""
    if missing(value):
        return MISSING
    text = f"{float(value) * 100:.1f}".removesuffix(".0")
    return f"{text}%"


def short(value: float) -> str:
    """A number in four significant digits or fewer, for an axis or a tooltip: 0.00012, 1.5,
    999.5, 2.4e+03."""
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.001:
        return f"{value:.3g}"
    return f"{value:.4g}"


def rate_interval(rate: Any, low: Any, high: Any) -> str:
    """A pass rate with its 95% interval: `72.0% (61.2–80.8)`; `-` when unknown."""
    if missing(rate):
        return "-"
    if missing(low) or missing(high):
        return percent(rate)
    return f"{percent(rate)} ({low * 100:.1f}–{high * 100:.1f})"
