"""Run set-up: a `Job` in, ready endpoints (keys checked, simulator up, catalogues read) out.

Everything that can stop a run before it starts happens here, before a single request is sent:
a missing API key, an unreachable endpoint, a model the provider does not offer, a budget that
cannot be enforced because a model has no price.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import anyio

from .catalogue import load_catalogue
from .client import Endpoint
from .config import SIMULATED, Job, api_key
from .config import simulated_models as simulated_models  # moved to config (load time)
from .errors import JobFileError, ProviderError
from .pricing import Price


@dataclass(slots=True)
class Providers:
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    prices: dict[tuple[str, str], Price] = field(default_factory=dict)   # (provider, model id)
    catalogues: dict[str, set[str]] = field(default_factory=dict)
    simulator_url: str | None = None
    errors: dict[str, ProviderError] = field(default_factory=dict)   # unreadable catalogues


async def open_providers(stack: AsyncExitStack, job: Job, *, connections: int,
                         clock: Callable[[], float] = time.perf_counter,
                         need_prices: bool = False, refresh_prices: bool = False,
                         require_keys: bool = True) -> Providers:
    """Open an endpoint per provider the job uses; register their shutdown on `stack`."""
    used = sorted({m.provider for m in (*job.models, *job.judges.values())})
    # missing keys fail first; without `require_keys` (plan, models) a public /models still works
    keys = {name: api_key(job.providers[name]) if require_keys
            else (os.environ.get(job.providers[name].api_key_env or "") or "no-key")
            for name in used}
    out = Providers()
    if SIMULATED in used:
        from .simulator import Simulator

        simulator = Simulator(simulated_models(job.simulator, job.path),  # type: ignore[arg-type]
                              seed=job.simulator.seed).start()
        stack.callback(simulator.stop)
        out.simulator_url = simulator.base_url
    for name in used:
        provider = job.providers[name]
        base_url = out.simulator_url if provider.simulated else provider.base_url
        assert base_url is not None
        endpoint = Endpoint(provider, base_url, keys[name], connections=connections,
                            clock=clock)
        stack.push_async_callback(endpoint.aclose)
        out.endpoints[name] = endpoint

    async def read(name: str) -> None:
        try:
            ids, prices = await load_catalogue(out.endpoints[name], refresh=refresh_prices)
        except ProviderError as exc:
            out.errors[name] = exc
            return
        out.catalogues[name] = ids
        for model_id, price in prices.items():
            out.prices[(name, model_id)] = price

    async with anyio.create_task_group() as tg:
        for name in used:
            tg.start_soon(read, name)
    if out.errors and require_keys:
        raise next(iter(out.errors.values()))
    for model in (*job.models, *job.judges.values()):  # the job's pricing: wins
        if model.id in job.pricing:
            out.prices[(model.provider, model.id)] = job.pricing[model.id]
    if require_keys:
        _check_models(job, out, need_prices)
    return out


def _check_models(job: Job, out: Providers, need_prices: bool) -> None:
    for i, model in enumerate((*job.models, *job.judges.values())):
        ids = out.catalogues.get(model.provider) or set()
        if ids and model.id not in ids:
            close = sorted(m for m in ids if model.id.split("/")[-1][:4] in m)[:3]
            hint = f"; close: {', '.join(close)}" if close else ""
            where = f"models[{i}].id" if i < len(job.models) else "llm_judge.model"
            raise JobFileError(job.path, where, f"{model.id!r} is not offered by "
                               f"provider {model.provider!r} (see `runner models --provider "
                               f"{model.provider}`{hint})")
        if not need_prices:
            continue
        price = out.prices.get((model.provider, model.id))
        if price is None:
            raise JobFileError(job.path, f"models[{i}]", f"{model.id!r} has no known price, so "
                               "the budget cannot be enforced (add it to pricing:)")
        if model.params.get("max_tokens") is None and price.max_completion_tokens is None:
            raise JobFileError(job.path, f"models[{i}].params.max_tokens", f"{model.id!r} has "
                               "no output limit, so its worst-case cost is unbounded: set "
                               "max_tokens (job params or the model's params)")
