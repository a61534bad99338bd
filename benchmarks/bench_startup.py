"""Start-up: wall time of `runner --help` beside a bare `python -c pass` (target < 0.3 s).

    .venv/bin/python benchmarks/bench_startup.py [--repeats 10]

Each command runs `--repeats` times as a fresh process; the table shows the best and the median.
When `runner --help` misses the target, the slowest imports (`python -X importtime`) follow.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import harness

TARGET_S = 0.3


def timings(cmd: list[str], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
    return out


def slowest_imports(cmd: list[str], top: int = 8) -> list[tuple[float, str]]:
    """(cumulative seconds, module) of the slowest imports of `cmd`, from -X importtime."""
    err = subprocess.run(cmd, capture_output=True, text=True, check=False).stderr
    found = []
    for line in err.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit():
                found.append((int(cumulative) / 1e6, name.rstrip()))
    return sorted(found, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    commands = {
        "python -c pass": [harness.PYTHON, "-c", "pass"],
        "python -c 'import runner'": [harness.PYTHON, "-c", "import runner"],
        "runner --help": [*harness.RUNNER, "--help"],
    }
    results = {name: timings(cmd, args.repeats) for name, cmd in commands.items()}
    base = min(results["python -c pass"])
    rows = [[name, f"{min(t):.3f}", f"{statistics.median(t):.3f}", f"{min(t) - base:+.3f}"]
            for name, t in results.items()]
    print(f"## Start-up: best and median of {args.repeats} fresh processes")
    print(f"machine: {harness.machine()}\n")
    print(harness.table(["command", "best s", "median s", "over python -c pass"], rows))
    best = min(results["runner --help"])
    print(f"\ntarget runner --help < {TARGET_S} s: {'met' if best < TARGET_S else 'NOT met'} "
          f"({best:.3f} s)")
    if best >= TARGET_S:
        print("\nslowest imports of `runner --help` (cumulative s):")
        script = "import sys; sys.argv = ['runner', '--help']; import runner.cli as c; c.main()"
        for seconds, name in slowest_imports([harness.PYTHON, "-X", "importtime", "-c", script]):
            print(f"  {seconds:.3f}  {name}")


if __name__ == "__main__":
    main()
