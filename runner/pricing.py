"""Prices: catalogue entries in, `Price` values and costs in USD out (pure; no I/O).

OpenRouter's `/models` gives prices as strings in USD per token; `"0"` means free and a missing
key means unknown (treated as 0 only when the entry has a pricing block at all).

OpenRouter model variants (`vendor/model:nitro`, `:online`, ...) are suffixes of a listed model:
they cost what the base model costs, except `:online` (and the `web` plugin), which adds web
search fees per request. Routers (`openrouter/auto`) and `models:` fallback lists cost what the
dearest model they may pick costs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from .content import IMAGE_TYPICAL_TOKENS, IMAGE_WORST_TOKENS, Reply, image_count, text_bytes


@dataclass(frozen=True, slots=True)
class Price:
    prompt_usd_per_token: float
    completion_usd_per_token: float
    request_usd: float = 0.0
    max_completion_tokens: int | None = None
    context_length: int | None = None
    web_search_usd: float = 0.0     # the catalogue's native web search fee per request
    batch_discount: float | None = None  # off every rate in batch mode (0.5: half price)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What a request with these token counts costs at this price."""
        return (prompt_tokens * self.prompt_usd_per_token
                + completion_tokens * self.completion_usd_per_token + self.request_usd)


def _usd(value: Any) -> float:
    if value is None or value == "":
        return 0.0
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not a price: {value!r}") from None
    if number < 0:  # OpenRouter uses "-1" for "variable" (router models): unknown, not free
        raise ValueError(f"variable price: {value!r}")
    return float(number)


def price_from_entry(entry: Mapping[str, Any]) -> Price | None:
    """The price of one `/models` entry, or None when it has none we can use."""
    pricing = entry.get("pricing")
    if not isinstance(pricing, Mapping):
        return None
    top = entry.get("top_provider") or {}
    try:
        return Price(
            prompt_usd_per_token=_usd(pricing.get("prompt")),
            completion_usd_per_token=_usd(pricing.get("completion")),
            request_usd=_usd(pricing.get("request")),
            max_completion_tokens=top.get("max_completion_tokens") if isinstance(top, Mapping)
            else None,
            context_length=entry.get("context_length"),
            web_search_usd=_usd(pricing.get("web_search")),
        )
    except ValueError:
        return None


def catalogue_prices(entries: Sequence[Mapping[str, Any]]) -> dict[str, Price]:
    """Model id -> price, for the entries that carry a usable price."""
    out: dict[str, Price] = {}
    for entry in entries:
        model_id = entry.get("id")
        price = price_from_entry(entry)
        if isinstance(model_id, str) and price is not None:
            out[model_id] = price
    return out


MESSAGE_OVERHEAD_TOKENS = 8


def estimate_prompt_tokens(messages: Sequence[Any], reply_tokens: int | None = None) -> int:
    """An upper bound on prompt tokens: the UTF-8 byte count plus a per-message overhead.

    Byte-level BPE tokenizers (GPT, Llama, Qwen, Mistral...) never make more tokens than bytes,
    so this overestimates (typically ~4x for English) but never under-reserves a budget; no
    tokenizer is downloaded at run time. An image counts `content.IMAGE_WORST_TOKENS`; a
    conversation's earlier reply (`content.Reply`) at most `reply_tokens`, the output tokens
    it could have had.
    """
    return sum((min(text_bytes(m.content), reply_tokens)
                if reply_tokens is not None and isinstance(m.content, Reply)
                else text_bytes(m.content)) + image_count(m.content) * IMAGE_WORST_TOKENS
               + MESSAGE_OVERHEAD_TOKENS for m in messages) + 3


def typical_prompt_tokens(messages: Sequence[Any]) -> int:
    """A typical prompt token count (~4 bytes a token), for tokens-per-minute pacing."""
    return sum(text_bytes(m.content) // 4 + image_count(m.content) * IMAGE_TYPICAL_TOKENS + 4
               for m in messages) + 3


def max_output_tokens(params: Mapping[str, Any], price: Price) -> int | None:
    """The most output tokens a request can be billed for: max_tokens, else the model's cap."""
    limit = params.get("max_tokens")
    return int(limit) if limit is not None else price.max_completion_tokens


def worst_case_usd(request: Any, price: Price) -> float | None:
    """The most this request can cost, or None when its output is unbounded."""
    output = max_output_tokens(request.params, price)
    if output is None:
        return None
    return price.cost_usd(estimate_prompt_tokens(request.messages, output), output)


# OpenRouter's variant suffixes: routing or features of a listed model, never listed themselves
VARIANTS = ("nitro", "floor", "online", "exacto", "thinking", "extended")
# OpenRouter's web plugin (what `:online` turns on): $4 per 1,000 results, 5 results by default
WEB_SEARCH_USD_PER_RESULT = 0.004
WEB_SEARCH_DEFAULT_RESULTS = 5
ROUTER_PREFIX = "openrouter/"   # openrouter/auto and its kin route to other models


def split_variant(model_id: str) -> tuple[str, str | None]:
    """`vendor/model:online` -> (`vendor/model`, `online`); an id without one -> (id, None)."""
    base, sep, suffix = model_id.rpartition(":")
    return (base, suffix) if sep and base and suffix in VARIANTS else (model_id, None)


def web_search_usd(model_id: str, extra_body: Mapping[str, Any], price: Price) -> float:
    """The most web search can add to one request of this model: nothing without `:online` or a
    `web` plugin; else its results at OpenRouter's per-result fee, or the model's native search
    fee from the catalogue, whichever is more."""
    plugins = extra_body.get("plugins")
    web = [p for p in plugins if isinstance(p, Mapping) and p.get("id") == "web"] \
        if isinstance(plugins, list) else []
    if split_variant(model_id)[1] != "online" and not web:
        return 0.0
    results = max((_results(p.get("max_results")) for p in web),
                  default=WEB_SEARCH_DEFAULT_RESULTS)
    return max(results * WEB_SEARCH_USD_PER_RESULT, price.web_search_usd)


def _results(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else WEB_SEARCH_DEFAULT_RESULTS


def is_router(model_id: str) -> bool:
    """A model id that stands for a choice among other models (`openrouter/auto`)."""
    return split_variant(model_id)[0].startswith(f"{ROUTER_PREFIX}auto")


def candidates(model_id: str, extra_body: Mapping[str, Any],
               catalogue: Iterable[str]) -> list[str]:
    """Every model a request may end up billed for: the model itself and its `models:`
    fallbacks; for a router, the models its `allowed_models` admit (every listed model but the
    routers when it names none)."""
    fallbacks = [m for m in extra_body.get("models") or () if isinstance(m, str)] \
        if isinstance(extra_body.get("models"), list) else []
    if not is_router(model_id):
        return list(dict.fromkeys([model_id, *fallbacks]))
    allowed: list[str] = []
    plugins = extra_body.get("plugins")
    for plugin in plugins if isinstance(plugins, list) else ():
        if isinstance(plugin, Mapping) and str(plugin.get("id", "")).endswith("router"):
            names = plugin.get("allowed_models")
            allowed += [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    pool = [m for m in catalogue if not m.startswith(ROUTER_PREFIX)]
    if allowed:
        pool = [m for m in pool if any(fnmatch.fnmatchcase(m, pattern) for pattern in allowed)]
    return list(dict.fromkeys([*pool, *fallbacks]))


def dearest(prices: Sequence[Price]) -> Price:
    """A price at least as high as each of `prices` for any request: the highest of each rate;
    no output cap if any of them has none."""
    caps = [p.max_completion_tokens for p in prices]
    return Price(
        prompt_usd_per_token=max(p.prompt_usd_per_token for p in prices),
        completion_usd_per_token=max(p.completion_usd_per_token for p in prices),
        request_usd=max(p.request_usd for p in prices),
        max_completion_tokens=None if None in caps else max(c or 0 for c in caps),
        context_length=max((p.context_length or 0 for p in prices), default=0) or None,
        web_search_usd=max(p.web_search_usd for p in prices),
    )


# the batch APIs whose discount is documented (the provider's host -> fraction off); elsewhere
# the chat price stands unless the job gives `batch_options.discount` or a `batch_discount`
DOCUMENTED_BATCH_DISCOUNTS = {"api.openai.com": 0.5}


def batch_price(price: Price, discount: float) -> Price:
    """The price of a request sent through a batch API: every rate less `discount` (the
    model's own `batch_discount` in the pricing table wins over the provider's)."""
    off = price.batch_discount if price.batch_discount is not None else discount
    keep = 1.0 - off
    return replace(price, prompt_usd_per_token=price.prompt_usd_per_token * keep,
                   completion_usd_per_token=price.completion_usd_per_token * keep,
                   request_usd=price.request_usd * keep,
                   web_search_usd=price.web_search_usd * keep)


def with_web_search(price: Price, fee_usd: float) -> Price:
    """The price with a web search fee added to every request."""
    return replace(price, request_usd=price.request_usd + fee_usd) if fee_usd else price
