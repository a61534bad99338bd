"""Reading and summarising results: run or job directories in, pandas DataFrames out.

The results side of the run (the engine writes summary.csv with `summarize`); the reports
(`report_console`, `html_report`, `junit`, `compare`) are built on it, never the other way.
One row is a `result.Result`; this module reads many of them back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from .errors import ResultsError
from .rundir import read_run, run_dirs

if TYPE_CHECKING:
    import pandas as pd


def read_results(path: str | Path) -> pd.DataFrame:
    """Rows of one run directory, or of every run of a job directory (oldest run first), each
    run's rows in plan order. An unreadable part file is named in an `UnreadableRowsWarning`
    and its rows left out."""

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
    """Per-group counts, error rate, latency/TTFT percentiles, throughput, tokens and cost."""
    import pandas as pd

    keys = list(by)
    rows = []
    for key, group in df.groupby(keys, observed=True, sort=True):
        ok = group[group["status"] == "ok"]
        sent = group[group["status"] != "skipped"]
        row: dict[str, object] = dict(zip(keys, key if isinstance(key, tuple) else (key,),
                                          strict=True))
        row.update({
            "n": len(group),
            "ok": len(ok),
            "errors": int((group["status"] == "error").sum()),
            "skipped": int((group["status"] == "skipped").sum()),
            "error_rate": (float((sent["status"] == "error").mean()) if len(sent)
                           else float("nan")),
            "latency_p50_s": ok["latency_s"].quantile(0.5),
            "latency_p90_s": ok["latency_s"].quantile(0.9),
            "latency_p99_s": ok["latency_s"].quantile(0.99),
            "ttft_p50_s": ok["ttft_s"].quantile(0.5),
            "ttft_p90_s": ok["ttft_s"].quantile(0.9),
            "ttft_p99_s": ok["ttft_s"].quantile(0.99),
            "tpot_p50_s": ok["tpot_s"].quantile(0.5),
            "output_tokens_per_s_p50": ok["output_tokens_per_s"].median(),
            "prompt_tokens": int(group["prompt_tokens"].sum()),
            "completion_tokens": int(group["completion_tokens"].sum()),
            "cost_usd": float(group["cost_usd"].sum()),
            "cost_per_1k_requests_usd": (float(ok["cost_usd"].mean()) * 1000 if len(ok)
                                         else float("nan")),
        })
        if "passed" in group and group["passed"].notna().any():
            row["pass_rate"] = float(group["passed"].dropna().astype(bool).mean())
        rows.append(row)
    return pd.DataFrame(rows)
