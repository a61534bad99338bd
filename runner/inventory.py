"""Model catalogues: a provider name in, its models with prices (USD per million tokens) out."""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from .catalogue import load_catalogue
from .client import Endpoint
from .config import SIMULATED, Job, Provider, load_job, resolve_providers
from .errors import ConfigError
from .schema import JobIn


async def list_models(provider_name: str, job_path: Path | None,
                      refresh: bool = False) -> list[dict[str, Any]]:
    """One dict per model: id, prices per million tokens, request fee, output cap."""
    if job_path is not None:
        job: Job | None = load_job(job_path)
        providers = dict(job.providers) if job else {}
    else:
        job = None
        builtin = JobIn(name="x", models=["x"], prompts=["x"])
        providers = resolve_providers(Path("<builtin>"), builtin)
    provider = providers.get(provider_name)
    if provider is None:
        raise ConfigError(f"unknown provider {provider_name!r} (known: "
                          f"{', '.join(sorted(providers))}; custom ones need --job)")
    async with AsyncExitStack() as stack:
        endpoint = await _endpoint(stack, provider, job)
        ids, prices = await load_catalogue(endpoint, refresh=refresh)
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
    return rows


async def _endpoint(stack: AsyncExitStack, provider: Provider, job: Job | None) -> Endpoint:
    if provider.simulated:
        from .setup import simulated_models
        from .simulator import Simulator

        settings = job.simulator if job is not None else JobIn(
            name="x", models=["x"], prompts=["x"]).simulator
        sim = Simulator(simulated_models(settings)).start()  # type: ignore[arg-type]
        stack.callback(sim.stop)
        base_url = sim.base_url
    else:
        assert provider.base_url is not None
        base_url = provider.base_url
    key = os.environ.get(provider.api_key_env or "", "") or "no-key"  # /models is public
    if provider.name == SIMULATED:
        key = "sim-key"
    endpoint = Endpoint(provider, base_url, key, connections=2)
    stack.push_async_callback(endpoint.aclose)
    return endpoint
