"""JUnit XML for CI dashboards: result rows in, one test case per prompt x model out.

A case fails when any of its rows (repeats, var combinations) errored or failed its checks; the
failure text lists each such row with its reasons. A case whose rows were all skipped (never
sent: budget, cost cap, stopped provider) is skipped. Several runs give one suite per run.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# characters XML 1.0 cannot carry at all, even escaped (control characters, lone surrogates)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
MAX_REASON_CHARS = 500


def write_junit(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the JUnit XML of `df` (from `read_results`) to `path`; return the path."""
    from .rundir import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render_junit(df))
    return path


def render_junit(df: pd.DataFrame) -> bytes:
    """The JUnit XML document as UTF-8 bytes."""
    root = ET.Element("testsuites", name=_clean(_job(df)))
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    total_s = 0.0
    for run_id, run in df.groupby("run_id", sort=True):
        suite = ET.SubElement(root, "testsuite", name=_clean(f"{_job(run)} {run_id}"))
        started = run["started_at"].dropna()
        if len(started):
            suite.set("timestamp", started.min().strftime("%Y-%m-%dT%H:%M:%S"))
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        suite_s = 0.0
        for (model, prompt_id), rows in run.groupby(["model", "prompt_id"], observed=True,
                                                     sort=True):
            case_s = float(rows["latency_s"].sum()) if len(rows) else 0.0
            suite_s += case_s
            case = ET.SubElement(suite, "testcase", classname=_clean(str(model)),
                                 name=_clean(str(prompt_id)), time=f"{case_s:.3f}")
            counts["tests"] += 1
            outcome = _outcome(rows)
            if outcome is None:
                continue
            tag, message, kind, text = outcome
            element = ET.SubElement(case, tag, message=_clean(message))
            if kind:
                element.set("type", kind)
            if text:
                element.text = _clean(text)
            counts["failures" if tag == "failure" else "skipped"] += 1
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("errors", "0")
        suite.set("time", f"{suite_s:.3f}")
        total_s += suite_s
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("errors", "0")
    root.set("time", f"{total_s:.3f}")
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document + b"\n"


def _outcome(rows: pd.DataFrame) -> tuple[str, str, str, str] | None:
    """(tag, message, type, text) of a failed or skipped case; None when it passed."""
    sent = rows[rows["status"] != "skipped"]
    if not len(sent):
        why = rows["error_type"].dropna()
        return "skipped", f"not sent ({why.iloc[0] if len(why) else 'skipped'})", "", ""
    errored = sent["status"] == "error"
    failed_checks = sent["passed"].eq(False).fillna(False).astype(bool) \
        if "passed" in sent else errored & False
    bad = sent[errored | failed_checks]
    if not len(bad):
        if "checks_json" in sent and sent["checks_json"].notna().any() \
                and sent["passed"].isna().all():  # checked, never graded: not a pass either
            return "skipped", "not graded (a judge was refused or failed)", "", ""
        return None
    kind = "request_error" if not failed_checks[~errored].any() else "checks"
    reasons = [_reason({str(k): v for k, v in row.items()})
               for row in bad.sort_values(["repeat", "vars_json"]).to_dict("records")]
    message = f"{len(bad)} of {len(sent)} requests failed: {reasons[0][1]}"
    return "failure", _cut(message), kind, "\n".join(f"{w}: {d}" for w, d in reasons)


def _reason(row: dict[str, Any]) -> tuple[str, str]:
    """Which row (repeat, vars) and why it failed."""
    where = f"repeat {row['repeat']}"
    if row.get("vars_json") not in (None, "{}") and row.get("vars_json") == row.get("vars_json"):
        where += f" {row['vars_json']}"
    if row["status"] == "error":
        detail = f"request failed ({row.get('error_type') or 'error'})"
        if _present(row.get("error_message")):
            detail += f": {row['error_message']}"
    else:
        detail = str(row.get("check_failures") or "failed its checks")
    return where, _cut(detail)


def _job(df: pd.DataFrame) -> str:
    return str(df["job"].iloc[0]) if len(df) else "runner"


def _present(value: Any) -> bool:
    return value is not None and value == value and value != ""


def _clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _cut(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"
