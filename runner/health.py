"""The client's own health during a run: event-loop wake-ups and process CPU in, a verdict on
whether the measured latencies may be inflated by the client itself out.

A task that sleeps `interval_s` and notes how late it woke up measures event-loop lag: when the
loop is busy (CPU-bound parsing, a blocking call, a saturated core), every response waiting to
be read is timestamped that much late too. Run `Health.watch()` in the run's task group and
cancel it with the group; `report()` goes into run.json.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio

LAG_P99_LIMIT_S = 0.020     # wake-ups later than this at p99: latencies carry client delay
CPU_SHARE_LIMIT = 0.9       # the process used > 90% of one core: it was the bottleneck
# ...over at least this long: a run of a few requests keeps the core busy for its few
# milliseconds because it has nothing else to do, which says nothing about its latencies
CPU_SHARE_MIN_WALL_S = 1.0

# Lag histogram edges: 0.1 ms to ~100 s, 5% apart. Memory stays fixed however long the run.
_EDGES_S = tuple(1e-4 * 1.05 ** k for k in range(int(math.log(1e6) / math.log(1.05)) + 2))


class Health:
    """Samples event-loop lag every `interval_s` while `watch()` runs; `report()` sums it up."""

    __slots__ = ("interval_s", "_clock", "_cpu_clock", "_counts", "_samples", "_max_lag_s",
                 "_t0", "_cpu0", "_end")

    def __init__(self, interval_s: float = 0.1, *, clock: Callable[[], float] = time.perf_counter,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._counts = [0] * (len(_EDGES_S) + 1)
        self._samples = 0
        self._max_lag_s = 0.0
        self._t0, self._cpu0 = clock(), cpu_clock()
        self._end: tuple[float, float] | None = None   # (wall, cpu) when watch() ended

    async def watch(self) -> None:
        """Sample until cancelled (start it in the task group that runs the requests)."""
        self._t0, self._cpu0 = self._clock(), self._cpu_clock()
        self._end = None
        try:
            while True:
                due = self._clock() + self.interval_s
                await anyio.sleep(self.interval_s)
                self.note(max(0.0, self._clock() - due))
        finally:
            self._end = (self._clock(), self._cpu_clock())

    def note(self, lag_s: float) -> None:
        """Record one wake-up that came `lag_s` late."""
        self._counts[bisect.bisect_left(_EDGES_S, lag_s)] += 1
        self._samples += 1
        self._max_lag_s = max(self._max_lag_s, lag_s)

    def lag_quantile_s(self, q: float) -> float:
        """An upper bound (within 5%) on the q-quantile (0..1) of the lag; 0 with no samples."""
        if not self._samples:
            return 0.0
        rank = math.ceil(q * self._samples)
        seen = 0
        for i, count in enumerate(self._counts):
            seen += count
            if seen >= rank:
                return min(_EDGES_S[i] if i < len(_EDGES_S) else math.inf, self._max_lag_s)
        return self._max_lag_s

    def report(self) -> dict[str, Any]:
        """CPU seconds and event-loop lag of the run so far, and whether the client saturated."""
        t1, cpu1 = self._end or (self._clock(), self._cpu_clock())  # still running: until now
        cpu_s = max(0.0, cpu1 - self._cpu0)
        wall_s = max(0.0, t1 - self._t0)
        lag_p99_s = self.lag_quantile_s(0.99)
        cpu_share = cpu_s / wall_s if wall_s >= CPU_SHARE_MIN_WALL_S else 0.0
        return {
            "cpu_s": round(cpu_s, 3),
            "loop_lag_p99_ms": round(lag_p99_s * 1000, 3),
            "loop_lag_max_ms": round(self._max_lag_s * 1000, 3),
            "saturated": lag_p99_s > LAG_P99_LIMIT_S or cpu_share > CPU_SHARE_LIMIT,
        }

    def warning(self) -> str | None:
        """One line for the run's output when the client may have inflated its latencies."""
        return saturation_warning(self.report())


def saturation_warning(report: Mapping[str, Any]) -> str | None:
    """The one wording of the client-saturation warning, from a `Health.report()` (or run.json's
    `client` section); None when the client kept up."""
    if not report.get("saturated"):
        return None
    return (f"the client was saturated (event-loop lag p99 {report['loop_lag_p99_ms']:.1f} "
            f"ms, {report['cpu_s']:.1f} CPU s): latencies may include the client's own "
            "delay; lower concurrency or run the client on a less busy machine")
