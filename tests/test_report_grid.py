"""The HTML report's grid of responses: one line per prompt x row, one column per model, checks
marked per cell, the input behind a click; filters (failures, a model, a failed check) that
work in headless Chromium with no script in the page; a hostile response shown as text; a large
run shown as a labelled subset."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

import runner
from runner.html_report import render_html, write_html
from runner.report_grid import build_grid

from .runs import write_and_run
from .test_html_report import CHROMIUM, loads

JOB = """
name: grid
provider: simulated
simulator:
  models:
    - {id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}
    - {id: sim/balanced, ttft_s: 0, tokens_per_s: 0, faults: {error_rate: 0.3}}
models: [sim/fast-mini, sim/balanced]
prompts:
  - {id: cap, text: "Capital of {{ country }}?", vars: {country: [France, Peru, Kenya]},
     expected: {icontains: "the"}}
  - {id: words, text: "Say something", expected: {regex: "^[A-Z]"}}
checks:
  - {name: no markup, not_contains: "<"}
  - {name: short, max_latency_s: 30}
params: {max_tokens: 16}
limits: {retries: 0}
"""

HOSTILE = ("<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','img')\">"
           "</script><script>document.documentElement.setAttribute('data-pwned','s')</script>")


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("grid")
    return runner.read_results(write_and_run(root / "job", JOB, root / "results"))


def test_one_line_per_prompt_and_row_one_column_per_model(rows: pd.DataFrame) -> None:
    grid = build_grid(rows)
    assert grid is not None
    assert grid.models == ("sim/balanced", "sim/fast-mini")
    assert grid.checks == ("icontains 'the'", "no markup", "short", "regex '^[A-Z]'")
    assert len(grid.lines) == grid.total_lines == 4     # cap x 3 countries, words
    assert {(line.prompt_id, line.row) for line in grid.lines} == {
        ("cap", "country=France"), ("cap", "country=Peru"), ("cap", "country=Kenya"),
        ("words", "")}
    line = next(line for line in grid.lines if line.row == "country=Peru")
    assert all(cell is not None and len(cell.checks) == 3 for cell in line.cells)
    assert "Capital of" in line.input or "Peru" in line.input
    page = render_html(rows)
    assert "Responses by prompt and row" in page and loads(page) == []
    assert "<script" not in page


def test_a_large_run_shows_a_labelled_subset(rows: pd.DataFrame) -> None:
    grid = build_grid(rows, max_lines=2)
    assert grid is not None and grid.truncated and len(grid.lines) == 2
    page = render_html(rows).replace("\n", " ")
    assert "every row is also in requests.parquet and checks.parquet of run" in page
    page = render_html(rows, grid_lines=2)
    assert "Showing 2 of 4 prompt × row lines (those with a failure first)" in page


def _hostile(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows.copy()
    out["response_text"] = out["response_text"].where(out["model"] != "sim/fast-mini", HOSTILE)
    return out


# run in a copy of the page: use the filters as a user would, and report what is visible
PROBE = """<script>
const seen = () => [...document.querySelectorAll('table.rgrid tbody tr')]
  .filter(tr => getComputedStyle(tr).display !== 'none').length;
const cells = (m) => [...document.querySelectorAll('table.rgrid td.g-m' + m)]
  .filter(td => getComputedStyle(td).display !== 'none').length;
const out = {all: seen()};
document.getElementById('g-fail').click(); out.fail = seen();
document.getElementById('g-m1').click(); out.fail_m1 = seen(); out.m0_cells = cells(0);
document.getElementById('g-fail').click(); out.m1 = seen(); out.m1_cells = cells(1);
document.getElementById('g-mall').click(); document.getElementById('g-c1').click();
out.check1 = seen();
document.documentElement.setAttribute('data-probe', JSON.stringify(out));
</script>"""


def _dom(page: Path, profile: Path) -> str:
    done = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=2000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium to run the grid in")
def test_filters_work_and_a_hostile_response_runs_nothing(rows: pd.DataFrame,
                                                          tmp_path: Path) -> None:
    hostile = _hostile(rows)
    report = write_html(hostile, tmp_path / "report.html")
    html = report.read_text(encoding="utf-8")
    # what the filters should leave, from the classes the report gave each line
    classes = re.findall(r'<tr class="([^"]*)"><td><b>', html)
    assert len(classes) == 4
    want = {"all": 4, "fail": sum("fany" in c.split() for c in classes),
            "fail_m1": sum("fm1" in c.split() for c in classes), "m0_cells": 0,
            "m1": 4, "m1_cells": 4, "check1": sum("fc1" in c.split() for c in classes)}
    assert want["fail"] > 0
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _dom(probed, tmp_path / "profile-probe")
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found is not None, dom[:500]
    assert json.loads(found.group(1).replace("&quot;", '"')) == want
    # the page itself: the hostile response is text, and nothing in it ran
    dom = _dom(report, tmp_path / "profile-report")
    assert 'data-pwned="' not in dom
    assert "&lt;img src=x onerror=" in dom and "data-pwned','img')" in dom
