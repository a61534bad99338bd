"""LLM-as-judge: score parsing, and judging through the pool against the simulator."""

from __future__ import annotations

import anyio
import pandas as pd
import pytest

import runner
from runner.cli import main
from runner.config import Message, load_job
from runner.engine import run_job
from runner.judge import judge_messages, parse_score, parse_verdict, response_format
from runner.schema import JudgeIn


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


# --- issue 12: scales, grading prompts, cost in every total, not graded ----------------------

@pytest.mark.parametrize(("scale", "text", "score", "reason"), [
    ("0-1", '{"score": 0.8, "reason": "fine"}', 0.8, "fine"),
    ("pass_fail", '{"grade": "PASS", "reason": "matches"}', 1.0, "matches"),
    ("pass_fail", '{"grade": "FAIL", "reason": "wrong city"}', 0.0, "wrong city"),
    ("pass_fail", "GRADE: C", 1.0, None),             # model_graded_fact's answer format
    ("pass_fail", "GRADE: I", 0.0, None),
    ("pass_fail", "FAIL. The reply ignores the refund.", 0.0, None),
    ("pass_fail", '{"grade": "MAYBE", "reason": "x"}', None, "x"),
    ("1-10", '{"score": 7, "reason": "ok"}', 0.7, "ok"),
    ("1-10", '{"score": 0, "reason": "off the scale"}', None, "off the scale"),
    ("1-10", "I would say 9", 0.9, None),
    ("letter", '{"grade": "B", "reason": "polite"}', 0.75, "polite"),
    ("letter", "grade: f", 0.0, None),
    ("letter", '{"grade": "E", "reason": "x"}', None, "x"),
    ("0-1", '{"score": true, "reason": "x"}', None, "x"),
    ("1-10", "[" * 100_000, None, None),                 # a hostile judge
])
def test_parse_verdict_on_each_scale(scale: str, text: str, score: float | None,
                                     reason: str | None) -> None:
    assert parse_verdict(text, scale) == (score, reason)


def test_grading_prompts_are_templates_over_the_row() -> None:
    convo = (Message("user", "Where is the Louvre?"),)
    context = {"target": "Paris", "topic": "museums"}
    system, user = judge_messages(JudgeIn(model="j", rubric="Correct about {{ topic }}?"),
                                  context, convo, "In Paris.")
    assert '"score": a number from 0' in system.content
    assert user.content.startswith("Rubric:\nCorrect about museums?")
    assert "[user] Where is the Louvre?" in user.content and "In Paris." in user.content
    assert "Expected answer (the target):\nParis" in user.content
    # no rubric: compared with the target, model_graded_fact style, pass/fail
    system, user = judge_messages(JudgeIn(model="j"), context, convo, "{{ not a template }}")
    assert '"grade": "PASS" or "FAIL"' in system.content
    assert "[Expert]: Paris" in user.content
    assert "[Submission]: {{ not a template }}" in user.content
    _, user = judge_messages(JudgeIn(model="j", prompt="Q={{ input }} A={{ response }} "
                                                       "T={{ target }}", scale="letter"),
                             context, convo, "Paris")
    assert user.content == "Q=[user] Where is the Louvre? A=Paris T=Paris"
    assert response_format("letter")["json_schema"]["schema"]["properties"]["grade"]["enum"] \
        == ["A", "B", "C", "D", "F"]


SCALES_JOB = """
name: scales
provider: simulated
simulator:
  models:
    - {id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}
    - {id: sim/balanced, ttft_s: 0, tokens_per_s: 0}
models: [sim/fast-mini]
prompts:
  - {id: q1, text: "Capital of France?", expected: Paris}
  - {id: q2, text: "Capital of Peru?", expected: Lima}
checks:
  - llm_judge: {model: sim/balanced}
  - llm_judge: {model: sim/balanced, scale: "1-10", rubric: "Is {{ target }} named?"}
  - llm_judge: {model: sim/balanced, scale: letter, rubric: "Tone?"}
  - llm_judge: {model: sim/balanced, rubric: "Tone?"}
params: {max_tokens: 16}
repeats: 2
budget_usd: 1
"""


def test_the_simulated_judge_answers_every_scale(write_job, results_dir) -> None:  # type: ignore[no-untyped-def]
    outcome = runner.run(write_job(SCALES_JOB), out_dir=results_dir)
    checks = runner.read_checks(outcome.run_dir)
    assert len(checks) == 4 * 4 and checks["passed"].notna().all()
    by_name = {name: set(group["score"]) for name, group in checks.groupby("check")}
    # five judges on a row read apart: each default name carries its rubric (or the target)
    assert sorted(by_name) == ["llm_judge sim/balanced: Is {{ target }} named?",
                               "llm_judge sim/balanced: Tone?",
                               "llm_judge sim/balanced: Tone? #2",
                               "llm_judge sim/balanced: matches the target"]
    assert by_name["llm_judge sim/balanced: matches the target"] <= {0.0, 1.0}
    assert by_name["llm_judge sim/balanced: Tone?"] <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert all(round(s * 10) == s * 10 for s in by_name[
        "llm_judge sim/balanced: Is {{ target }} named?"])
    assert checks["reason"].notna().all() and (checks["judge_cost_usd"] > 0).all()
    # the judge is deterministic: a repeat of a row gets the same grades
    assert checks.groupby(["prompt_id", "check"])["score"].nunique().eq(1).all()
    # the implied equals check gave way to the judges that read the target
    assert "equals 'Paris'" not in by_name


def test_judge_cost_is_in_plan_totals_and_summaries(write_job, results_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    path = write_job(JOB)
    assert main(["plan", str(path), "--json"]) == 0
    plan = __import__("json").loads(capsys.readouterr().out)
    judge_worst = plan["judge_worst_case_usd"]["judge sim/balanced"]
    assert judge_worst > 0
    assert plan["worst_case_total_usd"] == pytest.approx(
        plan["worst_case_usd"]["sim/fast-mini"] + judge_worst)
    assert main(["run", str(path), "--out", str(results_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "judge cost" in out and "total cost" in out
    run_dir = next((results_dir / "judged").iterdir())
    df = runner.read_results(run_dir)
    totals = __import__("json").loads((run_dir / "run.json").read_text())["totals"]
    assert totals["judge_cost_usd"] == pytest.approx(df["judge_cost_usd"].sum())
    assert totals["total_cost_usd"] == pytest.approx(df["cost_usd"].sum()
                                                     + df["judge_cost_usd"].sum())
    # the worst case planned covers what was spent, judges included
    assert totals["total_cost_usd"] <= plan["worst_case_total_usd"]
    line = runner.summarize(df).iloc[0]
    assert line["judge_cost_usd"] == pytest.approx(totals["judge_cost_usd"])
    assert line["total_cost_usd"] == pytest.approx(totals["total_cost_usd"])


def test_a_judge_the_budget_refuses_leaves_rows_not_graded(write_job, results_dir) -> None:  # type: ignore[no-untyped-def]
    # the requests fit in the budget; the judge (a dear model reading them) does not
    path = write_job("""
        name: refused
        provider: simulated
        simulator:
          models:
            - {id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0, usd_per_mtok_prompt: 0.1,
               usd_per_mtok_completion: 0.1}
            - {id: sim/balanced, ttft_s: 0, tokens_per_s: 0, usd_per_mtok_prompt: 5000,
               usd_per_mtok_completion: 5000}
        models: [sim/fast-mini]
        prompts: [Explain recursion, Explain closures, Explain monads]
        checks:
          - llm_judge: {model: sim/balanced, rubric: "Correct?"}
          - {not_contains: "<script>"}
        params: {max_tokens: 16}
        budget_usd: 0.01
    """)
    outcome = runner.run(path, out_dir=results_dir)
    df = outcome.rows
    assert (df["status"] == "ok").all()
    assert df["passed"].isna().all()          # never graded: not failed
    assert df["check_failures"].str.contains("not graded (not sent: its worst case",
                                             regex=False).all()
    checks = runner.read_checks(outcome.run_dir)
    judged = checks[checks["check_type"] == "llm_judge"]
    assert judged["passed"].isna().all() and judged["judge_cost_usd"].isna().all()
    assert checks.loc[checks["check_type"] == "not_contains", "passed"].all()
    line = runner.summarize(df).iloc[0]
    assert line["not_graded"] == 3 and "pass_rate" not in line or pd.isna(line["pass_rate"])
    from runner.junit import render_junit

    assert b'<skipped message="not graded' in render_junit(df)
    # the nightly gate does not count them as failures either
    assert main(["run", str(path), "--out", str(results_dir), "--quiet",
                 "--fail-under", "0.5"]) == 1    # nothing graded is a broken gate, not a pass
