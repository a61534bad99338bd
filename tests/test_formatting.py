"""Numbers for people: one formatter per kind of number, and the terminal report, the HTML
report, `runner compare` and the end-of-run output print the same amount the same way."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import runner
from runner import formatting
from runner.cli import main
from runner.html_report import render_html

from .runs import bench_job, write_and_run


@pytest.mark.parametrize(("function", "value", "text"), [
    (formatting.usd, 0.00012, "$0.000120"),
    (formatting.usd, 1234.5, "$1,234.500000"),
    (formatting.usd, -0.5, "-$0.500000"),
    (formatting.usd, 0, "$0.000000"),
    (formatting.usd, None, "-"),
    (formatting.usd, math.nan, "-"),
    (formatting.seconds, 0.41234, "0.412s"),
    (formatting.seconds, None, "-"),
    (formatting.percent, 0.925, "92.5%"),
    (formatting.whole, 2399.6, "2400"),
    (formatting.relative_change, 0.123, "+12.3%"),
    (formatting.relative_change, -0.5, "-50.0%"),
    (formatting.relative_change, math.inf, "from 0"),
    (formatting.points, 0.05, "+5.0 points"),
    (formatting.points, -0.025, "-2.5 points"),
    (formatting.limit_percent, 0.2, "20%"),
    (formatting.limit_percent, 0.125, "12.5%"),
    (formatting.short, 0.00012, "0.00012"),
    (formatting.short, 999.5, "999.5"),
    (formatting.short, 2400, "2.4e+03"),
    (formatting.short, 0, "0"),
])
def test_formatters(function: Any, value: Any, text: str) -> None:
    assert function(value) == text


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("formatting")
    return write_and_run(root / "a", bench_job(), root / "results")


def test_dollars_read_the_same_everywhere(run_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    df = runner.read_results(run_dir)
    summary = runner.summarize(df).set_index("model")
    per_1k = formatting.usd(summary.loc["<b>premium</b> & co", "cost_per_1k_requests_usd"])
    total = formatting.usd(summary.loc["sim/fast-mini", "cost_usd"])
    assert per_1k.startswith("$0.") and total.startswith("$0.")
    assert main(["report", str(run_dir)]) == 0
    terminal = capsys.readouterr().out
    assert per_1k in terminal and total in terminal
    page = render_html(df)
    assert f"<td>{per_1k}</td>" in page and f"<td>{total}</td>" in page
    assert main(["compare", str(run_dir), str(run_dir)]) == 0
    per_request = formatting.usd(summary.loc["sim/fast-mini", "cost_per_1k_requests_usd"] / 1000)
    assert per_request in capsys.readouterr().out


def test_end_of_run_output_uses_the_same_dollars(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(bench_job() + "budget_usd: 2.5\n")
    assert main(["run", str(path), "--out", str(tmp_path / "results"), "--quiet"]) == 0
    out = capsys.readouterr().out
    summary = runner.summarize(runner.read_results(tmp_path / "results" / "bench"))
    for cost in summary["cost_usd"]:
        assert formatting.usd(cost) in out
    assert "budget $2.500000: spent $0." in out
