"""The simulated server's capacity: a number of generations at once and a budget of output
tokens per second in, an admission queue and a per-request token pace out.

Beyond `concurrent` generations a request waits (first come, first served) before anything is
sent, so its time to first token grows with the queue, as on a saturated inference server.
With `tokens_per_s`, the generations running share that budget: one admitted while n others
run is paced at no more than tokens_per_s / (n + 1) tokens a second (its share when it starts;
a simplification: the pace is not revised as others start and end).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

from runner.simulator.orders import Order


class Capacity:
    """Admission control of one simulated server (shared by all its models)."""

    __slots__ = ("concurrent", "tokens_per_s", "running", "queued", "_slots")

    def __init__(self, concurrent: int, tokens_per_s: float | None = None) -> None:
        if concurrent < 1:
            raise ValueError(f"Capacity.concurrent: must be >= 1 (got {concurrent})")
        if tokens_per_s is not None and not tokens_per_s > 0:
            raise ValueError(f"Capacity.tokens_per_s: must be > 0 (got {tokens_per_s})")
        self.concurrent = concurrent
        self.tokens_per_s = tokens_per_s
        self.running = 0
        self.queued = 0
        self._slots: asyncio.Semaphore | None = None  # made on the server's loop, when used

    @contextlib.asynccontextmanager
    async def admit(self, order: Order) -> AsyncIterator[Order]:
        """Wait for a free generation slot; yield the order paced at its share of tokens."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrent)
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        self.running += 1
        try:
            yield self.paced(order)
        finally:
            self.running -= 1
            self._slots.release()

    def paced(self, order: Order) -> Order:
        """The order with its model slowed to its share of the token budget (if that is
        slower than the model's own speed)."""
        if self.tokens_per_s is None:
            return order
        share = self.tokens_per_s / max(self.running, 1)
        model = order.model
        if model.tokens_per_s and model.tokens_per_s <= share:
            return order
        return dataclasses.replace(order, model=dataclasses.replace(model, tokens_per_s=share))
