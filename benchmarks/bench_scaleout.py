"""Scale-out: a latency-bound job (responses ~200 ms, 2,000 in flight in all) on one process and
on Ray with 2 workers; and the ledger's overhead per request.

    .venv/bin/python benchmarks/bench_scaleout.py [--requests 20000] [--in-flight 2000]

The simulator runs as its own process (`--ttft-s 0.2`, answers in one piece). The same job runs
with `runner run --quiet` in one process, then with `--ray --ray-workers 2` (a local Ray
instance; each worker gets half the in-flight requests). Each run has a budget far above its
cost, so every attempt goes through the cost guard and, on Ray, through the ledger's leases. The
rate is the rows' own: requests over the span from the first start to the last end (start-up of
the process and of Ray is left out; it is reported apart). Target: Ray >= 0.9x one process. The
ledger's overhead: its calls per request (from run.json) and the round-trip of one call, timed
against a ledger actor alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness


def rate(run_dir: Path) -> tuple[float, int]:
    """(requests per second over the rows' span, rows)."""
    import pandas as pd

    df = pd.read_parquet(run_dir / "requests.parquet", columns=["started_at", "ended_at",
                                                                  "status"])
    span = (df["ended_at"].max() - df["started_at"].min()).total_seconds()
    return len(df) / span, int((df["status"] == "ok").sum())


def run(job: Path, results: Path, *flags: str) -> tuple[Path, float]:
    """Run the job (this checkout's runner: python -m from the repository root); return its run
    directory and the whole command's seconds."""
    t0 = time.perf_counter()
    subprocess.run([harness.PYTHON, "-m", "runner", "run", str(job), "--quiet", *flags],
                   check=True, stdout=subprocess.DEVNULL, cwd=harness.ROOT)
    wall = time.perf_counter() - t0
    runs = sorted(p for p in (results / "bench").iterdir() if p.is_dir())
    return runs[-1], wall


def ledger_round_trip(calls: int) -> float:
    """Seconds per `grant` call to a ledger actor alone (the driver awaiting each)."""
    import ray

    sys.path.insert(0, str(harness.ROOT))  # this checkout's runner, as the runs above
    from runner.ray_backend import LedgerActor, _runtime_env

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env=_runtime_env())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ledger = ray.remote(LedgerActor).options(num_cpus=0).remote(
                tmp, 1e9, 0.0, {}, 1)
            ray.get(ledger.grant.remote("w", 0.0, 0.0, 1.0))  # warm
            t0 = time.perf_counter()
            for _ in range(calls):
                ray.get(ledger.grant.remote("w", 0.5, 0.0, 1.0))
            per_call = (time.perf_counter() - t0) / calls
            ray.get(ledger.close.remote(False))
    finally:
        ray.shutdown()
    return per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=2_000)
    parser.add_argument("--ttft-s", type=float, default=0.2)
    parser.add_argument("--calls", type=int, default=500, help="ledger calls timed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, \
            harness.simulator("--ttft-s", str(args.ttft_s), "--tokens-per-s", "0") as port:
        job = harness.write_job(Path(tmp) / "job.yaml", port=port, model="sim/fast-mini",
                                prompt="Name one prime number.", repeats=args.requests,
                                limits=f"{{concurrency: {args.in_flight}, retries: 0}}",
                                max_tokens=8, out=Path(tmp) / "results", stream=False)
        with job.open("a") as f:
            f.write("budget_usd: 1000\n")
        results = Path(tmp) / "results"
        local_dir, local_wall = run(job, results)
        local_rate, local_ok = rate(local_dir)
        ray_dir, ray_wall = run(job, results, "--ray", "--ray-workers", "2")
        ray_rate, ray_ok = rate(ray_dir)
        manifest = json.loads((ray_dir / "run.json").read_text())
    calls = manifest["budget"].get("ledger_calls") or 0
    per_call = ledger_round_trip(args.calls)
    print(f"## Scale-out: {args.requests} requests, {args.in_flight} in flight in all, "
          f"responses ~{args.ttft_s * 1000:.0f} ms (simulator process), budget on")
    print(f"machine: {harness.machine()} (not pinned: Ray spreads its processes)\n")
    print(harness.table(
        ["backend", "requests/s (rows' span)", "x one process", "ok rows", "whole command s"],
        [["one process", local_rate, 1.0, local_ok, local_wall],
         ["Ray, 2 workers", ray_rate, ray_rate / local_rate, ray_ok, ray_wall]]))
    print()
    print(harness.table(
        ["ledger", "value"],
        [["calls (leases, permits, reports) in the Ray run", calls],
         ["calls per request", calls / args.requests],
         ["round-trip of one call, ms", per_call * 1000],
         ["ledger time per request, µs", calls / args.requests * per_call * 1e6]]))
    target = "met" if ray_rate >= 0.9 * local_rate else "NOT met"
    print(f"\ntarget Ray >= 0.9x one process: {target} ({ray_rate / local_rate:.2f}x)")


if __name__ == "__main__":
    main()
