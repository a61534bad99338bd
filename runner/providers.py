"""Opening the providers a job uses: a `Job` in, ready endpoints (keys checked, simulator up,
catalogues read) out.

Everything that can stop a run before it starts happens here, before a single request is sent:
a missing API key, an unreachable endpoint, a model the provider does not offer, a budget that
cannot be enforced because a model has no price.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import anyio

from .catalogue import load_catalogue
from .client import CATALOGUE_TIMEOUT_S, Endpoint, NoCatalogue
from .config import SIMULATED, Job, api_key, simulated_models
from .errors import ProviderError
from .offers import check_models
from .pricing import Price
from .redact import Redactor, job_redactor
from .stored import STORED, StoredEndpoint, stored_prices

log = logging.getLogger("runner")
NEED_CATALOGUE = ("openrouter", SIMULATED)   # built-ins: their /models must work


@dataclass(slots=True)
class Providers:
    endpoints: dict[str, Endpoint | StoredEndpoint] = field(default_factory=dict)
    prices: dict[tuple[str, str], Price] = field(default_factory=dict)   # (provider, model id)
    catalogues: dict[str, set[str]] = field(default_factory=dict)
    simulator_url: str | None = None
    errors: dict[str, ProviderError] = field(default_factory=dict)   # unreadable catalogues
    warnings: list[str] = field(default_factory=list)   # one line each, also logged
    redactor: Redactor = field(default_factory=lambda: Redactor(()))  # every secret of the job


async def open_providers(stack: AsyncExitStack, job: Job, *, connections: int,
                         clock: Callable[[], float] = time.perf_counter,
                         need_prices: bool = False, refresh_prices: bool = False,
                         require_keys: bool = True,
                         catalogue_timeout_s: float = CATALOGUE_TIMEOUT_S) -> Providers:
    """Open an endpoint per provider the job uses; register their shutdown on `stack`.

    A built-in provider (OpenRouter, the simulator) without a usable `/models` is a
    `ProviderError`; a custom one just has no catalogue (a warning: ids are not checked).
    """
    used = sorted({m.provider for m in (*job.models, *job.judges.values())})
    # missing keys fail first; without `require_keys` (plan, models) a public /models still works
    keys = {name: api_key(job.providers[name]) if require_keys
            else (os.environ.get(job.providers[name].api_key_env or "") or "no-key")
            for name in used if name != STORED}
    out = Providers(redactor=job_redactor(job, keys))
    if SIMULATED in used:
        from .simulator import Capacity, Simulator
        from .simulator.batches import BatchSettings

        settings = job.simulator
        limit = settings.capacity  # a load test's server that saturates
        simulator = Simulator(simulated_models(settings, job.path),  # type: ignore[arg-type]
                              seed=settings.seed,
                              batches=BatchSettings(settings.batch_delay_s, settings.batch_expire,
                                                    settings.batch_line_error_rate),
                              capacity=Capacity(limit.concurrent, limit.tokens_per_s)
                              if limit is not None else None).start()
        stack.callback(simulator.stop)
        out.simulator_url = simulator.base_url
    if STORED in used:  # answers from the dataset: no endpoint, no catalogue, no key
        out.endpoints[STORED] = StoredEndpoint(clock)
        out.prices.update(stored_prices({m.id: m.provider for m in job.models}))
        out.catalogues[STORED] = {m.id for m in job.models if m.provider == STORED}
        used.remove(STORED)
    for name in used:
        provider = job.providers[name]
        base_url = out.simulator_url if provider.simulated else provider.base_url
        assert base_url is not None
        endpoint = Endpoint(provider, base_url, keys[name], connections=connections,
                            clock=clock, redactor=out.redactor)
        stack.push_async_callback(endpoint.aclose)
        out.endpoints[name] = endpoint

    async def read(name: str) -> None:
        try:
            endpoint = out.endpoints[name]
            assert isinstance(endpoint, Endpoint)
            ids, prices = await load_catalogue(endpoint, refresh=refresh_prices,
                                               timeout_s=catalogue_timeout_s)
        except NoCatalogue as exc:
            if name in NEED_CATALOGUE:
                out.errors[name] = exc
            else:
                warning = f"{exc}; model ids are not checked, prices come only from pricing:"
                out.warnings.append(warning)
                log.warning("%s", warning)
            return
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
    # plan and models (no keys) get the same prices, without refusing anything
    check_models(job, out.catalogues, out.prices, need_prices=need_prices, refuse=require_keys)
    return out

