"""The HTML report's grid: a run's result rows in, one line per prompt x row (its vars), one cell
per model (the response with pass/fail, score and each check) out, as plain strings and small
integers for `templates_html/report.html.j2`.

The filters (failures only, one model, one check) are pure CSS: radio buttons and checkboxes
before the grid, and rules keyed by numbers the report assigns (`m3`, `c2`), never by names from
the data, so the page still runs no script at all. Past `MAX_GRID_LINES` lines the grid shows a
subset (lines with a failure first) and says so; every row is in requests.parquet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import formatting

if TYPE_CHECKING:
    import pandas as pd

MAX_GRID_LINES = 300          # prompt x row lines drawn
MAX_CELL_CHARS = 1_500        # of each response shown in a cell
MAX_INPUT_CHARS = 4_000       # of each input shown behind its <details>
# columns that hold a request's input, the first found is shown (the datasets part writes some)
INPUT_COLUMNS = ("messages_json", "input_messages", "messages", "prompt_text")


@dataclass(frozen=True, slots=True)
class CheckMark:
    name: str
    state: str                # "pass", "fail" or "none" (not graded)
    detail: str               # score and reason


@dataclass(frozen=True, slots=True)
class Cell:
    model: int                # index into Grid.models
    state: str                # "pass", "fail", "none" (not graded / no checks), "error", "skip"
    summary: str              # "passed · score 0.80" or "2 of 3 repeats passed"
    response: str
    checks: tuple[CheckMark, ...]


@dataclass(frozen=True, slots=True)
class Line:
    prompt_id: str
    row: str                  # the vars, short
    input: str                # what was asked (behind a click)
    target: str
    classes: str              # CSS classes the filters select on: fany fm0 fc2 ...
    cells: tuple[Cell | None, ...]


@dataclass(frozen=True, slots=True)
class Grid:
    models: tuple[str, ...]
    checks: tuple[str, ...]
    lines: tuple[Line, ...]
    total_lines: int

    @property
    def truncated(self) -> bool:
        return self.total_lines > len(self.lines)


def build_grid(latest: pd.DataFrame, max_lines: int = MAX_GRID_LINES) -> Grid | None:
    """The grid of one run's rows (None when it has none)."""
    if not len(latest):
        return None
    models = tuple(sorted({str(m) for m in latest["model"].dropna()}))
    model_no = {m: i for i, m in enumerate(models)}
    records = _records(latest)
    check_names: dict[str, int] = {}
    for record in records:
        for item in record["_checks"]:
            check_names.setdefault(item["name"], len(check_names))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["prompt_id"], record["vars_json"]), []).append(record)
    lines = [_line(key, rows, model_no, check_names) for key, rows in groups.items()]
    # the lines with a failure first, so a bounded grid shows what needs a look
    ordered = sorted(range(len(lines)), key=lambda n: ("fany" not in lines[n].classes, n))
    kept = [lines[n] for n in ordered[:max_lines]]
    return Grid(models, tuple(check_names), tuple(kept), len(lines))


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    columns = ["model", "prompt_id", "vars_json", "status", "response_text", "passed", "score",
               "error_message", "repeat"]
    extra = [c for c in ("checks_json", "target", *INPUT_COLUMNS) if c in df.columns]
    picked = df[columns + extra].astype(object)
    out: list[dict[str, Any]] = []
    for raw in picked.where(picked.notna(), None).to_dict("records"):
        record = {str(k): v for k, v in raw.items()}
        record["model"] = str(record["model"])
        record["prompt_id"] = str(record["prompt_id"])
        record["vars_json"] = str(record["vars_json"] or "{}")
        record["_checks"] = _outcomes(record.get("checks_json"))
        out.append(record)
    return out


def _outcomes(cell: Any) -> list[dict[str, Any]]:
    if not isinstance(cell, str):
        return []
    try:
        items = json.loads(cell)
    except ValueError:
        return []
    return [{"name": str(i.get("check")), "passed": i.get("passed"), "score": i.get("score"),
             "reason": i.get("reason")} for i in items if isinstance(i, dict)] \
        if isinstance(items, list) else []


def _line(key: tuple[str, str], rows: list[dict[str, Any]], model_no: dict[str, int],
          check_no: dict[str, int]) -> Line:
    prompt_id, vars_json = key
    by_model: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(model_no[row["model"]], []).append(row)
    classes: set[str] = set()
    cells: list[Cell | None] = []
    for m in range(len(model_no)):
        found = sorted(by_model.get(m, []), key=lambda r: r["repeat"] or 0)
        if not found:
            cells.append(None)
            continue
        cell = _cell(m, found)
        if cell.state in ("fail", "error"):
            classes.update(("fany", f"fm{m}"))
        for row in found:
            for item in row["_checks"]:
                if item["passed"] is False:
                    classes.add(f"fc{check_no[item['name']]}")
        cells.append(cell)
    first = rows[0]
    shown_input = next((str(first[c]) for c in INPUT_COLUMNS if first.get(c) is not None),
                       f"prompt {prompt_id}, vars {vars_json}")
    return Line(prompt_id, _clip(_vars_text(vars_json), 200), _clip(shown_input, MAX_INPUT_CHARS),
                _clip(str(first.get("target") or ""), 300), " ".join(sorted(classes)),
                tuple(cells))


def _cell(m: int, rows: list[dict[str, Any]]) -> Cell:
    first = rows[0]
    states = [_state(r) for r in rows]
    if "fail" in states or "error" in states:
        state = "error" if all(s == "error" for s in states) else "fail"
    elif all(s == "skip" for s in states):
        state = "skip"
    elif all(s == "pass" for s in states):
        state = "pass"
    else:
        state = "none"
    if len(rows) > 1:
        passed = sum(s == "pass" for s in states)
        summary = f"{passed} of {len(rows)} repeats passed"
    else:
        summary = {"pass": "passed", "fail": "failed", "none": "not graded",
                   "error": "request failed", "skip": "not sent"}[state]
        if first.get("score") is not None:
            summary += f" · score {float(first['score']):.2f}"
    text = first.get("response_text")
    if text is None and first["status"] != "ok":
        text = f"({first['status']}) {first.get('error_message') or ''}"
    marks = tuple(CheckMark(item["name"], "pass" if item["passed"] is True else
                            "fail" if item["passed"] is False else "none",
                            _mark_detail(item)) for item in first["_checks"])
    return Cell(m, state, summary, _clip(str(text or ""), MAX_CELL_CHARS), marks)


def _state(row: dict[str, Any]) -> str:
    if row["status"] == "skipped":
        return "skip"
    if row["status"] == "error":
        return "error"
    if row.get("passed") is True:
        return "pass"
    if row.get("passed") is False:
        return "fail"
    return "none"


def _mark_detail(item: dict[str, Any]) -> str:
    parts = []
    if item["score"] is not None:
        parts.append(f"score {float(item['score']):.2f}")
    if item["reason"]:
        parts.append(str(item["reason"]))
    return _clip(" · ".join(parts), 300)


def _vars_text(vars_json: str) -> str:
    try:
        values = json.loads(vars_json)
    except ValueError:
        return vars_json
    if not isinstance(values, dict) or not values:
        return ""
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def caption(grid: Grid, where: str) -> str:
    """The line above the grid: what it shows, and where the rest is."""
    if grid.truncated:
        return (f"Showing {len(grid.lines)} of {formatting.whole(grid.total_lines)} prompt × "
                f"row lines (those with a failure first); every row is in {where}.")
    return f"{len(grid.lines)} prompt × row lines; every row is also in {where}."
