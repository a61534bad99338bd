"""Soak: the chaos test for longer. Rounds of: the simulator with every fault at once, the runner
SIGKILLed at random moments and resumed until it ends by itself; each round checks one row per
planned request, the server's bill within the budget (and within what the client counted), no
secret in any output file or stdout/stderr, no traceback.

    .venv/bin/python benchmarks/bench_soak.py --minutes 10        # rounds until 10 min are up
    .venv/bin/python benchmarks/bench_soak.py --rounds 1 --quick  # a smoke run, ~30 s

Each round uses the next seed, so a failing round is reproduced with `--seed N --rounds 1`.
Exits 1 when any promise broke (the broken ones are listed under the table).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import harness

sys.path.insert(0, str(harness.ROOT))  # the chaos driver lives with the tests

from tests.chaos import ChaosSettings, run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="start new rounds until this much time has passed (default 5)")
    parser.add_argument("--rounds", type=int, help="exactly this many rounds instead")
    parser.add_argument("--repeats", type=int, default=40,
                        help="repeats of the 2 models x 6 prompts plan (default 40: 480 requests)")
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs per round (default 8)")
    parser.add_argument("--fault-rate", type=float, default=0.05,
                        help="probability of each of the 17 faults (default 0.05)")
    parser.add_argument("--seed", type=int, default=1, help="the first round's seed")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 repeats, 1 kill per round, 1 round")
    parser.add_argument("--keep", type=Path, help="keep each round's files under this folder")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.kills, args.rounds = 2, 1, args.rounds or 1
    print("## Soak: SIGKILL and resume against a hostile server\n")
    print(f"{harness.machine()}; every fault at {args.fault_rate:g}, {args.kills} kills per "
          f"round, {2 * 6 * args.repeats} requests planned per round\n", flush=True)
    deadline = time.monotonic() + args.minutes * 60
    rows, broken = [], []
    round_no = 0
    while (round_no < args.rounds) if args.rounds is not None else \
            (round_no == 0 or time.monotonic() < deadline):
        seed = args.seed + round_no
        settings = ChaosSettings(
            seed=seed, repeats=args.repeats, kills=args.kills, fault_rate=args.fault_rate,
            kill_delay_s=(0.3, 3.0), final_timeout_s=60.0 + 2.0 * args.repeats)
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            work = args.keep / f"seed-{seed}" if args.keep else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            outcome = run_chaos(settings, work)
        problems = outcome.problems()
        broken += [f"seed {seed}: {p}" for p in problems]
        spent = "-" if outcome.spent_usd is None else f"{outcome.spent_usd:.6f}"
        rows.append([seed, len(outcome.planned), len(outcome.row_ids), outcome.kills,
                     outcome.runs, outcome.charges, f"{outcome.billed_usd:.6f}",
                     f"{outcome.budget_usd:.6f}", spent, len(outcome.leaks),
                     len(outcome.tracebacks), outcome.seconds,
                     "ok" if not problems else f"{len(problems)} broken"])
        print(f"round {round_no + 1} (seed {seed}): {rows[-1][-1]}", flush=True)
        round_no += 1
    print()
    print(harness.table(["seed", "planned", "rows", "kills", "runs", "billed requests",
                         "billed $", "budget $", "client spent $", "leaks", "tracebacks",
                         "seconds", "promises"], rows))
    if broken:
        print("\nbroken promises:")
        for line in broken:
            print(f"  - {line}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
