"""The health monitor notices a blocked event loop (detection, not a speed threshold)."""

from __future__ import annotations

import itertools
import time

import anyio

from runner.health import Health


async def test_a_blocking_call_shows_up_as_lag_and_saturation() -> None:
    health = Health(interval_s=0.01)
    async with anyio.create_task_group() as tg:
        tg.start_soon(health.watch)
        await anyio.sleep(0.05)     # a few ordinary samples first
        time.sleep(0.2)  # noqa: ASYNC251 - the point: block the loop as CPU-bound code would
        await anyio.sleep(0.05)     # let the watcher wake up (late) and note it
        tg.cancel_scope.cancel()
    report = health.report()
    assert set(report) == {"cpu_s", "loop_lag_p99_ms", "loop_lag_max_ms", "saturated"}
    assert report["loop_lag_max_ms"] >= 190    # the wake-up due mid-block came >= 190 ms late
    assert report["loop_lag_p99_ms"] > 20
    assert report["saturated"] is True
    assert health.warning() is not None


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
