"""The `/models` listing: `SimModel`s in, `{"data": [...]}` entries shaped like OpenRouter's
(string prices in USD per token, `top_provider`, `architecture`, `supported_parameters`) out.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson

from runner.simulator.models import SimModel
from runner.simulator.wire import Dialect

CREATED_UNIX = 1735689600  # 2025-01-01: a fixed date keeps the listing deterministic

_PARAMETERS = ("max_tokens", "temperature", "top_p", "stop", "seed", "frequency_penalty",
               "presence_penalty", "response_format", "structured_outputs")  # fmt: skip
_REASONING_PARAMETERS = ("reasoning", "include_reasoning")


def decimal_str(value: float) -> str:
    """A price as a plain decimal string, never with an exponent: 1e-07 -> "0.0000001"."""
    if value == 0:
        return "0"
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def model_entry(model: SimModel, dialect: Dialect) -> dict[str, Any]:
    """One catalogue entry; the OpenAI dialect adds `object` and `owned_by`."""
    parameters = _PARAMETERS + (_REASONING_PARAMETERS if model.reasoning else ())
    entry: dict[str, Any] = {
        "id": model.id,
        "canonical_slug": model.id,
        "hugging_face_id": None,
        "name": model.name,
        "created": CREATED_UNIX,
        "description": f"Simulated model served by {model.upstream}.",
        "context_length": model.context_length,
        "architecture": {
            "modality": "text->text",
            "input_modalities": ["text"],
            "output_modalities": ["text"],
            "tokenizer": "Other",
            "instruct_type": None,
        },
        "pricing": {
            "prompt": decimal_str(model.prompt_usd_per_token),
            "completion": decimal_str(model.completion_usd_per_token),
            "request": decimal_str(model.request_usd),
            "image": "0",
            "web_search": "0",
            "internal_reasoning": "0",
        },
        "top_provider": {
            "context_length": model.context_length,
            "max_completion_tokens": model.max_completion_tokens,
            "is_moderated": False,
        },
        "per_request_limits": None,
        "supported_parameters": list(parameters),
    }
    if dialect == "openai":
        entry["object"] = "model"
        entry["owned_by"] = model.upstream
    return entry


def models_body(models: Sequence[SimModel], dialect: Dialect) -> bytes:
    """The whole `GET /models` response body."""
    body: dict[str, Any] = {"data": [model_entry(m, dialect) for m in models]}
    if dialect == "openai":
        body = {"object": "list"} | body
    return orjson.dumps(body)
