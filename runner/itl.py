"""Inter-token latency of one answer: the times its content chunks arrived in, the p50, p99 and
largest gap between two of them out (pure).

The gaps are between chunks as the client read them: chunks that came in one read share a
time (a gap of 0), as they do for vLLM's `bench serve`, which times chunks the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def itl_figures(times_s: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(p50, p99, max) of the gaps between consecutive chunk times; Nones under two chunks.
    Percentiles are linear between closest ranks (numpy's and pandas' default)."""
    if len(times_s) < 2:
        return None, None, None
    gaps = sorted(later - earlier for earlier, later in itertools.pairwise(times_s))
    return _quantile(gaps, 0.5), _quantile(gaps, 0.99), gaps[-1]


def _quantile(ordered: list[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = int(position)
    if low + 1 >= len(ordered):
        return ordered[-1]
    return ordered[low] + (ordered[low + 1] - ordered[low]) * (position - low)
