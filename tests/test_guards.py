"""Guards over real HTTP against the simulator's fault injection: 429 pauses, retries, a bad
key, running out of credits, and a budget that is never overspent; and against a loopback server
that asks to wait longer than `limits.max_retry_wait_s`."""

from __future__ import annotations

import json
import os
import re
import textwrap
import time
from pathlib import Path

import anyio
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runner
from runner.cli import main
from runner.config import load_job
from runner.engine import run_job
from runner.simulator import DEFAULT_MODELS, Account, Faults, SimModel, Simulator

from .loopback import Loopback, completion, job_yaml, rate_limited

FAST = [SimModel(**{**{f: getattr(m, f) for f in m.__slots__}, "ttft_s": 0.0,
                    "tokens_per_s": 0.0}) for m in DEFAULT_MODELS]


def _with_faults(model_id: str, faults: Faults) -> list[SimModel]:
    return [SimModel(**{**{f: getattr(m, f) for f in m.__slots__}, "faults": faults})
            if m.id == model_id else m for m in FAST]


def _custom_job(write_job, url: str, body: str, key_env: str = "SIM_TEST_KEY") -> Path:  # type: ignore[no-untyped-def]
    head = textwrap.dedent(f"""
        name: guards
        providers:
          sim: {{base_url: "{url}", api_key_env: {key_env}, openrouter: true}}
        provider: sim
    """)
    return write_job(head + textwrap.dedent(body))


def test_429_storm_pauses_every_worker(write_job, results_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SIM_TEST_KEY", "sim-test-key")
    faults = Faults(rate_limit_rate=0.25, retry_after_s=1.0)
    with Simulator(_with_faults("sim/fast-mini", faults), seed=3) as sim:
        path = _custom_job(write_job, sim.base_url, """
            models: [sim/fast-mini]
            prompts: [a, b, c, d, e, f]
            params: {max_tokens: 8}
            repeats: 2
            limits: {concurrency: 4, retries: 6}
        """)
        df = runner.run(path, out_dir=results_dir).rows
        arrivals = sim.arrivals()
    assert len(df) == 12 and set(df["status"]) == {"ok"}
    storms = [a for a in arrivals if a.status == 429]
    assert storms, "the seed must give some 429s"
    assert df["attempts"].max() > 1
    for hit in storms:  # nothing is sent while the pause the server asked for runs
        # (allow 50 ms for requests already on the wire when the 429 left the server)
        early = [a for a in arrivals
                 if hit.t_monotonic + 0.05 < a.t_monotonic < hit.t_monotonic + 0.95]
        assert not early, f"{len(early)} requests arrived during a 1 s Retry-After pause"


def test_5xx_rows_end_ok_or_classified(write_job, results_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SIM_TEST_KEY", "sim-test-key")
    faults = Faults(error_rate=0.2)
    with Simulator(_with_faults("sim/fast-mini", faults), seed=5) as sim:
        path = _custom_job(write_job, sim.base_url, """
            models: [sim/fast-mini]
            prompts: [one, two, three, four, five, six, seven, eight, nine, ten]
            params: {max_tokens: 8}
            repeats: 5
            limits: {concurrency: 8, retries: 3}
        """)
        outcome = runner.run(path, out_dir=results_dir)
        sent = len(sim.arrivals())
    df = outcome.rows
    assert len(df) == 50 and df["request_id"].nunique() == 50  # never a missing row
    assert df["status"].isin(["ok", "error"]).all()
    errors = df[df["status"] == "error"]
    assert errors["error_type"].isin(["server_error", "bad_gateway", "unavailable"]).all()
    assert (errors["attempts"] == 4).all()  # errors only after every retry was spent
    assert df["attempts"].sum() == sent    # every attempt is counted
    assert (df["wall_s"] >= df["latency_s"]).all()


def test_bad_key_aborts_after_a_handful(write_job, results_dir, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SIM_TEST_KEY", "sk-bad-0123456789")
    with Simulator(FAST, account=Account(rejected_keys={"sk-bad-0123456789"})) as sim:
        path = _custom_job(write_job, sim.base_url, """
            models: [sim/fast-mini, sim/balanced]
            prompts: [a, b, c, d, e, f, g, h, i, j]
            params: {max_tokens: 8}
            repeats: 10
            limits: {concurrency: 4}
        """)
        code = main(["run", str(path), "--out", str(results_dir), "--quiet"])
        sent = len(sim.arrivals())
    err = capsys.readouterr().err
    assert code == 2
    assert "SIM_TEST_KEY" in err and "401" in err and "sk-bad" not in err
    assert sent <= 8, f"{sent} requests sent with a rejected key"
    run_dir = next((results_dir / "guards").iterdir())
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert len(df) == 200  # every planned request has its row
    assert set(df.loc[df["status"] == "skipped", "error_type"]) == {"auth"}
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"


def test_402_stops_scheduling_for_the_provider(write_job, results_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SIM_TEST_KEY", "sim-test-key")
    # premium: 64 tokens x $15/M ~ $0.001 a request; credits for about ten of them
    with Simulator(FAST, account=Account(credits_usd=0.01)) as sim:
        path = _custom_job(write_job, sim.base_url, """
            models: [sim/premium-large]
            prompts: [a, b, c, d, e, f, g, h, i, j]
            params: {max_tokens: 64}
            repeats: 10
            limits: {concurrency: 4}
        """)
        df = runner.run(path, out_dir=results_dir).rows
        arrivals = sim.arrivals()
    first_402 = min(i for i, a in enumerate(arrivals) if a.status == 402)
    assert len(arrivals) - first_402 <= 4  # only what was already in flight
    assert len(df) == 100
    assert (df["error_type"] == "insufficient_credits").sum() >= 1
    skipped = df[df["status"] == "skipped"]
    assert len(skipped) > 50 and set(skipped["error_type"]) == {"insufficient_credits"}


def test_cost_cap_skips_expensive_requests(write_job, results_dir) -> None:  # type: ignore[no-untyped-def]
    path = write_job("""
        name: cap
        provider: simulated
        simulator: {models: [{id: sim/premium-large, ttft_s: 0, tokens_per_s: 0},
                             {id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}]}
        models: [sim/premium-large, sim/fast-mini]
        prompts: [hello]
        params: {max_tokens: 200}
        max_cost_per_request_usd: 0.001
    """)
    df = runner.run(path, out_dir=results_dir).rows.set_index("model", drop=False)
    assert df.loc["sim/premium-large", "status"] == "skipped"        # 200 x $15/M = $0.003
    assert df.loc["sim/premium-large", "error_type"] == "cost_cap"
    assert df.loc["sim/fast-mini", "status"] == "ok"


BUDGET_JOB = """
name: budget
provider: simulated
simulator:
  models:
    - {{id: sim/premium-large, ttft_s: 0, tokens_per_s: 0,
       usd_per_mtok_prompt: {prompt_price}, usd_per_mtok_completion: {completion_price}}}
models: [sim/premium-large]
prompts:
  - {{id: p, text: "{text} {{{{ n }}}}", vars: {{n: {numbers}}}}}
params: {{max_tokens: {max_tokens}}}
limits: {{concurrency: {concurrency}, retries: 0}}
budget_usd: {budget}
"""


def _budget_run(write_job, results_dir: Path, **values: object) -> tuple[pd.DataFrame, dict]:  # type: ignore[no-untyped-def, type-arg]
    path = write_job(BUDGET_JOB.format(**values))
    outcome = runner.run(path, out_dir=results_dir)
    return outcome.rows, outcome.manifest["budget"]


def test_budget_spends_at_least_90_percent_and_never_more(write_job, results_dir) -> None:  # type: ignore[no-untyped-def]
    df, budget = _budget_run(
        write_job, results_dir, prompt_price=3, completion_price=15, text="Write a poem",
        numbers=list(range(400)), max_tokens=64, concurrency=16, budget=0.05)
    spent = df["cost_usd"].sum()
    assert spent <= 0.05
    assert spent >= 0.9 * 0.05, f"spent only {spent / 0.05:.0%} of the budget"
    assert budget["spent_usd"] == pytest.approx(spent)
    assert 0.9 <= budget["utilisation"] <= 1.0
    skipped = df[df["status"] == "skipped"]
    assert len(skipped) > 0 and set(skipped["error_type"]) == {"budget"}
    assert not df["cost_over_estimate"].fillna(False).any()


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt_price=st.sampled_from([0, 0.1, 3, 30]),
       completion_price=st.sampled_from([0.4, 15, 60]),
       words=st.integers(1, 200), max_tokens=st.integers(1, 300),
       concurrency=st.sampled_from([1, 4, 32, 128]),
       budget=st.floats(0.0005, 0.05))
def test_budget_is_never_overspent(write_job, results_dir, prompt_price, completion_price,  # type: ignore[no-untyped-def]
                                   words, max_tokens, concurrency, budget) -> None:
    df, figures = _budget_run(
        write_job, results_dir, prompt_price=prompt_price, completion_price=completion_price,
        text="word " * words, numbers=list(range(60)), max_tokens=max_tokens,
        concurrency=concurrency, budget=budget)
    assert df["cost_usd"].sum() <= budget + 1e-12
    assert figures["spent_usd"] <= budget + 1e-12
    assert figures["utilisation"] is not None and 0 <= figures["utilisation"] <= 1
    assert len(df) == 60


def test_key_never_reaches_files_or_output(write_job, results_dir, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    secret = "sk-or-v1-RECOGNISABLE-fake-key-4242"
    monkeypatch.setenv("SIM_TEST_KEY", secret)
    with Simulator(_with_faults("sim/fast-mini", Faults(error_rate=0.3))) as sim:
        ok_job = _custom_job(write_job, sim.base_url, """
            models: [sim/fast-mini, sim/balanced]
            prompts: [a, b, c]
            params: {max_tokens: 8}
            limits: {retries: 0}
        """)
        assert main(["run", str(ok_job), "--out", str(results_dir)]) == 0
    with Simulator(FAST, account=Account(rejected_keys={secret})) as sim:
        bad_job = _custom_job(write_job, sim.base_url, """
            models: [sim/fast-mini]
            prompts: [a, b, c]
        """)
        assert main(["run", str(bad_job), "--out", str(results_dir)]) == 2
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    files = [p for p in results_dir.rglob("*") if p.is_file()]
    assert len(files) >= 8
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    assert os.environ["SIM_TEST_KEY"] == secret


@pytest.mark.parametrize(("stream", "limits", "kind"), [
    (True, "{timeout_s: 30, stall_timeout_s: 0.3, retries: 0}", "stall"),
    (False, "{timeout_s: 0.3, retries: 0}", "timeout"),
])
def test_hanging_requests_end_as_stall_or_timeout(write_job, results_dir, stream, limits,  # type: ignore[no-untyped-def]
                                                  kind) -> None:
    path = write_job(f"""
        name: hang
        provider: simulated
        simulator:
          models: [{{id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0, faults: {{hang_rate: 1}}}}]
        models: [sim/fast-mini]
        prompts: [a, b]
        params: {{max_tokens: 8, stream: {str(stream).lower()}}}
        limits: {limits}
    """)
    df = runner.run(path, out_dir=results_dir).rows
    assert set(df["status"]) == {"error"} and set(df["error_type"]) == {kind}
    assert df["error_message"].str.contains("0.3 s").all()


# a run that obeyed any of the hints below would still be asleep when this ends
NO_SLEEP_S = 30.0

TWO_MODELS = """
models: [limited, fine]
prompts: [a, b, c]
params: {max_tokens: 8, stream: false}
limits: {concurrency: 1, retries: 3}
"""


@pytest.mark.parametrize("header", ["Retry-After", "X-RateLimit-Reset"])
async def test_a_day_long_reset_stops_that_model_only(write_job, results_dir, monkeypatch,  # type: ignore[no-untyped-def]
                                                      header: str) -> None:
    monkeypatch.setenv("LOOPBACK_KEY", "sk-or-v1-TESTSECRET-loopback")
    # OpenRouter's free-model daily limit: a reset a day away, in epoch milliseconds
    hint = {header: "86400" if header == "Retry-After"
            else str(int((time.time() + 86_400) * 1000))}

    def reply(body, n):  # type: ignore[no-untyped-def]
        if body["model"] == "limited":
            return rate_limited(hint)
        return completion(body["model"], cost_usd=0.0)

    with Loopback(reply) as server:
        job = load_job(write_job(job_yaml(server.base_url, TWO_MODELS)))
        with anyio.fail_after(NO_SLEEP_S):
            outcome = await run_job(job, out_dir=results_dir)
        assert server.sent_to("limited") == 1      # neither retried nor sent again
        assert server.sent_to("fine") == 3         # the other model was not paused
    df = outcome.rows.sort_values("index")
    limited, fine = df[df["model"] == "limited"], df[df["model"] == "fine"]
    assert set(fine["status"]) == {"ok"}
    first = limited.iloc[0]
    assert first["status"] == "error" and first["error_type"] == "rate_limited"
    assert first["attempts"] == 1 and "max_retry_wait_s" in first["error_message"]
    assert re.search(r"wait 86[34]\d\d s", first["error_message"])  # the hint, in seconds
    rest = limited.iloc[1:]
    assert set(rest["status"]) == {"skipped"} and set(rest["error_type"]) == {"rate_limited"}
    assert rest["error_message"].str.contains("'limited'").all()
    assert outcome.manifest["stopped"] == {"model:limited": "rate_limited"}


@pytest.mark.parametrize("always", [False, True])
async def test_a_hint_over_max_retry_wait_ends_the_request(write_job, results_dir,  # type: ignore[no-untyped-def]
                                                           monkeypatch, always: bool) -> None:
    monkeypatch.setenv("LOOPBACK_KEY", "sk-or-v1-TESTSECRET-loopback")

    def reply(body, n):  # type: ignore[no-untyped-def]
        if body["model"] == "limited" and (always or n == 0):
            return rate_limited({"Retry-After": "600"})
        return completion(body["model"], cost_usd=0.0)

    with Loopback(reply) as server:
        body = TWO_MODELS.replace("retries: 3", "retries: 3, max_retry_wait_s: 60")
        job = load_job(write_job(job_yaml(server.base_url, body)))
        with anyio.fail_after(NO_SLEEP_S):
            outcome = await run_job(job, out_dir=results_dir)
        assert server.sent_to("limited") == (2 if always else 3)   # none of them retried
        assert server.sent_to("fine") == 3
    df = outcome.rows.sort_values("index")
    limited = df[df["model"] == "limited"]
    first = limited.iloc[0]
    assert first["error_type"] == "rate_limited" and first["attempts"] == 1
    assert "600 s" in first["error_message"] and "max_retry_wait_s = 60" in first["error_message"]
    if not always:  # once is a passing limit: the model goes on
        assert list(limited["status"]) == ["error", "ok", "ok"]
        assert outcome.manifest["stopped"] == {}
    else:  # twice in a row: sending more would only collect more of them
        assert list(limited["status"]) == ["error", "error", "skipped"]
        assert limited.iloc[2]["error_type"] == "rate_limited"
        assert "600 s" in limited.iloc[2]["error_message"]
        assert outcome.manifest["stopped"] == {"model:limited": "rate_limited"}


def test_a_stopped_model_is_named_at_the_end(write_job, results_dir, monkeypatch,  # type: ignore[no-untyped-def]
                                             capsys) -> None:
    monkeypatch.setenv("LOOPBACK_KEY", "sk-or-v1-TESTSECRET-loopback")

    def reply(body, n):  # type: ignore[no-untyped-def]
        if body["model"] == "limited":
            return rate_limited({"Retry-After": "5"})
        return completion(body["model"], cost_usd=0.0)

    with Loopback(reply) as server:  # twice more than max_retry_wait_s: the model stops
        body = TWO_MODELS.replace("retries: 3", "retries: 0, max_retry_wait_s: 1")
        path = write_job(job_yaml(server.base_url, body))
        assert main(["run", str(path), "--out", str(results_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "stopped: sending to model limited (rate_limited" in out
