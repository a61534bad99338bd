"""The CLI's terminal output: a live progress bar (rich) on a terminal, plain lines otherwise,
and the tables printed at the end. Only `cli.py` uses this module.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .formatting import percent, seconds, usd, whole
from .result import ERROR, OK, SKIPPED, Result


class RunProgress:
    """Progress of a run: done, errors, cost so far and ETA."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self._tty = sys.stdout.isatty()
        self._interval_s = interval_s
        self._counts = {OK: 0, ERROR: 0, SKIPPED: 0}
        self._total = 0
        self._last = 0.0
        self._t0 = 0.0
        self._bar: Any = None
        self._task: Any = None
        self._batch_line: str | None = None

    def start(self, total: int) -> None:
        self._total = total
        self._t0 = self._last = time.monotonic()
        if self._tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeRemainingColumn())
            self._task = self._bar.add_task("running", total=total, info="")
            self._bar.start()
        else:
            print(f"running {total} requests", flush=True)

    def advance(self, result: Result, spent_usd: float) -> None:
        self._counts[result.status] = self._counts.get(result.status, 0) + 1
        done = sum(self._counts.values())
        info = (f"errors {self._counts[ERROR]}  skipped {self._counts[SKIPPED]}  "
                f"{usd(spent_usd)}")
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=info)
            return
        now = time.monotonic()
        if now - self._last >= self._interval_s or done == self._total:
            self._last = now
            rate = done / max(now - self._t0, 1e-9)
            eta = (self._total - done) / rate if rate > 0 else 0.0
            print(f"{done}/{self._total} done  {info}  eta {eta:.0f}s", flush=True)

    def batches(self, line: str) -> None:
        """What the run's provider batches are doing (batch mode): printed when it changes."""
        if line == getattr(self, "_batch_line", None):
            return
        self._batch_line = line
        if self._bar is not None:
            self._bar.console.print(line)
        else:
            print(line, flush=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def print_summary(outcome: Any) -> None:
    """The per-model table at the end of a run, and where the files are. On a terminal the table
    is rich's; to a pipe or a log it is plain aligned text (the same cells), and rich, a fifth of
    a small run's start-up work, is not imported."""
    # written at the end: the rows need not be read again (nor pandas imported to read them)
    summary = _read_summary(outcome.run_dir / "summary.csv")
    tty = sys.stdout.isatty()
    if summary:
        title = f"{outcome.manifest['job']} — run {outcome.run_id} ({outcome.status})"
        graded = "pass_rate" in summary[0]
        judged = "judge_cost_usd" in summary[0]
        names = ("model", "n", "ok", "errors", "skipped", "latency p50", "latency p90",
                 "ttft p50", "tok/s p50", "cost") + (("pass rate",) if graded else ()) \
            + (("judge cost", "total cost") if judged else ())
        rows = []
        for row in summary:
            cells = [str(row["model"]), str(row["n"]), str(row["ok"]),
                     str(row["errors"]), str(row["skipped"]), seconds(row["latency_p50_s"]),
                     seconds(row["latency_p90_s"]), seconds(row["ttft_p50_s"]),
                     whole(row["output_tokens_per_s_p50"]), usd(row["cost_usd"])]
            if graded:
                cells.append(percent(row.get("pass_rate")))
            if judged:
                cells += [usd(row.get("judge_cost_usd")), usd(row.get("total_cost_usd"))]
            rows.append(cells)
        if tty:
            _rich_table(title, names, rows)
        else:
            print(plain_table(title, names, rows))
    # (label, rich style of the label, text)
    notes: list[tuple[str, str, str]] = []
    from .health import saturation_warning

    warning = saturation_warning(outcome.manifest.get("client") or {})
    if warning is not None:
        notes.append(("warning", "yellow", warning))
    budget = outcome.manifest.get("budget") or {}
    if budget.get("budget_usd"):
        notes.append(("", "", f"budget {usd(budget['budget_usd'])}: spent "
                      f"{usd(budget['spent_usd'])} ({percent(budget['utilisation'] or 0)}); "
                      f"worst-case reservations held {usd(budget['reserved_unused_usd'])} more "
                      "than was spent"))
    if budget.get("cost_overruns"):
        raised = ", ".join(f"{model} x{factor:.3g}" if factor else f"{model} (priced free, billed)"
                           for model, factor in (budget.get("raised_estimates") or {}).items())
        notes.append(("warning", "bold yellow", f"{budget['cost_overruns']} attempt(s) cost more "
                      f"than its worst case; later estimates were raised: {raised}"))
    for key, why in (outcome.manifest.get("stopped") or {}).items():
        if key.startswith("model:"):
            notes.append(("stopped", "yellow", f"sending to model {key[6:]} ({why}: the server "
                          "asked to wait longer than limits.max_retry_wait_s); its other "
                          "requests are skipped rows that a --resume sends"))
    if budget.get("exceeded"):
        notes.append(("BUDGET EXCEEDED", "bold red", f"spent {usd(budget['spent_usd'])} of "
                      f"{usd(budget['budget_usd'])} (over by {usd(budget['overspent_usd'])})"))
    checks = ", checks.parquet" if (outcome.run_dir / "checks.parquet").is_file() else ""
    url = getattr(outcome, "url", None)  # issue 13: a Ray run written to a filesystem URL
    where = f"{url}: " if url else f"{outcome.run_dir}/"
    notes.append(("", "", f"results: {where}requests.parquet (also requests.csv, "
                  f"summary.csv, run.json{checks})"))
    if not tty:
        for label, _, text in notes:
            print(f"{label}: {text}" if label else text)
        return
    from rich.markup import escape

    console = _console()
    for label, style, text in notes:
        console.print(f"[{style}]{label}:[/] {escape(text)}" if label else escape(text),
                      soft_wrap=True)


def plain_table(title: str, names: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table as aligned plain text (the first column left-aligned, the others right)."""
    widths = [max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(names)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([title, line(names), line(["-" * w for w in widths]),
                      *(line(row) for row in rows)])


def _rich_table(title: str, names: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title))
    for name in names:
        table.add_column(name, justify="left" if name == "model" else "right")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    _console().print(table)


def _read_summary(path: Path) -> list[dict[str, Any]]:
    """summary.csv's lines, numbers as floats (an empty cell: NaN), counts and names as text."""
    import csv

    if not path.is_file():
        return []
    with path.open(newline="") as f:
        lines = list(csv.DictReader(f))
    texts = ("model", "n", "ok", "errors", "skipped")
    return [{k: v if k in texts else (float(v) if v else float("nan")) for k, v in line.items()}
            for line in lines]


def _console() -> Any:
    from rich.console import Console

    # a log or a pipe is not 80 columns wide: do not squeeze model names into ellipses
    return Console() if sys.stdout.isatty() else Console(width=160)


def print_models(provider: str, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=f"{provider}: {len(rows)} models (USD per million tokens)")
    for name in ("id", "prompt", "completion", "per request", "max output"):
        table.add_column(name, justify="left" if name == "id" else "right")
    for row in rows:
        table.add_row(row["id"], _price(row["usd_per_mtok_prompt"]),
                      _price(row["usd_per_mtok_completion"]), _price(row["usd_per_request"]),
                      str(row["max_completion_tokens"] or "-"))
    _console().print(table)


def _price(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def print_plan(job_name: str, estimate: Any, shown: Sequence[Any] = (),
               load_lines: Sequence[str] = ()) -> None:
    """Requests and worst-case cost per model, whether the budget covers them (a load test:
    its `load_lines` instead, which judge the load test's worst case), and the requests in
    `shown` as they would be sent."""
    from rich.table import Table

    total_requests = sum(m.requests for m in estimate.models)
    table = Table(title=f"{job_name}: {total_requests} requests")
    for name in ("model", "provider", "requests", "worst case"):
        table.add_column(name, justify="left" if name in ("model", "provider") else "right")
    for m in estimate.models:
        table.add_row(m.label, m.provider, str(m.requests), _usd(m.worst_case_usd))
    for m in estimate.judges:  # LLM judges: one call per judged request
        table.add_row(m.label, m.provider, f"{m.requests} calls", _usd(m.worst_case_usd))
    table.add_row("total", "", str(total_requests), _usd(estimate.total_usd))
    console = _console()
    console.print(table)
    for note in estimate.notes:
        console.print(note)
    if load_lines:
        from rich.markup import escape

        for line in load_lines:
            console.print(escape(line), soft_wrap=True)
    elif estimate.budget_usd is None:
        console.print("no budget_usd set: spending is not capped")
    elif estimate.budget_covers is None:
        console.print(f"budget {usd(estimate.budget_usd)}: worst case unknown (a model has no "
                      "price or no max_tokens)")
    elif estimate.budget_covers:
        console.print(f"budget {usd(estimate.budget_usd)} covers the worst case")
    else:
        console.print(f"budget {usd(estimate.budget_usd)} does NOT cover the worst case "
                      f"({usd(estimate.total_usd)}): the run stops sending when it is used up")
    for request in shown:
        _print_request(console, request)


def _print_request(console: Any, request: Any) -> None:
    from rich.markup import escape

    shown_vars = ", ".join(f"{k}={v!r}" for k, v in request.vars.items())
    console.print(f"\n[bold]#{request.index}[/] {escape(request.model.label)}  prompt "
                  f"{escape(request.prompt_id)}  repeat {request.repeat}"
                  + (f"  vars: {escape(shown_vars)}" if shown_vars else ""), soft_wrap=True)
    for message in request.messages:
        console.print(f"  [dim]{message.role}:[/] {escape(str(message.content))}", soft_wrap=True)
    for k, message in enumerate(request.turns[1:], 2):  # a conversation's later user turns
        console.print(f"  [dim]turn {k}, after the reply:[/] {escape(str(message.content))}",
                      soft_wrap=True)


def _usd(value: float | None) -> str:
    return "unknown" if value is None else usd(value)
