"""Live: the OpenRouter comparison job against the real API (off by default: `-m live`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import runner

JOB = Path(__file__).resolve().parents[1] / "jobs" / "compare-openrouter.yaml"


@pytest.mark.live
@pytest.mark.skipif(not os.environ.get("OPENROUTER_API_KEY"), reason="OPENROUTER_API_KEY not set")
def test_compare_openrouter_job(tmp_path: Path) -> None:
    outcome = runner.run(runner.load_job(JOB), out_dir=tmp_path)
    df = outcome.rows
    assert len(df) == outcome.manifest["planned_requests"]
    ok = df[df["status"] == "ok"]
    assert len(ok) > 0
    assert (ok["cost_source"] == "provider").all()
    assert ok["generation_id"].notna().all() and ok["upstream"].notna().all()
    assert outcome.manifest["budget"]["spent_usd"] <= 0.05
    key = os.environ["OPENROUTER_API_KEY"]
    for path in outcome.run_dir.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes()
