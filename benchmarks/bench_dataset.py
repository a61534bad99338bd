"""Datasets: `runner plan` time and peak RSS for a 10k- and a 1M-row Parquet dataset x 3 models,
and the peak RSS of walking the whole plan as a run does, side by side.

    .venv/bin/python benchmarks/bench_dataset.py [--sizes 10000 1000000] [--walk 300000]

Each size gets a Parquet file (id, subject, question, answer; row groups of 65,536 rows) and a
job crossing it with one template and three simulated models. `runner plan` runs as its own
process (the simulator's catalogue is read for prices); its peak RSS is the child's ru_maxrss
from `os.wait4`. The walk is a fresh process that takes every request of the plan in order
(rendering, request id, result row: what a run does before sending) and keeps none, so its peak
RSS shows what a run holds for the plan itself. Flat means the 1M walk stays near the 10k one:
the dataset is read a row group at a time, never expanded.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

ROW_GROUP = 65_536
SUBJECTS = ("geography", "science", "math", "literature")
WALK = """
import os, sys, time
from runner.config import load_job
from runner.plan import Plan
from runner.rows import new_result
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
t0 = time.perf_counter()
plan = Plan(load_job(sys.argv[1]))
loaded_mb = most_mb = rss_mb()
n = min(len(plan), int(sys.argv[2])) if int(sys.argv[2]) else len(plan)
for i in range(n):
    new_result("run", "job", plan[i]).as_row()
    if i % 5000 == 0:
        most_mb = max(most_mb, rss_mb())
print(n, time.perf_counter() - t0, loaded_mb, max(most_mb, rss_mb()))
"""


def write_dataset(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("subject", pa.string()),
                                           ("question", pa.string()),
                                           ("answer", pa.string())])) as writer:
        for start in range(0, rows, ROW_GROUP):
            ids = range(start, min(rows, start + ROW_GROUP))
            writer.write_table(pa.table({
                "id": [f"q{i}" for i in ids],
                "subject": [SUBJECTS[i % 4] for i in ids],
                "question": [f"What is {i} + {i % 97}? Answer with the number only." for i in ids],
                "answer": [str(i + i % 97) for i in ids],
            }))


def write_job(path: Path, dataset: Path) -> None:
    path.write_text(
        f"name: bench-dataset\nprovider: simulated\n"
        "models: [sim/fast-mini, sim/balanced, sim/premium-large]\n"
        f"params: {{max_tokens: 16}}\nprompts:\n  - id: sum\n    text: '{{{{ question }}}}'\n"
        f"    dataset: {{path: {dataset.name}, id_field: id, target: answer}}\n",
        encoding="utf-8")


def measure(cmd: list[str]) -> tuple[float, float, str]:
    """Run `cmd`; its wall time in seconds, peak RSS in MB and its output (the CPU seconds it
    used are its last line's companions: see `cpu_s`)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=harness.ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    proc.stdout.close()
    proc.stderr.close()
    measure.cpu_s = usage.ru_utime + usage.ru_stime  # type: ignore[attr-defined]
    return wall_s, usage.ru_maxrss / 1024, out   # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[10_000, 1_000_000])
    parser.add_argument("--walk", type=int, default=300_000,
                        help="requests walked per size (0: the whole plan)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            dataset, job = Path(tmp) / f"rows-{n}.parquet", Path(tmp) / f"job-{n}.yaml"
            write_dataset(dataset, n)
            write_job(job, dataset)
            plan_s, plan_mb, _ = measure([harness.PYTHON, "-m", "runner", "plan", str(job)])
            plan_cpu_s = measure.cpu_s  # type: ignore[attr-defined]
            _, walk_mb, out = measure([harness.PYTHON, "-c", WALK, str(job), str(args.walk)])
            walked, walk_s, loaded_mb, most_mb = out.split()
            rows.append([n, 3 * n, plan_s, plan_cpu_s, plan_mb, int(walked), float(walk_s),
                         float(loaded_mb), float(most_mb) - float(loaded_mb)])
    print(f"## Datasets: a Parquet dataset x 3 models, planned lazily (pid {os.getpid()}, "
          f"python {sys.version.split()[0]})")
    print(f"machine: {harness.machine()}\n")
    print(harness.table(
        ["rows", "requests", "runner plan s (CPU s)", "plan peak RSS MB", "requests walked",
         "walk s", "RSS after load MB", "RSS growth during walk MB"],
        [[f"{n:,}", f"{req:,}", f"{ps:.2f} ({pc:.2f})", f"{pm:.0f}", f"{w:,}", f"{ws:.1f}",
          f"{lm:.0f}", f"{gm:+.1f}"] for n, req, ps, pc, pm, w, ws, lm, gm in rows]))
    print(f"\n{rows[1][0] // rows[0][0]}x rows: `runner plan` {rows[1][2]:.2f} s wall, "
          f"{rows[1][3]:.2f} s CPU (target: seconds); memory growth while walking the plan "
          f"{rows[0][8]:+.1f} MB vs {rows[1][8]:+.1f} MB (flat: no growth with the plan)")

if __name__ == "__main__":
    main()
