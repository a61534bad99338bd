"""Static shards: N processes with `--shard i/N --run-id ID` make one run, exactly as one process
would (one row per planned request, the same request ids); bad or mismatched shards are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import runner
from runner.cli import main
from runner.errors import ConfigError
from runner.rundir import RunLock, shard_dir
from runner.shards import Shard, parse_shard

from .conftest import ROOT

JOB = """
name: sharded
provider: simulated
simulator:
  models:
    - {{id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}}
    - {{id: sim/balanced, ttft_s: 0, tokens_per_s: 0}}
    - {{id: sim/reasoner, ttft_s: 0, tokens_per_s: 0}}
models: [sim/fast-mini, sim/balanced, sim/reasoner]
vars: {{n: [1, 2, 3, 4, 5]}}
prompts:
  - {{id: a, text: "Count to {{{{ n }}}}"}}
params: {{max_tokens: {max_tokens}}}
repeats: 2
limits: {{concurrency: 4, rpm: 60000}}
budget_usd: 3.0
"""


def _job(write_job: Callable[..., Path], max_tokens: int = 16) -> Path:
    return write_job(JOB.format(max_tokens=max_tokens))


@pytest.mark.parametrize(("text", "env", "want"), [
    ("0/3", {}, Shard(0, 3)),
    ("2/3", {}, Shard(2, 3)),
    ("3", {"JOB_COMPLETION_INDEX": "1"}, Shard(1, 3)),
])
def test_shard_flag_forms(text: str, env: dict[str, str], want: Shard) -> None:
    assert parse_shard(text, env) == want


@pytest.mark.parametrize(("text", "env", "says"), [
    ("3/3", {}, "0..2"),
    ("-1/3", {}, "0..2"),
    ("1/0", {}, ">= 1"),
    ("a/3", {}, "whole numbers"),
    ("3", {}, "JOB_COMPLETION_INDEX"),
    ("3", {"JOB_COMPLETION_INDEX": "7"}, "0..2"),
])
def test_bad_shard_flags_are_one_line(text: str, env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        parse_shard(text, env)
    assert "\n" not in str(caught.value)


def test_every_request_in_exactly_one_shard_with_every_model() -> None:
    plan_size, models = 3 * 5 * 2, 3
    parts = [Shard(i, 3).indices(plan_size, models) for i in range(3)]
    assert sorted(j for part in parts for j in part) == list(range(plan_size))
    for part in parts:  # a fair mix: N == M must not give each shard one model
        assert {j % models for j in part} == {0, 1, 2}


def test_n_processes_make_one_run(write_job: Callable[..., Path], results_dir: Path) -> None:
    path = _job(write_job)
    single = runner.run(path, out_dir=results_dir).rows
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "runner", "run", str(path), "--quiet",
                               "--out", str(results_dir), "--shard", f"{i}/3",
                               "--run-id", "nightly-1"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    run_dir = results_dir / "sharded" / "nightly-1"
    df = runner.read_results(run_dir)
    assert len(df) == len(single) == 30
    assert sorted(df["request_id"]) == sorted(single["request_id"])
    assert list(df["index"]) == list(range(30))
    # the merge keeps every column of a one-process run, the job's var columns included
    assert list(df.columns) == list(single.columns)
    assert df["var_n"].tolist() == single.sort_values("index")["var_n"].tolist()
    # the last shard to end merged: one requests.parquet and summary.csv, no shard rows left
    assert (run_dir / "requests.parquet").is_file() and (run_dir / "summary.csv").is_file()
    assert not list((run_dir / "shards").rglob("*.parquet"))
    top = json.loads((run_dir / "run.json").read_text())
    assert top["status"] == "completed" and top["shards"] == 3
    assert top["counts"]["ok"] == 30
    # and the run is listed once, like any other
    assert len(runner.read_results(results_dir / "sharded")) == 60


def test_shard_gets_its_share_of_budget_and_rates(write_job: Callable[..., Path],
                                                   results_dir: Path) -> None:
    path = _job(write_job)
    outcome = runner.run(path, out_dir=results_dir, shard=Shard(1, 4), run_id="r")
    manifest = outcome.manifest
    assert outcome.run_dir == shard_dir(results_dir / "sharded" / "r", 1)
    assert manifest["budget"]["budget_usd"] == pytest.approx(0.75)
    assert manifest["limits"]["rpm"] == pytest.approx(15000)
    assert manifest["planned_requests"] == len(Shard(1, 4).indices(30, 3))
    given = runner.run(path, out_dir=results_dir, shard=Shard(2, 4), run_id="r",
                       budget_usd=2.0, rpm=600)
    assert given.manifest["budget"]["budget_usd"] == 2.0
    assert given.manifest["limits"]["rpm"] == 600


def test_rows_before_merge_and_after(write_job: Callable[..., Path], results_dir: Path) -> None:
    path = _job(write_job)
    runner.run(path, out_dir=results_dir, shard=Shard(0, 2), run_id="r")
    run_dir = results_dir / "sharded" / "r"
    first = runner.read_results(run_dir)   # one shard done: its rows, the run not merged
    assert len(first) == 15 and not (run_dir / "requests.parquet").exists()
    runner.run(path, out_dir=results_dir, shard=Shard(1, 2), run_id="r")
    assert len(runner.read_results(run_dir)) == 30
    assert (run_dir / "requests.parquet").is_file()
    # a shard resumed after the merge sends nothing again and the run keeps one row a request
    again = runner.run(path, out_dir=results_dir, shard=Shard(0, 2), run_id="r",
                       resume="latest", retry_errors=True)
    assert again.status == "completed" and sum(again.manifest["counts"].values()) == 0
    df = runner.read_results(run_dir)
    assert len(df) == 30 and df["request_id"].is_unique


def test_cli_merge_and_report(write_job: Callable[..., Path], results_dir: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    path = _job(write_job)
    for i in range(2):
        assert main(["run", str(path), "--quiet", "--out", str(results_dir), "--shard",
                     f"{i}/2", "--run-id", "m"]) == 0
    run_dir = results_dir / "sharded" / "m"
    assert main(["merge", str(run_dir)]) == 0
    assert "merged" in capsys.readouterr().out
    assert main(["report", str(run_dir)]) == 0
    assert main(["compare", str(run_dir), str(run_dir)]) == 0


@pytest.mark.parametrize("case", ["count", "plan", "twice", "no-run-id", "locked", "not-sharded"])
def test_mismatched_shards_are_one_line(write_job: Callable[..., Path], results_dir: Path,
                                        capsys: pytest.CaptureFixture[str], case: str) -> None:
    path = _job(write_job)
    base = ["run", str(path), "--quiet", "--out", str(results_dir)]
    if case == "not-sharded":
        assert main([*base, "--run-id", "x"]) == 0
    else:
        assert main([*base, "--shard", "0/2", "--run-id", "x"]) == 0
    capsys.readouterr()
    run_dir = results_dir / "sharded" / "x"
    if case == "count":
        argv, says = [*base, "--shard", "1/3", "--run-id", "x"], "has 2 shards, not 3"
    elif case == "plan":
        argv = ["run", str(_job(write_job, max_tokens=99)), "--quiet", "--out",
                str(results_dir), "--shard", "1/2", "--run-id", "x"]
        says = "the plan differs"
    elif case == "twice":
        argv, says = [*base, "--shard", "0/2", "--run-id", "x"], "add --resume"
    elif case == "no-run-id":
        argv, says = [*base, "--shard", "1/2"], "--shard needs --run-id"
    elif case == "not-sharded":
        argv, says = [*base, "--shard", "1/2", "--run-id", "x"], "not sharded"
    else:
        argv, says = [*base, "--shard", "1/2", "--run-id", "x"], "another runner process"
    if case == "locked":  # shard 1 is being run by another process right now
        with RunLock(shard_dir(run_dir, 1)):
            code = main(argv)
    else:
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err and len(err.strip().splitlines()) == 1
