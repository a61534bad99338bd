"""Runs for tests: real result data for the report, compare and JUnit tests (jobs run against
the simulator over loopback HTTP, their rows graded by the job's checks), and `runner` commands
in processes of their own that no test leaves behind (`runner_process`, `reap`)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import runner

ROOT = Path(__file__).resolve().parents[1]
_STARTED: list[subprocess.Popen[str]] = []


def runner_process(*args: str, **popen: Any) -> subprocess.Popen[str]:
    """`python -m runner ARGS` from the project root (unbuffered, text), its stdout and stderr
    piped unless `popen` says otherwise; `reap` ends it after the test."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **popen)
    _STARTED.append(proc)
    return proc


@contextlib.contextmanager
def simulator(*flags: str, dialect: str = "OpenAI") -> Iterator[str]:
    """`runner simulate --port 0 FLAGS` in its own process (reaped like `runner_process`);
    yields the URL of its `dialect` ("OpenAI": .../v1, "OpenRouter": .../api/v1)."""
    proc = runner_process("simulate", "--port", "0", *flags, stderr=None)
    assert proc.stdout is not None
    try:
        urls = dict(re.findall(r"(\w+) dialect at (http://[^,\s]+)", proc.stdout.readline()))
        yield urls[dialect]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def reap() -> None:
    """Kill every process `runner_process` started that still runs, and wait for it: a failed
    assertion must not leave a runner behind to disturb later tests (conftest calls this after
    each test)."""
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        if any(pipe is not None and not pipe.closed for pipe in (proc.stdout, proc.stderr)):
            proc.communicate()
        proc.wait()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Poll for a condition another process brings about (not a sleep standing in for it)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def run_graded(job_path: Path, out_dir: Path) -> Path:
    """Run the job once into `out_dir` (the engine grades each row); return the run directory."""
    job = runner.load_job(job_path)
    outcome = runner.run(job, out_dir=out_dir)
    return outcome.run_dir


def bench_job(name: str = "bench", *, ttft_s: float = 0.0, error_rate: float = 0.0,
              premium_usd_per_mtok: float = 15.0, max_latency_s: float = 0.5,
              cap_usd: float | None = None) -> str:
    """A job over three simulated models with checks; the knobs make a later run worse."""
    return f"""
name: {name}
provider: simulated
simulator:
  models:
    - {{id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}}
    - {{id: sim/balanced, ttft_s: {ttft_s}, tokens_per_s: 0,
       faults: {{error_rate: {error_rate}}}}}
    - {{id: sim/premium-large, ttft_s: 0, tokens_per_s: 0,
       usd_per_mtok_completion: {premium_usd_per_mtok}}}
models:
  - sim/fast-mini
  - sim/balanced
  - {{id: sim/premium-large, alias: "<b>premium</b> & co"}}
prompts:
  - {{id: words, text: "Say something", expected: {{regex: "^[A-Z][a-z]+"}}}}
  - {{id: "<script>alert('x')</script>", text: "Say Paris", expected: Paris}}
  - {{id: free, text: "Anything at all"}}
checks:
  - {{max_latency_s: {max_latency_s}, prompts: [words]}}
params: {{max_tokens: 24}}
repeats: 4
limits: {{retries: 0, concurrency: 6}}
""" + (f"max_cost_per_request_usd: {cap_usd}\n" if cap_usd is not None else "")


def write_and_run(folder: Path, text: str, out_dir: Path) -> Path:
    """Write `text` as folder/job.yaml, run it (graded) into out_dir; return the run dir."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(text)
    return run_graded(path, out_dir)
