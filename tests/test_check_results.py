"""The per-check long table: checks.parquet (and .csv) beside requests.parquet, one line per
request x check with the documented columns; the Wilson interval; per-check summaries that
count not graded apart from failed."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

import runner
from runner.check_results import CHECKS, CHECKS_CSV, summarize_checks, wilson

from .runs import run_graded


@pytest.mark.parametrize(("passed", "graded", "low", "high"), [
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (5, 10, 0.2366, 0.7634),
    (81, 100, 0.7222, 0.8749),
    (1, 1, 0.2065, 1.0),
])
def test_wilson_interval(passed: int, graded: int, low: float, high: float) -> None:
    assert wilson(passed, graded) == pytest.approx((low, high), abs=5e-4)


def test_wilson_of_nothing_is_unknown() -> None:
    assert all(math.isnan(v) for v in wilson(0, 0))


JOB = """
name: long
provider: simulated
simulator:
  models:
    - {id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}
    - {id: sim/balanced, ttft_s: 0, tokens_per_s: 0, faults: {error_rate: 0.4}}
models: [sim/fast-mini, sim/balanced]
prompts:
  - {id: a, text: "Say something", expected: {regex: "^[A-Z]"}}
  - {id: b, text: "Say Paris", expected: Paris}
  - {id: free, text: "No checks"}
checks:
  - {name: no markup, not_contains: "<", prompts: [a, b], weight: 0.5}
params: {max_tokens: 16}
repeats: 3
limits: {retries: 0}
"""


def test_checks_parquet_has_one_line_per_request_and_check(write_job, results_dir: Path) -> None:  # type: ignore[no-untyped-def]
    run_dir = run_graded(write_job(JOB), results_dir)
    rows = runner.read_results(run_dir)
    lines = pd.read_parquet(run_dir / CHECKS)
    assert list(lines.columns) == [
        "run_id", "request_id", "model", "prompt_id", "repeat", "check", "check_type", "passed",
        "score", "weight", "reason", "judge_cost_usd", "judge_prompt_tokens",
        "judge_completion_tokens"]
    checked = rows[rows["prompt_id"] != "free"]
    assert len(lines) == 2 * len(checked)                     # two checks per checked row
    assert set(lines["request_id"]) == set(checked["request_id"])
    assert set(lines["check"]) == {"regex '^[A-Z]'", "equals 'Paris'", "no markup"}
    assert (lines.loc[lines["check"] == "no markup", "weight"] == 0.5).all()
    assert str(lines["passed"].dtype) == "boolean" and str(lines["score"].dtype) == "float64"
    # a failed request fails its checks, with the reason
    failed = lines.merge(rows[["request_id", "status"]], on="request_id")
    errors = failed[failed["status"] == "error"]
    assert len(errors) and (~errors["passed"].astype(bool)).all()
    assert errors["reason"].str.startswith("no response").all()
    assert len(pd.read_csv(run_dir / CHECKS_CSV)) == len(lines)
    # read back through the API (the same lines, from the rows)
    again = runner.read_checks(run_dir)
    assert len(again) == len(lines) and set(again["check"]) == set(lines["check"])
    summary = summarize_checks(again)
    assert set(summary["model"]) == {"sim/fast-mini", "sim/balanced"}
    assert (summary["graded"] + summary["not_graded"] == summary["n"]).all()
    assert (summary["pass_rate_ci_low"] <= summary["pass_rate"]).all()
    assert (summary["pass_rate"] <= summary["pass_rate_ci_high"]).all()
    per_model = runner.summarize(rows)
    assert {"pass_rate_ci_low", "pass_rate_ci_high", "graded", "mean_score"} <= set(
        per_model.columns)


def test_a_job_without_checks_writes_no_checks_file(write_job, results_dir: Path) -> None:  # type: ignore[no-untyped-def]
    run_dir = run_graded(write_job("""
        name: plain
        provider: simulated
        models: [sim/fast-mini]
        prompts: [hi]
        params: {max_tokens: 8}
    """), results_dir)
    assert not (run_dir / CHECKS).exists() and not (run_dir / CHECKS_CSV).exists()
    assert runner.read_checks(run_dir).empty


def test_outcomes_with_odd_numbers_are_stored_as_json() -> None:
    import json as json_

    from runner.check_results import outcomes_json
    from runner.checks import Outcome

    cell = outcomes_json([Outcome("judge", "llm_judge", True, 1.0, 1.0, "ok",
                                  judge_cost_usd=float("inf"))])
    assert cell is not None and json_.loads(cell)[0]["judge_cost_usd"] is None
