"""Chaos, end to end: the simulator with every fault at once (leaking headers, lying about cost,
odd JSON, endless streams, gzip bombs, redirects, day-long Retry-After, ...), the runner SIGKILLed
at random moments and resumed until it ends by itself. Then the promises: exactly one row per
planned request, the server's own bill within the budget (and never above what the client
counted), no configured secret in any file under the output or in any stdout/stderr, no
traceback. The driver lives in tests/chaos.py; benchmarks/bench_soak.py runs it for longer."""

from __future__ import annotations

from pathlib import Path

from tests.chaos import ChaosSettings, run_chaos


def test_kill_nine_and_a_hostile_server_break_no_promise(tmp_path: Path) -> None:
    outcome = run_chaos(ChaosSettings(), tmp_path)
    assert outcome.kills >= 1, f"the runs ended before they could be killed: {outcome}"
    assert outcome.charges > 0, "the simulator billed nothing: nothing was sent"
    problems = outcome.problems()
    assert not problems, "\n".join(
        problems + [f"(rows by status {outcome.statuses}, {outcome.charges} requests billed, "
                    f"{outcome.kills} kills, {outcome.seconds:.0f} s)"])
