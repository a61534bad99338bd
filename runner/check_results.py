"""Per-check results: each row's check outcomes in (`checks_json`), the long table (one line per
request x check: checks.parquet and checks.csv) and its summaries out.

A check that was not graded (its judge was refused by the budget or failed, its value needs a
var the row lacks, the request was never sent) has `passed` and `score` null: it counts as not
graded, never as a failure. Pass rates are over graded lines only, with a 95% Wilson score
interval (`wilson`): for k passes of n graded, centre (k + z²/2) / (n + z²), half-width
z·sqrt(k(n-k)/n + z²/4) / (n + z²), z = 1.96. Unlike the normal approximation it stays inside
0..1 and is honest for small n and for rates near 0 or 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checks import Outcome

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

CHECKS = "checks.parquet"
CHECKS_CSV = "checks.csv"
Z_95 = 1.959963984540054
# the row columns each line of the long table repeats
ROW_COLUMNS = ("run_id", "request_id", "model", "prompt_id", "repeat")
# (column, arrow type name) of the long table
TYPES: tuple[tuple[str, str], ...] = (
    ("run_id", "string"), ("request_id", "string"), ("model", "string"),
    ("prompt_id", "string"), ("repeat", "int32"), ("check", "string"), ("check_type", "string"),
    ("passed", "bool"), ("score", "float64"), ("weight", "float64"), ("reason", "string"),
    ("judge_cost_usd", "float64"), ("judge_prompt_tokens", "int64"),
    ("judge_completion_tokens", "int64"),
)
_KEYS = {"check": "name", "check_type": "kind"}   # long-table column -> Outcome field
BATCH_ROWS = 20_000


def outcomes_json(outcomes: Sequence[Outcome]) -> str | None:
    """The `checks_json` cell of a row: its outcomes as a JSON list (None: no checks)."""
    if not outcomes:
        return None
    return json.dumps([{name: _finite(getattr(o, _KEYS.get(name, name)))
                        for name, _ in TYPES[5:]} for o in outcomes],
                      ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such a number (a hostile bill) is stored as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _lines(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Long-table lines of rows (dicts with ROW_COLUMNS and checks_json)."""
    out = []
    for row in rows:
        cell = row.get("checks_json")
        if not isinstance(cell, str):
            continue
        try:
            items = json.loads(cell)
        except ValueError:
            continue
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict):
                out.append({**{k: row.get(k) for k in ROW_COLUMNS},
                            **{name: item.get(name) for name, _ in TYPES[5:]}})
    return out


def arrow_schema() -> pa.Schema:
    """The long table's schema, with the pandas metadata of nullable columns."""
    import pyarrow as pa

    from .rundir import with_pandas_metadata

    kinds = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(),
             "float64": pa.float64(), "bool": pa.bool_()}
    return with_pandas_metadata(pa.schema([(name, kinds[kind]) for name, kind in TYPES]), TYPES)


def write_checks(run_dir: Path, requests: Path, *, write_csv: bool) -> Path | None:
    """checks.parquet (and checks.csv) beside `requests` (requests.parquet), streamed in
    batches; None (and no file) when no row was checked."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from .rundir import replacing

    source = pq.ParquetFile(requests)
    if "checks_json" not in source.schema_arrow.names:
        return None
    schema = arrow_schema()
    final = run_dir / CHECKS
    with ExitStack() as stack:
        writers: list[Any] = []
        for batch in source.iter_batches(BATCH_ROWS, columns=[*ROW_COLUMNS, "checks_json"]):
            if not batch.column(len(ROW_COLUMNS)).null_count < batch.num_rows:
                continue  # no row of the batch was checked: not even read into Python
            lines = _lines(batch.to_pylist())
            if not lines:
                continue
            if not writers:  # the first checked row opens the files
                writers.append(stack.enter_context(
                    pq.ParquetWriter(stack.enter_context(replacing(final)), schema)))
                if write_csv:
                    csv_tmp = stack.enter_context(replacing(run_dir / CHECKS_CSV))
                    writers.append(stack.enter_context(pacsv.CSVWriter(csv_tmp, schema)))
            table = pa.Table.from_pylist(lines, schema=schema)
            for writer in writers:
                writer.write_table(table)
        if not writers:
            return None
    return final


def check_table(df: pd.DataFrame) -> pd.DataFrame:
    """The long table (one line per request x check) of result rows from `read_results`."""
    import pandas as pd

    if "checks_json" not in df.columns or not len(df):
        lines: list[dict[str, Any]] = []
    else:
        picked = df[[*ROW_COLUMNS, "checks_json"]].astype(object)
        records = picked.where(picked.notna(), None).to_dict("records")
        lines = _lines([{str(k): v for k, v in r.items()} for r in records])
    table = pd.DataFrame(lines, columns=[name for name, _ in TYPES])
    dtypes = {"string": "string", "int32": "Int32", "int64": "Int64", "float64": "float64",
              "bool": "boolean"}
    return table.astype({name: dtypes[kind] for name, kind in TYPES})


def read_checks(path: str | Path) -> pd.DataFrame:
    """The long table of one run directory, or of every run of a job directory."""
    from .results import read_results

    return check_table(read_results(path))


def wilson(passed: int, graded: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of passed/graded (95% by default); (nan, nan) when n = 0."""
    if graded <= 0:
        return math.nan, math.nan
    n, k = float(graded), float(passed)
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize_checks(checks: pd.DataFrame,
                     by: Sequence[str] = ("model", "check")) -> pd.DataFrame:
    """Per group of the long table: lines, graded, passed, failed, not graded, pass rate with
    its 95% Wilson interval, mean score, weighted score, and judge cost."""
    import pandas as pd

    keys = list(by)
    out = []
    if len(checks):
        for key, group in checks.groupby(keys, sort=True, dropna=False):
            line: dict[str, Any] = dict(zip(keys, key if isinstance(key, tuple) else (key,),
                                            strict=True))
            line.update(_stats(group))
            out.append(line)
    columns = [*keys, "n", "graded", "passed", "failed", "not_graded", "pass_rate",
               "pass_rate_ci_low", "pass_rate_ci_high", "mean_score", "weighted_score",
               "judge_cost_usd"]
    return pd.DataFrame(out, columns=columns)


def _stats(group: pd.DataFrame) -> dict[str, Any]:
    graded = group[group["passed"].notna()]
    k = int(graded["passed"].astype(bool).sum())
    n = len(graded)
    low, high = wilson(k, n)
    scored = group[group["score"].notna()]
    weights = scored["weight"].fillna(1.0).astype(float)
    scores = scored["score"].astype(float)
    return {
        "n": len(group), "graded": n, "passed": k, "failed": n - k,
        "not_graded": len(group) - n,
        "pass_rate": k / n if n else math.nan, "pass_rate_ci_low": low,
        "pass_rate_ci_high": high,
        "mean_score": float(scores.mean()) if len(scores) else math.nan,
        "weighted_score": float((scores * weights).sum() / weights.sum())
        if len(scores) and float(weights.sum()) > 0 else math.nan,
        "judge_cost_usd": float(group["judge_cost_usd"].fillna(0.0).sum())
        if group["judge_cost_usd"].notna().any() else math.nan,   # no judge: no judge cost
    }
