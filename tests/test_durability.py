"""Durable runs, in subprocesses over real HTTP: SIGKILL at random moments then resume, SIGINT
for a clean stop, resume refusing a changed plan."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pandas as pd
import pytest
from aiohttp import web

import runner
from runner.plan import Plan

from .runs import runner_process, simulator, wait_for

ROOT = Path(__file__).resolve().parents[1]


def _simulate(log: Path, *flags: str) -> contextlib.AbstractContextManager[str]:
    """`runner simulate`, logging every request it receives; its OpenRouter-dialect URL."""
    return simulator("--ttft-s", "0.02", "--tokens-per-s", "400", "--request-log", str(log),
                     *flags, dialect="OpenRouter")


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


def _runner(*args: str, **popen: object) -> subprocess.Popen[str]:
    """`runner run ARGS --quiet`, its stderr captured (and stdout dropped)."""
    return runner_process("run", *args, "--quiet", stdout=subprocess.DEVNULL, **popen)


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
        wait_for(lambda p=proc: job_dir.is_dir() and any(job_dir.glob("*/parts/part-*.parquet"))
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
        wait_for(lambda n=sent_before, p=resumed: len(_sent_ids(log)) > n + 5
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
    wait_for(lambda: len(_sent_ids(log)) >= 20)
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
        wait_for(lambda: len(_sent_ids(log)) == 4 if log.is_file() else False)
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


# -- rows, money and the run directory under stress ---------------------------------------------

async def _endless_stream_server() -> tuple[web.AppRunner, str]:
    """A loopback server whose chat completion streams one token every few ms, for ever."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "slow/endless"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"id": "gen-1", "object": "chat.completion.chunk", "model": "slow/endless",
                 "choices": [{"index": 0, "delta": {"content": "la "}, "finish_reason": None}]}
        while True:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.005)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    server = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    return server, f"http://127.0.0.1:{server.addresses[0][1]}/v1"


async def test_a_stream_cut_by_timeout_keeps_its_row(write_job, results_dir: Path,  # type: ignore[no-untyped-def]
                                                     monkeypatch) -> None:
    server, url = await _endless_stream_server()
    try:
        path = write_job(f"""
            name: endless
            providers: {{slow: {{base_url: "{url}", api_key_env: SLOW_TEST_KEY}}}}
            provider: slow
            models: [slow/endless]
            prompts: [a]
            params: {{max_tokens: 8}}
            limits: {{timeout_s: 0.3, retries: 0}}
        """)
        monkeypatch.setenv("SLOW_TEST_KEY", "sk-or-v1-TESTSECRET-not-a-key")
        # flush_s=0: the flusher takes rows at every turn of the loop, so it is taking the last
        # row just as the pool ends: the moment a row used to be lost
        outcome = await runner.run_job(runner.load_job(path), out_dir=results_dir, flush_s=0)
    finally:
        await server.cleanup()
    manifest = json.loads((outcome.run_dir / "run.json").read_text())
    df = pd.read_parquet(outcome.run_dir / "requests.parquet")
    assert len(df) == 1 and df["error_type"].tolist() == ["timeout"]
    assert manifest["counts"] == {"error": 1}


async def test_a_flush_cancelled_on_its_way_to_the_thread_still_writes(tmp_path: Path) -> None:
    """The pool is cancelled (end of run, second Ctrl-C) just as a flush took its rows."""
    from types import SimpleNamespace

    from runner.collect import Collector
    from runner.result import Result
    from runner.worker import flush

    collector = Collector(tmp_path / "run")
    collector.add(Result(run_id="r", job="j", request_id="id-1", index=0, model="m",
                         model_id="m", provider="p", prompt_id="q", repeat=0, vars_json="{}"))
    with anyio.CancelScope() as scope:
        scope.cancel()
        await flush(SimpleNamespace(collector=collector))  # type: ignore[arg-type]
    assert collector.pending == 0
    assert pd.read_parquet(collector.finish())["request_id"].tolist() == ["id-1"]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_sigkill_of_a_budgeted_run_never_overspends(write_job, results_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Killed with requests in flight and rows not yet flushed, then resumed: what the server
    billed stays within the budget (every request costs exactly its worst case here)."""
    from runner.simulator import SimModel, Simulator

    fee = 0.001
    model = SimModel(id="sim/flat-fee", name="flat fee", prompt_usd_per_token=0.0,
                     completion_usd_per_token=0.0, request_usd=fee, ttft_s=0.05,
                     tokens_per_s=0.0)
    budget = 20.5 * fee
    with Simulator([model]) as sim:
        path = write_job(f"""
            name: billed
            providers: {{sim: {{base_url: "{sim.base_url}", openrouter: true}}}}
            provider: sim
            models: [sim/flat-fee]
            prompts: [a, b, c, d, e, f]
            params: {{max_tokens: 8}}
            repeats: 10
            budget_usd: {budget}
            limits: {{concurrency: 8}}
        """)

        def billed() -> int:
            return sum(1 for a in sim.arrivals() if a.status == 200)

        for round_no in range(2):
            before = billed()
            proc = _runner(str(path), "--out", str(results_dir),
                            *(["--resume"] if round_no else []))
            wait_for(lambda b=before, p=proc: billed() >= b + 6 or p.poll() is not None)
            _kill(proc)  # before the first flush: the rows of those requests are not on disk
        final = _runner(str(path), "--out", str(results_dir), "--resume")
        _, err = final.communicate(timeout=120)
        assert "Traceback" not in err, err
        served = billed()
    assert served * fee <= budget + 1e-12, f"the server billed {served} requests of ${fee}"
    run_dir = next((results_dir / "billed").iterdir())
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["budget"]["spent_usd"] >= served * fee - 1e-9  # never counts less than billed
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert len(df) == 60 and df["request_id"].is_unique


def test_a_second_process_on_a_running_run_is_refused(write_job, results_dir: Path,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path) -> None:
    log = tmp_path / "hang.jsonl"
    with _simulate(log, "--hang-rate", "1") as url:
        path = _job(write_job, url, name="busy", repeats=2)
        first = _runner(str(path), "--out", str(results_dir))
        wait_for(lambda: log.is_file() and len(_sent_ids(log)) >= 8)
        second = _runner(str(path), "--out", str(results_dir), "--resume")
        _, err = second.communicate(timeout=60)
        sent = len(_sent_ids(log))
        _kill(first)
    assert second.returncode == 2
    assert f"pid {first.pid}" in _one_error_line(err)
    assert sent == 8  # the second process sent nothing


def test_a_truncated_part_is_reported_and_its_requests_sent_again(  # type: ignore[no-untyped-def]
        write_job, results_dir: Path, simulator_process) -> None:
    url, log = simulator_process
    path = _job(write_job, url, name="torn", repeats=60)  # ~5 s: parts come every second
    proc = _runner(str(path), "--out", str(results_dir))
    job_dir = results_dir / "torn"
    wait_for(lambda: len(list(job_dir.glob("*/parts/part-*.parquet"))) >= 2
              or proc.poll() is not None)
    _kill(proc)
    part = sorted(job_dir.glob("*/parts/part-*.parquet"))[0]
    lost = set(pd.read_parquet(part)["request_id"])
    part.write_bytes(part.read_bytes()[:100])  # cut short, as a crashed disk may leave it
    with pytest.warns(UserWarning, match=part.name):  # the public reader names it, no crash
        runner.read_results(part.parents[1])
    resumed = _runner(str(path), "--out", str(results_dir), "--resume")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert part.name in err and "Traceback" not in err
    df = pd.read_parquet(part.parents[1] / "requests.parquet")
    assert len(df) == 480 and df["request_id"].is_unique and set(df["status"]) == {"ok"}
    sent = _sent_ids(log)
    assert all(sent.count(rid) == 2 for rid in lost)  # sent again: their rows were lost


def _file_size_limit(limit_bytes: int) -> None:
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


def test_a_write_that_fails_ends_the_run_failed_in_one_line_and_resume_completes(  # type: ignore[no-untyped-def]
        write_job, results_dir: Path, simulator_process) -> None:
    url, log = simulator_process
    path = _job(write_job, url, name="full", repeats=25)
    proc = _runner(str(path), "--out", str(results_dir),
                    preexec_fn=lambda: _file_size_limit(60_000))  # parts fit, the merge does not
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    line = _one_error_line(err)
    assert "cannot write" in line and "--resume" in line and str(results_dir) in line
    run_dir = next((results_dir / "full").iterdir())
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "failed"
    sent_before = len(_sent_ids(log))
    resumed = _runner(str(path), "--out", str(results_dir), "--resume")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert len(df) == 200 and df["request_id"].is_unique and set(df["status"]) == {"ok"}
    assert len(_sent_ids(log)) == sent_before  # every row was kept: nothing sent again
    spent = json.loads((run_dir / "run.json").read_text())["budget"]["spent_usd"]
    assert spent == pytest.approx(df["cost_usd"].sum())  # the journal survived the failure


def test_an_output_folder_that_cannot_exist_is_one_line(write_job, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from runner.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = write_job("""
        name: nowhere
        provider: simulated
        simulator: {models: [{id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}]}
        models: [sim/fast-mini]
        prompts: [a]
    """)
    proc = subprocess.run([sys.executable, "-m", "runner", "run", str(path), "--out",
                           str(blocker / "results"), "--quiet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "not a folder" in _one_error_line(proc.stderr) and str(blocker) in proc.stderr
    assert main  # the same entry point the console script runs


def test_ctrl_c_during_the_final_files_still_ends_run_json(write_job, results_dir: Path,  # type: ignore[no-untyped-def]
                                                           tmp_path: Path) -> None:
    log = tmp_path / "hang.jsonl"
    with _simulate(log, "--hang-rate", "1") as url:
        path = _job(write_job, url, name="impatient", repeats=50)
        proc = _runner(str(path), "--out", str(results_dir), "--grace-s", "60")
        wait_for(lambda: log.is_file() and len(_sent_ids(log)) >= 8)
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        assert "stopping" in proc.stderr.readline()
        run_json = next((results_dir / "impatient").iterdir()) / "run.json"
        give_up = time.monotonic() + 60
        while proc.poll() is None and '"running"' in run_json.read_text():
            assert time.monotonic() < give_up, "the run never ended"
            proc.send_signal(signal.SIGINT)  # keep pressing Ctrl-C, through the final write
            time.sleep(0.002)  # the pace of a key held down, not a wait for something
        _, err = proc.communicate(timeout=30)
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err
    run_dir = run_json.parent
    manifest = json.loads(run_json.read_text())
    assert manifest["status"] == "interrupted"
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert set(df["request_id"]) == set(_sent_ids(log))


def test_a_run_from_before_the_journal_resumes_with_the_spend_of_its_rows(  # type: ignore[no-untyped-def]
        write_job, results_dir: Path) -> None:
    path = write_job("""
        name: elder
        provider: simulated
        simulator: {models: [{id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}]}
        models: [sim/fast-mini]
        prompts: [a, b, c, d]
        params: {max_tokens: 16}
        budget_usd: 1.0
    """)
    first = runner.run(path, out_dir=results_dir)
    (first.run_dir / "spend.journal").unlink()  # as a run written before the journal
    cost = float(first.rows["cost_usd"].sum())
    assert cost > 0
    again = runner.run(path, out_dir=results_dir, resume="latest")
    assert again.manifest["budget"]["spent_usd"] == pytest.approx(cost)
    journal = (first.run_dir / "spend.journal").read_text().split()  # carried over, compacted
    assert journal[0] == "c" and float(journal[1]) == pytest.approx(cost)
