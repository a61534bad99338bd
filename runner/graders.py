"""How each check type scores a response: a check's argument (its values rendered for the row)
in, a grader out (pure).

A grader is a function of (response text, row) returning (score 0..1, why it failed or None); a
score of None means the check could not be applied to this row (not graded, never a failure).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any

from .formatting import usd
from .transforms import parse_json

Grade = tuple[float | None, str | None]   # score 0..1 (None: not graded), why (None: passed)
Grader = Callable[[str, Mapping[str, Any]], Grade]
PythonCheck = Callable[[str, dict[str, Any]], object]

# a number as people write it: -1,234.5 or 3e-2 (thousands commas are dropped)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")
_SHOWN = 60                               # characters of an argument shown in a label


def _binary(ok: bool, why: str) -> Grade:
    return (1.0, None) if ok else (0.0, why)


def _equals(arg: str) -> Grader:
    want = arg.strip()
    return lambda text, row: _binary(text.strip() == want, f"got {shown(text.strip())}")


def _contains(arg: str) -> Grader:
    return lambda text, row: _binary(arg in text, "not found")


def _icontains(arg: str) -> Grader:
    want = arg.casefold()
    return lambda text, row: _binary(want in text.casefold(), "not found")


def _not_contains(arg: str) -> Grader:
    return lambda text, row: _binary(arg not in text, "found")


def _regex(arg: str) -> Grader:
    pattern = re.compile(arg)
    return lambda text, row: _binary(pattern.search(text) is not None, "no match")


def _json_valid(arg: bool) -> Grader:
    def grade(text: str, row: Mapping[str, Any]) -> Grade:
        why = parse_json(text)[1]
        return (1.0, None) if why is None else (0.0, why)

    return grade


def _json_schema(arg: dict[str, Any]) -> Grader:
    from jsonschema import validators
    from jsonschema.exceptions import best_match

    validator = validators.validator_for(arg)(arg)

    def grade(text: str, row: Mapping[str, Any]) -> Grade:
        doc, why = parse_json(text)
        if why is not None:
            return 0.0, why
        error = best_match(validator.iter_errors(doc))
        if error is None:
            return 1.0, None
        at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        return 0.0, f"at ${at}: {short(error.message)}"

    return grade


def _max_latency_s(arg: float) -> Grader:
    def grade(text: str, row: Mapping[str, Any]) -> Grade:
        latency = row.get("latency_s")
        if latency is None:
            return 0.0, "latency unknown"
        return _binary(latency <= arg, f"took {latency:.3f}s")

    return grade


def _max_cost_usd(arg: float) -> Grader:
    def grade(text: str, row: Mapping[str, Any]) -> Grade:
        cost = row.get("cost_usd")
        if cost is None:
            return 0.0, "cost unknown (no price for this model)"
        return _binary(cost <= arg, f"cost {usd(cost)}")

    return grade


def _contains_any(arg: list[str]) -> Grader:
    return lambda text, row: _binary(any(a in text for a in arg), "none found")


def _contains_all(arg: list[str]) -> Grader:
    def grade(text: str, row: Mapping[str, Any]) -> Grade:
        missing = [a for a in arg if a not in text]
        return _binary(not missing, f"missing {', '.join(shown(a) for a in missing[:3])}")

    return grade


def _starts_with(arg: str) -> Grader:
    return lambda text, row: _binary(text.lstrip().startswith(arg),
                                     f"starts {shown(text.lstrip()[:len(arg) + 10])}")


def _not_regex(arg: str) -> Grader:
    pattern = re.compile(arg)

    def grade(text: str, row: Mapping[str, Any]) -> Grade:
        found = pattern.search(text)
        return _binary(found is None, f"matched {shown(found.group(0)) if found else ''}")

    return grade


def last_number(text: str) -> float | None:
    """The last number written in `text` (`1,234.5` -> 1234.5), or None."""
    found = [m.group(0) for m in _NUMBER.finditer(text) if any(c.isdigit() for c in m.group(0))]
    for candidate in reversed(found):
        try:
            return float(candidate.replace(",", ""))
        except ValueError:
            continue
    return None


def _number_close(arg: Mapping[str, Any]) -> Grader:
    want = last_number(str(arg["value"]))
    rel_tol, abs_tol = float(arg.get("rel_tol", 0.0)), float(arg.get("abs_tol", 0.0))

    def grade(text: str, row: Mapping[str, Any]) -> Grade:
        if want is None:
            return None, f"the expected value {shown(str(arg['value']))} has no number"
        got = last_number(text)
        if got is None:
            return 0.0, "no number in the response"
        ok = abs(got - want) <= max(rel_tol * max(abs(got), abs(want)), abs_tol)
        return _binary(ok, f"got {got:g}, want {want:g}")

    return grade


def python(fn: PythonCheck) -> Grader:
    def grade(text: str, row: Mapping[str, Any]) -> Grade:
        out = fn(text, dict(row))
        if isinstance(out, bool):
            return _binary(out, "returned False")
        if isinstance(out, numbers.Real) and 0 <= float(out) <= 1:
            return float(out), None
        return 0.0, f"returned {short(repr(out))} (expected a bool or a score 0..1)"

    return grade


GRADERS: dict[str, Callable[[Any], Grader]] = {   # every check type but python
    "equals": _equals, "contains": _contains, "icontains": _icontains,
    "not_contains": _not_contains, "regex": _regex, "json_valid": _json_valid,
    "json_schema": _json_schema, "max_latency_s": _max_latency_s,
    "max_cost_usd": _max_cost_usd, "contains_any": _contains_any,
    "contains_all": _contains_all, "starts_with": _starts_with, "not_regex": _not_regex,
    "number_close": _number_close,
}


def shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else f"{value:g}" \
        if isinstance(value, float | int) else str(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
