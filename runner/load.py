"""The load-test driver: a job's `Load` and the run's state in, every stage sent on its schedule
(each slot through `worker.handle`, so limits, budget and retries all apply) and the stage
facts for run.json out. `engine` calls `drive` in place of its closed-loop pool.

Open-loop stages (`pace`) start each request at its scheduled time in a task of its own,
whether or not the earlier ones have finished; the run's concurrency gate (load.max_concurrency)
caps what is in flight, and a request waiting for it is late by that wait. Closed-loop stages
(`loop`) keep N workers busy. Stages run one after another; a stage ends when its last request
has finished.

A stage that ran to its end is recorded at once in run.json (`done`: the slots it took and the
rate it measured), so a resume after a kill -9 sends only those of its slots not done and a
sweep reuses its measured rates instead of measuring them again.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel

from .load_plan import Load, Slots, Sweep, load_section, stage_facts
from .plan import Plan
from .result import OK, SKIPPED, Result
from .schedule import Stage, arrivals, sweep_rates
from .worker import RunState, handle

LATE_S = 0.025          # a request sent later than this after its time was sent late
LATE_SHARE = 0.01       # a stage with more late requests than this did not keep its schedule
CHECKPOINT_EVERY = 64   # when behind, yield to the loop after this many sends in a row
SWITCH_INTERVAL_S = 0.0005  # the GIL's switch interval while a load test sends

Fire = Callable[[int, float, float], Coroutine[Any, Any, None]]


async def pace(slots: Iterable[tuple[int, float]], fire: Fire, *, clock: Callable[[], float],
               stopping: Callable[[], bool]) -> None:
    """Start `fire(k, offset_s, lag_s)` in a task of its own at each slot's offset from now
    (lag_s: how late that start is); return once every fired task has finished."""
    async with anyio.create_task_group() as tg:
        t0 = clock()
        behind = 0
        for k, offset in slots:
            if stopping():
                break
            delay = t0 + offset - clock()
            if delay > 0:
                behind = 0
                await anyio.sleep(delay)
                if stopping():  # a signal (or a refusal) while it waited
                    break
            else:  # late already: send at once, but let the loop run now and then
                behind += 1
                if behind % CHECKPOINT_EVERY == 0:
                    await anyio.lowlevel.checkpoint()
            tg.start_soon(fire, k, offset, max(0.0, clock() - t0 - offset))


async def loop(slots: Iterator[int], fire: Fire, *, workers: int, clock: Callable[[], float],
               stopping: Callable[[], bool], duration_s: float | None) -> None:
    """`workers` workers each fire the next slot as soon as their last one finished, until
    the slots run out or `duration_s` has passed (offset_s: when it was taken; lag_s: 0)."""
    t0 = clock()

    async def work() -> None:
        for k in slots:  # one iterator shared by all: next() has no checkpoint
            offset = clock() - t0
            if stopping() or (duration_s is not None and offset >= duration_s):
                return
            await fire(k, offset, 0.0)

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(work)


@dataclass(slots=True)
class Tally:
    """What a stage did, as it ran: the columns `load_stats.stage_figures` reads (a sweep's
    rates come from them), and how late its requests went out."""

    stage: Stage
    slots: int = 0                      # slots 0..slots-1 were taken (sent, or done before)
    sent: int = 0
    late: int = 0
    capped: int = 0                     # found load.max_concurrency full and waited
    columns: dict[str, list[Any]] = field(default_factory=lambda: {
        name: [] for name in ("scheduled_s", "ended_s", "status", "phase", "latency_s",
                              "ttft_s", "tpot_s", "itl_p50_s", "itl_p99_s",
                              "completion_tokens", "cost_usd", "send_lag_s", "slo_met")})

    def add(self, result: Result, offset_s: float, ended_s: float, capped_s: float) -> None:
        columns = self.columns
        for name, value in (("scheduled_s", offset_s), ("ended_s", ended_s),
                            ("status", result.status), ("phase", result.load_phase),
                            ("latency_s", result.latency_s), ("ttft_s", result.ttft_s),
                            ("tpot_s", result.tpot_s), ("itl_p50_s", result.itl_p50_s),
                            ("itl_p99_s", result.itl_p99_s),
                            ("completion_tokens", result.completion_tokens),
                            ("cost_usd", result.cost_usd), ("send_lag_s", result.send_lag_s),
                            ("slo_met", result.slo_met)):
            columns[name].append(value)
        if result.attempts:
            self.sent += 1
            self.late += (result.send_lag_s or 0.0) > LATE_S
            self.capped += capped_s > 0

    def figures(self) -> dict[str, Any]:
        from .load_stats import stage_figures  # numpy: not before a run's first request

        return stage_figures(**self.columns)  # type: ignore[arg-type]

    def facts(self, figures: dict[str, Any]) -> dict[str, Any]:
        # one late request in a short stage is noise, not a schedule missed
        kept = not self.stage.open_loop or self.late <= max(1.0, LATE_SHARE * self.sent)
        return {**stage_facts(self.stage), "sent": self.sent, "late": self.late,
                "capped": self.capped, "send_lag_p99_s": _finite(figures["send_lag_p99_s"]),
                "send_lag_max_s": _finite(figures["send_lag_max_s"]), "schedule_kept": kept,
                "achieved_rps": _finite(figures["achieved_rps"]),
                "request_throughput_rps": _finite(figures["request_throughput_rps"])}


def _finite(value: float) -> float | None:
    """run.json is strict JSON: no NaN."""
    return value if value == value and abs(value) != float("inf") else None


def mean_rate_rps(stage: Stage) -> float | None:
    """The `requested_rps` of a stage's rows: its rate (a ramp: its mean); None: closed loop."""
    if stage.mode == "ramp" and stage.rate_rps and stage.to_rate_rps:
        if stage.ramp == "linear" or stage.rate_rps == stage.to_rate_rps:
            return (stage.rate_rps + stage.to_rate_rps) / 2
        return (stage.to_rate_rps - stage.rate_rps) / math.log(stage.to_rate_rps /
                                                               stage.rate_rps)
    return stage.rate_rps if stage.open_loop else None


async def drive(run: RunState, plan: Plan) -> None:
    """Send every stage of the job's load test in order; facts go to `run.load`."""
    load = run.job.load
    assert load is not None
    slots = Slots(plan, load.order, load.seed)
    before = (run.load or {}).get("resumed_from") or {}
    facts: dict[str, Any] = {**load_section(load), "stages": [], "done": _done(before)}
    if type(before.get("sweeps")) is dict:  # (each sweep checks its own before reusing it)
        facts["sweeps"] = dict(before["sweeps"])
    run.load = facts
    # the cap on requests in flight: the job scope of the limits has no limiter (a closed
    # pool is its own cap), and waiting inside the HTTP pool would be counted as latency
    cap = anyio.CapacityLimiter(load.max_concurrency)
    with _short_switch_interval():
        for step in load.steps:
            if run.stopping or "stopped_by" in facts:
                break
            if isinstance(step, Stage):
                await _stage(run, slots, step, facts, cap)
                continue
            await _sweep(run, slots, step, load, facts, before, cap)


_switch = {"tests": 0, "saved_s": 0.0}  # load tests sending in this process, the usual interval


@contextlib.contextmanager
def _short_switch_interval() -> Iterator[None]:
    """While any load test of the process sends, a thread holding the GIL (a part flush, see
    `background`) hands it to the event loop after SWITCH_INTERVAL_S instead of CPython's 5 ms
    (a send is due every 2 ms at 500 req/s); the last one to end restores the interval."""
    if _switch["tests"] == 0:
        _switch["saved_s"] = sys.getswitchinterval()
        sys.setswitchinterval(min(_switch["saved_s"], SWITCH_INTERVAL_S))
    _switch["tests"] += 1
    try:
        yield
    finally:
        _switch["tests"] -= 1
        if _switch["tests"] == 0:
            sys.setswitchinterval(_switch["saved_s"])


async def _sweep(run: RunState, slots: Slots, sweep: Sweep, load: Load, facts: dict[str, Any],
                 before: dict[str, Any], cap: anyio.CapacityLimiter) -> None:
    key = str(sweep.first_index)
    known = (before.get("sweeps") or {}).get(key)
    rates: list[float] | None = None
    if type(known) is list and all(type(r) in (int, float) for r in known):
        rates = [float(r) for r in known]  # a resume: the rates this sweep measured before
    measured: list[float | None] = []
    for stage in sweep.measuring(load.max_concurrency):
        if run.stopping or "stopped_by" in facts:
            return
        measured.append(await _stage(run, slots, stage, facts, cap) or None)
    if rates is None:
        low, high = measured
        if low is None or high is None:
            facts.setdefault("notes", []).append(
                f"sweep: its {'synchronous' if low is None else 'throughput'} stage had no "
                "successful request in its measured window, so it has no rates to sweep and "
                "its rate stages were not sent (see the rows' errors; lengthen the stages)")
            return
        rates = sweep_rates(low, max(high, low), sweep.rates, sweep.up_to)
    facts.setdefault("sweeps", {})[key] = rates
    _save(run)
    for stage in sweep.at_rates(rates):
        if run.stopping or "stopped_by" in facts:
            return
        await _stage(run, slots, stage, facts, cap)


async def _stage(run: RunState, slots: Slots, stage: Stage, facts: dict[str, Any],
                 cap: anyio.CapacityLimiter) -> float | None:
    """One stage: its slots sent open- or closed-loop (a stage done before: only its slots not
    done); returns the request throughput it measured (a stage done before: as it was then)."""
    assert run.job.load is not None
    goodput = run.job.load.goodput
    if goodput is not None:
        from .load_stats import row_meets
    tally = Tally(stage)
    end_s = stage.end_s()
    rate = mean_rate_rps(stage)
    wall0 = datetime.now(UTC)
    clock = run.clock
    t0 = clock()

    async def fire(k: int, offset: float, lag_s: float) -> None:
        tally.slots = max(tally.slots, k + 1)
        asked, full = clock(), cap.available_tokens < 1
        async with cap:
            now = clock()
            # late by: the scheduler, the task's start, the cap (then the limits, in stamp)
            await _send(k, offset, max(lag_s, now - t0 - offset), now - asked if full else 0.0)

    async def _send(k: int, offset: float, lag_s: float, capped_s: float) -> None:
        def stamp(result: Result) -> None:
            result.stage = stage.name
            result.requested_rps = rate
            result.load_phase = stage.phase(offset, end_s)
            result.scheduled_at = wall0 + timedelta(seconds=offset)
            if result.attempts:  # a request refused before sending was never late
                result.send_lag_s = lag_s + (result.queue_s or 0.0)
            if goodput is not None and result.status == OK:
                result.slo_met = row_meets(goodput, result.ttft_s, result.tpot_s,
                                           result.itl_p99_s, result.latency_s)
            tally.add(result, offset, clock() - t0, capped_s)
            if result.status == SKIPPED and "stopped_by" not in facts:
                # refused (budget, cost cap, a stopped model): the schedule cannot be kept
                facts["stopped_by"] = f"{result.error_type}: {result.error_message}"

        await handle(run, slots.request(stage, k), stamp)

    def todo(ks: Iterable[int]) -> Iterator[int]:
        return (k for k in ks if slots.request_id(stage, k) not in run.skip)

    stopping = _stopping(run, facts)
    done = facts["done"].get(stage.name)
    if stage.open_loop:
        times = arrivals(stage)
        if run.skip:
            pending: Iterable[tuple[int, float]] = (
                (k, t) for k, t in enumerate(times) if slots.request_id(stage, k) not in run.skip)
        else:
            pending = enumerate(times)
        await pace(pending, fire, clock=clock, stopping=stopping)
    else:
        count: Iterable[int] = itertools.count() if stage.requests is None else \
            range(stage.requests)
        if done is not None:  # it ran to its end before: its slots are known, not its time
            count = range(done["slots"])
        await loop(todo(count) if run.skip else iter(count), fire,
                   workers=stage.concurrency or 1, clock=clock, stopping=stopping,
                   duration_s=stage.duration_s if done is None else None)
    figures = tally.figures()
    facts["stages"].append(tally.facts(figures))
    if done is not None:
        before: float | None = done["request_throughput_rps"]
        return before
    measured = _finite(figures["request_throughput_rps"])
    if not stopping():  # ran to its end: a resume must neither send it again nor re-measure
        facts["done"][stage.name] = {"slots": tally.slots, "request_throughput_rps": measured}
        _save(run)
    return measured


def _done(before: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stages an earlier session of the run ended (its run.json, so checked as input)."""
    found = before.get("done")
    if type(found) is not dict:
        return {}
    out = {}
    for name, record in found.items():
        if type(record) is not dict:
            continue
        taken, rate = record.get("slots"), record.get("request_throughput_rps")
        if type(taken) is int and taken >= 0 and (
                rate is None or (type(rate) in (int, float) and _finite(float(rate)) is not None)):
            out[str(name)] = {"slots": taken,
                              "request_throughput_rps": None if rate is None else float(rate)}
    return out


def _save(run: RunState) -> None:
    """run.json now, not only at the end: what a stage measured outlives a kill -9."""
    if run.save_facts is not None:
        run.save_facts()


def _stopping(run: RunState, facts: dict[str, Any]) -> Callable[[], bool]:
    """A signal, or a request refused without being sent (the budget, the cost cap, a stopped
    provider or model): a load test sends nothing more."""
    def stopping() -> bool:
        return run.stopping or "stopped_by" in facts
    return stopping
