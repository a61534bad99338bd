"""Result rows: a `Request` and its `Attempt`s in, the fields of its `Result` row out (pure)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .client import Attempt
from .content import recorded_messages
from .itl import itl_figures
from .plan import Request
from .pricing import Price
from .result import ERROR, OK, Result, json_text


def new_result(run_id: str, job: str, request: Request,
               redact: Callable[[str], str] | None = None) -> Result:
    """The row of a request before it is sent. `redact` (the run's redactor) takes every
    secret of the job out of the inputs it records: a key pasted into a prompt, its metadata or
    a dataset must not reach the results."""
    inputs = _inputs(request, redact)
    return Result(
        run_id=run_id, job=job, request_id=request.request_id, index=request.index,
        model=request.model.label, model_id=request.model.id, provider=request.model.provider,
        prompt_id=request.prompt_id, repeat=request.repeat, vars_json=inputs.vars_json,
        stream=bool(request.params.get("stream", True)),
        row_id=request.row_id, messages_json=inputs.messages_json, target=inputs.target,
        metadata_json=inputs.metadata_json, var_values=inputs.var_values,
    )


@dataclass(frozen=True, slots=True)
class _Inputs:
    """What a row records of its request's inputs, redacted; the same for every model and
    repeat of a plan unit, which share the same vars, messages and metadata objects."""

    of: tuple[object, ...]          # the objects it was made from (held: ids stay theirs)
    vars_json: str
    messages_json: str
    target: str | None
    metadata_json: str | None
    var_values: dict[str, Any] | None  # shared by the unit's rows: never changed in place


_last_inputs: _Inputs | None = None


def _inputs(request: Request, redact: Callable[[str], str] | None) -> _Inputs:
    """The recorded inputs of `request`, made once per plan unit (the plan hands a unit's
    requests the same objects; the last unit's are kept)."""
    global _last_inputs
    last = _last_inputs
    if last is not None:
        vars_, messages, turns, target, metadata, cleaner = last.of
        if vars_ is request.vars and messages is request.messages and turns is request.turns \
                and target is request.target and metadata is request.metadata \
                and cleaner is redact:
            return last
    of = (request.vars, request.messages, request.turns, request.target, request.metadata,
          redact)
    clean = redact or _same
    made = _Inputs(
        of,
        vars_json=clean(json.dumps(dict(request.vars), sort_keys=True, ensure_ascii=False,
                                   default=str)),
        messages_json=clean(messages_json(request)),
        target=clean(request.target) if request.target is not None else None,
        metadata_json=clean(json_text(dict(request.metadata))) if request.metadata else None,
        var_values={k: _scrub(v, clean) for k, v in request.vars.items()}
        if request.vars else None)
    _last_inputs = made
    return made


def _same(text: str) -> str:
    return text


def messages_json(request: Request) -> str:
    """The messages a request sends, as JSON (`[{"role": ..., "content": ...}]`): images by
    source, size and hash (never their base64); a conversation's later user turns follow (its
    replies are in `turns_json`)."""
    return json_text(recorded_messages((*request.messages, *request.turns[1:])))


def attempt_cost(attempt: Attempt, price: Price | None) -> tuple[float | None, str | None]:
    """What an attempt cost and where that figure comes from; (None, None) when unknown, so
    the budget keeps the attempt's whole reservation as spent. Never negative, never NaN."""
    if attempt.cost_usd is not None:
        cost, source = attempt.cost_usd, "provider"
    elif attempt.cost_unusable:
        return None, None  # the server sent a cost we cannot believe: not a price-table guess
    elif attempt.http_error:
        return 0.0, "not_billed"  # an HTTP error status: no model ran
    elif price is not None and attempt.prompt_tokens is not None \
            and attempt.completion_tokens is not None:
        cost = price.cost_usd(attempt.prompt_tokens, attempt.completion_tokens)
        source = "price_table"
    else:
        return None, None
    if not (math.isfinite(cost) and cost >= 0):
        return None, None
    return cost, source


def fold(result: Result, attempt: Attempt, cost: float | None, source: str | None,
          worst: float | None) -> None:
    """Copy the latest attempt into the row (latency is the final attempt's)."""
    result.status = OK if attempt.ok else ERROR
    result.error_type = attempt.error_type
    result.error_message = attempt.error_message
    result.http_status = attempt.http_status
    result.ttft_s = attempt.ttft_s if result.stream else None
    result.latency_s = attempt.latency_s
    result.model_served = attempt.model_served
    result.upstream = attempt.upstream
    result.generation_id = attempt.generation_id
    result.prompt_tokens = attempt.prompt_tokens
    result.completion_tokens = attempt.completion_tokens
    result.reasoning_tokens = attempt.reasoning_tokens
    result.cached_tokens = attempt.cached_tokens
    result.finish_reason = attempt.finish_reason
    result.native_finish_reason = attempt.native_finish_reason
    result.response_text = attempt.text if attempt.text or attempt.ok else None
    # every attempt is paid for: the row carries the sum over attempts
    if cost is not None:
        result.cost_usd = (result.cost_usd or 0.0) + cost
        result.cost_source = source
    if worst is not None and cost is not None:
        result.cost_over_estimate = bool(cost > worst + 1e-12) or bool(result.cost_over_estimate)
    if result.stream:
        result.itl_p50_s, result.itl_p99_s, result.itl_max_s = itl_figures(attempt.content_at_s)
    tokens, latency, ttft = attempt.completion_tokens, attempt.latency_s, result.ttft_s
    if attempt.ok and tokens and latency:
        if ttft is not None and latency > ttft:
            result.output_tokens_per_s = tokens / (latency - ttft)
            if tokens > 1:
                result.tpot_s = (latency - ttft) / (tokens - 1)
        elif ttft is None:
            result.output_tokens_per_s = tokens / latency


def _scrub(value: Any, clean: Callable[[str], str]) -> Any:
    """A var value with every string in it redacted, however deep in lists and objects (a
    dataset field may hold a whole JSON document with a key pasted into it)."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, list | tuple):
        return [_scrub(v, clean) for v in value]
    if isinstance(value, dict):
        return {_scrub(k, clean) if isinstance(k, str) else k: _scrub(v, clean)
                for k, v in value.items()}
    return value
