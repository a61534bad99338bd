"""The figures of one load stage: its rows' columns in (times as seconds from the stage's
start), one dict of rates, throughputs, percentiles, goodput and cost out; and the knee of a
sweep from its stages' figures (pure, numpy only).

This is the one home of the definitions (README "Load tests" sets them beside vLLM's and
GuideLLM's): the driver calls `stage_figures` on the rows it has just sent (a sweep's rates),
`load_report` on the rows read back from the files.

- measured requests: those the schedule sent outside the stage's warm-up and cool-down.
- achieved_rps: (measured requests - 1) / (last - first scheduled send among them): the rate
  they went out at.
- request_throughput_rps: (measured successes - 1) / (last - first end among them): the rate
  they were done at (a saturated server finishes them at its capacity, whatever was asked);
  output_tokens_per_s: that times their mean completion tokens; goodput_rps: that times the
  share of them that met every SLO (goodput_share).
- latency, TTFT, TPOT and ITL percentiles: over the measured successful requests (ITL: of each
  request's own p50 and p99 gaps); error_rate: errors among the measured requests sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .load_plan import Goodput

NAN = float("nan")
KNEE_TTFT_FACTOR = 2.0    # a stage whose TTFT p50 is over this x the lightest stage's is queueing
KNEE_RATE_SHARE = 0.9     # a stage whose throughput is under this share of its rate fell behind

Floats = np.ndarray[Any, np.dtype[np.float64]]


def _f(values: Any) -> Floats:
    return np.asarray([NAN if v is None else v for v in values], dtype=np.float64)


def _pct(values: Floats, q: float) -> float:
    kept = values[~np.isnan(values)]
    return float(np.percentile(kept, q * 100.0)) if len(kept) else NAN


def stage_figures(*, scheduled_s: Sequence[float | None], ended_s: Sequence[float | None],
                  status: Sequence[str], phase: Sequence[str | None],
                  latency_s: Sequence[float | None], ttft_s: Sequence[float | None],
                  tpot_s: Sequence[float | None], itl_p50_s: Sequence[float | None],
                  itl_p99_s: Sequence[float | None],
                  completion_tokens: Sequence[float | None],
                  cost_usd: Sequence[float | None], send_lag_s: Sequence[float | None],
                  slo_met: Sequence[bool | None] | None = None,
                  goodput: Goodput | None = None) -> dict[str, Any]:
    """The figures of one stage from its rows' columns (see the module docstring). Goodput
    counts the rows meeting `goodput`'s SLOs, or without it those whose `slo_met` is true (the
    run's own SLOs, judged as each row was recorded)."""
    states = np.asarray(status, dtype=object)
    measured = np.asarray([p == "measure" for p in phase], dtype=bool)
    sent = states != "skipped"
    ok = states == "ok"
    scheduled, ended = _f(scheduled_s), _f(ended_s)
    m_sched = scheduled[measured & sent & ~np.isnan(scheduled)]
    window = float(m_sched.max() - m_sched.min()) if len(m_sched) else NAN
    tokens = _f(completion_tokens)
    mok = measured & ok
    m_ends = ended[mok & ~np.isnan(ended)]
    done_span = float(m_ends.max() - m_ends.min()) if len(m_ends) > 1 else NAN
    throughput = (len(m_ends) - 1) / done_span if done_span > 0 else NAN
    judged = goodput is not None
    if goodput is not None:
        good = mok & meets(goodput, _f(ttft_s), _f(tpot_s), _f(itl_p99_s), _f(latency_s))
    else:
        judged = slo_met is not None and any(v is not None for v in slo_met)
        good = mok & np.asarray([v is True for v in slo_met or [None] * len(states)],
                                dtype=bool)
    n_measured = int((measured & sent).sum())
    cost = _f(cost_usd)
    share = float(good.sum()) / float(mok.sum()) if judged and mok.any() else NAN
    mean_tokens = float(np.nanmean(tokens[mok])) if np.any(~np.isnan(tokens[mok])) else NAN
    figures: dict[str, Any] = {
        "n": len(states), "measured": n_measured, "ok": int(mok.sum()),
        "errors": int((measured & (states == "error")).sum()),
        "error_rate": float((measured & (states == "error")).sum()) / n_measured
        if n_measured else NAN,
        "window_s": window,
        "achieved_rps": (n_measured - 1) / window if window > 0 else NAN,
        "request_throughput_rps": throughput,
        "output_tokens_per_s": throughput * mean_tokens,
        "goodput_rps": throughput * share,
        "goodput_share": share,
        "cost_usd": float(np.nansum(cost)),
        "cost_per_1k_requests_usd": float(np.nansum(cost[ok])) / float(ok.sum()) * 1000
        if ok.any() else NAN,
        "send_lag_p50_s": _pct(_f(send_lag_s)[measured & sent], 0.5),
        "send_lag_p99_s": _pct(_f(send_lag_s)[measured & sent], 0.99),
        "send_lag_max_s": float(np.nanmax(_f(send_lag_s)[sent]))
        if np.any(~np.isnan(_f(send_lag_s)[sent])) else NAN,
    }
    for name, column in (("latency", latency_s), ("ttft", ttft_s), ("tpot", tpot_s)):
        values = _f(column)[mok]
        for q in (0.5, 0.9, 0.99):
            figures[f"{name}_p{round(q * 100)}_s"] = _pct(values, q)
    figures["itl_p50_s"] = _pct(_f(itl_p50_s)[mok], 0.5)
    figures["itl_p99_s"] = _pct(_f(itl_p99_s)[mok], 0.99)
    return figures


def meets(goodput: Goodput, ttft: Floats, tpot: Floats, itl: Floats,
          latency: Floats) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Which requests meet every SLO asked for (a figure a request lacks does not meet it;
    ITL is judged on each request's p99 gap)."""
    met = np.ones(len(ttft), dtype=bool)
    for limit, values in ((goodput.ttft_s, ttft), (goodput.tpot_s, tpot),
                          (goodput.itl_s, itl), (goodput.latency_s, latency)):
        if limit is not None:
            met &= ~np.isnan(values) & (values <= limit)
    return met


def row_meets(goodput: Goodput, ttft_s: float | None, tpot_s: float | None,
              itl_p99_s: float | None, latency_s: float | None) -> bool:
    """`meets` for one row (the `slo_met` column)."""
    return bool(meets(goodput, _f([ttft_s]), _f([tpot_s]), _f([itl_p99_s]),
                      _f([latency_s]))[0])


def knee(stages: Sequence[Mapping[Any, Any]]) -> tuple[int | None, str]:
    """The knee of a sweep (or any set of rate stages): the index in `stages` of the highest-rate
    stage that still kept up, and a sentence saying what was found.

    A stage keeps up when its request throughput is at least KNEE_RATE_SHARE of its requested
    rate and its TTFT p50 is at most KNEE_TTFT_FACTOR x the lowest TTFT p50 of the stages.
    Stages without a requested rate (closed loops) are not candidates."""
    ttfts = [s.get("ttft_p50_s", NAN) for s in stages]
    lows = [t for t in ttfts if isinstance(t, float) and math.isfinite(t)]
    if not lows:
        return None, "no knee: no stage has a TTFT (stream the answers to measure it)"
    floor = min(lows)
    rated = sorted((i for i, s in enumerate(stages) if _num(s.get("requested_rps"))),
                   key=lambda i: float(stages[i]["requested_rps"]))
    if not rated:
        return None, "no knee: no stage was sent at a rate"
    kept = [i for i in rated if _keeps_up(stages[i], floor)]
    if not kept:
        first = stages[rated[0]]
        return None, (f"saturated at every rate: already at {first['requested_rps']:.3g}/s "
                      f"({first.get('stage')}) it fell behind or queued")
    best = max(kept, key=lambda i: float(stages[i]["requested_rps"]))
    above = [i for i in rated if float(stages[i]["requested_rps"]) >
             float(stages[best]["requested_rps"]) and i not in kept]
    stage = stages[best]
    text = (f"knee at {stage['requested_rps']:.3g} req/s ({stage.get('stage')}: throughput "
            f"{stage['request_throughput_rps']:.3g}/s, TTFT p50 "
            f"{stage['ttft_p50_s'] * 1000:.0f} ms)")
    if above:
        over = stages[min(above, key=lambda i: float(stages[i]["requested_rps"]))]
        text += (f"; saturated from {over['requested_rps']:.3g} req/s ({over.get('stage')}: "
                 f"throughput {over['request_throughput_rps']:.3g}/s, TTFT p50 "
                 f"{over['ttft_p50_s'] * 1000:.0f} ms)")
    else:
        text += "; every rate sent kept up (no saturation seen: raise up_to or the rates)"
    return best, text


def _keeps_up(stage: Mapping[Any, Any], floor: float) -> bool:
    rate, done, ttft = (stage.get(k) for k in ("requested_rps", "request_throughput_rps",
                                               "ttft_p50_s"))
    if not (_num(rate) and _num(done) and _num(ttft)):
        return False
    return bool(float(done) >= KNEE_RATE_SHARE * float(rate)  # type: ignore[arg-type]
                and float(ttft) <= KNEE_TTFT_FACTOR * floor)  # type: ignore[arg-type]


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value) and value > 0
