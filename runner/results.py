"""Reading and summarising results: run or job directories in, pandas DataFrames out.

The results side of the run (the engine folds summary.csv with `summary.group_stats`, the same
numbers); the reports (`report_console`, `html_report`, `junit`, `compare`) are built on it,
never the other way.
One row is a `result.Result`; this module reads many of them back."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ResultsError
from .remote import Remote, is_url
from .rundir import read_run, run_dirs

if TYPE_CHECKING:
    import pandas as pd


def read_results(path: str | Path) -> pd.DataFrame:
    """Rows of one run directory, or of every run of a job directory (oldest run first), each
    run's rows in plan order. An unreadable part file is named in an `UnreadableRowsWarning`
    and its rows left out."""

    import pyarrow as pa

    if is_url(path):  # a run (or job) behind a filesystem URL: read from a local copy
        with tempfile.TemporaryDirectory(prefix="runner-read-") as copy:
            Remote(str(path)).pull(Path(copy))
            if not any(Path(copy).iterdir()):
                raise ResultsError(f"{path}: no such results folder (give a run or a job "
                                   "directory)")
            return read_results(copy)
    path = Path(path)
    if not path.is_dir():
        raise ResultsError(f"{path}: no such results folder (give a run or a job directory)")
    tables = [t for t in (read_run(d) for d in run_dirs(path)) if t is not None]
    if not tables:
        raise ResultsError(f"{path}: no result rows found (expected requests.parquet or parts/)")
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 \
        else tables[0]
    df: pd.DataFrame = table.to_pandas()
    for column in ("model", "status", "provider"):
        df[column] = df[column].astype("category")
    return df


def summarize(df: pd.DataFrame, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Per-group counts, error rate, latency/TTFT percentiles, throughput, tokens and cost, and
    with checks the pass rate (95% Wilson interval), rows not graded, mean score and judge cost
    (the numbers of `summary.group_stats`, the same as in summary.csv). Per check:
    `check_results.summarize_checks(read_checks(path))`."""
    import pandas as pd

    from .summary import group_stats

    keys = list(by)
    rows = []
    for key, group in df.groupby(keys, observed=True, sort=True):
        row: dict[str, object] = dict(zip(keys, key if isinstance(key, tuple) else (key,),
                                          strict=True))
        floats = {name: group[name].to_numpy(dtype="float64", na_value=float("nan"))
                  for name in ("latency_s", "ttft_s", "tpot_s", "output_tokens_per_s",
                               "prompt_tokens", "completion_tokens", "cost_usd")}
        passed = (group["passed"].astype(object).where(group["passed"].notna(), None).tolist()
                  if "passed" in group else [])
        extra = {name: group[name].to_numpy(dtype="float64", na_value=float("nan"))
                 for name in ("score", "judge_cost_usd") if name in group}
        checked = group["checks_json"].notna().tolist() if "checks_json" in group else []
        row.update(group_stats(group["status"].astype(str).tolist(), **floats, passed=passed,
                               checked=checked, **extra))
        rows.append(row)
    return pd.DataFrame(rows)
