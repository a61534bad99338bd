"""Regressions: two sets of result rows (a baseline and a current run) in, per-model deltas
flagged against thresholds out (pure; pandas).

Latency, TTFT and cost regress by a relative increase (0.2 = 20% slower or dearer); error rate
and pass rate by absolute points (0.05 = 5 points more errors, or 5 points fewer passes).
`Thresholds()` holds the documented defaults (`defaults_text`); TTFT is only checked when asked
for, since latency already includes it and TTFT alone is the noisiest number on a shared API.

By prompt (`flips`): a prompt x row (prompt id and vars) of a model passed in the baseline when
every graded repeat passed, failed when any failed; a line that passed in the baseline and fails
now has flipped to fail (and the reverse: fixed). Lines not graded on either side never flip.
The `flips` limit (a count per model) is off by default: answers sampled at a temperature flip
by chance, and pass_rate catches a real drop; `flips=0` makes any flip a regression.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from . import formatting

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True, slots=True)
class Thresholds:
    """How much worse a metric may get before it counts as a regression (None: not checked).

    The defaults are documented in the README and in `--help` (`defaults_text`).
    """

    latency: float | None = 0.2       # relative increase of latency p50 and p90
    ttft: float | None = None         # relative increase of TTFT p50: off unless asked for
    cost: float | None = 0.1          # relative increase of the mean cost per request
    error_rate: float | None = 0.05   # absolute increase (0.05 = 5 points)
    pass_rate: float | None = 0.05    # absolute decrease
    flips: float | None = None        # prompt x row lines per model gone pass -> fail: off


@dataclass(frozen=True, slots=True)
class _Metric:
    name: str              # column of the comparison table's `metric`
    source: str            # column of `results.summarize` (+ cost_per_request_usd)
    threshold: str         # field of Thresholds
    relative: bool         # relative change (else absolute points)
    higher_is_worse: bool
    unit: str              # "s", "usd" or "rate", for messages


METRICS = (
    _Metric("latency_p50_s", "latency_p50_s", "latency", True, True, "s"),
    _Metric("latency_p90_s", "latency_p90_s", "latency", True, True, "s"),
    _Metric("ttft_p50_s", "ttft_p50_s", "ttft", True, True, "s"),
    _Metric("cost_per_request_usd", "cost_per_request_usd", "cost", True, True, "usd"),
    _Metric("error_rate", "error_rate", "error_rate", False, True, "rate"),
    _Metric("pass_rate", "pass_rate", "pass_rate", False, False, "rate"),
)
COLUMNS = ("model", "metric", "baseline", "current", "change", "relative_change", "threshold",
           "regressed")
FLIPS = "flipped_to_fail"           # the metric of `flips`: a count, compared with no baseline
FLIP_COLUMNS = ("model", "prompt_id", "vars_json", "baseline", "current", "change",
                "check_failures")


def defaults_text() -> str:
    """The default thresholds as `--max-regression` takes them, e.g. for `--help`."""
    base = Thresholds()
    on = [f"{f.name}={getattr(base, f.name):g}" for f in fields(base)
          if getattr(base, f.name) is not None]
    off = [f.name for f in fields(base) if getattr(base, f.name) is None]
    return ",".join(on) + (f" ({', '.join(off)} off)" if off else "")


def parse_thresholds(text: str, base: Thresholds | None = None) -> Thresholds:
    """`latency=0.2,cost=10%,pass_rate=0.05,ttft=off` over `base` (default: Thresholds());
    ValueError saying which item is wrong."""
    names = [f.name for f in fields(Thresholds)]
    changes: dict[str, float | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or key not in names:
            raise ValueError(f"{item!r}: expected METRIC=LIMIT with METRIC "
                              f"one of {', '.join(names)} (e.g. latency=0.2,pass_rate=0.05)")
        if value.lower() in ("off", "none"):
            changes[key] = None
            continue
        try:
            limit = float(value.removesuffix("%")) / (100 if value.endswith("%") else 1)
        except ValueError:
            limit = -1.0
        if not (limit >= 0 and math.isfinite(limit)):
            raise ValueError(f"{key}: limit must be a number >= 0, a "
                              f"percentage or off (got {value!r})")
        changes[key] = limit
    return replace(base or Thresholds(), **changes)


def compare(baseline: pd.DataFrame, current: pd.DataFrame,
            thresholds: Thresholds | None = None) -> pd.DataFrame:
    """One row per model x metric: baseline, current, change, threshold and `regressed`.

    Models in only one of the two get NaN on the other side and are never flagged.
    """
    import pandas as pd

    thresholds = thresholds or Thresholds()
    a, b = _per_model(baseline), _per_model(current)
    rows: list[dict[str, Any]] = []
    for model in sorted(set(a) | set(b)):
        for metric in METRICS:
            old = _get(a.get(model), metric.source)
            new = _get(b.get(model), metric.source)
            limit = getattr(thresholds, metric.threshold)
            change = new - old
            relative = (change / old if old else math.inf if change > 0 else 0.0) \
                if math.isfinite(change) else math.nan
            worse = change if metric.higher_is_worse else -change
            measured = (relative if metric.higher_is_worse else -relative) if metric.relative \
                else worse
            rows.append({
                "model": model, "metric": metric.name, "baseline": old, "current": new,
                "change": change, "relative_change": relative, "threshold": limit,
                "regressed": bool(limit is not None and math.isfinite(worse)
                                  and measured > limit + 1e-12),
            })
    if thresholds.flips is not None:
        flipped = flips(baseline, current)
        gone_bad = flipped[flipped["change"] == "regressed"] if len(flipped) else flipped
        for model in sorted(set(a) & set(b)):
            count = float((gone_bad["model"] == model).sum()) if len(gone_bad) else 0.0
            rows.append({"model": model, "metric": FLIPS, "baseline": 0.0, "current": count,
                         "change": count, "relative_change": math.nan,
                         "threshold": thresholds.flips,
                         "regressed": count > thresholds.flips + 1e-12})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def flips(baseline: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """One line per model x prompt x row (vars) whose pass/fail differs between the runs:
    `change` is "regressed" (pass -> fail) or "fixed" (fail -> pass); `check_failures` says
    why it fails now (or failed before). Regressions first."""
    import pandas as pd

    a, b = _line_states(baseline), _line_states(current)
    out = []
    for key in sorted(set(a) & set(b)):
        (old, old_why), (new, new_why) = a[key], b[key]
        if old is None or new is None or old == new:
            continue
        out.append({"model": key[0], "prompt_id": key[1], "vars_json": key[2],
                    "baseline": "pass" if old else "fail", "current": "pass" if new else "fail",
                    "change": "fixed" if new else "regressed",
                    "check_failures": new_why if not new else old_why})
    out.sort(key=lambda r: (r["change"] != "regressed", r["model"], r["prompt_id"]))
    return pd.DataFrame(out, columns=list(FLIP_COLUMNS))


def _line_states(df: pd.DataFrame) -> dict[tuple[str, str, str], tuple[bool | None, str]]:
    """(model, prompt id, vars) -> (passed: all graded repeats passed, any failed, or None when
    none was graded; the first failure's reasons)."""
    if not len(df) or "passed" not in df.columns:
        return {}
    out: dict[tuple[str, str, str], tuple[bool | None, str]] = {}
    picked = df[["model", "prompt_id", "vars_json", "passed", "check_failures"]].astype(object)
    for r in picked.where(picked.notna(), None).to_dict("records"):
        key = (str(r["model"]), str(r["prompt_id"]), str(r["vars_json"] or "{}"))
        state, why = out.get(key, (None, ""))
        if r["passed"] is False:
            state, why = False, why or str(r["check_failures"] or "failed")
        elif r["passed"] is True and state is None:
            state = True
        out[key] = (state, why)
    return out


def regressions(table: pd.DataFrame) -> list[str]:
    """One line per regressed metric of a `compare` table, saying what changed and the limit."""
    units = {m.name: m for m in METRICS}
    out = []
    for row in table[table["regressed"]].to_dict("records"):
        if row["metric"] == FLIPS:
            out.append(f"{row['model']}: {int(row['current'])} prompt x row line(s) flipped "
                       f"from pass to fail (limit {row['threshold']:g})")
            continue
        metric = units[row["metric"]]
        change, limit = format_change(row, metric.name)
        limit = f"limit {'+' if metric.higher_is_worse else '-'}{limit}"
        out.append(f"{row['model']}: {row['metric']} {format_value(row['baseline'], metric.unit)}"
                   f" -> {format_value(row['current'], metric.unit)} ({change}, {limit})")
    return out


def format_value(value: float, unit: str) -> str:
    """A metric value for people: 0.412s, $0.000120, 92.5%, 3."""
    return {"s": formatting.seconds, "usd": formatting.usd, "rate": formatting.percent,
            "count": formatting.whole}[unit](value)


def format_change(row: Mapping[Any, Any], metric: str) -> tuple[str, str]:
    """(change, limit) of a comparison row for people: (`+12.3%`, `20%`) for a relative
    metric, (`+5.0 points`, `5.0 points`) for a rate; the limit is `-` when not checked."""
    if metric == FLIPS:
        return f"+{int(row['change'])}", f"{row['threshold']:g}"
    relative = next(m.relative for m in METRICS if m.name == metric)
    if relative:
        return (formatting.relative_change(row["relative_change"]),
                formatting.limit_percent(row["threshold"]))
    return formatting.points(row["change"]), formatting.points(row["threshold"], signed=False)


def metric_unit(name: str) -> str:
    """The unit ("s", "usd", "rate", "count") of a comparison table's metric."""
    return "count" if name == FLIPS else next(m.unit for m in METRICS if m.name == name)


def _per_model(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    from .results import summarize  # pyarrow: not at import, `runner --help` reads this module

    if not len(df):
        return {}
    summary = summarize(df)
    summary["cost_per_request_usd"] = summary["cost_per_1k_requests_usd"] / 1000
    return {str(r["model"]): {str(k): v for k, v in r.items()}
            for r in summary.to_dict("records")}


def _get(record: dict[str, Any] | None, column: str) -> float:
    value = None if record is None else record.get(column)
    return math.nan if value is None or value != value else float(value)
