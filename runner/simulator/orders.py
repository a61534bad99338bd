"""Request validation: the headers and parsed JSON body of a chat completion request in, a
validated `Order` or a `Rejection` (HTTP status and message) out. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.simulator.images import content_problem
from runner.simulator.models import SimModel
from runner.simulator.structured import JsonFormat
from runner.simulator.text import count_prompt_tokens
from runner.simulator.wire import Dialect

OPENROUTER_ONLY_FIELDS: tuple[str, ...] = (
    "provider", "models", "usage", "transforms", "route", "reasoning",
)  # fmt: skip
"""Top-level body fields a plain OpenAI server rejects: the runner must not send them there."""


@dataclass(frozen=True, slots=True)
class Order:
    """A valid chat completion request."""

    model: SimModel
    messages: list[dict[str, Any]]
    stream: bool
    cap_tokens: int | None  # the least of max_tokens, max_completion_tokens and the model's cap
    request_seed: object  # the body's `seed`, part of what fixes the text
    include_usage: bool  # stream_options.include_usage (the OpenAI dialect's usage switch)
    reasoning_visible: bool  # False when the OpenRouter body says reasoning.exclude
    prompt_tokens: int
    json_format: JsonFormat | None  # what response_format asks for; None: plain text


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request gets an error response instead of a completion."""

    status: int
    message: str


def authorized(header: str | None) -> bool:
    """True for `Authorization: Bearer <anything non-empty>`."""
    if header is None:
        return False
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def parse_order(
    body: object, dialect: Dialect, models: Mapping[str, SimModel]
) -> Order | Rejection:
    """Validate a parsed request body against the served models and the dialect's rules."""
    if not isinstance(body, dict):
        return Rejection(400, "Request body must be a JSON object")
    if dialect == "openai":
        for name in OPENROUTER_ONLY_FIELDS:
            if name in body:
                return Rejection(400, f"Unrecognized request argument supplied: {name}")
    elif "provider" in body and not isinstance(body["provider"], dict):
        return Rejection(400, "provider: must be an object")
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        return Rejection(400, "model: a model id is required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return Rejection(400, "messages: must be a non-empty list")
    if not all(isinstance(m, dict) for m in messages):
        return Rejection(400, "messages: every message must be an object")
    problem = content_problem(messages)
    if problem is not None:
        return Rejection(400, problem)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        return Rejection(400, "stream: must be true or false")
    caps: list[int] = []
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return Rejection(400, f"{name}: must be an integer >= 1 (got {value!r})")
        caps.append(value)
    model = models.get(model_id)
    if model is None:
        return Rejection(404, f"{model_id} is not a valid model ID")
    if model.max_completion_tokens is not None:
        caps.append(model.max_completion_tokens)
    prompt_tokens = count_prompt_tokens(messages)
    if prompt_tokens > model.context_length:
        return Rejection(
            400,
            f"This endpoint's maximum context length is {model.context_length} tokens. "
            f"However, you requested about {prompt_tokens} tokens.",
        )
    json_format = parse_response_format(body.get("response_format"))
    if isinstance(json_format, Rejection):
        return json_format
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    reasoning = body.get("reasoning")
    return Order(
        model=model,
        messages=messages,
        stream=stream,
        cap_tokens=min(caps) if caps else None,
        request_seed=body.get("seed"),
        include_usage=include_usage,
        reasoning_visible=not (isinstance(reasoning, dict) and reasoning.get("exclude") is True),
        prompt_tokens=prompt_tokens,
        json_format=json_format,
    )


def parse_response_format(value: object) -> JsonFormat | Rejection | None:
    """`response_format` (absent, text, json_object or json_schema) in, what to answer with out.

    Both dialects accept it; the schema itself is not checked, only its envelope.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        return Rejection(400, "response_format: must be an object")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonFormat(schema=None)
    if kind != "json_schema":
        return Rejection(400, f"response_format.type: must be 'text', 'json_object' or "
                              f"'json_schema' (got {kind!r})")
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        return Rejection(400, "response_format.json_schema: must be an object")
    name, schema, strict = spec.get("name"), spec.get("schema"), spec.get("strict")
    if not isinstance(name, str) or not name:
        return Rejection(400, "response_format.json_schema.name: a name is required")
    if not isinstance(schema, dict):
        return Rejection(400, "response_format.json_schema.schema: must be a JSON schema object")
    if strict is not None and not isinstance(strict, bool):
        return Rejection(400, f"response_format.json_schema.strict: must be a boolean "
                              f"(got {strict!r})")
    return JsonFormat(schema=schema, name=name)
