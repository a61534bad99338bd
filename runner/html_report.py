"""The HTML report: result rows (one run, or a job's history) in, one self-contained HTML file out.

The page loads nothing: CSS is inline, charts are inline SVG (`charts.py`), there is no script.
Every value that comes from the data (model names, prompts, responses, error messages) is escaped.
With several runs, the tables and distributions show the latest run and a section shows trends
across all of them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import charts
from .report import summarize

if TYPE_CHECKING:
    import pandas as pd

MAX_FAILED_ROWS = 50
MAX_TEXT_CHARS = 300

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;
max-width:1100px;padding:0 16px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#666;margin:0 0 12px}table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f4f4f4}td.l,th.l{text-align:left}td.text{text-align:left;max-width:420px;
white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,monospace;font-size:12px}
.note{color:#666;font-style:italic}figure{margin:8px 0 20px}svg text{font-size:12px;fill:#333}
svg text.title{font-size:14px;font-weight:600}svg text.label{fill:#555}
svg line.grid{stroke:#e6e6e6}.wide{overflow-x:auto}
"""


def write_html(df: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Write the report of `df` (from `read_results`) to `path`; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_html(df, title), encoding="utf-8")
    tmp.replace(path)
    return path


def render_html(df: pd.DataFrame, title: str | None = None) -> str:
    """The report as one HTML string."""
    runs = [str(r) for r in dict.fromkeys(df["run_id"])] if len(df) else []
    job = str(df["job"].iloc[0]) if len(df) else "results"
    title = title or (f"{job}: run {runs[-1]}" if len(runs) == 1 else f"{job}: {len(runs)} runs")
    head = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1>")
    if not len(df):
        return head + "<p class=\"note\">No result rows.</p></body></html>"
    latest = df[df["run_id"] == runs[-1]]
    models = sorted({str(m) for m in df["model"].dropna()})
    colors = charts.colors_for(models)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [head, f"<p class=\"meta\">job {escape(job)} · latest run {escape(runs[-1])} · "
             f"{len(latest)} requests · ${_sum(latest['cost_usd']):.6f} · generated "
             f"{generated}</p>"]
    summary = summarize(latest)
    parts += ["<h2>Per model</h2>", _summary_table(summary)]
    parts += _distributions(latest, colors)
    parts += _scatters(latest, summary, colors)
    parts += _errors(latest)
    if len(runs) > 1:
        parts += _trends(df, runs, colors)
    parts += _failed_checks(latest)
    return "".join(parts) + "</body></html>"


def _summary_table(summary: pd.DataFrame) -> str:
    columns: list[tuple[str, str, str]] = [
        ("model", "model", "text"), ("n", "n", "int"), ("ok", "ok", "int"),
        ("errors", "errors", "int"), ("skipped", "skipped", "int"),
        ("error_rate", "error rate", "pct"), ("latency_p50_s", "latency p50", "s"),
        ("latency_p90_s", "latency p90", "s"), ("latency_p99_s", "latency p99", "s"),
        ("ttft_p50_s", "TTFT p50", "s"), ("tpot_p50_s", "TPOT p50", "s"),
        ("output_tokens_per_s_p50", "tok/s p50", "num"), ("cost_usd", "cost", "usd"),
        ("cost_per_1k_requests_usd", "cost / 1k req", "usd"), ("pass_rate", "pass rate", "pct"),
    ]
    shown = [c for c in columns if c[0] in summary.columns]
    rows = [[_cell(record.get(key), kind) for key, _, kind in shown]
            for record in summary.to_dict("records")]
    return _table([label for _, label, _ in shown], rows, left={0})


def _distributions(latest: pd.DataFrame, colors: dict[str, str]) -> list[str]:
    ok = latest[latest["status"] == "ok"]
    latency = _groups(ok, "latency_s")
    ttft = _groups(ok, "ttft_s")
    out = ["<h2>Distributions</h2>",
           _figure(charts.box_plot(latency, title="Latency per request", x_label="seconds",
                                   colors=colors))]
    if any(ttft.values()):
        out.append(_figure(charts.box_plot(ttft, title="Time to first token", x_label="seconds",
                                           colors=colors)))
    else:
        out.append("<p class=\"note\">No TTFT: the requests were not streamed.</p>")
    return out


def _scatters(latest: pd.DataFrame, summary: pd.DataFrame, colors: dict[str, str]) -> list[str]:
    ok = latest[(latest["status"] == "ok") & latest["latency_s"].notna()
                & latest["cost_usd"].notna()]
    points: dict[str, list[tuple[float, float, str]]] = {model: [] for model in colors}
    for r in ok[["model", "prompt_id", "repeat", "latency_s", "cost_usd"]].to_dict("records"):
        points.setdefault(str(r["model"]), []).append((
            float(r["latency_s"]), float(r["cost_usd"]),
            f"{r['model']} · {r['prompt_id']} #{r['repeat']}: {r['latency_s']:.3f}s, "
            f"${r['cost_usd']:.6f}"))
    out = ["<h2>Cost and quality</h2>",
           _figure(charts.scatter(points, title="Cost vs latency (one point per request)",
                                  x_label="latency (s)", y_label="cost (USD)", colors=colors))]
    if "pass_rate" in summary.columns and summary["pass_rate"].notna().any():
        graded = summary[summary["pass_rate"].notna()]
        per_model = {str(r["model"]): [(r["cost_per_1k_requests_usd"] / 1000, r["pass_rate"],
                                        f"{r['model']}: pass rate {r['pass_rate']:.1%}, "
                                        f"${r['cost_per_1k_requests_usd'] / 1000:.6f}/request")]
                     for r in graded.to_dict("records")
                     if r["cost_per_1k_requests_usd"] == r["cost_per_1k_requests_usd"]}
        out.append(_figure(charts.scatter(per_model, title="Pass rate vs cost (one point per "
                                          "model)", x_label="cost per request (USD)",
                                          y_label="pass rate", colors=colors, radius=6)))
    else:
        out.append("<p class=\"note\">No checks ran: no pass rates.</p>")
    return out


def _errors(latest: pd.DataFrame) -> list[str]:
    bad = latest[latest["status"] != "ok"]
    out = ["<h2>Errors</h2>"]
    if not len(bad):
        return out + ["<p class=\"note\">No errors and no skipped requests.</p>"]
    kinds = bad.assign(kind=bad["error_type"].fillna("unknown").astype(str)
                       + " (" + bad["status"].astype(str) + ")")
    counts = kinds.groupby(["model", "kind"], observed=True).size()
    models = sorted({str(m) for m, _ in counts.index})
    types = sorted({str(k) for _, k in counts.index})
    segments = {t: [float(counts.get((m, t), 0)) for m in models] for t in types}
    out.append(_figure(charts.stacked_bars(models, segments, title="Errors and skipped requests "
                                           "per model", x_label="requests")))
    rows = []
    for (model, kind), group in kinds.groupby(["model", "kind"], observed=True):
        example = group["error_message"].dropna()
        rows.append([str(model), str(kind), str(len(group)),
                     _clip(str(example.iloc[0])) if len(example) else ""])
    return out + [_table(["model", "error", "count", "example message"], rows,
                         left={0, 1, 3}, text={3})]


def _trends(df: pd.DataFrame, runs: list[str], colors: dict[str, str]) -> list[str]:
    per_run = summarize(df, by=("run_id", "model"))
    labels = [_short_run(r) for r in runs]

    def series(column: str, scale: float = 1.0) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {}
        if column not in per_run.columns:
            return out
        for model, group in per_run.groupby("model", sort=True):
            by_run = dict(zip(group["run_id"].astype(str), group[column], strict=True))
            out[str(model)] = [_num(by_run.get(r), scale) for r in runs]
        return out

    out = [f"<h2>Trends across {len(runs)} runs</h2>",
           _figure(charts.line_chart(labels, series("latency_p50_s"), title="Latency p50",
                                     y_label="seconds", colors=colors)),
           _figure(charts.line_chart(labels, series("cost_per_1k_requests_usd", 1 / 1000),
                                     title="Cost per request", y_label="USD", colors=colors))]
    pass_rates = series("pass_rate")
    if any(v is not None for values in pass_rates.values() for v in values):
        out.append(_figure(charts.line_chart(labels, pass_rates, title="Pass rate",
                                             y_label="pass rate", colors=colors)))
    return out


def _failed_checks(latest: pd.DataFrame) -> list[str]:
    if "passed" not in latest.columns or not latest["passed"].notna().any():
        return []
    failed = latest[latest["passed"].eq(False).fillna(False).astype(bool)]
    out = [f"<h2>Failed checks ({len(failed)} of {int(latest['passed'].notna().sum())} "
           "graded requests)</h2>"]
    if not len(failed):
        return out + ["<p class=\"note\">Every graded request passed.</p>"]
    rows = [[str(r["model"]), str(r["prompt_id"]), str(r["repeat"]),
             _clip(_text(r["check_failures"])), _clip(_text(r["response_text"]))]
            for r in failed.head(MAX_FAILED_ROWS).to_dict("records")]
    more = len(failed) - MAX_FAILED_ROWS
    note = f"<p class=\"note\">{more} more not shown.</p>" if more > 0 else ""
    return out + [_table(["model", "prompt", "repeat", "failures", "response"], rows,
                         left={0, 1, 3, 4}, text={3, 4}), note]


# --- small pieces ----------------------------------------------------------------------------

def _table(header: list[str], rows: list[list[str]], *, left: set[int],
           text: set[int] | None = None) -> str:
    """An HTML table of escaped cells; `left` columns align left, `text` ones keep newlines."""
    text = text or set()
    head = "".join(f"<th class=\"l\">{escape(h)}</th>" if i in left else f"<th>{escape(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            cls = " class=\"text\"" if i in text else " class=\"l\"" if i in left else ""
            cells.append(f"<td{cls}>{escape(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class=\"wide\"><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _cell(value: Any, kind: str) -> str:
    if kind == "text":
        return str(value)
    if value is None or value != value:
        return "–"
    if kind == "int":
        return str(int(value))
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "s":
        return f"{value:.3f}s"
    if kind == "usd":
        return f"${value:.6f}"
    return f"{value:.0f}"


def _groups(df: pd.DataFrame, column: str) -> dict[str, list[float]]:
    return {str(model): [float(v) for v in group[column].dropna()]
            for model, group in df.groupby("model", observed=True, sort=True)}


def _figure(svg: str) -> str:
    return f"<figure>{svg}</figure>"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS - 1] + "…"


def _text(value: Any) -> str:
    return "" if value is None or value != value else str(value)


def _num(value: Any, scale: float) -> float | None:
    return None if value is None or value != value else float(value) * scale


def _sum(column: pd.Series) -> float:
    return float(column.sum()) if len(column) else 0.0


def _short_run(run_id: str) -> str:
    """`20261125T231755Z-3fa9` -> `11-25 23:17:55`."""
    try:
        return datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").strftime("%m-%d %H:%M:%S")
    except ValueError:
        return run_id
