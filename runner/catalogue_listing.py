"""Model catalogues for `runner models`: a job file and/or a provider name in, each provider's
models with prices (USD per million tokens) out, or why the provider has no catalogue."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalogue import load_catalogue
from .client import Endpoint
from .config import SIMULATED, Job, Provider, load_job, resolve_providers, simulated_models
from .errors import ConfigError, ProviderError
from .schema import JobIn


@dataclass(frozen=True, slots=True)
class Catalogue:
    """One provider's listing: `models` (one dict per model), or `missing` saying why none."""

    provider: str
    models: tuple[dict[str, Any], ...] = ()
    missing: str | None = None


async def list_catalogues(job_path: Path | None, provider_name: str | None = None,
                          refresh: bool = False) -> list[Catalogue]:
    """The catalogue of `provider_name`, or (with a job and no name) of every provider the job
    uses, in the order the job first uses them; without either, the built-in simulator's."""
    job = load_job(job_path) if job_path is not None else None
    if job is not None:
        providers = dict(job.providers)
        used = list(dict.fromkeys(m.provider for m in (*job.models, *job.judges.values())))
    else:
        providers = resolve_providers(Path("<builtin>"), _builtin_job())
        used = [SIMULATED]
    names = used if provider_name is None else [provider_name]
    for name in names:
        if name not in providers:
            raise ConfigError(f"--provider: unknown provider {name!r} (known: "
                              f"{', '.join(sorted(providers))}; custom ones need --job)")
    out = []
    async with AsyncExitStack() as stack:
        simulator_url = ""
        for name in names:
            provider = providers[name]
            if provider.simulated and not simulator_url:
                simulator_url = _start_simulator(stack, job)
            endpoint = Endpoint(provider, simulator_url if provider.simulated
                                else str(provider.base_url), _key(provider), connections=2)
            stack.push_async_callback(endpoint.aclose)
            out.append(await _catalogue(endpoint, refresh))
    return out


async def _catalogue(endpoint: Endpoint, refresh: bool) -> Catalogue:
    name = endpoint.provider.name
    try:
        ids, prices = await load_catalogue(endpoint, refresh=refresh)
    except ProviderError as exc:
        return Catalogue(name, missing=str(exc))
    if not ids:
        return Catalogue(name, missing=f"{endpoint.base_url}/models lists no models")
    rows = []
    for model_id in sorted(ids):
        price = prices.get(model_id)
        rows.append({
            "id": model_id,
            "usd_per_mtok_prompt": price.prompt_usd_per_token * 1e6 if price else None,
            "usd_per_mtok_completion": price.completion_usd_per_token * 1e6 if price else None,
            "usd_per_request": price.request_usd if price else None,
            "max_completion_tokens": price.max_completion_tokens if price else None,
        })
    return Catalogue(name, tuple(rows))


def _builtin_job() -> JobIn:
    return JobIn(name="x", models=["x"], prompts=["x"])


def _start_simulator(stack: AsyncExitStack, job: Job | None) -> str:
    from .simulator import Simulator

    settings = job.simulator if job is not None else _builtin_job().simulator
    sim = Simulator(simulated_models(settings)).start()  # type: ignore[arg-type]
    stack.callback(sim.stop)
    return str(sim.base_url)


def _key(provider: Provider) -> str:
    if provider.simulated:
        return "sim-key"
    return os.environ.get(provider.api_key_env or "", "") or "no-key"  # /models is public
