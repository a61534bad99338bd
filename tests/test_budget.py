"""The cost guard: reserve before, settle after, never overspend; without an event loop, then
through whole runs against a loopback server that bills oddly (negative, ten times the worst
case) or gets requests too big for what is left."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import runner
from runner.budget import Budget
from runner.cli import main

from .loopback import Loopback, completion, job_yaml


def test_reserve_settle_and_figures() -> None:
    budget = Budget(1.0)
    a = budget.reserve(0.6)
    assert a is not None and budget.reserve(0.5) is None      # 0.6 held + 0.5 > 1.0
    assert budget.could_fit(0.5)                               # ...but it will once a settles
    budget.settle(a, 0.2)
    b = budget.reserve(0.5)
    assert b is not None
    budget.settle(b, None)                                     # unknown cost: counts in full
    figures = budget.figures()
    assert figures["spent_usd"] == pytest.approx(0.7)
    assert figures["utilisation"] == pytest.approx(0.7)
    assert figures["reserved_unused_usd"] == pytest.approx(0.4)
    assert figures["refused_reservations"] == 1 and figures["cost_overruns"] == 0


def test_no_budget_counts_but_never_refuses() -> None:
    budget = Budget(None)
    for _ in range(100):
        reservation = budget.reserve(10.0)
        assert reservation is not None
        budget.settle(reservation, 1.0)
    assert budget.spent_usd == pytest.approx(100.0) and budget.figures()["utilisation"] is None


@given(budget_usd=st.floats(0.001, 10), ops=st.lists(
    st.tuples(st.floats(0, 2), st.floats(0, 1), st.booleans(), st.integers(0, 20)),
    min_size=1, max_size=200))
def test_spent_never_exceeds_budget(budget_usd: float,
                                    ops: list[tuple[float, float, bool, int]]) -> None:
    """Any interleaving of reservations and settlements, costs at most their worst case."""
    budget = Budget(budget_usd)
    in_flight: list[tuple[object, float]] = []
    for worst, fraction, known, settle_index in ops:
        reservation = budget.reserve(worst)
        if reservation is not None:
            in_flight.append((reservation, worst))
        if in_flight and settle_index % 3 == 0:  # settle one in flight, in any order
            held, held_worst = in_flight.pop(settle_index % len(in_flight))
            budget.settle(held, held_worst * fraction if known else None)  # type: ignore[arg-type]
        assert budget.spent_usd + budget.reserved_usd <= budget_usd + 1e-9
    for held, held_worst in in_flight:
        budget.settle(held, held_worst)  # type: ignore[arg-type]
    assert budget.spent_usd <= budget_usd + 1e-9


@pytest.mark.parametrize("actual", [-10.0, -1e-9, math.nan, math.inf, -math.inf, "0.1", None])
def test_odd_costs_never_reduce_spending(actual: object) -> None:
    budget = Budget(1.0)
    reservation = budget.reserve(0.25)
    assert reservation is not None
    budget.settle(reservation, actual)  # type: ignore[arg-type]
    assert budget.spent_usd == pytest.approx(0.25)  # unknown: the reservation stays spent
    assert budget.figures()["remaining_usd"] == pytest.approx(0.75)


def test_an_overrun_raises_that_models_estimate() -> None:
    budget = Budget(1.0)
    assert budget.estimate("m", 0.01) == pytest.approx(0.01)
    assert not budget.learn("m", 0.01, 0.01, 0.005)    # under its worst case: nothing learnt
    assert budget.learn("m", 0.01, 0.01, 0.1)          # ten times its worst case
    assert budget.estimate("m", 0.01) == pytest.approx(0.1)
    assert budget.estimate("m", 0.002) == pytest.approx(0.02)
    assert budget.estimate("other", 0.01) == pytest.approx(0.01)
    assert not budget.learn("m", 0.01, 0.1, 0.08)      # within the corrected estimate
    assert budget.learn("m", 0.01, 0.01, 0.05)         # in flight with the old one: counted,
    assert budget.estimate("m", 0.01) == pytest.approx(0.1)   # but never lowers the estimate
    assert budget.learn("free", 0.0, 0.0, 0.003)       # billed although estimated free
    assert budget.estimate("free", 0.0) == pytest.approx(0.003)
    figures = budget.figures()
    assert figures["cost_overruns"] == 3
    assert figures["raised_estimates"] == {"m": pytest.approx(10.0), "free": None}


def test_raised_estimates_carry_over_to_a_resumed_budget() -> None:
    first = Budget(1.0)
    first.learn("m", 0.01, 0.01, 0.04)
    kept = first.figures()["raised_estimates"]
    again = Budget(1.0, spent_usd=0.04, raised_estimates=kept)  # type: ignore[arg-type]
    assert again.estimate("m", 0.01) == pytest.approx(0.04)
    odd = Budget(1.0, raised_estimates={"m": "x", "n": -3.0, "o": None})  # type: ignore[dict-item]
    assert odd.estimate("m", 0.01) == odd.estimate("n", 0.01) == pytest.approx(0.01)


def test_figures_say_when_the_budget_was_exceeded() -> None:
    budget = Budget(0.05)
    reservation = budget.reserve(0.01)
    assert reservation is not None
    budget.settle(reservation, 0.1)
    figures = budget.figures()
    assert figures["exceeded"] is True
    assert figures["overspent_usd"] == pytest.approx(0.05)
    assert figures["remaining_usd"] == 0.0
    assert Budget(None).figures()["exceeded"] is False


# ---- whole runs against a server that bills what the test says ----------------------------

# $1000 per million output tokens and nothing for the prompt: with max_tokens 10, every request's
# worst case is exactly $0.01 whatever its prompt
PRICED = """
models: [m]
pricing: {{m: {{usd_per_mtok_prompt: {prompt_price}, usd_per_mtok_completion: 1000}}}}
prompts: {prompts}
params: {{max_tokens: 10, stream: false}}
limits: {{concurrency: 1, retries: 0}}
budget_usd: {budget}
"""


def _priced(write_job, url: str, budget: float, prompts: object = "[a, b, c, d, e, f]",  # type: ignore[no-untyped-def]
            prompt_price: float = 0):
    return write_job(job_yaml(url, PRICED.format(budget=budget, prompts=prompts,
                                                 prompt_price=prompt_price)))


def test_a_negative_cost_is_not_credited(write_job, results_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LOOPBACK_KEY", "sk-or-v1-TESTSECRET-loopback")
    with Loopback(lambda body, n: completion(body["model"], cost_usd=-10.0)) as server:
        outcome = runner.run(_priced(write_job, server.base_url, budget=0.035),
                             out_dir=results_dir)
    df = outcome.rows.set_index("prompt_id")
    figures = outcome.manifest["budget"]
    assert figures["spent_usd"] == pytest.approx(0.03)   # three worst cases, never less
    assert len(server.bodies) == 3                       # a budget for three sends three
    assert list(df["status"]) == ["ok"] * 3 + ["skipped"] * 3
    assert set(df.loc[df["status"] == "skipped", "error_type"]) == {"budget"}
    assert not (df["cost_usd"].fillna(0) < 0).any()      # no row claims a negative cost


def test_a_bill_ten_times_the_worst_case_raises_the_estimate(write_job, results_dir,  # type: ignore[no-untyped-def]
                                                             monkeypatch, capsys) -> None:
    monkeypatch.setenv("LOOPBACK_KEY", "sk-or-v1-TESTSECRET-loopback")
    with Loopback(lambda body, n: completion(body["model"], cost_usd=0.1)) as server:
        path = _priced(write_job, server.base_url, budget=0.35)
        code = main(["run", str(path), "--out", str(results_dir), "--quiet"])
    out = capsys.readouterr().out
    # the first costs $0.10 against $0.01 reserved; later ones reserve $0.10: two more fit
    assert len(server.bodies) == 3
    assert server.billed_usd <= 0.35 + 1e-12
    assert code == 0                                     # an overrun, but within the budget
    run_json = json.loads(next((results_dir / "money").glob("*/run.json")).read_text())
    figures = run_json["budget"]
    assert figures["cost_overruns"] == 1 and not figures["exceeded"]
    assert figures["raised_estimates"] == {"m": pytest.approx(10.0)}
    assert "more than its worst case" in out and "x10" in out


def test_a_resume_keeps_the_raised_estimate(write_job, results_dir, monkeypatch,  # type: ignore[no-untyped-def]
                                            capsys) -> None:
    """The lesson of an overrun outlives the process: a resume reserves at the raised estimate
    (from run.json), or its first sends would be billed ten times what they reserved."""
    monkeypatch.setenv("LOOPBACK_KEY", "sk-or-v1-TESTSECRET-loopback")
    with Loopback(lambda body, n: completion(body["model"], cost_usd=0.1)) as server:
        path = _priced(write_job, server.base_url, budget=0.35)
        assert main(["run", str(path), "--out", str(results_dir), "--quiet"]) == 0
        assert len(server.bodies) == 3      # $0.30 spent; at $0.10 each the rest do not fit
        code = main(["run", str(path), "--out", str(results_dir), "--quiet", "--resume"])
    capsys.readouterr()
    assert len(server.bodies) == 3 and server.billed_usd <= 0.35 + 1e-12
    assert code == 0


def test_an_exceeded_budget_exits_non_zero(write_job, results_dir, monkeypatch,  # type: ignore[no-untyped-def]
                                           capsys) -> None:
    monkeypatch.setenv("LOOPBACK_KEY", "sk-or-v1-TESTSECRET-loopback")
    with Loopback(lambda body, n: completion(body["model"], cost_usd=0.1)) as server:
        path = _priced(write_job, server.base_url, budget=0.05)
        code = main(["run", str(path), "--out", str(results_dir), "--quiet"])
    captured = capsys.readouterr()
    assert len(server.bodies) == 1      # after the overrun nothing fits at the new estimate
    assert code == 3
    assert "budget exceeded" in captured.err and "$0.05" in captured.err
    run_json = json.loads(next((results_dir / "money").glob("*/run.json")).read_text())
    assert run_json["budget"]["exceeded"] is True
    assert run_json["budget"]["overspent_usd"] == pytest.approx(0.05)


def test_a_request_too_big_for_the_budget_is_skipped_alone(write_job, results_dir,  # type: ignore[no-untyped-def]
                                                           monkeypatch) -> None:
    monkeypatch.setenv("LOOPBACK_KEY", "sk-or-v1-TESTSECRET-loopback")
    big = "word " * 100   # at $1000/M prompt tokens its ~500 bytes alone cost $0.5
    small = "".join(f", {{id: {p}, text: {p}}}" for p in "abcd")
    prompts = f"[{{id: big, text: '{big}'}}{small}]"
    with Loopback(lambda body, n: completion(body["model"], cost_usd=0.001)) as server:
        outcome = runner.run(_priced(write_job, server.base_url, budget=0.2, prompts=prompts,
                                     prompt_price=1000), out_dir=results_dir)
    df = outcome.rows.set_index("prompt_id")
    assert df.loc["big", "status"] == "skipped" and df.loc["big", "error_type"] == "budget"
    assert "what is left of budget_usd" in df.loc["big", "error_message"]
    assert list(df.loc[["a", "b", "c", "d"], "status"]) == ["ok"] * 4   # the run went on
    assert len(server.bodies) == 4 and outcome.status == "completed"


def test_the_cost_cap_applies_to_the_raised_estimate(write_job, results_dir,  # type: ignore[no-untyped-def]
                                                     monkeypatch) -> None:
    monkeypatch.setenv("LOOPBACK_KEY", "sk-or-v1-TESTSECRET-loopback")
    with Loopback(lambda body, n: completion(body["model"], cost_usd=0.1)) as server:
        path = _priced(write_job, server.base_url, budget=10)
        path.write_text(path.read_text() + "max_cost_per_request_usd: 0.05\n")
        df = runner.run(path, out_dir=results_dir).rows.sort_values("index")
    assert len(server.bodies) == 1   # billed $0.10 for a $0.01 worst case: the rest cost more
    assert bool(df.iloc[0]["cost_over_estimate"])
    assert list(df["status"]) == ["ok"] + ["skipped"] * 5
    assert set(df["error_type"].iloc[1:]) == {"cost_cap"}
    assert df["error_message"].iloc[1].startswith("worst-case cost $0.100000")


def test_a_bill_near_the_float_limit_leaves_strict_json_and_a_lesson_a_resume_keeps(  # type: ignore[no-untyped-def]
        write_job, results_dir, monkeypatch, capsys) -> None:
    """`usage.cost: 1.7e308` raises the estimate by an infinite factor: run.json stays strict
    JSON (jq and DuckDB refuse `Infinity`), and a resume still never reserves at the old one."""
    monkeypatch.setenv("LOOPBACK_KEY", "sk-or-v1-TESTSECRET-loopback")
    with Loopback(lambda body, n: completion(body["model"], cost_usd=1.7e308)) as server:
        path = _priced(write_job, server.base_url, budget=0.35)
        assert main(["run", str(path), "--out", str(results_dir), "--quiet"]) == 3
    capsys.readouterr()

    def refuse(constant: str) -> None:
        raise AssertionError(f"run.json holds {constant}: not strict JSON")

    text = next((results_dir / "money").glob("*/run.json")).read_text()
    raised = json.loads(text, parse_constant=refuse)["budget"]["raised_estimates"]
    assert raised == {"m": "inf"}
    budget = Budget(100.0, raised_estimates=raised)     # what a resume builds from run.json
    assert budget.estimate("m", 0.01) == float("inf")
    assert budget.reserve(budget.estimate("m", 0.01)) is None
