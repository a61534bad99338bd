"""Per-arrival dice: a model's `Faults`, the server seed and the model's arrival counter in, a
`Fate` (which fault if any, its status, the ttft jitter, where a stream breaks) out.

The counter makes repeated identical requests draw differently (a retry can succeed), while the
seed keeps a whole run reproducible. One uniform draw picks the fault: the rates are laid end to
end in the order of `FAULT_NAMES`, so each rate is exactly that fault's share of requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.simulator.models import FAULT_NAMES, SimModel
from runner.simulator.text import stable_rng


@dataclass(frozen=True, slots=True)
class Fate:
    """What happens to one request, decided when it arrives."""

    fault: str | None
    error_status: int  # the HTTP status for the "error" fault; unused otherwise
    jitter_s: float  # added to ttft_s (may be negative; the total is clamped at 0)
    break_fraction: float  # where in the content a stream fault strikes, 0.2..0.8
    variant: float  # 0..1: which variant of a fault with several (odd_shape's shapes)


def draw_fate(model: SimModel, *, sim_seed: int, arrival_index: int) -> Fate:
    """Roll the dice for the `arrival_index`-th request (0-based) to `model`."""
    rng = stable_rng("fate", sim_seed, model.id, arrival_index)
    u = rng.random()
    fault: str | None = None
    edge = 0.0
    for name, rate in zip(FAULT_NAMES, model.faults.rates(), strict=True):
        edge += rate
        if rate > 0 and u < edge:
            fault = name
            break
    error_status = rng.choice(model.faults.error_statuses)
    jitter_s = rng.uniform(-model.jitter_s, model.jitter_s) if model.jitter_s else 0.0
    break_fraction = rng.uniform(0.2, 0.8)
    return Fate(fault, error_status, jitter_s, break_fraction, rng.random())


def status_of(fate: Fate, *, stream: bool) -> int:
    """The HTTP status the simulator sends for this fate; 0 when it sends no response at all."""
    if fate.fault in ("rate_limit", "long_retry_after"):
        return 429
    if fate.fault in ("error", "echo_error"):
        return fate.error_status
    if fate.fault == "gzip_bomb":
        return 502
    if fate.fault == "redirect":
        return 307
    if fate.fault in ("hang", "disconnect") and not stream:
        return 0
    return 200


def break_index(fate: Fate, n_content: int) -> int:
    """How many content tokens a broken stream delivers before its fault (at least 1 if any)."""
    if n_content == 0:
        return 0
    return min(n_content, max(1, int(fate.break_fraction * n_content)))
