"""LLM-as-judge: score parsing, and judging through the pool against the simulator."""

from __future__ import annotations

import anyio
import pandas as pd
import pytest

import runner
from runner.cli import main
from runner.config import load_job
from runner.engine import run_job
from runner.judge import parse_score


@pytest.mark.parametrize(("text", "score"), [
    ('{"score": 0.8, "reason": "ok"}', 0.8),
    ('```json\n{"score": 1, "reason": "x"}\n```', 1.0),
    ('{"score": 3, "reason": "out of range"}', None),
    ("I'd give it 7/10.", 0.7),
    ("Score: 0.25", 0.25),
    ("8", 0.8),
    ("no idea", None),
    ("42/10", None),
    # a hostile judge: nothing it answers may end the run
    ("[" * 100_000, None),
    ('{"score": NaN, "reason": "x"}', None),
    ('{"score": 1e999, "reason": "x"}', None),
    ("1" * 5000, None),
])
def test_parse_score(text: str, score: float | None) -> None:
    assert parse_score(text) == score


JOB = """
name: judged
provider: simulated
simulator:
  models:
    - {id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}
    - {id: sim/balanced, ttft_s: 0, tokens_per_s: 0}
models: [sim/fast-mini]
prompts: [Explain recursion, Explain closures, Explain monads, Explain tail calls]
checks:
  - llm_judge: {model: sim/balanced, rubric: "Is the explanation correct and concise?"}
    min_score: 0.3
params: {max_tokens: 32}
repeats: 3
budget_usd: 0.5
"""


def test_judge_scores_rows_and_charges_them(write_job, results_dir) -> None:  # type: ignore[no-untyped-def]
    outcome = runner.run(write_job(JOB), out_dir=results_dir)
    df = outcome.rows
    assert len(df) == 12 and set(df["status"]) == {"ok"}
    assert df["score"].between(0, 1).all()
    assert (df["passed"] == (df["score"] >= 0.3)).all()
    assert df["passed"].any() and not df["passed"].all()  # the simulated judge spreads scores
    failed = df[~df["passed"].astype(bool)]
    assert failed["check_failures"].str.contains(
        "llm_judge sim/balanced: Is the explanation correct and concise?: score",
        regex=False).all()
    assert (df["judge_cost_usd"] > 0).all()
    assert (df["judge_prompt_tokens"] > df["prompt_tokens"]).all()  # it saw the conversation
    assert (df["judge_completion_tokens"] > 0).all()
    # the judge is paid from the same budget
    spent = outcome.manifest["budget"]["spent_usd"]
    assert spent == pytest.approx(df["cost_usd"].sum() + df["judge_cost_usd"].sum())


def test_judge_on_unknown_provider_is_a_job_error(write_job, capsys) -> None:  # type: ignore[no-untyped-def]
    path = write_job(JOB.replace("{model: sim/balanced,", "{model: sim/balanced, provider: nope,"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "llm_judge.provider" in err and "nope" in err


def test_judge_model_must_exist(write_job, results_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    path = write_job(JOB.replace("{model: sim/balanced,", "{model: sim/nonexistent,"))
    assert main(["run", str(path), "--out", str(results_dir)]) == 2
    assert "llm_judge.model" in capsys.readouterr().err


async def test_a_judge_without_retries_gives_up_at_once(write_job, results_dir) -> None:  # type: ignore[no-untyped-def]
    # the judge answers every request with 429 and a 100 s Retry-After (under the 120 s cap)
    path = write_job("""
        name: judged
        provider: simulated
        simulator:
          models:
            - {id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}
            - {id: sim/balanced, ttft_s: 0, tokens_per_s: 0,
               faults: {rate_limit_rate: 1, retry_after_s: 100}}
        models: [sim/fast-mini]
        prompts: [Explain recursion]
        checks:
          - llm_judge: {model: sim/balanced, rubric: "Is it correct?"}
        params: {max_tokens: 8}
        limits: {retries: 0}
    """)
    with anyio.fail_after(30):  # a judge that slept after its last attempt would still be asleep
        outcome = await run_job(load_job(path), out_dir=results_dir)
    row = outcome.rows.iloc[0]
    # the judge never answered: the row is not graded, not failed
    assert row["status"] == "ok" and row["passed"] is pd.NA and row["score"] is pd.NA or \
        pd.isna(row["score"])
    assert "llm_judge sim/balanced: Is it correct?: not graded (the judge failed: " \
        "rate_limited)" in row["check_failures"]
    assert row["wall_s"] < 100
