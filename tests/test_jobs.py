"""The job files shipped in jobs/ load, plan and (offline ones) run."""

from __future__ import annotations

from pathlib import Path

import pytest

import runner
from runner.plan import Plan

JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.mark.parametrize("name", ["quickstart", "compare-openrouter", "nightly"])
def test_shipped_jobs_validate(name: str) -> None:
    job = runner.load_job(JOBS / f"{name}.yaml")
    plan = Plan(job)
    assert len(plan) == sum(plan.count_by_model().values()) > 0


def test_quickstart_is_three_models_about_ten_prompts_two_repeats() -> None:
    job = runner.load_job(JOBS / "quickstart.yaml")
    assert len(job.models) == 3 and job.repeats == 2
    assert 8 <= len(job.prompts) <= 12
    assert {m.provider for m in job.models} == {"simulated"}
    assert any(p.vars for p in job.prompts)


def test_quickstart_runs_offline(tmp_path: Path) -> None:
    outcome = runner.run(JOBS / "quickstart.yaml", out_dir=tmp_path)
    df = outcome.rows
    assert outcome.status == "completed" and len(df) == outcome.manifest["planned_requests"]
    assert set(df["status"]) == {"ok"}
    by_model = runner.summarize(df).set_index("model")
    # the three simulated models differ in speed and price, and the table shows it
    assert by_model.loc["sim/fast-mini", "latency_p50_s"] < by_model.loc["premium",
                                                                         "latency_p50_s"]
    assert by_model.loc["sim/fast-mini", "cost_usd"] < by_model.loc["premium", "cost_usd"]
