"""Run every benchmark in sequence, each as its own process, and print their tables.

    .venv/bin/python benchmarks/run_all.py            # the full set (`make bench`), ~11 minutes
    .venv/bin/python benchmarks/run_all.py --quick    # small counts: a smoke run, not numbers
    .venv/bin/python benchmarks/run_all.py --only throughput startup

Exits non-zero if any benchmark failed (the others still run).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (script, extra arguments for --quick)
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "throughput": ("bench_throughput.py", ["--requests", "400", "--rounds", "1"]),
    "fidelity": ("bench_fidelity.py", ["--levels", "4", "16", "--per-slot", "2",
                                       "--min-requests", "8"]),
    "memory": ("bench_memory.py", ["--sizes", "1000", "5000"]),
    "rate": ("bench_rate.py", ["--seconds", "10"]),
    "startup": ("bench_startup.py", ["--repeats", "3"]),
    "soak": ("bench_soak.py", ["--quick"]),
    "wholeprocess": ("bench_wholeprocess.py", ["--quick"]),
    "schedule": ("bench_schedule.py", ["--seconds", "3", "--sweep-seconds", "1.5",
                                       "--no-guidellm"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--only", nargs="+", choices=tuple(BENCHMARKS), metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)})")
    args = parser.parse_args()
    failed = []
    for name in args.only or BENCHMARKS:
        script, quick = BENCHMARKS[name]
        cmd = [sys.executable, str(HERE / script), *(quick if args.quick else [])]
        t0 = time.perf_counter()
        code = subprocess.run(cmd, check=False).returncode
        print(f"\n({name}: {time.perf_counter() - t0:.0f} s)\n", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
