"""Real result data for the report, compare and JUnit tests: jobs run against the simulator over
loopback HTTP, their rows graded by the job's checks."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import runner
from runner.checks import evaluate
from runner.collect import file_schema


def run_graded(job_path: Path, out_dir: Path) -> Path:
    """Run the job once into `out_dir`; return the run directory."""
    job = runner.load_job(job_path)
    outcome = runner.run(job, out_dir=out_dir)
    _grade(job, outcome.run_dir)
    return outcome.run_dir


def _grade(job: runner.config.Job, run_dir: Path) -> None:
    """Grade the rows as the engine does once it evaluates checks after each result (until then
    this fills `passed`/`score`/`check_failures`; afterwards it leaves the rows alone)."""
    path = run_dir / "requests.parquet"
    rows = pq.read_table(path, schema=file_schema()).to_pylist()
    if not job.checks or any(row["passed"] is not None for row in rows):
        return
    for row in rows:
        verdict = evaluate(job.checks.for_prompt(row["prompt_id"]), row["response_text"], row)
        row.update(passed=verdict.passed, score=verdict.score, check_failures=verdict.failures)
    tmp = path.with_name(".graded.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=file_schema()), tmp)
    os.replace(tmp, path)
