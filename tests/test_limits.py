"""Rate limits, concurrency caps and 429 pauses, on a virtual clock (no real sleeping)."""

from __future__ import annotations

import anyio
import pytest

from runner.config import Limits, load_job
from runner.limits import Gates, Pause

from .virtual_time import run_virtual

JOB = """
name: limits
provider: simulated
models:
  - sim/fast-mini
  - {id: sim/balanced, limits: {concurrency: 2}}
prompts: [hi]
"""


def _gates(write_job, limits: Limits) -> tuple[Gates, object, object]:  # type: ignore[no-untyped-def]
    job = load_job(write_job(JOB))
    return Gates.build(job, limits, anyio.current_time), job.models[0], job.models[1]


async def _hammer(gates: Gates, model: object, workers: int, until_s: float,
                  hold_s: float = 0.0, tokens: int = 100) -> list[float]:
    granted: list[float] = []

    async def worker() -> None:
        while anyio.current_time() < until_s:
            async with gates.slot(model, tokens=tokens):  # type: ignore[arg-type]
                granted.append(anyio.current_time())
                await anyio.sleep(hold_s)

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
    return granted


@pytest.mark.parametrize("rpm", [60, 600, 6000])
def test_rpm_is_held_without_bursts(write_job, rpm: float) -> None:  # type: ignore[no-untyped-def]
    async def go() -> list[float]:
        gates, fast, _ = _gates(write_job, Limits(rpm=rpm))
        return await _hammer(gates, fast, workers=50, until_s=60.0)

    granted = [t for t in run_virtual(go()) if t < 60.0]
    assert abs(len(granted) - rpm) <= rpm * 0.02 + 1
    bucket, per_s = max(1.0, rpm / 60), rpm / 60
    for start in range(60):  # any second: at most a full bucket plus one second's drip
        in_window = sum(start <= t < start + 1 for t in granted)
        assert in_window <= bucket + per_s + 1
    late = [t for t in granted if t >= 10.0]  # once the bucket is drained: the steady rate
    assert abs(len(late) - rpm * 50 / 60) <= rpm * 50 / 60 * 0.02 + 1


def test_tpm_paces_by_estimated_tokens(write_job) -> None:  # type: ignore[no-untyped-def]
    async def go() -> list[float]:
        gates, fast, _ = _gates(write_job, Limits(tpm=6000))  # 100 tokens each: 60 per minute
        return await _hammer(gates, fast, workers=20, until_s=60.0)

    granted = [t for t in run_virtual(go()) if t < 60.0]
    assert 58 <= len(granted) <= 62


def test_tpm_charges_requests_bigger_than_its_bucket_in_full(write_job) -> None:  # type: ignore[no-untyped-def]
    async def go() -> list[float]:
        # 6000 tpm is a bucket of 100 tokens a second; each request is 1000 tokens: one per 10 s
        gates, fast, _ = _gates(write_job, Limits(tpm=6000))
        return await _hammer(gates, fast, workers=20, until_s=60.0, tokens=1000)

    granted = [t for t in run_virtual(go()) if t < 60.0]
    assert 5 <= len(granted) <= 7
    for start in range(60):  # and not in bursts: big requests queue whole, not interleaved
        assert sum(start <= t < start + 10 for t in granted) <= 2


def test_model_concurrency_cap(write_job) -> None:  # type: ignore[no-untyped-def]
    in_flight, peak = 0, 0

    async def go() -> None:
        nonlocal in_flight, peak
        gates, _, balanced = _gates(write_job, Limits())

        async def one() -> None:
            nonlocal in_flight, peak
            async with gates.slot(balanced, tokens=1):  # type: ignore[arg-type]
                in_flight += 1
                peak = max(peak, in_flight)
                await anyio.sleep(1)
                in_flight -= 1

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)

    run_virtual(go())
    assert peak == 2


def test_429_pause_holds_every_worker_until_it_ends(write_job) -> None:  # type: ignore[no-untyped-def]
    async def go() -> list[float]:
        gates, fast, _ = _gates(write_job, Limits(rpm=600))

        async def rate_limited_at_1s() -> None:
            await anyio.sleep(1.0)
            gates.pause(fast, 5.0)  # type: ignore[arg-type]

        async with anyio.create_task_group() as tg:
            tg.start_soon(rate_limited_at_1s)
            granted = await _hammer(gates, fast, workers=30, until_s=10.0)
        return granted

    granted = run_virtual(go())
    assert not [t for t in granted if 1.0 < t < 6.0]
    after = [t for t in granted if t >= 6.0]
    assert after and after[0] < 6.0 + 0.3        # resumes (staggered by at most spread_s)
    # no herd: the first second after the pause holds a bucket (10) plus its drip (10), not
    # the 30 workers at once plus tokens they queued for during the pause
    assert sum(6.0 <= t < 7.0 for t in after) <= 21


def test_pause_extends_but_never_shortens() -> None:
    async def go() -> float:
        pause = Pause(anyio.current_time, spread_s=0.0)
        pause.pause_for(3.0)
        pause.pause_for(1.0)
        await pause.wait()
        return anyio.current_time()

    assert run_virtual(go()) == pytest.approx(3.0)
