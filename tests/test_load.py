"""Load tests: schedules (pure), the open and closed loops on virtual time, the `load:` section's
refusals, stage figures and the knee, and sweeps end to end against the simulator's capacity."""

from __future__ import annotations

import asyncio
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from runner.cli import main
from runner.config import Job, load_job
from runner.errors import JobFileError
from runner.itl import itl_figures
from runner.load import loop, pace
from runner.load_plan import Goodput, Slots, parse_goodput
from runner.load_stats import knee, stage_figures
from runner.plan import Plan
from runner.schedule import Stage, arrivals, sweep_rates
from tests.test_config import write_case
from tests.virtual_time import run_virtual

# --- schedules (pure) ---------------------------------------------------------------------------


def test_constant_rate_is_evenly_spaced_from_zero() -> None:
    offsets = list(arrivals(Stage(0, "constant", rate_rps=4, requests=5)))
    assert offsets == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_duration_bounds_a_stage() -> None:
    offsets = list(arrivals(Stage(0, "constant", rate_rps=10, duration_s=1.0)))
    assert len(offsets) == 10 and max(offsets) < 1.0


@pytest.mark.parametrize(("burstiness", "cv"), [(1.0, 1.0), (0.25, 2.0), (4.0, 0.5)])
def test_poisson_keeps_the_rate_and_burstiness_sets_the_spread(burstiness: float,
                                                               cv: float) -> None:
    """Gaps are gamma(shape b) with mean 1/rate: the coefficient of variation is 1/sqrt(b)
    (b = 1: Poisson), as vLLM's --burstiness."""
    offsets = list(arrivals(Stage(0, "poisson", rate_rps=50, burstiness=burstiness,
                                  requests=20_000)))
    gaps = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 50, rel=0.05)
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(cv, rel=0.1)


def test_a_schedule_is_the_same_every_time() -> None:
    """A resume sends the slots left at the times first planned."""
    stage = Stage(2, "poisson", rate_rps=5, burstiness=0.5, requests=50, seed=7)
    assert list(arrivals(stage)) == list(arrivals(stage))
    assert list(arrivals(stage)) != list(arrivals(Stage(2, "poisson", rate_rps=5,
                                                        burstiness=0.5, requests=50, seed=8)))


@pytest.mark.parametrize("shape", ["linear", "exponential"])
def test_ramp_goes_from_one_rate_to_the_other(shape: str) -> None:
    stage = Stage(0, "ramp", rate_rps=2, to_rate_rps=50, ramp=shape, duration_s=10)
    offsets = list(arrivals(stage))
    expected = (2 + 50) / 2 * 10 if shape == "linear" else (50 - 2) * 10 / math.log(25)
    assert len(offsets) == pytest.approx(expected, abs=1)
    first = sum(1 for t in offsets if t < 1)
    last = sum(1 for t in offsets if t >= 9)
    assert first < 7 and last > 40  # starts near 2/s, ends near 50/s


def test_sweep_rates_are_spaced_up_to_the_throughput() -> None:
    assert sweep_rates(2.0, 10.0, 4) == [4.0, 6.0, 8.0, 10.0]  # GuideLLM: last = throughput
    assert sweep_rates(2.0, 10.0, 2, up_to=1.2) == [7.0, 12.0]


# --- the loops, on virtual time ---------------------------------------------------------------


def test_open_loop_sends_on_time_whether_or_not_earlier_ones_finished() -> None:
    started: list[tuple[int, float, float]] = []

    async def go() -> None:
        clock = asyncio.get_running_loop().time
        t0 = clock()

        async def fire(k: int, offset: float, lag: float) -> None:
            started.append((k, clock() - t0, lag))
            await asyncio.sleep(10)  # a slow answer: the next ones go out anyway

        await pace(enumerate([0.0, 1.0, 2.5]), fire, clock=clock, stopping=lambda: False)
        assert clock() - t0 == pytest.approx(12.5, abs=0.01)  # it waited for all of them

    run_virtual(go())
    assert [(k, round(t, 3)) for k, t, _ in started] == [(0, 0.0), (1, 1.0), (2, 2.5)]
    assert all(lag < 0.001 for _, _, lag in started)


def test_open_loop_says_how_late_a_send_was() -> None:
    """A client that cannot keep up (here: a clock that jumps) records the lag of each send."""
    now = [0.0]
    lags: list[float] = []

    async def go() -> None:
        async def fire(k: int, offset: float, lag: float) -> None:
            lags.append(lag)

        def clock() -> float:
            now[0] += 0.5  # every look at the clock costs half a second
            return now[0]

        await pace(enumerate([0.0, 0.1, 0.2]), fire, clock=clock, stopping=lambda: False)

    run_virtual(go())
    assert len(lags) == 3 and lags[0] > 0 and lags == sorted(lags)


def test_open_loop_stops_scheduling_when_told() -> None:
    fired: list[int] = []

    async def go() -> None:
        async def fire(k: int, offset: float, lag: float) -> None:
            fired.append(k)

        await pace(enumerate([0.0, 1.0, 2.0, 3.0]), fire,
                   clock=asyncio.get_running_loop().time, stopping=lambda: len(fired) >= 2)

    run_virtual(go())
    assert fired == [0, 1]


def test_closed_loop_keeps_n_in_flight_until_the_duration_is_over() -> None:
    starts: list[float] = []

    async def go() -> None:
        clock = asyncio.get_running_loop().time
        t0 = clock()

        async def fire(k: int, offset: float, lag: float) -> None:
            starts.append(round(clock() - t0, 3))
            await asyncio.sleep(1.0)

        await loop(iter(range(100)), fire, workers=2, clock=clock, stopping=lambda: False,
                   duration_s=2.5)

    run_virtual(go())
    assert starts == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


# --- the plan's slots: one row each ----------------------------------------------------------

def _job(tmp_path: Path, load: str, extra: str = "") -> Job:
    text = ("name: lt\nprovider: simulated\nmodels: [sim/fast-mini]\n"
            "prompts: [one, two, three]\nparams: {max_tokens: 4}\n" + extra + load)
    return load_job(write_case(tmp_path, text, {}))


def test_a_cycled_plan_gives_every_slot_its_own_id(tmp_path: Path) -> None:
    job = _job(tmp_path, "load: {mode: constant, rate_rps: 10, requests: 7}\n")
    plan = Plan(job)
    slots = Slots(plan, "cycle", 0)
    stage = Stage(3, "constant", rate_rps=10, requests=7)
    requests = [slots.request(stage, k) for k in range(7)]
    assert len({r.request_id for r in requests}) == 7
    assert [r.prompt_id for r in requests] == [plan[k % 3].prompt_id for k in range(7)]
    assert requests[4].request_id == slots.request_id(stage, 4) == \
        f"s3-4-{plan[1].request_id[:12]}"
    sampled = Slots(plan, "sample", 5)
    assert [sampled.request(stage, k).prompt_id for k in range(20)] == \
        [Slots(plan, "sample", 5).request(stage, k).prompt_id for k in range(20)]
    assert len({sampled.request(stage, k).prompt_id for k in range(20)}) == 3


@pytest.mark.parametrize(("load", "field", "words"), [
    ("load: {mode: constant}\n", "load.rate_rps", "needs a rate"),
    ("load: {mode: constant, rate_rps: 5}\n", "load.duration_s", "bounds"),
    ("load: {mode: constant, rate_rps: 5, requests: 3, burstiness: 2}\n", "load.burstiness",
     "does not apply to mode constant"),
    ("load: {mode: ramp, rate_rps: 1, to_rate_rps: 5, requests: 9}\n", "load.duration_s",
     "a ramp needs"),
    ("load: {mode: concurrency, duration_s: 5}\n", "load.concurrency", "in flight"),
    ("load: {mode: concurrency, concurrency: 600, duration_s: 5}\n", "load.concurrency",
     "max_concurrency"),
    ("load: {mode: synchronous, requests: 5, cooldown_s: 1}\n", "load.cooldown_s",
     "give duration_s"),
    ("load: {mode: poisson, rate_rps: 3, duration_s: 2, warmup_s: 1, cooldown_s: 1}\n",
     "load.warmup_s", "nothing"),
    ("load: {duration_s: 5}\n", "load.mode", "give a mode"),
    ("load: {mode: sweep, duration_s: 5, stages: [{mode: synchronous}]}\n", "load.mode",
     "either mode"),
    ("load: {duration_s: 5, stages: [{mode: synchronous}, {mode: poisson}]}\n",
     "load.stages[1].rate_rps", "needs a rate"),
    ("load: {mode: sweep, duration_s: 5, rate_rps: 3}\n", "load.rate_rps", "does not apply"),
    ("load: {mode: constant, rate_rps: 5, requests: 3, goodput: {}}\n", "load.goodput",
     "at least one"),
    ("load: {mode: constant, rate_rps: 0, requests: 3}\n", "load.rate_rps", "greater than 0"),
    ("load: {mode: constant, rate_rps: 5, requests: 3, sped: 1}\n", "load.sped", "unknown"),
])
def test_bad_load_sections_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          load: str, field: str, words: str) -> None:
    with pytest.raises(JobFileError) as caught:
        _job(tmp_path, load)
    assert field in str(caught.value) and words in str(caught.value), str(caught.value)
    assert main(["validate", str(tmp_path / "job.yaml")]) == 2  # validate refuses it too
    assert field in capsys.readouterr().err


def test_stage_keys_beside_stages_are_defaults(tmp_path: Path) -> None:
    job = _job(tmp_path, "load:\n  duration_s: 3\n  warmup_s: 1\n  stages:\n"
               "    - {mode: constant, rate_rps: 2}\n    - {mode: sweep, rates: 3}\n"
               "    - {mode: concurrency, concurrency: 4, duration_s: 9}\n")
    assert job.load is not None
    first, sweep, last = job.load.steps
    assert isinstance(first, Stage) and first.duration_s == 3 and first.warmup_s == 1
    assert isinstance(last, Stage) and last.index == 1 + 2 + 3 and last.duration_s == 9


def test_goodput_flag_parses_and_refuses() -> None:
    assert parse_goodput("ttft=0.5,tpot=0.05,latency=10") == \
        Goodput(ttft_s=0.5, tpot_s=0.05, latency_s=10)
    for bad in ("ttft", "speed=1", "ttft=abc", "ttft=-1", ""):
        with pytest.raises(ValueError):
            parse_goodput(bad)


# --- figures ------------------------------------------------------------------------------------

def test_inter_token_latency_of_one_answer() -> None:
    assert itl_figures([0.1]) == (None, None, None)
    p50, p99, top = itl_figures([0.0, 0.1, 0.2, 0.2, 1.2])
    assert (p50, top) == (pytest.approx(0.1), pytest.approx(1.0))
    assert p99 == pytest.approx(0.1 + 0.97 * 0.9)  # linear between the two largest gaps


def _stage_rows(n: int, rate: float, ttft: float, *, warm: int = 0) -> dict[str, Any]:
    return {"scheduled_s": [k / rate for k in range(n)],
            "ended_s": [k / rate + ttft + 0.1 for k in range(n)],
            "status": ["ok"] * n, "phase": ["warmup"] * warm + ["measure"] * (n - warm),
            "latency_s": [ttft + 0.1] * n, "ttft_s": [ttft] * n, "tpot_s": [0.01] * n,
            "itl_p50_s": [0.01] * n, "itl_p99_s": [0.02] * n, "completion_tokens": [10] * n,
            "cost_usd": [0.001] * n, "send_lag_s": [0.0] * n, "slo_met": [None] * n}


def test_stage_figures_leave_out_the_warm_up_and_judge_goodput() -> None:
    rows = _stage_rows(21, rate=10, ttft=0.2, warm=5)
    figures = stage_figures(**rows, goodput=Goodput(ttft_s=0.3))
    assert figures["measured"] == 16 and figures["window_s"] == pytest.approx(1.5)
    assert figures["achieved_rps"] == pytest.approx(10)
    assert figures["goodput_share"] == 1.0
    assert stage_figures(**rows, goodput=Goodput(ttft_s=0.1))["goodput_rps"] == 0
    assert math.isnan(stage_figures(**rows)["goodput_rps"])  # no SLOs: no goodput
    assert figures["cost_usd"] == pytest.approx(0.021)  # the spend counts every row


def test_the_knee_is_the_last_rate_that_kept_up() -> None:
    stages = [
        {"stage": "00 synchronous", "requested_rps": None, "request_throughput_rps": 5,
         "ttft_p50_s": 0.1},
        {"stage": "02 constant 8/s", "requested_rps": 8, "request_throughput_rps": 8,
         "ttft_p50_s": 0.11},
        {"stage": "03 constant 12/s", "requested_rps": 12, "request_throughput_rps": 11.8,
         "ttft_p50_s": 0.15},
        {"stage": "04 constant 16/s", "requested_rps": 16, "request_throughput_rps": 12.5,
         "ttft_p50_s": 2.0},
    ]
    where, text = knee(stages)
    assert where == 2 and "knee at 12" in text and "saturated from 16" in text
    assert knee(stages[:3])[1].endswith("no saturation seen: raise up_to or the rates)")


def test_the_shipped_load_test_sweeps_a_saturating_simulator() -> None:
    job = load_job(Path(__file__).resolve().parents[1] / "jobs" / "loadtest.yaml")
    assert job.load is not None and job.simulator.capacity is not None
    (sweep,) = job.load.steps
    assert not isinstance(sweep, Stage) and sweep.rates >= 3 and sweep.up_to > 1
    assert job.load.goodput is not None and {m.provider for m in job.models} == {"simulated"}


def test_the_stream_parser_times_each_content_chunk() -> None:
    """ITL comes from the times content chunks were read (reasoning and usage-only events
    are not content)."""
    from runner.responses import Attempt, StreamParser

    attempt = Attempt()
    parser = StreamParser(attempt, 100)

    def chunk(delta: str) -> bytes:
        return b'data: {"choices": [{"delta": ' + delta.encode() + b"}]}"

    parser.feed([chunk('{"reasoning": "hm"}')], 0.05)
    parser.feed([chunk('{"content": "a"}'), chunk('{"content": "b"}')], 0.1)
    parser.feed([chunk('{"content": "c"}')], 0.3)
    parser.feed([b'data: {"choices": [], "usage": {"completion_tokens": 3}}'], 0.4)
    assert attempt.content_at_s == [0.1, 0.1, 0.3]
    assert itl_figures(attempt.content_at_s)[2] == pytest.approx(0.2)


def test_the_short_switch_interval_lasts_while_any_load_test_sends() -> None:
    """Two load tests in one process that end in either order: the interpreter's usual switch
    interval comes back when the last one ends, not when the first does."""
    import sys

    from runner.load import SWITCH_INTERVAL_S, _short_switch_interval

    usual = sys.getswitchinterval()
    first, second = _short_switch_interval(), _short_switch_interval()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)   # the first one ends first
    assert sys.getswitchinterval() == SWITCH_INTERVAL_S
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == usual
