"""Sending limits: job/provider/model `Limits` in, the async gates a request passes out.

Created inside the running loop (anyio and aiolimiter objects bind to it). Each scope (the job,
each provider, each model) may have a concurrency cap (anyio), a requests-per-minute and a
tokens-per-minute rate (aiolimiter leaky buckets), and a shared pause that a 429 sets so that no
worker sends to that scope before the server said it may. Every request is charged its full
size: one bigger than a bucket waits until its share has dripped in (`_charge`).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import anyio

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

from .config import Job, Limits, ModelSpec


class Pause:
    """A shared 'do not send before' instant; workers wait on it, a 429 pushes it later."""

    __slots__ = ("resume_at", "_clock", "spread_s")

    def __init__(self, clock: Callable[[], float], spread_s: float = 0.25) -> None:
        self.resume_at = 0.0
        self._clock = clock
        self.spread_s = spread_s

    @property
    def active(self) -> bool:
        return self.resume_at > self._clock()

    def pause_for(self, seconds: float) -> None:
        self.resume_at = max(self.resume_at, self._clock() + seconds)

    async def wait(self) -> None:
        # re-check after each sleep: another 429 may have pushed resume_at further
        staggered = False
        while (delay := self.resume_at - self._clock()) > 0:
            if not staggered:  # spread the wake-ups so the end of a pause is not a herd
                delay += random.uniform(0, self.spread_s)
                staggered = True
            await anyio.sleep(delay)


def _rate_limiter(per_minute: float | None) -> AsyncLimiter | None:
    if per_minute is None:
        return None
    # a bucket of one second's worth (at least 1): the configured rate without a minute's burst
    per_second = per_minute / 60.0
    capacity = max(1.0, per_second)
    from aiolimiter import AsyncLimiter  # only jobs with a rate limit need it

    return AsyncLimiter(capacity, capacity / per_second)


async def _charge(bucket: AsyncLimiter, one_at_a_time: anyio.Lock, amount: float) -> None:
    """Take `amount` from `bucket`, all of it, however much bigger than the bucket it is.

    aiolimiter refuses an amount above the bucket's capacity, and the bucket stays one second's
    worth on purpose: sized for the largest request instead, it would let that much through at
    once at the start and after every idle spell (more than a minute's worth when max_tokens
    exceeds the tpm). So a big request takes capacity-sized slices, each waiting for the drip;
    and one big request at a time, or several would fill their slices side by side and go out
    together, a burst of their combined size. Requests that fit the bucket never take the lock.
    """
    capacity = bucket.max_rate
    if amount <= capacity:
        await bucket.acquire(amount)
        return
    async with one_at_a_time:
        while amount > 0:
            part = min(amount, capacity)
            await bucket.acquire(part)
            amount -= part


@dataclass(slots=True)
class Scope:
    concurrency: anyio.CapacityLimiter | None
    rpm: AsyncLimiter | None
    tpm: AsyncLimiter | None
    big_requests: anyio.Lock    # taken by a request too big for the tpm bucket while it waits
    pause: Pause

    @classmethod
    def build(cls, limits: Limits, clock: Callable[[], float]) -> Scope:
        return cls(
            concurrency=anyio.CapacityLimiter(limits.concurrency) if limits.concurrency else None,
            rpm=_rate_limiter(limits.rpm), tpm=_rate_limiter(limits.tpm),
            big_requests=anyio.Lock(), pause=Pause(clock),
        )


class SharedGates(Protocol):
    """Rates and pauses held for many processes (a Ray run's ledger: `ray_backend`)."""

    def rated(self, model: ModelSpec) -> bool: ...   # whether `acquire` may have to wait
    async def acquire(self, model: ModelSpec, tokens: int) -> None: ...
    def pause(self, model: ModelSpec, seconds: float) -> None: ...


@dataclass(slots=True)
class Gates:
    """Every scope's gates for one run."""

    job: Scope
    providers: dict[str, Scope] = field(default_factory=dict)
    models: dict[str, Scope] = field(default_factory=dict)
    shared: SharedGates | None = None   # issue 13: the job's rates and pauses across processes

    @classmethod
    def build(cls, job: Job, overrides: Limits, clock: Callable[[], float]) -> Gates:
        # the job scope's concurrency is the worker count itself, so it needs no limiter
        job_limits = overrides.over(job.limits)
        gates = cls(Scope.build(Limits(rpm=job_limits.rpm, tpm=job_limits.tpm), clock))
        for name, provider in job.providers.items():
            gates.providers[name] = Scope.build(provider.limits, clock)
        for model in (*job.models, *job.judges.values()):
            gates.models[model.label] = Scope.build(model.limits, clock)
        return gates

    def scopes(self, model: ModelSpec) -> tuple[Scope, Scope, Scope]:
        return self.job, self.providers[model.provider], self.models[model.label]

    def pause(self, model: ModelSpec, seconds: float) -> None:
        """Pause sending to the model's provider (every model there shares its rate limit)."""
        self.providers[model.provider].pause.pause_for(seconds)
        if self.shared is not None:  # every other process must see it too
            self.shared.pause(model, seconds)

    def slot(self, model: ModelSpec, tokens: int) -> AbstractAsyncContextManager[None]:
        """Hold a concurrency slot and pass the rate limits for one attempt."""
        scopes = self.scopes(model)
        if (self.shared is None or not self.shared.rated(model)) and all(
                s.concurrency is None and s.rpm is None and s.tpm is None and not s.pause.active
                for s in scopes):
            return _FREE  # nothing to wait for: skip the machinery on the hot path
        return self._slot(scopes, tokens, model)

    @asynccontextmanager
    async def _slot(self, scopes: tuple[Scope, Scope, Scope], tokens: int,
                    model: ModelSpec | None = None) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for scope in scopes:
                if scope.concurrency is not None:
                    await stack.enter_async_context(scope.concurrency)
            while True:
                for scope in scopes:
                    await scope.pause.wait()
                for scope in scopes:
                    if scope.rpm is not None:  # one request never exceeds the bucket (>= 1)
                        await scope.rpm.acquire()
                    if scope.tpm is not None:
                        await _charge(scope.tpm, scope.big_requests, float(tokens))
                if self.shared is not None and model is not None:
                    await self.shared.acquire(model, tokens)
                # a 429 that came while we queued at the rate limiters voids the tokens we got:
                # spending them after the pause would make its end a herd
                if not any(scope.pause.active for scope in scopes):
                    break
            yield


_FREE: AbstractAsyncContextManager[None] = nullcontext()
