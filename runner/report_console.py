"""Terminal output of `runner report` and `runner compare`: DataFrames in, rich tables out.
Only `cli.py` uses this module."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .compare import format_change, format_value, metric_unit
from .formatting import missing, percent, rate_interval, seconds, usd, whole
from .results import summarize

if TYPE_CHECKING:
    import pandas as pd


def print_report(df: pd.DataFrame) -> None:
    """The latest run's per-model table; with several runs, a table of every run too."""
    from rich.markup import escape
    from rich.table import Table

    runs = [str(r) for r in dict.fromkeys(df["run_id"])]
    latest = df[df["run_id"] == runs[-1]]
    console = _console()
    table = Table(title=escape(f"{df['job'].iloc[0]} — run {runs[-1]}"))
    summary = summarize(latest)
    judged = "judge_cost_usd" in summary.columns
    columns = ["model", "n", "ok", "errors", "skipped", "error rate", "latency p50",
               "latency p90", "ttft p50", "tok/s p50", "cost", "cost / 1k req",
               "pass rate (95% CI)"] + (["judge cost", "total cost"] if judged else [])
    for name in columns:
        table.add_column(name, justify="left" if name == "model" else "right")
    for row in summary.to_dict("records"):
        cells = [escape(str(row["model"])), str(row["n"]), str(row["ok"]), str(row["errors"]),
                 str(row["skipped"]), percent(row["error_rate"]),
                 seconds(row["latency_p50_s"]), seconds(row["latency_p90_s"]),
                 seconds(row["ttft_p50_s"]), whole(row["output_tokens_per_s_p50"]),
                 usd(row["cost_usd"]), usd(row["cost_per_1k_requests_usd"]),
                 rate_interval(row.get("pass_rate"), row.get("pass_rate_ci_low"),
                               row.get("pass_rate_ci_high"))]
        if judged:
            cells += [usd(row.get("judge_cost_usd")), usd(row.get("total_cost_usd"))]
        table.add_row(*cells)
    console.print(table)
    _print_checks(console, latest)
    if len(runs) > 1:
        history = Table(title=f"{len(runs)} runs, oldest first")
        for name in ("run", "model", "n", "error rate", "latency p50", "cost / 1k req",
                     "pass rate"):
            history.add_column(name, justify="left" if name in ("run", "model") else "right")
        for row in summarize(df, by=("run_id", "model")).to_dict("records"):
            history.add_row(str(row["run_id"]), escape(str(row["model"])), str(row["n"]),
                            percent(row["error_rate"]), seconds(row["latency_p50_s"]),
                            usd(row["cost_per_1k_requests_usd"]), percent(row.get("pass_rate")))
        console.print(history)


def _print_checks(console: Any, rows: pd.DataFrame) -> None:
    """Per model x check: graded, not graded, pass rate with its interval, weighted score."""
    from rich.markup import escape
    from rich.table import Table

    from .check_results import check_table, summarize_checks

    checks = summarize_checks(check_table(rows))
    if not len(checks):
        return
    table = Table(title="Checks (pass rate over graded rows, 95% Wilson interval)")
    for name in ("model", "check", "graded", "not graded", "pass rate (95% CI)",
                 "weighted score", "judge cost"):
        table.add_column(name, justify="left" if name in ("model", "check") else "right")
    for row in checks.to_dict("records"):
        table.add_row(escape(str(row["model"])), escape(str(row["check"])), str(row["graded"]),
                      str(row["not_graded"]),
                      rate_interval(row["pass_rate"], row["pass_rate_ci_low"],
                                    row["pass_rate_ci_high"]),
                      "-" if missing(row["weighted_score"]) else f"{row['weighted_score']:.2f}",
                      usd(row["judge_cost_usd"]))
    console.print(table)


def print_comparison(table: pd.DataFrame, reasons: list[str], baseline: str,
                     current: str) -> None:
    """The per-model deltas of `compare.compare`, then the regressions found (if any)."""
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    out = Table(title=escape(f"{current} against baseline {baseline}"))
    for name in ("model", "metric", "baseline", "current", "change", "limit", ""):
        out.add_column(name, justify="left" if name in ("model", "metric", "") else "right")
    for row in table.to_dict("records"):
        unit = metric_unit(row["metric"])
        change, limit = format_change(row, row["metric"])
        out.add_row(escape(str(row["model"])), str(row["metric"]),
                    format_value(row["baseline"], unit), format_value(row["current"], unit),
                    change, limit, "[bold red]REGRESSED[/]" if row["regressed"] else "")
    console.print(out)
    if reasons:
        console.print(f"[bold red]{len(reasons)} regression(s):[/]")
        for reason in reasons:
            console.print(f"  {reason}", markup=False, highlight=False)
    else:
        console.print("no regressions")


def print_flips(table: pd.DataFrame, limit: int = 50) -> None:
    """The prompt x row lines whose pass/fail flipped (`compare.flips`), regressions first."""
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    if not len(table):
        console.print("no prompt flipped between pass and fail")
        return
    worse = int((table["change"] == "regressed").sum())
    out = Table(title=f"{worse} prompt x row line(s) went from pass to fail, "
                f"{len(table) - worse} from fail to pass")
    for name in ("model", "prompt", "vars", "baseline", "current", "why it fails"):
        out.add_column(name)
    for row in table.head(limit).to_dict("records"):
        out.add_row(escape(str(row["model"])), escape(str(row["prompt_id"])),
                    escape(str(row["vars_json"])), str(row["baseline"]), str(row["current"]),
                    escape(str(row["check_failures"] or "")[:200]))
    console.print(out)
    if len(table) > limit:
        console.print(f"... and {len(table) - limit} more")


def _console() -> Any:
    from rich.console import Console

    # a log or a pipe is not 80 columns wide: do not squeeze model names into ellipses
    return Console() if sys.stdout.isatty() else Console(width=160)

