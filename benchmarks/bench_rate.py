"""Rate: does `limits.rpm` hold? 600 rpm configured, 60 s, arrivals counted by the server.

    .venv/bin/python benchmarks/bench_rate.py [--rpm 600] [--seconds 60]

The zero-latency simulator runs as its own process (core 1) and logs every arrival
(`--request-log`); `runner run --quiet` (core 0) sends rpm x seconds / 60 requests with
`limits.rpm` set and 32 in flight. The runner's limiter is a leaky bucket holding one second's
worth of requests, so a run may start with a burst of one bucket; the achieved rate is taken
over the steady window after that burst. Target: within 2% of the configured rate, and no 1-s
window (after the start) holding more than a bucket plus one.
"""

from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import tempfile
from pathlib import Path

import harness


def max_in_window(times: list[float], width_s: float = 1.0) -> int:
    """The most arrivals in any half-open window [t, t + width_s) over sorted `times`."""
    return max((bisect.bisect_left(times, t + width_s) - i for i, t in enumerate(times)),
               default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=float, default=600.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    n = int(args.rpm * args.seconds / 60)
    bucket = max(1, int(args.rpm / 60))  # the limiter's capacity: one second's worth
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "arrivals.jsonl"
        with harness.simulator("--ttft-s", "0", "--tokens-per-s", "0",
                               "--request-log", str(log)) as port:
            job = harness.write_job(Path(tmp) / "job.yaml", port=port, model="sim/fast-mini",
                                    prompt="Name one prime number.", repeats=n,
                                    limits=f"{{concurrency: 32, retries: 0, rpm: {args.rpm}}}",
                                    max_tokens=8, out=Path(tmp) / "results")
            subprocess.run(harness.pinned([*harness.RUNNER, "run", str(job), "--quiet"],
                                          harness.CLIENT_CORE),
                           check=True, stdout=subprocess.DEVNULL)
        times = sorted(json.loads(line)["t_monotonic"] for line in log.read_text().splitlines())
    if len(times) != n:
        raise SystemExit(f"the server saw {len(times)} requests, expected {n}")
    steady = times[bucket:]  # after the first bucket's burst
    whole_rpm = (len(times) - 1) / (times[-1] - times[0]) * 60
    steady_rpm = (len(steady) - 1) / (steady[-1] - steady[0]) * 60
    error = round(steady_rpm / args.rpm - 1, 6) + 0.0  # + 0.0: no '-0.00%'
    print(f"## Rate: limits.rpm {args.rpm:g}, {n} requests (~{args.seconds:g} s), "
          f"zero-latency simulator, arrivals logged by the server ({harness.pinning_note()})")
    print(f"machine: {harness.machine()}\n")
    rows = [
        ["configured", f"{args.rpm:.1f}", "", f"{bucket} (bucket)"],
        ["achieved, steady window (after the first bucket)", f"{steady_rpm:.1f}",
         f"{error * 100:+.2f}%", max_in_window(steady)],
        ["achieved, whole run (incl. the start burst)", f"{whole_rpm:.1f}",
         f"{round(whole_rpm / args.rpm - 1, 6) * 100 + 0.0:+.2f}%", max_in_window(times)],
    ]
    print(harness.table(["window", "rpm", "vs configured", "max in any 1 s"], rows))
    print(f"\ntarget within 2% (steady): {'met' if abs(error) <= 0.02 else 'NOT met'} "
          f"({error * 100:+.2f}%); max in a steady 1-s window {max_in_window(steady)} vs "
          f"bucket {bucket}")


if __name__ == "__main__":
    main()
