"""Per-model summaries: result rows in, the lines of summary.csv and run.json's totals out.

`group_stats` is the one home of a summary's numbers: `results.summarize` calls it for each group
of a DataFrame, and `Fold` for each model as the end of a run streams the rows into
requests.parquet, so writing summary.csv needs neither a second pass over the files nor pandas.
The figures are those pandas gives (tests check the two side by side): percentiles are exact
(linear between closest ranks, like `Series.quantile`), from the latency, TTFT, TPOT and
throughput floats a fold keeps per model (8 bytes a row each); sums and means are numpy's.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .result import ERROR, OK, SKIPPED

if TYPE_CHECKING:
    import pyarrow as pa

NAN = float("nan")
# the result columns a summary reads
COLUMNS = ("model", "status", "latency_s", "ttft_s", "tpot_s", "output_tokens_per_s",
           "prompt_tokens", "completion_tokens", "cost_usd", "passed", "score",
           "judge_cost_usd", "checks_json")
_FLOATS = COLUMNS[2:9]  # not "passed" and what follows it
_CHECKS = ("score", "judge_cost_usd")   # issue 12: graded rows' scores, the judge's bill
_NUMBERS = (*_FLOATS, *_CHECKS)          # what a fold keeps as float64 arrays
# Arrow type names of the numeric result columns -> their numpy types (see `_array`)
_NUMPY: dict[str, Any] = {"double": np.float64, "float": np.float32, "int64": np.int64,
                          "int32": np.int32}


def _floats(values: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.asarray(values, dtype=np.float64)


def _quantile(values: np.ndarray[Any, np.dtype[np.float64]], q: float) -> float:
    """pandas' `Series.quantile(q)` of the non-NaN values (the same numpy call it makes)."""
    kept = values[~np.isnan(values)]
    if not len(kept):
        return NAN
    return float(np.percentile(kept, np.asarray([q]) * 100.0, method="linear")[0])


def _median(values: np.ndarray[Any, np.dtype[np.float64]]) -> float:
    kept = values[~np.isnan(values)]
    return float(np.median(kept)) if len(kept) else NAN


def _nansum(values: np.ndarray[Any, np.dtype[np.float64]]) -> float:
    """pandas' sum: missing values count as 0 (numpy's pairwise sum of the rest)."""
    return float(np.where(np.isnan(values), 0.0, values).sum())


def group_stats(status: Sequence[str], latency_s: Any, ttft_s: Any, tpot_s: Any,
                output_tokens_per_s: Any, prompt_tokens: Any, completion_tokens: Any,
                cost_usd: Any, passed: Sequence[bool | None], score: Any = (),
                judge_cost_usd: Any = (), checked: Sequence[bool] = ()) -> dict[str, Any]:
    """One summary line (without its group key) of one group's rows: counts, error rate,
    latency/TTFT percentiles, throughput, tokens and cost, and, when checks ran, the pass rate
    with its 95% Wilson interval over graded rows, rows not graded and the mean score; with an
    LLM judge, its cost and the total (requests + judge).

    Numeric columns are sequences of floats with NaN (or None) for a missing value; `checked`
    says which rows had checks (a checked row whose `passed` is null was not graded)."""
    states = np.asarray(status, dtype=object)
    ok = states == OK
    sent = states != SKIPPED
    errors = int((states == ERROR).sum())
    n_ok, n_sent = int(ok.sum()), int(sent.sum())
    latency, ttft = _floats(latency_s)[ok], _floats(ttft_s)[ok]
    cost = _floats(cost_usd)
    ok_cost = cost[ok]
    priced = int((~np.isnan(ok_cost)).sum())
    row: dict[str, Any] = {
        "n": len(states),
        "ok": n_ok,
        "errors": errors,
        "skipped": len(states) - n_sent,
        "error_rate": int((states[sent] == ERROR).sum()) / n_sent if n_sent else NAN,
        "latency_p50_s": _quantile(latency, 0.5),
        "latency_p90_s": _quantile(latency, 0.9),
        "latency_p99_s": _quantile(latency, 0.99),
        "ttft_p50_s": _quantile(ttft, 0.5),
        "ttft_p90_s": _quantile(ttft, 0.9),
        "ttft_p99_s": _quantile(ttft, 0.99),
        "tpot_p50_s": _quantile(_floats(tpot_s)[ok], 0.5),
        "output_tokens_per_s_p50": _median(_floats(output_tokens_per_s)[ok]),
        "prompt_tokens": int(_nansum(_floats(prompt_tokens))),
        "completion_tokens": int(_nansum(_floats(completion_tokens))),
        "cost_usd": _nansum(cost),
        "cost_per_1k_requests_usd": (_nansum(ok_cost) / priced * 1000 if priced
                                     else NAN) if n_ok else NAN,
    }
    graded = [p for p in passed if p is not None and not _is_nan(p)]
    if graded:
        from .check_results import wilson

        wins = sum(bool(p) for p in graded)
        row["pass_rate"] = wins / len(graded)
        row["pass_rate_ci_low"], row["pass_rate_ci_high"] = wilson(wins, len(graded))
        row["graded"] = len(graded)
    if any(checked):
        row["not_graded"] = sum(1 for c, p in zip(checked, passed, strict=True)
                                if c and (p is None or _is_nan(p)))
    scores = _floats(score)
    if len(scores) and (~np.isnan(scores)).any():
        row["mean_score"] = float(np.nanmean(scores))
    judge = _floats(judge_cost_usd)
    if len(judge) and (~np.isnan(judge)).any():
        row["judge_cost_usd"] = _nansum(judge)
        row["total_cost_usd"] = row["cost_usd"] + row["judge_cost_usd"]
    return row


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


class Fold:
    """The summary of a run's rows, folded batch by batch (Arrow tables with `COLUMNS`); models
    in the order they first appear, as pandas groups a categorical column.

    Its memory grows with the rows (exact percentiles need every value), so it keeps them
    compactly: each numeric column as float64 arrays (8 bytes a row, NaN for a missing value),
    the status, `passed` and checked flags as lists of shared objects (a pointer a row)."""

    __slots__ = ("_models", "_costs", "_lines")

    def __init__(self) -> None:
        self._models: dict[str, dict[str, list[Any]]] = {}
        self._costs: list[np.ndarray[Any, np.dtype[np.float64]]] = []  # every row's, in order
        self._lines: list[dict[str, Any]] | None = None

    def add_table(self, table: pa.Table) -> None:
        self._lines = None
        numbers = {name: _array(table.column(name)) for name in _NUMBERS}
        columns: dict[str, Any] = {name: _values(table.column(name))
                                   for name in ("model", "status", "passed")}
        checked = table.column("checks_json")
        # which rows had checks (pyarrow.compute's is_valid would cost its import)
        columns["checks_json"] = [False] * table.num_rows \
            if checked.null_count == table.num_rows else \
            [v is not None for v in checked.to_pylist()]
        self._costs.append(numbers["cost_usd"])
        names = columns["model"]
        if not names:
            return
        first = names[0]
        if names.count(first) == len(names):  # one model in the batch (most are): no row loop
            self._kept(first, numbers, columns, None)
            return
        rows_of: dict[str, list[int]] = {}
        for i, model in enumerate(names):
            rows_of.setdefault(model, []).append(i)
        for model, rows in rows_of.items():
            self._kept(model, numbers, columns, np.asarray(rows, dtype=np.int64))

    def _kept(self, model: str, numbers: dict[str, Any], columns: dict[str, Any],
              rows: Any) -> None:
        kept = self._models.get(model)
        if kept is None:
            kept = self._models[model] = {name: [] for name in COLUMNS[1:]}
        for name, values in numbers.items():
            kept[name].append(values if rows is None else values[rows])
        for name in ("status", "passed", "checks_json"):
            values = columns[name]
            kept[name] += values if rows is None else [values[i] for i in rows]

    def lines(self) -> list[dict[str, Any]]:
        """One summary line per model: `{"model": ..., **group_stats(...)}` (folded once)."""
        if self._lines is None:
            self._lines = [
                {"model": model, **group_stats(
                    kept["status"], **{name: _joined(kept[name]) for name in _NUMBERS},
                    passed=kept["passed"], checked=kept["checks_json"])}
                for model, kept in self._models.items()]
        return self._lines

    def counts(self) -> dict[str, int]:
        """Rows by status."""
        found: dict[str, int] = {}
        for kept in self._models.values():
            for status in kept["status"]:
                found[status] = found.get(status, 0) + 1
        return found

    def totals(self) -> dict[str, Any]:
        """run.json's `totals` (with `counts`), from the summary lines."""
        lines = self.lines()
        counts = self.counts()
        if not lines:
            return {"requests": 0, "counts": counts}
        judge = sum(line.get("judge_cost_usd", 0.0) for line in lines)
        cost = _nansum(_joined(self._costs))
        return {
            "counts": counts,
            "requests": sum(line["n"] for line in lines),
            "cost_usd": cost,
            # what grading cost (LLM judges), and everything the run spent
            "judge_cost_usd": judge,
            "total_cost_usd": cost + judge,
            "prompt_tokens": sum(line["prompt_tokens"] for line in lines),
            "completion_tokens": sum(line["completion_tokens"] for line in lines),
            "per_model": {str(line["model"]): {"n": line["n"], "ok": line["ok"],
                                               "cost_usd": line["cost_usd"],
                                               "judge_cost_usd": line.get("judge_cost_usd",
                                                                          0.0)}
                          for line in lines},
        }


def _values(column: Any) -> list[Any]:
    """A column as Python values; a category column through its codes (`to_pylist` on a
    dictionary column costs 50x more)."""
    import pyarrow as pa

    if not pa.types.is_dictionary(column.type):
        return column.to_pylist()  # type: ignore[no-any-return]
    out: list[Any] = []
    for chunk in column.chunks:
        words = chunk.dictionary.to_pylist()
        out += [None if code is None else words[code] for code in chunk.indices.to_pylist()]
    return out


def _array(column: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    """A numeric column as float64, NaN for a missing value. Read from the Arrow buffers by
    hand because pyarrow's `to_numpy` imports pandas (half a second) even when it copies
    nothing; a column type not listed goes through Python values."""
    parts = [np.empty(0, dtype=np.float64)]
    for chunk in column.chunks:
        n, offset = len(chunk), chunk.offset
        kind = _NUMPY.get(str(chunk.type))
        if chunk.null_count == n:
            parts.append(np.full(n, NAN))
        elif kind is None:
            parts.append(np.asarray([NAN if v is None else v for v in chunk.to_pylist()],
                                    dtype=np.float64))
        else:
            validity, data = chunk.buffers()[:2]
            values = np.frombuffer(data, dtype=kind)[offset:offset + n].astype(np.float64)
            if chunk.null_count:
                valid = np.unpackbits(np.frombuffer(validity, dtype=np.uint8),
                                      count=offset + n, bitorder="little")[offset:]
                values[valid == 0] = NAN
            parts.append(values)
    return np.concatenate(parts)


def _joined(arrays: list[np.ndarray[Any, np.dtype[np.float64]]]) \
        -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.float64)


def to_csv(lines: list[dict[str, Any]]) -> bytes:
    """summary.csv as `pandas.DataFrame(lines).to_csv(index=False)` writes it: columns in first
    appearance order, NaN and missing values as empty cells, floats in their shortest round-trip
    form, the quoting of the csv module (which pandas uses)."""
    columns: list[str] = []
    for line in lines:
        columns += [name for name in line if name not in columns]
    # a column of whole numbers with a gap is a float column in pandas: 1 is written 1.0
    gappy = {name for name in columns
             if any(line.get(name) is None or _is_nan(line.get(name)) for line in lines)}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_csv_value(float(value) if name in gappy and isinstance(value, int)
                                 and not isinstance(value, bool) else value)
                      for name in columns for value in (line.get(name),)] for line in lines)
    return out.getvalue().encode()


def _csv_value(value: Any) -> str:
    if value is None or _is_nan(value):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)
