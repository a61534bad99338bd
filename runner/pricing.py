"""Prices: catalogue entries in, `Price` values and costs in USD out (pure; no I/O).

OpenRouter's `/models` gives prices as strings in USD per token; `"0"` means free and a missing
key means unknown (treated as 0 only when the entry has a pricing block at all).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any


@dataclass(frozen=True, slots=True)
class Price:
    prompt_usd_per_token: float
    completion_usd_per_token: float
    request_usd: float = 0.0
    max_completion_tokens: int | None = None
    context_length: int | None = None

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


def estimate_prompt_tokens(messages: Sequence[Any]) -> int:
    """An upper bound on prompt tokens: the UTF-8 byte count plus a per-message overhead.

    Byte-level BPE tokenizers (GPT, Llama, Qwen, Mistral...) never make more tokens than bytes,
    so this overestimates (typically ~4x for English) but never under-reserves a budget; no
    tokenizer is downloaded at run time.
    """
    return sum(len(m.content.encode("utf-8")) + MESSAGE_OVERHEAD_TOKENS for m in messages) + 3


def typical_prompt_tokens(messages: Sequence[Any]) -> int:
    """A typical prompt token count (~4 bytes a token), for tokens-per-minute pacing."""
    return sum(len(m.content.encode("utf-8")) // 4 + 4 for m in messages) + 3


def max_output_tokens(params: Mapping[str, Any], price: Price) -> int | None:
    """The most output tokens a request can be billed for: max_tokens, else the model's cap."""
    limit = params.get("max_tokens")
    return int(limit) if limit is not None else price.max_completion_tokens


def worst_case_usd(request: Any, price: Price) -> float | None:
    """The most this request can cost, or None when its output is unbounded."""
    output = max_output_tokens(request.params, price)
    if output is None:
        return None
    return price.cost_usd(estimate_prompt_tokens(request.messages), output)
