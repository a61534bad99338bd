"""The example suites in jobs/examples/ run offline against the simulator with no converter:
their rows, their checks (by name, per request) and their columns are what the files say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import runner
from runner.cli import main

from .conftest import ROOT

EXAMPLES = ROOT / "jobs" / "examples"


def _run(name: str, tmp_path: Path) -> Path:
    """Copy the example (its data files too) and run it; return the run directory."""
    folder = tmp_path / "examples"
    shutil.copytree(EXAMPLES, folder)
    outcome = runner.run(folder / name, out_dir=tmp_path / "results")
    assert outcome.status == "completed"
    return outcome.run_dir


def test_json_extraction(tmp_path: Path) -> None:
    run_dir = _run("json-extraction.yaml", tmp_path)
    rows = runner.read_results(run_dir)
    assert len(rows) == 5 * 2 and (rows["status"] == "ok").all()
    assert set(rows["prompt_id"]) == {"curie", "einstein", "hokusai", "granda", "maathai"}
    # the schema was sent as structured output: every response is JSON with both fields
    docs = [json.loads(text) for text in rows["response_text"]]
    assert all(set(doc) == {"person", "city"} for doc in docs)
    checks = runner.read_checks(run_dir)
    assert len(checks) == len(rows) * 4
    assert list(dict.fromkeys(checks["check"])) == [
        "matches the schema", "city is the target", "city named in lower case too",
        "no apology"]
    assert checks.loc[checks["check"] == "matches the schema", "passed"].all()
    # the city check compares each row's own target with the JSON field
    target = checks[checks["check"] == "city is the target"].merge(
        rows[["request_id", "response_text"]], on="request_id")
    expected = {"curie": "Paris", "einstein": "Berlin", "hokusai": "Tokyo", "granda": "Lima",
                "maathai": "Nairobi"}
    for line in target.to_dict("records"):
        city = json.loads(line["response_text"])["city"]
        assert line["passed"] == (city == expected[line["prompt_id"]]), line
    assert target["passed"].any() and not target["passed"].all()   # the simulator guesses
    assert (target["weight"] == 2).all()
    # the row's score weighs the city check twice
    one = rows.iloc[0]
    mine = checks[checks["request_id"] == one["request_id"]]
    weighted = (mine["score"] * mine["weight"]).sum() / mine["weight"].sum()
    assert one["score"] == pytest.approx(weighted)


def test_support_replies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "plan"
    shutil.copytree(EXAMPLES, folder)
    assert main(["plan", str(folder / "support-replies.yaml"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["judge_worst_case_usd"]["judge sim/premium-large"] > 0
    run_dir = _run("support-replies.yaml", tmp_path)
    rows = runner.read_results(run_dir)
    assert len(rows) == 4 * 2 and (rows["status"] == "ok").all()
    checks = runner.read_checks(run_dir)
    assert len(checks) == len(rows) * 4
    judged = checks[checks["check_type"] == "llm_judge"]
    assert set(judged["check"]) == {"addresses the request", "resolution matches the target",
                                    "tone"}
    assert judged["passed"].notna().all() and judged["reason"].notna().all()
    assert (judged["judge_cost_usd"] > 0).all()
    scales = {name: set(group["score"]) for name, group in judged.groupby("check")}
    assert scales["resolution matches the target"] <= {0.0, 1.0}
    assert scales["tone"] <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert all(0.1 <= s <= 1.0 for s in scales["addresses the request"])
    totals = json.loads((run_dir / "run.json").read_text())["totals"]
    assert totals["judge_cost_usd"] == pytest.approx(judged["judge_cost_usd"].sum())
    assert totals["total_cost_usd"] <= plan["worst_case_total_usd"]
    assert rows["judge_cost_usd"].sum() == pytest.approx(totals["judge_cost_usd"])
    summary = pd.read_csv(run_dir / "summary.csv")
    assert {"judge_cost_usd", "total_cost_usd", "pass_rate_ci_low"} <= set(summary.columns)
