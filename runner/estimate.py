"""Cost before a run: a `Job` in, the worst-case cost per model and in total out.

The worst case of a request is its estimated prompt tokens (an upper bound: UTF-8 bytes) at the
prompt price plus max output tokens at the completion price plus the per-request fee; see
`pricing.worst_case_usd`. Each request is rendered once, so this walks the whole plan.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

from .config import Job
from .plan import Plan
from .pricing import worst_case_usd
from .setup import open_providers


@dataclass(frozen=True, slots=True)
class ModelEstimate:
    label: str
    provider: str
    requests: int
    worst_case_usd: float | None   # None: no price, or output not bounded by max_tokens


@dataclass(frozen=True, slots=True)
class Estimate:
    models: tuple[ModelEstimate, ...]
    budget_usd: float | None
    notes: tuple[str, ...] = ()   # e.g. a catalogue that could not be read

    @property
    def total_usd(self) -> float | None:
        costs = [m.worst_case_usd for m in self.models]
        return None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)

    @property
    def budget_covers(self) -> bool | None:
        """Whether the budget covers the whole worst case (None: no budget or unknown)."""
        total = self.total_usd
        if self.budget_usd is None or total is None:
            return None
        return total <= self.budget_usd


async def estimate(job: Job, *, budget_usd: float | None = None,
                   refresh_prices: bool = False) -> Estimate:
    """Worst-case cost per model, from the providers' catalogues and the job's pricing."""
    plan = Plan(job)
    async with AsyncExitStack() as stack:
        providers = await open_providers(stack, job, connections=2, require_keys=False,
                                         refresh_prices=refresh_prices)
    totals: dict[str, float | None] = {m.label: 0.0 for m in job.models}
    counts: dict[str, int] = {m.label: 0 for m in job.models}
    for request in plan:
        label = request.model.label
        counts[label] += 1
        price = providers.prices.get((request.model.provider, request.model.id))
        worst = worst_case_usd(request, price) if price is not None else None
        running = totals[label]
        totals[label] = None if worst is None or running is None else running + worst
    return Estimate(
        models=tuple(ModelEstimate(m.label, m.provider, counts[m.label], totals[m.label])
                     for m in job.models),
        budget_usd=budget_usd if budget_usd is not None else job.budget_usd,
        notes=tuple(f"prices unknown: {exc}" for exc in providers.errors.values()),
    )
