"""`runner plan` on a load test: its stages, the most requests each sends, and the load test's
worst case against the budget (text and --json), through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import runner
from runner.cli import main
from runner.schedule import Stage, arrivals, max_sends
from tests.test_config import write_case

ROOT = Path(__file__).resolve().parents[1]
JOB = """
name: lp
provider: simulated
simulator:
  models:
    - {id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0, jitter_s: 0}
    - {id: sim/balanced, ttft_s: 0, tokens_per_s: 0, jitter_s: 0}
models: [sim/fast-mini, sim/balanced]
prompts: [one, two, three]
params: {max_tokens: 16}
limits: {retries: 0}
"""


def _plan(capsys: pytest.CaptureFixture[str], path: Path, *flags: str) -> tuple[str, Any]:
    """`runner plan PATH` as text, and `runner plan PATH --json` parsed."""
    assert main(["plan", str(path), *flags]) == 0
    text = capsys.readouterr().out
    assert main(["plan", str(path), "--json", *flags]) == 0
    return text, json.loads(capsys.readouterr().out)


def test_plan_of_a_constant_rate_load_test(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = write_case(tmp_path, JOB + "budget_usd: 0.001\nload: {mode: constant, "
                      "rate_rps: 10, duration_s: 30, warmup_s: 2}\n", {})
    text, plan = _plan(capsys, path)
    assert "load test: 1 stage" in text and "plan's 6 request(s) in a cycle" in text
    line = next(line for line in text.splitlines() if "00 constant 10/s" in line)
    for part in ("open loop, 10 req/s", "for 30 s", "warm-up 2 s", "at most 300 requests"):
        assert part in line, line
    load = plan["load"]
    # 300 sends of a plan of 6: each plan request 50 times, at the plan's worst case
    assert load["stages"][0]["max_requests"] == 300 and load["max_requests"] == 300
    assert load["most_sends_per_plan_request"] == 50
    assert load["worst_case_usd"] == pytest.approx(50 * plan["worst_case_total_usd"])
    assert load["budget_covers"] is False
    assert "does NOT cover the load test's worst case" in text
    assert "budget $0.001000 covers the worst case" not in text  # one cycle's verdict: gone


def test_plan_of_the_shipped_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    text, plan = _plan(capsys, ROOT / "jobs" / "loadtest.yaml")
    assert "load test: 6 stages, one after another" in text
    lines = {line.split()[0] + " " + line.split()[1]: line for line in text.splitlines()
             if line.startswith("  0")}
    assert set(lines) == {"00 synchronous", "01 throughput", "02-05 constant"}
    assert "1 in flight" in lines["00 synchronous"] and "64 in flight" in lines["01 throughput"]
    for name in ("00 synchronous", "01 throughput"):
        assert "unbounded by count (a closed loop), bounded by time (4 s)" in lines[name]
        assert "warm-up 0.5 s, cool-down 0.5 s" in lines[name]
    assert "4 rate stage(s)" in lines["02-05 constant"] and \
        "1.2 x the throughput rate" in lines["02-05 constant"]
    assert "known only after stages 00 synchronous and 01 throughput ran" in text
    assert "worst case of the load test: unknown" in text
    load = plan["load"]
    assert [s["max_requests"] for s in load["stages"]] == [None, None, None]
    assert load["worst_case_usd"] is None and load["stages"][2]["stages"] == 4


def test_the_planned_worst_case_bounds_what_the_run_reserves(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The worst case `plan` gives bounds the worst cases the run's own cost guard reserves,
    request by request (seeded draws of the plan, several stages), and a budget of it sends
    every request."""
    path = write_case(tmp_path, JOB + """
load:
  order: sample
  max_concurrency: 8
  stages:
    - {mode: poisson, rate_rps: 400, requests: 25}
    - {mode: concurrency, concurrency: 4, requests: 20}
    - {mode: sweep, rates: 2, requests: 6}
""", {})
    _, plan = _plan(capsys, path)
    worst = plan["load"]["worst_case_usd"]
    assert plan["load"]["max_requests"] == 25 + 20 + 6 * 4 and worst > 0
    outcome = runner.run(path, out_dir=tmp_path / "out", budget_usd=worst)
    assert "stopped_by" not in outcome.manifest["load"]
    assert len(outcome.rows) == 69 and set(outcome.rows["status"]) == {"ok"}
    reserved = outcome.rows["estimated_cost_usd"]
    assert reserved.notna().all() and reserved.sum() <= worst


def test_a_load_test_of_whole_cycles_costs_the_plans_worst_case_times_the_cycles(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_case(tmp_path, JOB + "load: {mode: constant, rate_rps: 500, requests: 18}\n",
                      {})
    _, plan = _plan(capsys, path)
    assert plan["load"]["most_sends_per_plan_request"] == 3  # 18 slots: the plan of 6, 3 times
    outcome = runner.run(path, out_dir=tmp_path / "out")
    assert outcome.rows["estimated_cost_usd"].sum() == pytest.approx(
        plan["load"]["worst_case_usd"])


def test_plan_does_not_count_a_huge_stage_ahead(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = write_case(tmp_path, JOB + "load: {mode: poisson, rate_rps: 1000000, "
                      "duration_s: 1000000}\n", {})
    text, plan = _plan(capsys, path)
    assert "more than 1,000,000 requests (not counted ahead)" in text
    assert plan["load"]["worst_case_usd"] is None


@pytest.mark.parametrize("stage", [
    Stage(0, "constant", rate_rps=10, duration_s=30),
    Stage(0, "constant", rate_rps=1 / 3, duration_s=2.9),
    Stage(0, "constant", rate_rps=7.3, duration_s=0.3, requests=2),
    Stage(0, "constant", rate_rps=100, duration_s=0.07),
    Stage(0, "poisson", rate_rps=50, burstiness=0.5, duration_s=3, seed=4),
    Stage(0, "ramp", rate_rps=1, to_rate_rps=30, duration_s=5, ramp="exponential"),
    Stage(0, "ramp", rate_rps=30, to_rate_rps=1, duration_s=5),
])
def test_the_most_a_stage_sends_is_what_its_schedule_sends(stage: Stage) -> None:
    assert max_sends(stage) == len(list(arrivals(stage)))


def test_closed_loops_and_long_schedules_are_not_counted() -> None:
    assert max_sends(Stage(0, "concurrency", concurrency=4, duration_s=10)) is None
    assert max_sends(Stage(0, "throughput", concurrency=4, duration_s=10, requests=7)) == 7
    assert max_sends(Stage(0, "poisson", rate_rps=100, burstiness=1, duration_s=100),
                     limit=50) is None
    assert max_sends(Stage(0, "constant", rate_rps=1e6, duration_s=1e6)) == 10**12
