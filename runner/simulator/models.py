"""The simulator's catalogue as values: a `SimModel` per served model id, its `Faults`, and the
`DEFAULT_MODELS` every test and the quickstart job run against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

FAULT_NAMES: tuple[str, ...] = (
    "rate_limit",
    "error",
    "hang",
    "disconnect",
    "stream_error",
    "error_body",
    "malformed",
    # hostile servers: what a client must survive without a crash, a leak or an overspend
    "echo_error",        # an error whose message and metadata echo every request header
    "echo_text",         # a completion whose text echoes every request header
    "odd_shape",         # valid JSON of the wrong shape (usage a list, choices a dict, ...)
    "negative_cost",     # usage.cost and token counts negative
    "overbill",          # usage.cost `overbill_factor` times the price
    "endless_stream",    # a stream that never ends (content events until the client cuts)
    "gzip_bomb",         # a gzip-compressed error body of `gzip_bomb_bytes` when inflated
    "redirect",          # a 307 to another origin (which echoes what it receives)
    "json_to_stream",    # a JSON completion in answer to a streaming request
    "long_retry_after",  # a 429 with Retry-After `long_retry_after_s` (a day by default)
)
"""Every fault, in the order their probability intervals are laid out on one uniform draw
(new faults go at the end, so a seed keeps drawing the same older faults)."""


@dataclass(frozen=True, slots=True)
class Faults:
    """Per-request probabilities (0..1, summing to at most 1) of each injected fault."""

    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    hang_rate: float = 0.0
    disconnect_rate: float = 0.0
    stream_error_rate: float = 0.0
    error_body_rate: float = 0.0
    malformed_rate: float = 0.0
    echo_error_rate: float = 0.0
    echo_text_rate: float = 0.0
    odd_shape_rate: float = 0.0
    negative_cost_rate: float = 0.0
    overbill_rate: float = 0.0
    overbill_factor: float = 100.0
    endless_stream_rate: float = 0.0
    gzip_bomb_rate: float = 0.0
    gzip_bomb_bytes: int = 64 * 1024 * 1024
    redirect_rate: float = 0.0
    json_to_stream_rate: float = 0.0
    long_retry_after_rate: float = 0.0
    long_retry_after_s: float = 86400.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{f.name}: must be within 0..1 (got {value})")
        if sum(self.rates()) > 1.0 + 1e-9:
            raise ValueError(f"Faults: the rates must sum to at most 1 (got {sum(self.rates())})")
        if not self.error_statuses or any(not 400 <= s <= 599 for s in self.error_statuses):
            raise ValueError(
                f"Faults.error_statuses: need 4xx/5xx codes (got {self.error_statuses})"
            )
        for name in ("retry_after_s", "long_retry_after_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"Faults.{name}: must be >= 0 (got {getattr(self, name)})")
        if not (self.overbill_factor >= 1 and math.isfinite(self.overbill_factor)):
            raise ValueError(f"Faults.overbill_factor: must be >= 1 (got {self.overbill_factor})")
        if not 1 <= self.gzip_bomb_bytes <= 1 << 34:
            raise ValueError(f"Faults.gzip_bomb_bytes: must be 1..16 GiB (got "
                             f"{self.gzip_bomb_bytes})")

    def rates(self) -> tuple[float, ...]:
        """The probability of each fault, in the order of `FAULT_NAMES`."""
        return tuple(getattr(self, f"{name}_rate") for name in FAULT_NAMES)


@dataclass(frozen=True, slots=True)
class SimModel:
    """One model the simulator serves: its id, prices, speed, limits and faults."""

    id: str
    name: str
    prompt_usd_per_token: float
    completion_usd_per_token: float
    request_usd: float = 0.0
    ttft_s: float = 0.1
    tokens_per_s: float = 100.0
    jitter_s: float = 0.0
    context_length: int = 32768
    max_completion_tokens: int | None = 4096
    reasoning: bool = False
    upstream: str = "SimCloud"
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("SimModel.id: must be non-empty")
        for name in ("prompt_usd_per_token", "completion_usd_per_token", "request_usd"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"SimModel.{name}: must be a finite number >= 0 (got {value})")
        if not (self.ttft_s >= 0 and self.jitter_s >= 0 and self.tokens_per_s >= 0):
            raise ValueError(f"SimModel {self.id}: ttft_s, jitter_s, tokens_per_s must be >= 0")
        if self.max_completion_tokens is not None and self.max_completion_tokens < 1:
            raise ValueError(f"SimModel.max_completion_tokens: must be >= 1 or None ({self.id})")

    @property
    def s_per_token(self) -> float:
        """Seconds between two tokens; 0 when `tokens_per_s` is 0 or infinite (no delay)."""
        if self.tokens_per_s == 0 or math.isinf(self.tokens_per_s):
            return 0.0
        return 1.0 / self.tokens_per_s


# Prices are written as USD per million tokens times 1e-6, as exact literals.
DEFAULT_MODELS: tuple[SimModel, ...] = (
    SimModel(
        id="sim/fast-mini",
        name="Sim: Fast Mini",
        prompt_usd_per_token=0.10e-6,
        completion_usd_per_token=0.40e-6,
        ttft_s=0.05,
        tokens_per_s=400.0,
        jitter_s=0.01,
        context_length=128000,
        max_completion_tokens=16384,
    ),
    SimModel(
        id="sim/balanced",
        name="Sim: Balanced",
        prompt_usd_per_token=0.50e-6,
        completion_usd_per_token=1.50e-6,
        ttft_s=0.15,
        tokens_per_s=150.0,
        jitter_s=0.03,
        context_length=128000,
        max_completion_tokens=8192,
    ),
    SimModel(
        id="sim/premium-large",
        name="Sim: Premium Large",
        prompt_usd_per_token=3.0e-6,
        completion_usd_per_token=15.0e-6,
        ttft_s=0.35,
        tokens_per_s=70.0,
        jitter_s=0.07,
        context_length=200000,
        max_completion_tokens=8192,
        upstream="SimCloud Premium",
    ),
    SimModel(
        id="sim/reasoner",
        name="Sim: Reasoner",
        prompt_usd_per_token=1.0e-6,
        completion_usd_per_token=4.0e-6,
        ttft_s=0.2,
        tokens_per_s=200.0,
        jitter_s=0.04,
        context_length=64000,
        max_completion_tokens=32768,
        reasoning=True,
    ),
    SimModel(
        id="sim/free:free",
        name="Sim: Free (free)",
        prompt_usd_per_token=0.0,
        completion_usd_per_token=0.0,
        ttft_s=0.1,
        tokens_per_s=120.0,
        jitter_s=0.02,
        context_length=32768,
        max_completion_tokens=None,
        upstream="SimFree",
    ),
)
