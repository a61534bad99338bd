"""Arrival schedules (pure, no I/O, no clock): a load `Stage` in, the send offsets of its
requests (seconds from the stage's start) out.

Every open-loop mode is one idea: request k goes out when the stage's cumulative intensity
Lambda(t) (the integral of its rate) reaches the k-th "work" value w_k. Evenly spaced work
(w_k = k) gives a constant rate; work whose steps are gamma draws of mean 1 gives Poisson
arrivals (shape 1) or burstier/smoother ones (vLLM's `--burstiness`), and mapping the same work
through the Lambda of a ramp gives a linear or exponential ramp (the time-rescaling theorem).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

OPEN_LOOP = ("constant", "poisson", "ramp")     # sent at their time, whatever is in flight
CLOSED_LOOP = ("concurrency", "synchronous", "throughput")  # sent when a worker is free
MODES = (*OPEN_LOOP, *CLOSED_LOOP, "sweep")
COUNT_LIMIT = 1_000_000   # send times `max_sends` counts ahead, at most
_Inverse = Callable[[float], float]


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of a load run: how its requests are sent, and when it ends."""

    index: int
    mode: str                          # one of OPEN_LOOP or CLOSED_LOOP (a sweep is expanded)
    rate_rps: float | None = None      # constant, poisson; a ramp's start
    to_rate_rps: float | None = None   # a ramp's end
    ramp: str = "linear"               # or "exponential"
    burstiness: float | None = None    # gamma shape of the gaps (1: Poisson); None: even gaps
    concurrency: int | None = None     # closed loop: workers (synchronous 1, throughput the cap)
    duration_s: float | None = None
    requests: int | None = None
    warmup_s: float = 0.0
    cooldown_s: float = 0.0
    seed: int = 0

    @property
    def name(self) -> str:
        """The `stage` column: its position and what it sends, e.g. `03 poisson 4.5/s`."""
        if self.mode == "ramp":
            what = f"ramp {self.rate_rps:.3g}->{self.to_rate_rps:.3g}/s"
        elif self.mode in ("constant", "poisson"):
            what = f"{self.mode} {self.rate_rps:.3g}/s"
        elif self.mode == "concurrency":
            what = f"concurrency {self.concurrency}"
        else:
            what = self.mode
        return f"{self.index:02d} {what}"

    @property
    def open_loop(self) -> bool:
        return self.mode in OPEN_LOOP

    def end_s(self) -> float | None:
        """When the stage stops sending, if known before it starts."""
        if self.duration_s is not None:
            return self.duration_s
        if self.open_loop and self.requests is not None:
            return max(arrivals(self), default=0.0)
        return None

    def phase(self, offset_s: float, end_s: float | None) -> str:
        """`warmup`, `measure` or `cooldown` for a request sent `offset_s` into the stage."""
        if offset_s < self.warmup_s:
            return "warmup"
        if end_s is not None and self.cooldown_s and offset_s >= end_s - self.cooldown_s:
            return "cooldown"
        return "measure"


def arrivals(stage: Stage) -> Iterator[float]:
    """The send offsets of an open-loop stage, in order, within its bounds (duration_s and/or
    requests). Deterministic for a stage (its seed), so a resume finds the same times."""
    if not stage.open_loop:
        raise ValueError(f"{stage.mode} is a closed loop: it has no schedule")
    inverse = _inverse_intensity(stage)
    rng = random.Random(stage.seed * 1_000_003 + stage.index)
    shape = stage.burstiness
    work = 0.0
    k = 0
    while stage.requests is None or k < stage.requests:
        t = inverse(work)
        if not math.isfinite(t) or (stage.duration_s is not None and t >= stage.duration_s):
            return
        yield t
        k += 1
        # gamma(shape, 1/shape) has mean 1: the rate is kept, the shape sets the burstiness
        work += rng.gammavariate(shape, 1.0 / shape) if shape is not None else 1.0


def max_sends(stage: Stage, limit: int = COUNT_LIMIT) -> int | None:
    """The most requests a stage sends: an open loop's send times counted (Poisson, bursty or
    ramped: up to `limit`), a closed loop's `requests`; None: more than `limit`, or a closed
    loop bounded by time."""
    if not stage.open_loop:
        return stage.requests
    if stage.mode == "constant" and stage.burstiness is None and stage.duration_s is not None:
        # request k at k / rate, as `arrivals` computes it: the first k at or past the end
        rate, end = stage.rate_rps, stage.duration_s
        assert rate is not None
        count = max(0, math.ceil(end * rate))
        while count > 0 and (count - 1) / rate >= end:
            count -= 1
        while count / rate < end:
            count += 1
        return count if stage.requests is None else min(count, stage.requests)
    count = sum(1 for _ in itertools.islice(arrivals(stage), limit + 1))
    return count if count <= limit else None


def _inverse_intensity(stage: Stage) -> _Inverse:
    """t such that Lambda(t) = w, for the stage's rate function (inf when never reached)."""
    a = stage.rate_rps
    assert a is not None
    if stage.mode != "ramp":
        return lambda w: w / a
    b, span = stage.to_rate_rps, stage.duration_s
    assert b is not None and span is not None
    if stage.ramp == "exponential":
        growth = math.log(b / a)
        if abs(growth) < 1e-12:
            return lambda w: w / a

        def exponential(w: float) -> float:
            inner = 1.0 + w * growth / (a * span)
            return span * math.log(inner) / growth if inner > 0 else math.inf
        return exponential
    slope = (b - a) / span  # linear: Lambda(t) = a t + slope t^2 / 2
    if abs(slope) < 1e-15:
        return lambda w: w / a

    def linear(w: float) -> float:
        disc = a * a + 2.0 * slope * w
        if disc < 0:
            return math.inf  # a falling ramp that never gets this far
        return (math.sqrt(disc) - a) / slope
    return linear


def sweep_rates(synchronous_rps: float, throughput_rps: float, k: int,
                up_to: float = 1.0) -> list[float]:
    """The k rates of a sweep after its synchronous and throughput stages: evenly spaced from
    the synchronous rate (excluded) to `up_to` x the throughput rate (GuideLLM: up_to 1)."""
    top = throughput_rps * up_to
    if k <= 0:
        return []
    step = (top - synchronous_rps) / k
    return [synchronous_rps + step * (i + 1) for i in range(k)]
