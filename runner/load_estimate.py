"""What a load test will send, before it runs: a job's `Load`, the size of its plan and the plan's
worst case (`estimate.Estimate`) in; per stage its mode, rate, bounds and the most requests it
can send, and the worst-case cost of the whole load test against the budget out (pure).

A load test sends plan items again and again (`load_plan.Slots`), so its worst case is the
plan's, `estimate` being the one home of pricing: every item costs at most its own worst case
each time it is sent, so the whole test costs at most the plan's worst case times the most
times any one item is sent (exact when every stage sends whole cycles of the plan, an upper
bound otherwise). A stage bounded by time alone in a closed loop, and a sweep's rate stages
without a `requests:` bound, send a number of requests known only as they run: then the worst
case is unknown and only the budget caps spending.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .budget import covers
from .formatting import usd
from .load_plan import Load, Slots, Sweep
from .plan import Plan
from .schedule import COUNT_LIMIT, Stage, max_sends


@dataclass(frozen=True, slots=True)
class StageOutline:
    """One stage as planned (a sweep's rate stages: one outline for all of them)."""

    name: str                    # the rows' `stage` value; a sweep's rate stages: `02-05 ...`
    mode: str
    sends: str                   # what it sends: `10/s`, `ramp 1->10/s (linear)`, `1 in flight`
    duration_s: float | None
    requests: int | None
    warmup_s: float
    cooldown_s: float
    max_requests: int | None     # the most it sends; None: known only as it runs
    unknown: str = ""            # why max_requests is None
    count: int = 1               # stages it stands for (a sweep's rate stages: their number)

    def as_json(self) -> dict[str, Any]:
        return {"stage": self.name, "mode": self.mode, "sends": self.sends,
                "duration_s": self.duration_s, "requests": self.requests,
                "warmup_s": self.warmup_s, "cooldown_s": self.cooldown_s,
                "max_requests": self.max_requests, "unknown": self.unknown or None,
                "stages": self.count}


@dataclass(frozen=True, slots=True)
class LoadEstimate:
    """The stages of a load test and its worst case against the budget."""

    stages: tuple[StageOutline, ...]
    plan_requests: int             # the plan's size: what the stages cycle through
    order: str
    max_concurrency: int
    most_sends: int | None         # the most times one plan item is sent; None: unknown
    plan_worst_usd: float | None   # the plan's worst case, every item once (`estimate`)
    budget_usd: float | None
    notes: tuple[str, ...] = ()    # each sweep: its rates are known only after it measured

    @property
    def max_requests(self) -> int | None:
        counts = [s.max_requests for s in self.stages]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)

    @property
    def worst_usd(self) -> float | None:
        if self.most_sends is None or self.plan_worst_usd is None:
            return None
        return self.most_sends * self.plan_worst_usd

    @property
    def budget_covers(self) -> bool | None:
        return covers(self.budget_usd, self.worst_usd)

    def as_json(self) -> dict[str, Any]:
        """`runner plan --json`'s `load` object."""
        return {"stages": [s.as_json() for s in self.stages], "plan_requests": self.plan_requests,
                "order": self.order, "max_concurrency": self.max_concurrency,
                "max_requests": self.max_requests, "most_sends_per_plan_request": self.most_sends,
                "worst_case_usd": self.worst_usd, "budget_usd": self.budget_usd,
                "budget_covers": self.budget_covers, "notes": list(self.notes)}

    def lines(self) -> list[str]:
        """`runner plan`'s text: one line per stage, the sweeps' notes, the worst case."""
        count = sum(s.count for s in self.stages)
        out = [f"load test: {f'{count} stages, one after another' if count > 1 else '1 stage'};"
               f" {'each' if count > 1 else 'it'} sends the plan's {self.plan_requests} request(s) "
               f"{'in a cycle' if self.order == 'cycle' else 'in a seeded random order'} "
               f"(at most {self.max_concurrency} in flight)"]
        width = max(len(s.name) for s in self.stages)
        for s in self.stages:
            out.append(f"  {s.name:<{width}}  {s.sends}; {_bounds(s)}: {_at_most(s)}")
        out.extend(f"  {note}" for note in self.notes)
        worst = self.worst_usd
        total = self.max_requests
        if worst is not None:
            out.append(f"worst case of the load test: {usd(worst)} for at most {total} requests "
                       f"(each plan request sent at most {self.most_sends} time(s), x the "
                       f"plan's worst case {usd(self.plan_worst_usd)})")
        elif self.most_sends is not None:
            out.append(f"worst case of the load test: unknown for at most {total} requests (a "
                       "model has no price or no max_tokens)")
        else:
            open_ended = ", ".join(s.name for s in self.stages if s.max_requests is None)
            out.append(f"worst case of the load test: unknown: the number of requests of "
                       f"{open_ended} is known only as it runs (give them a requests: bound "
                       "to know it); only the budget caps spending")
        out.append(self._budget_line())
        return out

    def _budget_line(self) -> str:
        if self.budget_usd is None:
            return "no budget_usd set: spending is not capped"
        if self.budget_covers is None:
            return (f"budget {usd(self.budget_usd)}: the load test stops sending when it is "
                    "used up (its worst case is unknown)")
        if self.budget_covers:
            return f"budget {usd(self.budget_usd)} covers the load test's worst case"
        return (f"budget {usd(self.budget_usd)} does NOT cover the load test's worst case "
                f"({usd(self.worst_usd)}): it stops sending when the budget is used up")


def estimate_load(load: Load, plan: Plan, plan_worst_usd: float | None,
                  budget_usd: float | None) -> LoadEstimate:
    """The outline and worst case of `load` sending `plan`, whose worst case (every request
    once, judges included) is `plan_worst_usd` (from `estimate.estimate`)."""
    outlines: list[StageOutline] = []
    notes: list[str] = []
    bounded: list[tuple[Stage, int]] = []   # stages whose slot count is known: (stage, count)
    for step in load.steps:
        if isinstance(step, Stage):
            outline = _outline(step)
            outlines.append(outline)
            if outline.max_requests is not None:
                bounded.append((step, outline.max_requests))
            continue
        measuring = step.measuring(load.max_concurrency)
        for stage in measuring:
            outline = _outline(stage)
            outlines.append(outline)
            if outline.max_requests is not None:
                bounded.append((stage, outline.max_requests))
        outlines.append(_rate_stages(step))
        notes.append(_sweep_note(step, measuring))
        if step.template.requests is not None:  # its rate stages: `requests` each, whatever
            bounded.extend((stage, step.template.requests)  # their rates turn out to be
                           for stage in step.at_rates([1.0] * step.rates))
    most = None
    if all(o.max_requests is not None for o in outlines):
        most = _most_sends(Slots(plan, load.order, load.seed), bounded)
    return LoadEstimate(tuple(outlines), len(plan), load.order, load.max_concurrency, most,
                        plan_worst_usd, budget_usd, tuple(notes))


def _outline(stage: Stage) -> StageOutline:
    count = max_sends(stage)  # an open loop's send times are a pure function of the stage
    unknown = ""
    if stage.open_loop:
        if count is None:
            unknown = f"more than {COUNT_LIMIT:,} requests (not counted ahead)"
    else:
        unknown = "" if count is not None else \
            f"unbounded by count (a closed loop), bounded by time ({_s(stage.duration_s)})"
    return StageOutline(stage.name, stage.mode, _sends(stage), stage.duration_s, stage.requests,
                        stage.warmup_s, stage.cooldown_s, count, unknown)


def _rate_stages(sweep: Sweep) -> StageOutline:
    first = sweep.first_index + 2
    base = sweep.template
    name = f"{first:02d}-{first + sweep.rates - 1:02d} {sweep.arrivals}"
    burst = f", burstiness {base.burstiness:g}" if sweep.arrivals == "poisson" and \
        base.burstiness else ""
    sends = (f"{sweep.rates} rate stage(s) from the synchronous rate (excluded) to "
             f"{sweep.up_to:g} x the throughput rate{burst}")
    unknown = "" if base.requests is not None else \
        f"rate x {_s(base.duration_s)} each, at rates known only as the sweep runs"
    total = None if base.requests is None else base.requests * sweep.rates
    return StageOutline(name, sweep.arrivals, sends, base.duration_s, base.requests,
                        base.warmup_s, base.cooldown_s, total, unknown, sweep.rates)


def _sweep_note(sweep: Sweep, measuring: tuple[Stage, Stage]) -> str:
    low, high = (stage.name for stage in measuring)
    return (f"sweep: the rates of its {sweep.rates} rate stage(s) are known only after stages "
            f"{low} and {high} ran (their request throughputs); a resume reuses them")


def _most_sends(slots: Slots, bounded: list[tuple[Stage, int]]) -> int:
    """The most times one plan item is sent by these stages (each `count` slots)."""
    n = len(slots.plan)
    if not n:
        return 0
    if slots.order == "cycle":  # every stage starts at item 0: item 0 is sent the most
        return sum(math.ceil(count / n) for _, count in bounded)
    if sum(count for _, count in bounded) > COUNT_LIMIT:  # too many draws to make ahead
        return sum(count for _, count in bounded)
    picks = Counter(_picks(slots, bounded))
    return max(picks.values(), default=0)


def _picks(slots: Slots, bounded: list[tuple[Stage, int]]) -> Iterator[int]:
    for stage, count in bounded:
        for k in range(count):
            yield slots.item(stage, k)


def _sends(stage: Stage) -> str:
    if stage.mode == "ramp":
        return f"open loop, ramp {stage.rate_rps:g} -> {stage.to_rate_rps:g} req/s ({stage.ramp})"
    if stage.open_loop:
        burst = f", burstiness {stage.burstiness:g}" if stage.mode == "poisson" else ""
        return f"open loop, {stage.rate_rps:g} req/s{burst}"
    return f"closed loop, {stage.concurrency} in flight"


def _bounds(stage: StageOutline) -> str:
    parts = []
    if stage.duration_s is not None:
        parts.append(f"for {_s(stage.duration_s)}")
    if stage.requests is not None:
        parts.append(f"{'or ' if parts else ''}{stage.requests} requests"
                     f"{', whichever comes first' if parts else ''}")
    edges = [f"{label} {_s(value)}" for label, value in (("warm-up", stage.warmup_s),
                                                         ("cool-down", stage.cooldown_s))
             if value]
    return " ".join(parts) + (f" ({', '.join(edges)} not measured)" if edges else "")


def _at_most(stage: StageOutline) -> str:
    if stage.max_requests is None:
        return stage.unknown
    each = f" ({stage.requests} each)" if stage.count > 1 else ""
    return f"at most {stage.max_requests} requests{each}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"
