"""Run set-up: a `Job` in, ready endpoints (keys checked, simulator up, catalogues read) out.

Everything that can stop a run before it starts happens here, before a single request is sent:
a missing API key, an unreachable endpoint, a model the provider does not offer, a budget that
cannot be enforced because a model has no price.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import anyio

from .catalogue import load_catalogue
from .client import CATALOGUE_TIMEOUT_S, Endpoint, NoCatalogue
from .config import SIMULATED, Job, api_key
from .errors import JobFileError, ProviderError
from .pricing import Price
from .redact import Redactor, job_redactor
from .schema import SimulatorIn

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


def simulated_models(settings: SimulatorIn, path: object = "<job>") -> tuple[object, ...]:
    """The built-in simulated models with the job's overrides and additions applied."""
    from .simulator import DEFAULT_MODELS, Faults, SimModel

    models = {m.id: m for m in DEFAULT_MODELS}
    for i, spec in enumerate(settings.models):
        base = models.get(spec.id) or SimModel(
            id=spec.id, name=spec.id, prompt_usd_per_token=1e-6, completion_usd_per_token=2e-6)
        changes: dict[str, object] = {}
        if spec.usd_per_mtok_prompt is not None:
            changes["prompt_usd_per_token"] = spec.usd_per_mtok_prompt / 1e6
        if spec.usd_per_mtok_completion is not None:
            changes["completion_usd_per_token"] = spec.usd_per_mtok_completion / 1e6
        if spec.usd_per_request is not None:
            changes["request_usd"] = spec.usd_per_request
        for name in ("ttft_s", "tokens_per_s", "jitter_s", "max_completion_tokens",
                     "reasoning"):
            if getattr(spec, name) is not None:
                changes[name] = getattr(spec, name)
        try:
            if spec.faults is not None:
                faults = spec.faults.model_dump()
                faults["error_statuses"] = tuple(faults["error_statuses"])
                changes["faults"] = Faults(**faults)
            models[spec.id] = dataclasses.replace(base, **changes)  # type: ignore[arg-type]
        except ValueError as exc:
            raise JobFileError(path, f"simulator.models[{i}]", str(exc)) from None
    return tuple(models.values())


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
