"""Memory: peak RSS of a `runner run` process for a 10k- and a 100k-request job.

    .venv/bin/python benchmarks/bench_memory.py [--sizes 10000 100000] [--concurrency 128]

The zero-latency simulator (`runner simulate --ttft-s 0 --tokens-per-s 0`) runs as its own
process on core 1, so its memory is not counted; each job runs `runner run --quiet` in a fresh
process on core 0 (streaming, max_tokens 8, collector on). Peak RSS is the child's ru_maxrss
from `os.wait4`. Flat memory means the ratio stays near 1 (target <= 1.3).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import harness

MODEL = "sim/fast-mini"


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd` to completion; its peak RSS in MB and its wall time in seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.perf_counter() - t0
    assert proc.stderr is not None
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return usage.ru_maxrss / 1024, wall_s  # ru_maxrss is in KiB on Linux


def run_job(port: int, n: int, concurrency: int, tmp: Path) -> tuple[float, float]:
    job = harness.write_job(tmp / f"job-{n}.yaml", port=port, model=MODEL,
                            prompt="Name one prime number.", repeats=n,
                            limits=f"{{concurrency: {concurrency}, retries: 0}}", max_tokens=8,
                            out=tmp / "results")
    return peak_rss_mb(harness.pinned([*harness.RUNNER, "run", str(job), "--quiet"],
                                      harness.CLIENT_CORE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[10_000, 100_000])
    parser.add_argument("--concurrency", type=int, default=128)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            harness.simulator("--ttft-s", "0", "--tokens-per-s", "0") as port:
        for n in args.sizes:
            rss_mb, wall_s = run_job(port, n, args.concurrency, Path(tmp))
            rows.append([n, rss_mb, wall_s, n / wall_s])
    ratio = rows[1][1] / rows[0][1]
    print(f"## Memory: peak RSS of `runner run --quiet`, zero-latency simulator in its own "
          f"process, {args.concurrency} in flight ({harness.pinning_note()})")
    print(f"machine: {harness.machine()}\n")
    print(harness.table(["requests", "peak RSS MB", "wall s", "req/s (whole run)"],
                        [[f"{n:,}", f"{rss:.1f}", f"{wall:.1f}", f"{rate:.0f}"]
                         for n, rss, wall, rate in rows]))
    print(f"\nratio {rows[1][0] // rows[0][0]}x requests: {ratio:.2f}x peak RSS "
          f"(target <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'})")


if __name__ == "__main__":
    main()
