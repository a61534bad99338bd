"""Reading and summarising results: run or job directories in, pandas DataFrames out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from .collect import file_schema, latest_rows
from .errors import ResultsError

if TYPE_CHECKING:
    import pandas as pd


def _run_table(run_dir: Path) -> pa.Table | None:
    """A run's rows: the final file once the run has ended, else the parts written so far
    (a run that is going on, or one that was killed), one row per request id."""
    final = run_dir / "requests.parquet"
    parts = sorted((run_dir / "parts").glob("part-*.parquet"))
    if final.is_file() and (not parts or _ended(run_dir)):
        return pq.read_table(final, schema=file_schema())
    if not parts:
        return None
    keep = latest_rows(parts)
    return pa.concat_tables([
        pq.read_table(p, schema=file_schema()).take(pa.array(keep[n], type=pa.int64()))
        for n, p in enumerate(parts)])


def _ended(run_dir: Path) -> bool:
    try:
        status = json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return False
    return status in {"completed", "interrupted", "failed"}


def run_dirs(path: Path) -> list[Path]:
    """The run directories under `path` (itself if it is one), oldest first."""
    if (path / "run.json").is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / "run.json").is_file())


def read_results(path: str | Path) -> pd.DataFrame:
    """Rows of one run directory, or of every run of a job directory (oldest run first)."""

    path = Path(path)
    if not path.is_dir():
        raise ResultsError(f"{path}: no such results folder (give a run or a job directory)")
    tables = [t for t in (_run_table(d) for d in run_dirs(path)) if t is not None]
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
