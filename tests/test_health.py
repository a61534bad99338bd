"""The health monitor notices a blocked event loop (detection, not a speed threshold)."""

from __future__ import annotations

import itertools

import anyio
import anyio.lowlevel

from runner.health import Health


async def test_a_late_wake_up_shows_up_as_lag_and_saturation() -> None:
    # the clock is injected: between two samples it jumps 0.2 s, as a blocking call would make it
    now = [0.0]
    health = Health(interval_s=0.0, clock=lambda: now[0], cpu_clock=lambda: 0.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(health.watch)
        for _ in range(3):
            await anyio.lowlevel.checkpoint()     # a few ordinary samples first
        now[0] = 0.2
        for _ in range(3):
            await anyio.lowlevel.checkpoint()     # the watcher wakes up "late" and notes it
        tg.cancel_scope.cancel()
    report = health.report()
    assert set(report) == {"cpu_s", "loop_lag_p99_ms", "loop_lag_max_ms", "saturated"}
    assert report["loop_lag_max_ms"] == 200.0
    assert report["saturated"] is True
    assert "saturated" in (health.warning() or "")


def test_lag_quantiles_from_noted_samples() -> None:
    health = Health()
    for _ in range(99):
        health.note(0.001)
    health.note(0.5)
    assert 0.001 <= health.lag_quantile_s(0.5) <= 0.00106    # buckets are 5% wide
    assert health.lag_quantile_s(1.0) == 0.5
    assert health.report()["loop_lag_max_ms"] == 500.0


def test_an_idle_run_is_not_saturated() -> None:
    cpu = itertools.chain([10.0], itertools.repeat(10.5))     # 0.5 CPU s over 10 wall s
    wall = itertools.chain([0.0], itertools.repeat(10.0))
    health = Health(clock=lambda: next(wall), cpu_clock=lambda: next(cpu))
    health.note(0.002)
    report = health.report()
    assert report == {"cpu_s": 0.5, "loop_lag_p99_ms": 2.0, "loop_lag_max_ms": 2.0,
                      "saturated": False}
    assert health.warning() is None


def test_a_run_too_short_to_judge_is_not_called_saturated() -> None:
    """A one-request run keeps the CPU busy for its few milliseconds (it has nothing else to
    do): that is no sign of a saturated client, and its output must not warn about one."""
    cpu = itertools.chain([1.0], itertools.repeat(1.003))     # 3 ms of CPU over 3 ms of wall
    wall = itertools.chain([0.0], itertools.repeat(0.003))
    health = Health(clock=lambda: next(wall), cpu_clock=lambda: next(cpu))
    assert health.report()["saturated"] is False
    assert health.warning() is None


def test_a_long_run_at_full_cpu_is_saturated() -> None:
    cpu = itertools.chain([1.0], itertools.repeat(6.0))       # 5 CPU s over 5 wall s
    wall = itertools.chain([0.0], itertools.repeat(5.0))
    health = Health(clock=lambda: next(wall), cpu_clock=lambda: next(cpu))
    assert health.report()["saturated"] is True
