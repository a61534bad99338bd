"""How each check type scores a response: a check's argument in, a grader out (pure).

A grader is a function of (response text, row) returning (score 0..1, why it failed or None).
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any

from .formatting import usd

Grade = tuple[float, str | None]          # score 0..1, and why it failed (None: it passed)
Grader = Callable[[str, Mapping[str, Any]], Grade]
PythonCheck = Callable[[str, dict[str, Any]], object]

_FENCE = re.compile(r"^```[\w-]*[ \t]*\n(.*)\n```$", re.DOTALL)
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


def _parse_json(text: str) -> tuple[Any, str | None]:
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return json.loads(body), None
    except ValueError as exc:
        return None, f"not valid JSON ({short(str(exc))})"


def _json_valid(arg: bool) -> Grader:
    def grade(text: str, row: Mapping[str, Any]) -> Grade:
        why = _parse_json(text)[1]
        return (1.0, None) if why is None else (0.0, why)

    return grade


def _json_schema(arg: dict[str, Any]) -> Grader:
    from jsonschema import validators
    from jsonschema.exceptions import best_match

    validator = validators.validator_for(arg)(arg)

    def grade(text: str, row: Mapping[str, Any]) -> Grade:
        doc, why = _parse_json(text)
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
    "max_cost_usd": _max_cost_usd,
}


def shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else f"{value:g}" \
        if isinstance(value, float | int) else str(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
