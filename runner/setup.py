"""Run set-up: a `Job` in, ready endpoints (keys checked, simulator up, catalogues read) out.

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

from . import pricing
from .catalogue import load_catalogue
from .client import CATALOGUE_TIMEOUT_S, Endpoint, NoCatalogue
from .config import SIMULATED, Job, ModelSpec, api_key
from .config import simulated_models as simulated_models  # moved to config (load time)
from .errors import JobFileError, ProviderError
from .pricing import Price
from .redact import Redactor, job_redactor

log = logging.getLogger("runner")
NEED_CATALOGUE = ("openrouter", SIMULATED)   # built-ins: their /models must work


@dataclass(slots=True)
class Providers:
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
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
            for name in used}
    out = Providers(redactor=job_redactor(job, keys))
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
                            clock=clock, redactor=out.redactor)
        stack.push_async_callback(endpoint.aclose)
        out.endpoints[name] = endpoint

    async def read(name: str) -> None:
        try:
            ids, prices = await load_catalogue(out.endpoints[name], refresh=refresh_prices,
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
    for model in (*job.models, *job.judges.values()):  # the job's pricing: wins
        if model.id in job.pricing:
            out.prices[(model.provider, model.id)] = job.pricing[model.id]
    # plan and models (no keys) get the same prices, without refusing anything
    _check_models(job, out, need_prices, refuse=require_keys)
    return out


def _check_models(job: Job, out: Providers, need_prices: bool, refuse: bool = True) -> None:
    """Refuse models the provider does not offer (unless its `check_models` is off) and, with
    a budget, models without a price or an output bound; price what the catalogue does not
    list as such: variants (`:nitro`, `:online` with its web search fee), routers and
    `models:` fallbacks (the dearest candidate). Prices go into `out.prices`."""
    resolved: dict[tuple[str, str], Price | None] = {}
    specs = (*job.models, *job.judges.values())
    for i, model in enumerate(specs):
        where = f"models[{i}]" if i < len(job.models) else "llm_judge.model"
        provider = job.providers[model.provider]
        ids = out.catalogues.get(model.provider) or set()
        names = pricing.candidates(model.id, model.extra_body, ids)
        if refuse and ids and provider.check_models:
            for n, name in enumerate([model.id, *names[1:]] if not pricing.is_router(model.id)
                                     else [model.id]):
                if not _listed(name, ids, provider.openrouter):
                    raise _not_offered(job, f"{where}.id" if n == 0 else
                                       f"{where}.extra_body.models", name, model.provider, ids)
        key = (model.provider, model.id)
        if model.id in job.pricing:
            continue   # the job's price for this very id wins (set by open_providers)
        price = _worst_price(job, out, model, names)
        if key in resolved:   # the same id twice (aliases): the dearer of the two
            seen = resolved[key]
            price = None if seen is None or price is None else pricing.dearest([seen, price])
        resolved[key] = price
    for key, price in resolved.items():
        if price is None:
            out.prices.pop(key, None)
        else:
            out.prices[key] = price
    if not (refuse and need_prices):
        return
    for i, model in enumerate(specs):
        where = f"models[{i}]" if i < len(job.models) else "llm_judge.model"
        price = out.prices.get((model.provider, model.id))
        if price is None:
            raise JobFileError(job.path, where, f"{model.id!r} has no known price, so the "
                               "budget cannot be enforced (add it to pricing:)")
        if model.params.get("max_tokens") is None and price.max_completion_tokens is None:
            raise JobFileError(job.path, f"{where}.params.max_tokens", f"{model.id!r} has "
                               "no output limit, so its worst-case cost is unbounded: set "
                               "max_tokens (job params or the model's params)")


def _listed(model_id: str, ids: set[str], openrouter: bool) -> bool:
    """Whether the catalogue offers `model_id`; on OpenRouter a variant of a listed model is."""
    return model_id in ids or (openrouter and pricing.split_variant(model_id)[0] in ids)


def _worst_price(job: Job, out: Providers, model: ModelSpec, names: list[str]) -> Price | None:
    """The most one request of `model` can be billed at: the dearest of the models it may end
    up on, each with its web search fee; None when one of them has no known price."""
    openrouter = job.providers[model.provider].openrouter
    prices = []
    for name in names:
        base = pricing.split_variant(name)[0] if openrouter else name
        price = (job.pricing.get(name) or out.prices.get((model.provider, name))
                 or job.pricing.get(base) or out.prices.get((model.provider, base)))
        if price is None:
            return None
        fee = max(pricing.web_search_usd(candidate, model.extra_body, price)
                  for candidate in (name, model.id)) if openrouter else 0.0
        prices.append(pricing.with_web_search(price, fee))
    return pricing.dearest(prices) if prices else None


def _not_offered(job: Job, where: str, model_id: str, provider: str,
                 ids: set[str]) -> JobFileError:
    close = sorted(m for m in ids if model_id.split("/")[-1][:4] in m)[:3]
    hint = f"; close: {', '.join(close)}" if close else ""
    return JobFileError(job.path, where, f"{model_id!r} is not offered by provider "
                        f"{provider!r} (see `runner models --provider {provider}`{hint}); if "
                        f"the server serves it anyway (an alias, a deployment), set "
                        f"providers.{provider}.check_models: false")
