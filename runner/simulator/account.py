"""The simulated account: which keys are rejected and how many credits are left.

Like OpenRouter, a request is pre-authorised for its worst case (prompt tokens plus its output
cap at the model's prices) and refused with 402 when the credits cannot cover it; what it really
cost is then deducted. With `credits_usd=None` the account is unlimited.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from runner.simulator.models import SimModel
from runner.simulator.wire import cost_usd


class Account:
    __slots__ = ("_lock", "credits_usd", "rejected_keys")

    def __init__(self, *, rejected_keys: Iterable[str] = (),
                 credits_usd: float | None = None) -> None:
        self.rejected_keys = frozenset(rejected_keys)
        self.credits_usd = credits_usd
        self._lock = threading.Lock()

    def rejects(self, authorization: str | None) -> bool:
        """True when the bearer token is one of the rejected keys."""
        if not authorization or not self.rejected_keys:
            return False
        return authorization.partition(" ")[2].strip() in self.rejected_keys

    def charge(self, model: SimModel, prompt_tokens: int, cap_tokens: int | None,
               completion_tokens: int) -> str | None:
        """Deduct a request's cost; the 402 message when it cannot be afforded."""
        if self.credits_usd is None:
            return None
        worst_tokens = cap_tokens if cap_tokens is not None else completion_tokens
        worst = cost_usd(model, prompt_tokens, worst_tokens)
        with self._lock:
            if worst > self.credits_usd:
                affordable = int(max(0.0, self.credits_usd) / model.completion_usd_per_token) \
                    if model.completion_usd_per_token else 0
                return (f"This request requires more credits, or fewer max_tokens. You "
                        f"requested up to {worst_tokens} tokens, but can only afford "
                        f"{affordable}.")
            self.credits_usd -= cost_usd(model, prompt_tokens, completion_tokens)
        return None
