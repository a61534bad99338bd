"""What providers offer: a job and the catalogues known so far in, each model's worst-case
price out (into `prices`), or JobFileErrors naming a model its provider does not offer, or
one a budget cannot price (pure; no I/O).

The same rules run twice: at load for the providers whose catalogue is known without a
network (the simulator, whose models are the job file's `simulator:`), so that `validate`
refuses what `run` would; and at run start for every provider, once their `/models` is read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from . import pricing
from .errors import JobFileError
from .pricing import Price
from .sources import Problems

if TYPE_CHECKING:
    from .config import Job, ModelSpec


def offered(model_id: str, ids: Collection[str], openrouter: bool) -> bool:
    """Whether a catalogue offers `model_id`; on OpenRouter a variant (`:nitro`, `:online`,
    ...) of a listed model is offered too."""
    return model_id in ids or (openrouter and pricing.split_variant(model_id)[0] in ids)


def check_models(job: Job, catalogues: Mapping[str, Collection[str]],
                 prices: dict[tuple[str, str], Price], *, need_prices: bool,
                 refuse: bool = True, known: Collection[str] | None = None) -> None:
    """Refuse models a provider does not offer (unless its `check_models` is off) and, when
    `need_prices` (a budget or a per-request cap), models without a price or an output bound;
    price what the catalogue does not list as such: variants (`:online` with its web search
    fee), routers and `models:` fallbacks (the dearest candidate). The job's `pricing:` wins.

    `known`: the providers whose catalogue is in `catalogues` (None: all of them); the others
    are only checked where the job file alone decides (a model priced by `pricing:`)."""
    problems = Problems()
    specs = _specs(job)
    resolved: dict[tuple[str, str], Price | None] = {}
    for _, model in specs:
        if model.id in job.pricing:   # the job's price for this very id wins
            prices[(model.provider, model.id)] = job.pricing[model.id]
    for where, model in specs:
        provider = job.providers[model.provider]
        is_known = known is None or model.provider in known
        ids = catalogues.get(model.provider) or set()
        names = pricing.candidates(model.id, model.extra_body, ids)
        if refuse and is_known and ids and provider.check_models:
            sent_to = [model.id] if pricing.is_router(model.id) else [model.id, *names[1:]]
            for n, name in enumerate(sent_to):
                if not offered(name, ids, provider.openrouter):
                    problems.add(_not_offered(job, f"{where}.id" if n == 0 else
                                              f"{where}.extra_body.models", name,
                                              model.provider, ids))
                    break
        key = (model.provider, model.id)
        if model.id in job.pricing or not is_known:
            continue
        price = _worst_price(job, prices, model, names)
        if key in resolved:   # the same id twice (aliases): the dearer of the two
            seen = resolved[key]
            price = None if seen is None or price is None else pricing.dearest([seen, price])
        resolved[key] = price
    for key, price in resolved.items():
        if price is None:
            prices.pop(key, None)
        else:
            prices[key] = price
    if refuse and need_prices:
        for where, model in specs:
            price = prices.get((model.provider, model.id))
            if price is None and known is not None and model.provider not in known:
                continue   # its catalogue may price it: decided at run start
            with problems.gather():
                _check_priced(job, where, model, price)
    problems.raise_any()


def _specs(job: Job) -> list[tuple[str, ModelSpec]]:
    """Every model the job may call, with the field that names it."""
    return [*((f"models[{i}]", m) for i, m in enumerate(job.models)),
            *(("llm_judge.model", m) for m in job.judges.values())]


def _check_priced(job: Job, where: str, model: ModelSpec, price: Price | None) -> None:
    if price is None:
        raise JobFileError(job.path, where, f"{model.id!r} has no known price, so the budget "
                           "cannot be enforced (add it to pricing:)")
    if model.params.get("max_tokens") is None and price.max_completion_tokens is None:
        raise JobFileError(job.path, f"{where}.params.max_tokens", f"{model.id!r} has no "
                           "output limit, so its worst-case cost is unbounded: set max_tokens "
                           "(job params or the model's params)")


def _worst_price(job: Job, prices: Mapping[tuple[str, str], Price], model: ModelSpec,
                 names: list[str]) -> Price | None:
    """The most one request of `model` can be billed at: the dearest of the models it may end
    up on, each with its web search fee; None when one of them has no known price."""
    openrouter = job.providers[model.provider].openrouter
    found = []
    for name in names:
        base = pricing.split_variant(name)[0] if openrouter else name
        price = (job.pricing.get(name) or prices.get((model.provider, name))
                 or job.pricing.get(base) or prices.get((model.provider, base)))
        if price is None:
            return None
        fee = max(pricing.web_search_usd(candidate, model.extra_body, price)
                  for candidate in (name, model.id)) if openrouter else 0.0
        found.append(pricing.with_web_search(price, fee))
    return pricing.dearest(found) if found else None


def _not_offered(job: Job, where: str, model_id: str, provider: str,
                 ids: Collection[str]) -> JobFileError:
    close = sorted(m for m in ids if model_id.split("/")[-1][:4] in m)[:3]
    hint = f"; close: {', '.join(close)}" if close else ""
    return JobFileError(job.path, where, f"{model_id!r} is not offered by provider "
                        f"{provider!r} (see `runner models --provider {provider}`{hint}); if "
                        f"the server serves it anyway (an alias, a deployment), set "
                        f"providers.{provider}.check_models: false")
