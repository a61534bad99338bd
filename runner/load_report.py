"""The load-test part of `runner report` (and of the end of `runner run`): result rows in, the
per-stage table, the knee of a sweep, and the HTML section's charts and table out.

The figures are `load_stats.stage_figures` of each stage's rows of the latest run, the times
taken from the rows (`scheduled_at` and `ended_at`, from the stage's first scheduled send).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import charts, formatting
from .load_plan import Goodput
from .load_stats import knee, stage_figures

if TYPE_CHECKING:
    import pandas as pd

_COLUMNS = ("status", "load_phase", "latency_s", "ttft_s", "tpot_s", "itl_p50_s", "itl_p99_s",
            "completion_tokens", "cost_usd", "send_lag_s", "slo_met")


def stage_table(df: pd.DataFrame, goodput: Goodput | None = None) -> pd.DataFrame | None:
    """One line per stage of the latest run (in stage order), or None if it was no load test.
    `goodput` judges the rows against other SLOs than the run's own (its `slo_met`)."""
    import pandas as pd

    if "stage" not in df.columns or not df["stage"].notna().any():
        return None
    latest = df[df["run_id"] == list(dict.fromkeys(df["run_id"]))[-1]]
    latest = latest[latest["stage"].notna()]
    lines = []
    for stage, rows in latest.groupby(latest["stage"].astype(str), sort=True):
        start = rows["scheduled_at"].min()
        columns: dict[str, Any] = {name: _values(rows[name]) for name in _COLUMNS}
        columns["phase"] = columns.pop("load_phase")
        figures = stage_figures(
            scheduled_s=_values((rows["scheduled_at"] - start).dt.total_seconds()),
            ended_s=_values((rows["ended_at"] - start).dt.total_seconds()),
            goodput=goodput, **columns)
        rates = rows["requested_rps"].dropna()
        lines.append({"stage": stage, "requested_rps": float(rates.iloc[0]) if len(rates)
                      else float("nan"), **figures})
    return pd.DataFrame(lines)


def _values(series: Any) -> list[Any]:
    """A column as Python values, None for missing ones (NaN, NaT, pandas' NA)."""
    return series.astype(object).where(series.notna(), None).tolist()  # type: ignore[no-any-return]


def knee_line(table: pd.DataFrame) -> str:
    """What the sweep found, in one sentence."""
    return knee(table.to_dict("records"))[1]


# --- terminal -------------------------------------------------------------------------------

_HEAD = (("stage", "stage"), ("requested_rps", "req/s asked"), ("achieved_rps", "req/s sent"),
         ("request_throughput_rps", "req/s done"), ("output_tokens_per_s", "tok/s out"),
         ("ttft_p50_s", "TTFT p50"), ("ttft_p99_s", "TTFT p99"), ("tpot_p50_s", "TPOT p50"),
         ("itl_p99_s", "ITL p99"), ("latency_p50_s", "latency p50"),
         ("latency_p99_s", "latency p99"), ("error_rate", "errors"),
         ("goodput_rps", "goodput/s"), ("send_lag_p99_s", "send lag p99"),
         ("cost_usd", "cost"))


def _cell(key: str, value: Any) -> str:
    if formatting.missing(value):
        return "-"
    if key == "stage":
        return str(value)
    if key.endswith("_rps") or key == "output_tokens_per_s":
        return f"{value:.3g}"
    if key == "error_rate":
        return formatting.percent(value)
    if key == "cost_usd":
        return formatting.usd(value)
    return formatting.seconds(value)


def print_load_report(df: pd.DataFrame, goodput: Goodput | None = None,
                      facts: dict[str, Any] | None = None) -> None:
    """The per-stage table, the knee, and (given run.json's `load` facts) the stages whose
    schedule the client could not keep."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = stage_table(df, goodput)
    if table is None:
        return
    console = Console() if sys.stdout.isatty() else Console(width=200)
    out = Table(title="load stages (figures exclude warm-up and cool-down)")
    for key, label in _HEAD:
        out.add_column(label, justify="left" if key == "stage" else "right")
    for record in table.to_dict("records"):
        out.add_row(*(escape(_cell(key, record.get(key))) for key, _ in _HEAD))
    console.print(out)
    console.print(escape(knee_line(table)), highlight=False)
    for line in schedule_warnings(facts):
        console.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False)


def run_facts(results: Path) -> dict[str, Any] | None:
    """run.json's `load` facts of a run directory (a job directory: its latest run), or None
    when they cannot be read (the table stands without them)."""
    import json

    from .errors import RunnerError
    from .rundir import RUN_JSON, latest_run

    try:
        facts = json.loads((latest_run(results) / RUN_JSON).read_text()).get("load")
    except (OSError, ValueError, AttributeError, RunnerError):
        return None
    return facts if isinstance(facts, dict) else None


def schedule_warnings(facts: dict[str, Any] | None) -> list[str]:
    """What run.json's `load` facts warn of: a sweep without rates, a stop, and one line per
    stage whose requests went out late."""
    from .load import LATE_S

    out = [str(note) for note in (facts or {}).get("notes") or []]
    if (facts or {}).get("stopped_by"):
        out.append(f"the load test stopped at a request it could not send "
                   f"({facts['stopped_by']})")  # type: ignore[index]
    for stage in (facts or {}).get("stages") or []:
        if type(stage) is not dict or stage.get("schedule_kept", True):
            continue
        why = (f"{stage.get('capped')} waited for the concurrency cap (raise "
               "load.max_concurrency)" if stage.get("capped") else
               "the client could not keep up (a busy machine or too high a rate for one core)")
        lag = stage.get("send_lag_p99_s")
        out.append(f"stage {stage.get('stage')}: {stage.get('late')} of {stage.get('sent')} "
                   f"requests went out more than {LATE_S * 1000:.0f} ms late (send lag p99 "
                   f"{formatting.seconds(lag) if lag is not None else '-'}); {why}: its "
                   "rate figures are not those of the schedule")
    return out


# --- HTML -------------------------------------------------------------------------------------

def html_section(df: pd.DataFrame) -> dict[str, Any] | None:
    """The report's load section: latency and goodput against achieved rate, the knee, and
    the per-stage table (None when the rows are no load test)."""
    from .html_report import Table

    table = stage_table(df)
    if table is None:
        return None
    records = table.to_dict("records")
    where, sentence = knee(records)
    # the synchronous stage and the rate stages make one curve; a throughput or concurrency
    # stage's queue is its own choice, not a load level: it stays in the table only
    rated = [r for r in records if not formatting.missing(r.get("request_throughput_rps"))
             and (not formatting.missing(r.get("requested_rps"))
                  or str(r["stage"]).endswith("synchronous"))]
    marked = None
    if where is not None:
        marked = (float(records[where]["request_throughput_rps"]), sentence)

    def points(key: str) -> list[tuple[float, float, str]]:
        return [(float(r["request_throughput_rps"]), float(r[key]),
                 f"{r['stage']}: {formatting.seconds(r[key]) if key.endswith('_s') else r[key]}"
                 f" at {r['request_throughput_rps']:.3g} req/s")
                for r in rated if not formatting.missing(r.get(key))]

    latency = charts.xy_lines(
        {"TTFT p50": points("ttft_p50_s"), "TTFT p99": points("ttft_p99_s"),
         "latency p50": points("latency_p50_s"), "latency p99": points("latency_p99_s")},
        title="Latency against throughput (one point per stage)",
        x_label="requests done per second", y_label="seconds", marked=marked)
    rates = {"requested": [(x, float(r["requested_rps"]), f"{r['stage']}: asked "
                            f"{r['requested_rps']:.3g}/s")
                           for r in rated if not formatting.missing(r.get("requested_rps"))
                           for x in [float(r["request_throughput_rps"])]],
             "throughput": points("request_throughput_rps"), "goodput": points("goodput_rps")}
    goodput = charts.xy_lines(rates, title="Goodput and throughput (req/s) per stage",
                              x_label="requests done per second", y_label="requests per second",
                              marked=marked)
    rows = tuple(tuple(_cell(key, r.get(key)) for key, _ in _HEAD) for r in records)
    return {"latency": latency, "goodput": goodput, "knee": sentence,
            "table": Table(tuple(label for _, label in _HEAD), rows)}
