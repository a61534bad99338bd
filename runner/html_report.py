"""The HTML report: result rows (one run, or a job's history) in, one self-contained HTML file out.

The page loads nothing: CSS is inline, charts are inline SVG (`charts.py`), there is no script
(the grid of responses, `report_grid.py`, filters with CSS alone).
It is rendered from the Jinja2 templates in `templates_html/` with autoescape on, so every value
from the data (model names, prompts, responses, error messages) is escaped by the template
engine, never by hand. With several runs, the tables and distributions show the latest run and
a section shows trends across all of them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import charts, formatting
from .report_grid import MAX_GRID_LINES, build_grid, caption
from .results import summarize

if TYPE_CHECKING:
    import jinja2
    import pandas as pd

MAX_FAILED_ROWS = 50
MAX_TEXT_CHARS = 300


@dataclass(frozen=True, slots=True)
class Table:
    """Rows of plain strings; `left` columns align left, `text` ones keep newlines."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    left: frozenset[int] = frozenset({0})
    text: frozenset[int] = frozenset()


def write_html(df: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Write the report of `df` (from `read_results`) to `path`; return the path."""
    from .rundir import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render_html(df, title).encode("utf-8", "replace"))
    return path


def render_html(df: pd.DataFrame, title: str | None = None, *,
                grid_lines: int = MAX_GRID_LINES) -> str:
    """The report as one HTML string (the grid of responses shows at most `grid_lines`)."""
    runs = [str(r) for r in dict.fromkeys(df["run_id"])] if len(df) else []
    job = str(df["job"].iloc[0]) if len(df) else "results"
    title = title or (f"{job}: run {runs[-1]}" if len(runs) == 1 else f"{job}: {len(runs)} runs")
    return _template().render(title=title,
                              page=_page(df, job, runs, grid_lines) if len(df) else None)


@functools.cache
def _template() -> jinja2.Template:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("runner", "templates_html"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2")


def _page(df: pd.DataFrame, job: str, runs: list[str], grid_lines: int) -> dict[str, Any]:
    latest = df[df["run_id"] == runs[-1]]
    models = sorted({str(m) for m in df["model"].dropna()})
    colors = charts.colors_for(models)
    summary = summarize(latest)
    grid = build_grid(latest, grid_lines)
    return {
        "job": job, "latest_run": runs[-1], "requests": len(latest),
        "cost": _cost(latest), "checks": _checks_table(latest), "grid": grid,
        "grid_caption": caption(grid, f"requests.parquet and checks.parquet of run {runs[-1]}")
        if grid is not None else "",
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "summary": _summary_table(summary), **_distributions(latest, colors),
        **_scatters(latest, summary, colors), "errors": _errors(latest),
        "trends": _trends(df, runs, colors) if len(runs) > 1 else None,
        "failed": _failed_checks(latest), "load": _load_section(latest),
    }


def _cost(latest: pd.DataFrame) -> str:
    """What the run cost: requests, plus LLM judges when there were any."""
    requests = float(latest["cost_usd"].sum())
    judge = float(latest["judge_cost_usd"].sum()) if "judge_cost_usd" in latest else 0.0
    if not judge:
        return formatting.usd(requests)
    return (f"{formatting.usd(requests + judge)} ({formatting.usd(requests)} requests + "
            f"{formatting.usd(judge)} judge)")


def _checks_table(latest: pd.DataFrame) -> Table | None:
    """Per model x check: graded, not graded, pass rate with its 95% interval, scores."""
    from .check_results import check_table, summarize_checks

    checks = summarize_checks(check_table(latest))
    if not len(checks):
        return None
    rows = tuple((str(r["model"]), str(r["check"]), formatting.whole(r["graded"]),
                  formatting.whole(r["not_graded"]),
                  formatting.rate_interval(r["pass_rate"], r["pass_rate_ci_low"],
                                           r["pass_rate_ci_high"]),
                  "-" if formatting.missing(r["weighted_score"])
                  else f"{r['weighted_score']:.2f}", formatting.usd(r["judge_cost_usd"]))
                 for r in checks.to_dict("records"))
    return Table(("model", "check", "graded", "not graded", "pass rate (95% CI)",
                  "weighted score", "judge cost"), rows, left=frozenset({0, 1}))


def _summary_table(summary: pd.DataFrame) -> Table:
    columns: list[tuple[str, str, Any]] = [
        ("model", "model", str), ("n", "n", formatting.whole), ("ok", "ok", formatting.whole),
        ("errors", "errors", formatting.whole), ("skipped", "skipped", formatting.whole),
        ("error_rate", "error rate", formatting.percent),
        ("latency_p50_s", "latency p50", formatting.seconds),
        ("latency_p90_s", "latency p90", formatting.seconds),
        ("latency_p99_s", "latency p99", formatting.seconds),
        ("ttft_p50_s", "TTFT p50", formatting.seconds),
        ("tpot_p50_s", "TPOT p50", formatting.seconds),
        ("output_tokens_per_s_p50", "tok/s p50", formatting.whole),
        ("cost_usd", "cost", formatting.usd),
        ("cost_per_1k_requests_usd", "cost / 1k req", formatting.usd),
        ("pass_rate", "pass rate (95% CI)", None),
        ("judge_cost_usd", "judge cost", formatting.usd),
        ("total_cost_usd", "total cost", formatting.usd),
    ]
    shown = [c for c in columns if c[0] in summary.columns]
    rows = tuple(tuple(formatting.rate_interval(record.get(key),
                                                record.get("pass_rate_ci_low"),
                                                record.get("pass_rate_ci_high"))
                       if show is None else show(record.get(key)) for key, _, show in shown)
                 for record in summary.to_dict("records"))
    return Table(tuple(label for _, label, _ in shown), rows)


def _distributions(latest: pd.DataFrame, colors: dict[str, str]) -> dict[str, Any]:
    ok = latest[latest["status"] == "ok"]
    ttft = _groups(ok, "ttft_s")
    return {
        "latency": charts.box_plot(_groups(ok, "latency_s"), title="Latency per request",
                                   x_label="seconds", colors=colors),
        "ttft": charts.box_plot(ttft, title="Time to first token", x_label="seconds",
                                colors=colors) if any(ttft.values()) else None,
    }


def _scatters(latest: pd.DataFrame, summary: pd.DataFrame,
              colors: dict[str, str]) -> dict[str, Any]:
    ok = latest[(latest["status"] == "ok") & latest["latency_s"].notna()
                & latest["cost_usd"].notna()]
    points: dict[str, list[tuple[float, float, str]]] = {model: [] for model in colors}
    for r in ok[["model", "prompt_id", "repeat", "latency_s", "cost_usd"]].to_dict("records"):
        points.setdefault(str(r["model"]), []).append((
            float(r["latency_s"]), float(r["cost_usd"]),
            f"{r['model']} · {r['prompt_id']} #{r['repeat']}: "
            f"{formatting.seconds(r['latency_s'])}, {formatting.usd(r['cost_usd'])}"))
    pass_cost = None
    if "pass_rate" in summary.columns and summary["pass_rate"].notna().any():
        graded = summary[summary["pass_rate"].notna()]
        per_model = {
            str(r["model"]): [(r["cost_per_1k_requests_usd"] / 1000, r["pass_rate"],
                               f"{r['model']}: pass rate {formatting.percent(r['pass_rate'])}, "
                               f"{formatting.usd(r['cost_per_1k_requests_usd'] / 1000)}"
                               "/request")]
            for r in graded.to_dict("records") if not formatting.missing(
                r["cost_per_1k_requests_usd"])}
        pass_cost = charts.scatter(per_model, title="Pass rate vs cost (one point per model)",
                                   x_label="cost per request (USD)", y_label="pass rate",
                                   colors=colors, radius=6)
    return {
        "cost_latency": charts.scatter(points, title="Cost vs latency (one point per request)",
                                       x_label="latency (s)", y_label="cost (USD)",
                                       colors=colors),
        "pass_cost": pass_cost,
    }


def _errors(latest: pd.DataFrame) -> dict[str, Any] | None:
    bad = latest[latest["status"] != "ok"]
    if not len(bad):
        return None
    kinds = bad.assign(kind=bad["error_type"].fillna("unknown").astype(str)
                       + " (" + bad["status"].astype(str) + ")")
    counts = kinds.groupby(["model", "kind"], observed=True).size()
    models = sorted({str(m) for m, _ in counts.index})
    types = sorted({str(k) for _, k in counts.index})
    segments = {t: [float(counts.get((m, t), 0)) for m in models] for t in types}
    rows = []
    for (model, kind), group in kinds.groupby(["model", "kind"], observed=True):
        example = group["error_message"].dropna()
        rows.append((str(model), str(kind), str(len(group)),
                     _clip(str(example.iloc[0])) if len(example) else ""))
    return {
        "chart": charts.stacked_bars(models, segments, title="Errors and skipped requests per "
                                     "model", x_label="requests"),
        "table": Table(("model", "error", "count", "example message"), tuple(rows),
                       left=frozenset({0, 1, 3}), text=frozenset({3})),
    }


def _trends(df: pd.DataFrame, runs: list[str], colors: dict[str, str]) -> dict[str, Any]:
    per_run = summarize(df, by=("run_id", "model"))
    labels = short_run_labels(runs)

    def series(column: str, scale: float = 1.0) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {}
        if column not in per_run.columns:
            return out
        for model, group in per_run.groupby("model", sort=True):
            by_run = dict(zip(group["run_id"].astype(str), group[column], strict=True))
            out[str(model)] = [_num(by_run.get(r), scale) for r in runs]
        return out

    out = [charts.line_chart(labels, series("latency_p50_s"), title="Latency p50",
                             y_label="seconds", colors=colors),
           charts.line_chart(labels, series("cost_per_1k_requests_usd", 1 / 1000),
                             title="Cost per request", y_label="USD", colors=colors)]
    pass_rates = series("pass_rate")
    if any(v is not None for values in pass_rates.values() for v in values):
        out.append(charts.line_chart(labels, pass_rates, title="Pass rate",
                                     y_label="pass rate", colors=colors))
    return {"runs": len(runs), "charts": out}


def _failed_checks(latest: pd.DataFrame) -> dict[str, Any] | None:
    if "passed" not in latest.columns or not latest["passed"].notna().any():
        return None
    failed = latest[latest["passed"].eq(False).fillna(False).astype(bool)]
    rows = tuple((str(r["model"]), str(r["prompt_id"]), str(r["repeat"]),
                  _clip(_text(r["check_failures"])), _clip(_text(r["response_text"])))
                 for r in failed.head(MAX_FAILED_ROWS).to_dict("records"))
    return {
        "count": len(failed), "graded": int(latest["passed"].notna().sum()),
        "more": len(failed) - MAX_FAILED_ROWS,
        "table": Table(("model", "prompt", "repeat", "failures", "response"), rows,
                       left=frozenset({0, 1, 3, 4}), text=frozenset({3, 4})),
    }


def _load_section(latest: pd.DataFrame) -> dict[str, Any] | None:
    """A load test's stages (its own module and partial, load.html.j2), or None."""
    from .load_report import html_section

    return html_section(latest)


# --- small pieces ----------------------------------------------------------------------------

_RUN_ID = re.compile(r"^(\d{8}T\d{6})(\.\d{3})?Z")


def short_run_labels(run_ids: list[str]) -> list[str]:
    """Run ids as short axis labels: `20261125T231755.042Z-3fa9` -> `11-25 23:17:55`; with the
    milliseconds (`11-25 23:17:55.042`) when two runs started in the same second; an id of
    another shape as it is."""
    def label(run_id: str, millis: bool) -> str:
        match = _RUN_ID.match(run_id)
        if match is None:
            return run_id
        start = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").strftime("%m-%d %H:%M:%S")
        return start + (match.group(2) or "") if millis else start

    short = [label(r, False) for r in run_ids]
    return short if len(set(short)) == len(short) else [label(r, True) for r in run_ids]


def _groups(df: pd.DataFrame, column: str) -> dict[str, list[float]]:
    return {str(model): [float(v) for v in group[column].dropna()]
            for model, group in df.groupby("model", observed=True, sort=True)}


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS - 1] + "…"


def _text(value: Any) -> str:
    return "" if formatting.missing(value) else str(value)


def _num(value: Any, scale: float) -> float | None:
    return None if formatting.missing(value) else float(value) * scale
