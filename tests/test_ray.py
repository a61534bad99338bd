"""The Ray backend against one simulator that every worker sends to: the same rows as one
process, the budget held by the ledger when a worker is killed mid-lease, a 429's pause shared by
every worker, and a resume of an interrupted Ray run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import runner
from runner.simulator import DEFAULT_MODELS, Account, Faults, Simulator

from .conftest import ROOT
from .s3 import FAKE_AWS, s3_prefix

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

# the workers' own environment (the driver never ships a key): fake keys only they see
REJECTED_KEY_ENV, REJECTED_KEY = "RAY_TEST_REJECTED_KEY", "sk-or-v1-TESTSECRET-rejected-0123"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One small local Ray instance for the whole session (2 CPUs, a capped object store)."""
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False,
             log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), REJECTED_KEY_ENV: REJECTED_KEY,
                                       **FAKE_AWS}})
    yield
    ray.shutdown()


@pytest.fixture
def s3_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)
    with s3_prefix() as url:
        yield url


class _Tripwire(Account):
    """An unlimited account that sets `event` when the `after`-th request is charged."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.seen = after, 0
        self.event = threading.Event()

    def charge(self, *args: Any, **kwargs: Any) -> str | None:
        self.seen += 1
        if self.seen >= self.after:
            self.event.set()
        return super().charge(*args, **kwargs)


def _models(ttft_s: float = 0.0, **faults: float) -> list[Any]:
    return [dataclasses.replace(m, ttft_s=ttft_s, tokens_per_s=0.0, faults=Faults(**faults))
            for m in DEFAULT_MODELS]


def _job(write_job: Callable[..., Path], sim: Simulator, *, repeats: int = 3,
         extra: str = "") -> Path:
    return write_job(f"""
        name: onray
        providers:
          local: {{base_url: "{sim.openai_base_url}", stream_usage: true}}
        provider: local
        models: [sim/fast-mini, sim/balanced]
        vars: {{n: [1, 2, 3, 4, 5]}}
        prompts:
          - {{id: a, text: "Count to {{{{ n }}}}"}}
        params: {{max_tokens: 16, stream: false}}
        repeats: {repeats}
        {extra.replace(chr(10), chr(10) + " " * 8)}
    """)


COMPARED = ["request_id", "index", "model", "status", "response_text", "prompt_tokens",
            "completion_tokens", "cost_usd"]


def test_ray_rows_equal_one_process(ray_cluster: None, write_job: Callable[..., Path],
                                    results_dir: Path) -> None:
    with Simulator(_models()) as sim:
        path = _job(write_job, sim, extra="limits: {concurrency: 4}")
        local = runner.run(path, out_dir=results_dir).rows
        outcome = runner.run(path, out_dir=results_dir, ray="", ray_workers=2)
    assert outcome.status == "completed"
    on_ray = runner.read_results(outcome.run_dir)
    assert len(on_ray) == len(local) == 30
    assert list(on_ray.columns) == list(local.columns)   # the job's var columns too
    assert on_ray[COMPARED].astype(str).values.tolist() == \
        local[COMPARED].astype(str).values.tolist()
    # both workers took part, each from its own folder, merged into one file
    manifest = json.loads((outcome.run_dir / "run.json").read_text())
    assert manifest["workers"] == 2 and manifest["status"] == "completed"
    assert manifest["budget"]["leases_granted"] > 0
    assert not list((outcome.run_dir / "shards").rglob("*.parquet"))


def test_budget_holds_when_a_worker_is_killed_mid_lease(
        ray_cluster: None, write_job: Callable[..., Path], results_dir: Path) -> None:
    account = _Tripwire(after=6)
    budget = 0.0004
    with Simulator(_models(ttft_s=0.3), account=account) as sim:
        path = _job(write_job, sim, repeats=8,
                    extra=f"limits: {{concurrency: 8, retries: 0}}\nbudget_usd: {budget}")
        done: list[Any] = []

        def drive() -> None:
            try:
                done.append(runner.run(path, out_dir=results_dir, ray="", ray_workers=2))
            finally:
                account.event.set()  # a run that failed early must not leave us waiting

        driver = threading.Thread(target=drive)
        driver.start()
        assert account.event.wait(120), "the run never sent its first requests"
        victim = next(name for name in ray.util.list_named_actors() if name.endswith("-w0"))
        ray.kill(ray.get_actor(victim))     # it has requests in flight on its lease
        driver.join(300)
        assert not driver.is_alive()
    outcome = done[0]
    billed = sum(charge.cost_usd for charge in sim.bill())
    assert billed <= budget + 1e-12
    df = runner.read_results(outcome.run_dir)
    assert len(df) == 80 and df["request_id"].is_unique   # one row per planned request
    manifest = outcome.manifest
    assert manifest["lost_workers"] == [victim.rsplit("-", 2)[-2] + "-w0"]
    assert manifest["budget"]["spent_usd"] <= budget + 1e-12
    assert set(df["status"]) <= {"ok", "skipped", "error"}
    assert (df["status"] == "skipped").any()  # the budget did bind


def test_a_429_pauses_every_worker(ray_cluster: None, write_job: Callable[..., Path],
                                   results_dir: Path) -> None:
    retry_after_s = 1.0
    with Simulator(_models(ttft_s=0.05, rate_limit_rate=0.05, retry_after_s=retry_after_s),
                   seed=3) as sim:
        path = _job(write_job, sim, repeats=10, extra="limits: {concurrency: 4, retries: 6}")
        outcome = runner.run(path, out_dir=results_dir, ray="", ray_workers=2)
        arrivals = sim.arrivals()
    assert outcome.status == "completed"
    limited = [a.t_monotonic for a in arrivals if a.status == 429]
    assert limited, "the storm never came (seed)"
    # after a 429 (and the few ms its pause takes to reach every worker), no worker sends to
    # the provider until Retry-After has passed
    margin_s = 0.3
    inside = [a for a in arrivals
              if any(t + margin_s < a.t_monotonic < t + retry_after_s for t in limited)]
    assert inside == []
    assert len(runner.read_results(outcome.run_dir)) == 100


def test_resume_continues_an_interrupted_ray_run(ray_cluster: None,
                                                 write_job: Callable[..., Path],
                                                 results_dir: Path) -> None:
    account = _Tripwire(after=8)
    with Simulator(_models(ttft_s=0.2), account=account) as sim:
        path = _job(write_job, sim, repeats=6, extra="limits: {concurrency: 4}")

        def interrupt() -> None:
            if account.event.wait(120):
                os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C on the driver

        threading.Thread(target=interrupt, daemon=True).start()
        first = runner.run(path, out_dir=results_dir, ray="", ray_workers=2,
                           handle_signals=True, grace_s=30)
        assert first.status == "interrupted"
        rows = runner.read_results(first.run_dir)
        assert 0 < len(rows) < 60 and (rows["status"] == "ok").all()
        sent_before = len(sim.arrivals())
        second = runner.run(path, out_dir=results_dir, ray="", ray_workers=2, resume="latest")
        sent_after = len(sim.arrivals()) - sent_before
    assert second.status == "completed" and second.run_dir == first.run_dir
    df = runner.read_results(second.run_dir)
    assert len(df) == 60 and df["request_id"].is_unique and (df["status"] == "ok").all()
    assert sent_after == 60 - len(rows)   # what the first run finished is not sent again


def test_without_ray_one_line_says_how_to_install(write_job: Callable[..., Path],
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from runner.cli import main

    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if not installed
    with Simulator(_models()) as sim:
        code = main(["run", str(_job(write_job, sim)), "--ray"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'runner[ray]'" in err and len(err.strip().splitlines()) == 1


def test_the_rate_is_the_jobs_not_one_per_worker(ray_cluster: None,
                                                 write_job: Callable[..., Path],
                                                 results_dir: Path) -> None:
    rpm, planned = 600.0, 40   # 10 a second, from a bucket of one second's worth (10)
    with Simulator(_models()) as sim:
        path = _job(write_job, sim, repeats=4, extra=f"limits: {{concurrency: 8, rpm: {rpm}}}")
        outcome = runner.run(path, out_dir=results_dir, ray="", ray_workers=2)
        times = sorted(a.t_monotonic for a in sim.arrivals())
    assert outcome.status == "completed" and len(times) == planned
    # the job's rate allows the first bucket at once and the rest at 10 a second: 3 s at least
    # (each worker at the job's rate would take half that)
    floor_s = (planned - rpm / 60) / (rpm / 60)
    assert times[-1] - times[0] >= floor_s * 0.95


def test_a_rejected_key_stops_a_ray_run_like_a_local_one(
        ray_cluster: None, write_job: Callable[..., Path], results_dir: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from runner.cli import main

    monkeypatch.setenv(REJECTED_KEY_ENV, REJECTED_KEY)  # the driver checks it is set
    with Simulator(_models(), account=Account(rejected_keys={REJECTED_KEY})) as sim:
        path = write_job(f"""
            name: rejected
            providers:
              local: {{base_url: "{sim.openai_base_url}", api_key_env: {REJECTED_KEY_ENV}}}
            provider: local
            models: [sim/fast-mini, sim/balanced]
            prompts: [a, b, c, d, e]
            params: {{max_tokens: 8, stream: false}}
            repeats: 4
            limits: {{concurrency: 2}}
        """)
        code = main(["run", str(path), "--out", str(results_dir), "--quiet", "--ray",
                     "--ray-workers", "2"])
        sent = len(sim.arrivals())
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and REJECTED_KEY_ENV in lines[0] and "401" in lines[0]
    assert "TESTSECRET" not in err
    assert sent <= 8, f"{sent} requests sent with a rejected key"
    run_dir = next((results_dir / "rejected").iterdir())
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    df = runner.read_results(run_dir)
    assert len(df) == 40 and df["request_id"].is_unique   # every planned request has its row


def _no_key_in(files: list[Path]) -> None:
    for path in files:
        data = path.read_bytes()
        for secret in (FAKE_AWS["AWS_SECRET_ACCESS_KEY"], FAKE_AWS["AWS_ACCESS_KEY_ID"]):
            assert secret.encode() not in data, f"{path.name} holds a key"


def test_a_ray_run_writes_to_an_s3_url(ray_cluster: None, write_job: Callable[..., Path],
                                       s3_url: str, tmp_path: Path) -> None:
    from runner.remote import Remote, child

    with Simulator(_models()) as sim:
        path = _job(write_job, sim, extra="limits: {concurrency: 4}")
        outcome = runner.run(path, out_dir=s3_url, ray="", ray_workers=2)
    assert outcome.status == "completed"
    run_url = child(s3_url, "onray", outcome.run_id)
    assert outcome.url == run_url
    df = runner.read_results(run_url)   # read back from S3: one row per planned request
    assert len(df) == 30 and df["request_id"].is_unique and list(df["index"]) == list(range(30))
    assert (df["status"] == "ok").all()
    assert len(runner.read_results(child(s3_url, "onray"))) == 30   # the job's folder too
    files = Remote(run_url).pull(tmp_path / "copy")
    names = {p.relative_to(tmp_path / "copy").as_posix() for p in files}
    assert {"run.json", "requests.parquet", "requests.csv", "summary.csv"} <= names
    assert not [n for n in names if n.startswith("shards/")]   # the workers' parts are merged
    manifest = json.loads((tmp_path / "copy" / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["workers"] == 2
    _no_key_in(files + [p for p in outcome.run_dir.rglob("*") if p.is_file()])  # local copy


def test_output_dir_url_in_the_job_file_and_resume(
        ray_cluster: None, write_job: Callable[..., Path], s3_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from runner.cli import main
    from runner.remote import Remote, child

    account = _Tripwire(after=8)
    with Simulator(_models(ttft_s=0.2), account=account) as sim:
        path = _job(write_job, sim, repeats=6,
                    extra=f"limits: {{concurrency: 4}}\noutput: {{dir: \"{s3_url}\"}}")

        def interrupt() -> None:
            if account.event.wait(120):
                os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C on the driver

        threading.Thread(target=interrupt, daemon=True).start()
        assert main(["run", str(path), "--quiet", "--ray", "--ray-workers", "2"]) == 130
        err = capsys.readouterr().err
        runs = Remote(child(s3_url, "onray")).folders()
        assert len(runs) == 1
        # where to continue: the run's URL, quoted for the shell
        assert f"--resume '{child(s3_url, 'onray', runs[0])}' --ray" in err
        first = runner.read_results(child(s3_url, "onray", runs[0]))
        assert 0 < len(first) < 60
        assert main(["run", str(path), "--quiet", "--ray", "--ray-workers", "2",
                     "--resume", "latest"]) == 0
    df = runner.read_results(child(s3_url, "onray", runs[0]))
    assert len(df) == 60 and df["request_id"].is_unique and (df["status"] == "ok").all()
    assert Remote(child(s3_url, "onray")).folders() == runs   # continued in place
    _no_key_in(Remote(child(s3_url, "onray")).pull(tmp_path / "copy"))


def test_a_lost_workers_rows_on_s3_are_kept_and_the_rest_rerun(
        ray_cluster: None, write_job: Callable[..., Path], s3_url: str) -> None:
    from runner.remote import child

    account = _Tripwire(after=10)
    with Simulator(_models(ttft_s=0.2), account=account) as sim:
        path = _job(write_job, sim, repeats=6, extra="limits: {concurrency: 4}")
        done: list[Any] = []

        def drive() -> None:
            try:
                done.append(runner.run(path, out_dir=s3_url, ray="", ray_workers=2,
                                       flush_rows=1, flush_s=0.05))
            finally:
                account.event.set()

        driver = threading.Thread(target=drive)
        driver.start()
        assert account.event.wait(120), "the run never sent its first requests"
        victim = next(name for name in ray.util.list_named_actors() if name.endswith("-w0"))
        ray.kill(ray.get_actor(victim))
        driver.join(300)
        assert not driver.is_alive()
    outcome = done[0]
    assert outcome.manifest["lost_workers"]
    df = runner.read_results(child(s3_url, "onray", outcome.run_id))
    assert len(df) == 60 and df["request_id"].is_unique and (df["status"] == "ok").all()
