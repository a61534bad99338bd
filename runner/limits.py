"""Sending limits: job/provider/model `Limits` in, the async gates a request passes out.

Created inside the running loop (anyio and aiolimiter objects bind to it). Each scope (the job,
each provider, each model) may have a concurrency cap (anyio), a requests-per-minute and a
tokens-per-minute rate (aiolimiter leaky buckets), and a shared pause that a 429 sets so that no
worker sends to that scope before the server said it may.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass, field

import anyio
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
    return AsyncLimiter(capacity, capacity / per_second)


@dataclass(slots=True)
class Scope:
    concurrency: anyio.CapacityLimiter | None
    rpm: AsyncLimiter | None
    tpm: AsyncLimiter | None
    tpm_capacity: float
    pause: Pause

    @classmethod
    def build(cls, limits: Limits, clock: Callable[[], float]) -> Scope:
        tpm = _rate_limiter(limits.tpm)
        return cls(
            concurrency=anyio.CapacityLimiter(limits.concurrency) if limits.concurrency else None,
            rpm=_rate_limiter(limits.rpm), tpm=tpm,
            tpm_capacity=tpm.max_rate if tpm is not None else 0.0, pause=Pause(clock),
        )


@dataclass(slots=True)
class Gates:
    """Every scope's gates for one run."""

    job: Scope
    providers: dict[str, Scope] = field(default_factory=dict)
    models: dict[str, Scope] = field(default_factory=dict)

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

    def slot(self, model: ModelSpec, tokens: int) -> AbstractAsyncContextManager[None]:
        """Hold a concurrency slot and pass the rate limits for one attempt."""
        scopes = self.scopes(model)
        if all(s.concurrency is None and s.rpm is None and s.tpm is None and not s.pause.active
               for s in scopes):
            return _FREE  # nothing to wait for: skip the machinery on the hot path
        return self._slot(scopes, tokens)

    @asynccontextmanager
    async def _slot(self, scopes: tuple[Scope, Scope, Scope],
                    tokens: int) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for scope in scopes:
                if scope.concurrency is not None:
                    await stack.enter_async_context(scope.concurrency)
            while True:
                for scope in scopes:
                    await scope.pause.wait()
                for scope in scopes:
                    if scope.rpm is not None:
                        await scope.rpm.acquire()
                    if scope.tpm is not None:
                        await scope.tpm.acquire(min(float(tokens), scope.tpm_capacity))
                # a 429 that came while we queued at the rate limiters voids the tokens we got:
                # spending them after the pause would make its end a herd
                if not any(scope.pause.active for scope in scopes):
                    break
            yield


_FREE: AbstractAsyncContextManager[None] = nullcontext()
