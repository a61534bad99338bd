"""Durable runs, in subprocesses over real HTTP: SIGKILL at random moments then resume, SIGINT
for a clean stop, resume refusing a changed plan."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

import runner
from runner.plan import Plan

ROOT = Path(__file__).resolve().parents[1]


def _wait_for(predicate, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Poll for a condition another process brings about (not a sleep standing in for it)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@contextlib.contextmanager
def _simulate(log: Path, *flags: str) -> Iterator[str]:
    """`runner simulate` in its own process, logging every request it receives; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "simulate", "--port", "0", "--ttft-s", "0.02",
         "--tokens-per-s", "400", "--request-log", str(log), *flags],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        yield line.split(" at ")[1].split(",")[0]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.fixture
def simulator_process(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    log = tmp_path / "requests.jsonl"
    with _simulate(log) as url:
        yield url, log


def _job(write_job, url: str, name: str = "durable", repeats: int = 30) -> Path:  # type: ignore[no-untyped-def]
    return write_job(f"""
        name: {name}
        providers:
          sim: {{base_url: "{url}", openrouter: true}}
        provider: sim
        models: [sim/fast-mini, sim/balanced]
        prompts: [alpha, beta, gamma, delta]
        params: {{max_tokens: 24}}
        repeats: {repeats}
        limits: {{concurrency: 8}}
    """)


_STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_orphans() -> Iterator[None]:
    """A failed assertion must not leave a runner process behind to disturb later tests."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        if proc.stderr is not None and not proc.stderr.closed:
            proc.communicate()
        proc.wait()


def _runner(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", *args, "--quiet"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _STARTED.append(proc)
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate()


def _sent_ids(log: Path) -> list[str]:
    return [json.loads(line)["request_id"] for line in log.read_text().splitlines()
            if line.strip()]


def test_sigkill_then_resume_loses_nothing_and_resends_nothing(
        write_job, results_dir: Path, simulator_process) -> None:  # type: ignore[no-untyped-def]
    url, log = simulator_process
    path = _job(write_job, url)
    planned = {r.request_id for r in Plan(runner.load_job(path))}
    rng = random.Random(20261125)
    job_dir = results_dir / "durable"
    for round_no in range(3):
        args = [str(path), "--out", str(results_dir)] + (["--resume"] if round_no else [])
        proc = _runner(*args)
        _wait_for(lambda p=proc: job_dir.is_dir() and any(job_dir.glob("*/parts/part-*.parquet"))
                  or p.poll() is not None)
        time.sleep(rng.uniform(0.05, 0.6))  # a random moment of the run, not a wait
        _kill(proc)
        run_dir = next(job_dir.iterdir())
        persisted = runner.read_results(run_dir)  # the public reader, mid-run files
        assert persisted["request_id"].is_unique
        ok_before = set(persisted.loc[persisted["status"] == "ok", "request_id"])
        assert ok_before  # rows finished before the kill are on disk
        sent_before = len(_sent_ids(log))
        # every persisted ok row stays done: the next run must not send it again
        resumed = _runner(str(path), "--out", str(results_dir), "--resume")
        _wait_for(lambda n=sent_before, p=resumed: len(_sent_ids(log)) > n + 5
                  or p.poll() is not None)
        _kill(resumed)
        again = set(_sent_ids(log)[sent_before:]) & ok_before
        assert not again, f"round {round_no}: {len(again)} finished requests sent again"
    final = _runner(str(path), "--out", str(results_dir), "--resume")
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    run_dir = next(job_dir.iterdir())
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert set(df["request_id"]) == planned and df["request_id"].is_unique
    assert set(df["status"]) == {"ok"}
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "completed" and len(manifest["resumes"]) >= 3


def test_sigint_stops_cleanly_with_130(write_job, results_dir: Path, simulator_process) -> None:  # type: ignore[no-untyped-def]
    url, log = simulator_process
    path = _job(write_job, url, name="interrupt", repeats=200)
    proc = _runner(str(path), "--out", str(results_dir))
    _wait_for(lambda: len(_sent_ids(log)) >= 20)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err
    run_dir = next((results_dir / "interrupt").iterdir())
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert 0 < len(df) < 1600 and df["request_id"].is_unique
    assert set(df["status"]) == {"ok"}          # in-flight requests finished within the grace
    assert sum(manifest["counts"].values()) == len(df)
    assert len(_sent_ids(log)) == len(df)       # nothing sent without its row


def test_resume_refuses_a_changed_plan(write_job, results_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from runner.cli import main

    path = write_job("""
        name: changing
        provider: simulated
        simulator: {models: [{id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}]}
        models: [sim/fast-mini]
        prompts: [{id: a, text: hello}]
    """)
    assert main(["run", str(path), "--out", str(results_dir), "--quiet"]) == 0
    path.write_text(path.read_text().replace("prompts: [{id: a, text: hello}]",
                                             "prompts: [{id: a, text: hello}, {id: b, text: x}]"))
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(results_dir), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "prompts added: b" in err and "--force" in err
    assert main(["run", str(path), "--out", str(results_dir), "--resume", "--force",
                 "--quiet"]) == 0
    run_dir = next((results_dir / "changing").iterdir())
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert sorted(df["prompt_id"]) == ["a", "b"]


def test_retry_errors_only_when_asked(write_job, results_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_job("""
        name: flaky
        provider: simulated
        simulator:
          models:
            - {id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0, faults: {error_rate: 0.5}}
        models: [sim/fast-mini]
        prompts: [a, b, c, d, e, f, g, h]
        limits: {retries: 0}
        params: {max_tokens: 8}
    """)
    first = runner.run(path, out_dir=results_dir)
    errors = set(first.rows.query("status == 'error'")["request_id"])
    assert errors
    same = runner.run(path, out_dir=results_dir, resume="latest")
    assert set(same.rows.query("status == 'error'")["request_id"]) == errors
    retried = runner.run(path, out_dir=results_dir, resume="latest", retry_errors=True)
    assert len(retried.rows) == 8 and retried.rows["request_id"].is_unique
    assert retried.run_dir == first.run_dir


def test_second_sigint_cancels_in_flight_and_resume_resends(write_job, results_dir: Path,  # type: ignore[no-untyped-def]
                                                            tmp_path: Path) -> None:
    log = tmp_path / "hanging.jsonl"
    job = """
        name: cancelled
        providers: {sim: {base_url: "URL", openrouter: true}}
        provider: sim
        models: [sim/fast-mini]
        prompts: [a, b, c, d, e, f]
        params: {max_tokens: 8}
        limits: {concurrency: 4}
    """
    with _simulate(log, "--hang-rate", "1") as hanging:  # every request hangs in flight
        path = write_job(job.replace("URL", hanging))
        proc = _runner(str(path), "--out", str(results_dir), "--grace-s", "60")
        _wait_for(lambda: len(_sent_ids(log)) == 4 if log.is_file() else False)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        assert "stopping" in proc.stderr.readline()  # the first signal was taken
        proc.send_signal(signal.SIGINT)  # the second: do not wait for the 60 s grace
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    run_dir = next((results_dir / "cancelled").iterdir())
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert len(df) == 4 and set(df["error_type"]) == {"interrupted"}
    assert set(df["request_id"]) == set(_sent_ids(log))
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    with _simulate(tmp_path / "healthy.jsonl") as healthy:  # the plan is the same
        path.write_text(path.read_text().replace(hanging, healthy))
        resumed = _runner(str(path), "--out", str(results_dir), "--resume")
        _, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert len(df) == 6 and set(df["status"]) == {"ok"}
