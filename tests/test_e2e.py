"""End to end: job file -> simulator over real loopback HTTP -> result files read back."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import runner
from runner.cli import main
from runner.result import COLUMNS

FAST = """
name: {name}
provider: simulated
simulator:
  models:
    - {{id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}}
    - {{id: sim/balanced, ttft_s: 0.01, tokens_per_s: 2000}}
    - {{id: sim/reasoner, ttft_s: 0, tokens_per_s: 0}}
models: [sim/fast-mini, sim/balanced, sim/reasoner]
vars: {{lang: [Python, Go]}}
prompts:
  - {{id: a, text: "Explain closures in {{{{ lang }}}}"}}
  - {{id: b, text: "Say hi"}}
params: {{max_tokens: 40, stream: {stream}}}
repeats: 2
limits: {{concurrency: 4}}
"""


def _job(write_job, name: str = "e2e", stream: bool = True) -> Path:  # type: ignore[no-untyped-def]
    return write_job(FAST.format(name=name, stream=str(stream).lower()))


@pytest.mark.parametrize("stream", [True, False])
def test_run_writes_the_column_contract(write_job, results_dir: Path, stream: bool) -> None:  # type: ignore[no-untyped-def]
    job = runner.load_job(_job(write_job, stream=stream))
    outcome = runner.run(job, out_dir=results_dir)
    assert outcome.status == "completed"
    assert outcome.run_dir.parent == results_dir / "e2e"
    df = pd.read_parquet(outcome.run_dir / "requests.parquet")
    # the fixed columns, then one per var of the job (issue 12)
    assert tuple(df.columns) == (*COLUMNS, "var_lang")
    assert len(df) == 3 * (2 + 1) * 2 == df["request_id"].nunique()
    assert set(df["status"]) == {"ok"}
    assert isinstance(df["model"].dtype, pd.CategoricalDtype)
    assert isinstance(df["status"].dtype, pd.CategoricalDtype)
    assert str(df["started_at"].dt.tz) == "UTC" and str(df["ended_at"].dt.tz) == "UTC"
    assert str(df["prompt_tokens"].dtype) == "Int64"
    assert (df["ended_at"] >= df["started_at"]).all()
    assert (df["cost_source"] == "provider").all() and (df["cost_usd"] > 0).all()
    assert (df["latency_s"] > 0).all()
    assert (df["completion_tokens"] <= 40).all()
    assert df["generation_id"].str.len().gt(0).all()
    assert (df["upstream"] == "SimCloud").all()
    reasoner = df[df["model"] == "sim/reasoner"]
    assert (reasoner["reasoning_tokens"] > 0).all()
    if stream:
        assert (df["ttft_s"] > 0).all() and (df["ttft_s"] <= df["latency_s"]).all()
        multi = df[df["completion_tokens"] > 1]
        expected = (multi["latency_s"] - multi["ttft_s"]) / (multi["completion_tokens"] - 1)
        assert (multi["tpot_s"] - expected).abs().max() < 1e-9
    else:
        assert df["ttft_s"].isna().all()  # not measurable without a stream
    csv = pd.read_csv(outcome.run_dir / "requests.csv")
    assert len(csv) == len(df) and list(csv.columns) == [*COLUMNS, "var_lang"]
    summary = pd.read_csv(outcome.run_dir / "summary.csv")
    assert set(summary["model"]) == {"sim/fast-mini", "sim/balanced", "sim/reasoner"}
    assert summary["n"].sum() == len(df)
    manifest = json.loads((outcome.run_dir / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["counts"]["ok"] == len(df)
    assert manifest["totals"]["cost_usd"] == pytest.approx(df["cost_usd"].sum())
    assert manifest["planned_requests"] == len(df)
    client = manifest["client"]  # the client's own health, to judge the latencies by
    # lag is clamped at 0, so `>= 0` could not fail: the p99 is bounded by the worst wake-up
    assert client["cpu_s"] > 0 and client["loop_lag_p99_ms"] <= client["loop_lag_max_ms"]
    assert isinstance(client["saturated"], bool)


def test_same_seed_same_text_and_ids(write_job, results_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = _job(write_job)
    first = runner.run(path, out_dir=results_dir).rows.sort_values("request_id")
    second = runner.run(path, out_dir=results_dir).rows.sort_values("request_id")
    assert list(first["request_id"]) == list(second["request_id"])
    assert list(first["response_text"]) == list(second["response_text"])
    history = runner.read_results(results_dir / "e2e")
    assert len(history) == 2 * len(first) and history["run_id"].nunique() == 2


def test_failed_requests_are_rows_not_crashes(write_job, results_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_job("""
        name: faults
        provider: simulated
        simulator:
          models:
            - id: sim/fast-mini
              ttft_s: 0
              tokens_per_s: 0
              faults: {error_rate: 0.3, stream_error_rate: 0.2, malformed_rate: 0.1}
        models: [sim/fast-mini]
        prompts: [one, two, three, four, five]
        params: {max_tokens: 20}
        repeats: 8
        limits: {retries: 0, concurrency: 8}
    """)
    df = runner.run(path, out_dir=results_dir).rows
    assert len(df) == 40 and df["request_id"].nunique() == 40
    errors = df[df["status"] == "error"]
    assert len(errors) > 0 and errors["error_type"].notna().all()
    assert set(errors["error_type"]) <= {"server_error", "bad_gateway", "unavailable",
                                         "stream_error", "malformed"}
    assert (df.loc[df["status"] == "ok", "error_type"].isna()).all()


def test_custom_openai_provider_gets_usage_via_stream_options(write_job, results_dir) -> None:  # type: ignore[no-untyped-def]
    # the simulator's OpenAI dialect rejects OpenRouter-only fields and sends usage only when
    # stream_options.include_usage is set: prices then come from its /models (price_table)
    from runner.simulator import DEFAULT_MODELS, Simulator

    fast = [m.__class__(**{**{f: getattr(m, f) for f in m.__slots__}, "ttft_s": 0.0,
                           "tokens_per_s": 0.0}) for m in DEFAULT_MODELS]
    with Simulator(fast) as sim:
        path = write_job(f"""
            name: openai-dialect
            providers:
              local: {{base_url: "{sim.openai_base_url}", stream_usage: true}}
            provider: local
            models: [sim/fast-mini]
            prompts: [hello, world]
            params: {{max_tokens: 16}}
        """)
        df = runner.run(path, out_dir=results_dir).rows
    assert set(df["status"]) == {"ok"}
    assert (df["completion_tokens"] > 0).all()
    assert (df["cost_source"] == "price_table").all() and (df["cost_usd"] > 0).all()
    assert df["upstream"].isna().all()


def test_cli_run_prints_summary_and_paths(write_job, results_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["run", str(_job(write_job)), "--out", str(results_dir)])
    out = capsys.readouterr().out
    assert code == 0
    assert "sim/fast-mini" in out and "requests.parquet" in out
    assert str(results_dir / "e2e") in out.replace("\n", "")


def test_cli_plan_json(write_job, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["plan", str(_job(write_job)), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["requests"] == 18
    assert body["per_model"] == {"sim/fast-mini": 6, "sim/balanced": 6, "sim/reasoner": 6}


def test_cli_models_lists_simulated_prices(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["models", "--provider", "simulated"]) == 0
    out = capsys.readouterr().out
    assert "sim/premium-large" in out and "15" in out  # $15 per million completion tokens


def test_missing_key_stops_before_sending(write_job, results_dir, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    path = write_job("""
        name: needs-key
        models: [openai/gpt-4o-mini]
        prompts: [hi]
    """)
    assert main(["run", str(path), "--out", str(results_dir)]) == 2
    err = capsys.readouterr().err
    assert "OPENROUTER_API_KEY" in err and err.count("\n") == 1
    assert not any(results_dir.iterdir())


def test_unknown_simulated_model_is_a_job_error(write_job, results_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    path = write_job("""
        name: typo
        provider: simulated
        models: [sim/fast-mni]
        prompts: [hi]
    """)
    assert main(["run", str(path), "--out", str(results_dir)]) == 2
    err = capsys.readouterr().err
    assert "models[0].id" in err and "sim/fast-mni" in err
