"""Sending a decided reply: an `Order`, its `Fate` and `Completion` in, the timed HTTP response
(a paced SSE stream, a JSON body, an error, or a broken/hung connection) out.

Latency: the first token is due `ttft_s` (+ jitter) after the request, then one token every
`1 / tokens_per_s`. Events that are already due go out together in one write, so a model with
`ttft_s=0` and `tokens_per_s=0` streams a whole response in a single write without sleeping.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from aiohttp import web

from runner.simulator.bill import Meter
from runner.simulator.faults import Fate, break_index
from runner.simulator.models import SimModel
from runner.simulator.orders import Order
from runner.simulator.text import Completion
from runner.simulator.wire import Head, Reshape, StreamEvents, completion_body, error_body

KEEP_ALIVE_MIN_TTFT_S = 0.5  # waits at least this long get a second keep-alive comment midway
RATE_LIMIT_PER_MINUTE = 20

_ERROR_MESSAGES = {
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "Service temporarily unavailable",
}
_STREAM_BREAKS = ("disconnect", "stream_error", "malformed")

# (seconds after the request started, bytes to send, completion tokens those bytes carry)
Timeline = list[tuple[float, bytes, int]]


def error_response(
    status: int,
    message: str,
    metadata: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON error response whose body code equals the HTTP status."""
    return web.Response(
        status=status,
        body=error_body(status, message, metadata),
        content_type="application/json",
        headers=headers,
    )


def rate_limited(wait_s: float) -> web.Response:
    """A 429 with `Retry-After` (whole seconds, >= 1) and OpenRouter's X-RateLimit-* headers."""
    retry_after_s = max(1, math.ceil(wait_s))
    limits = {
        "X-RateLimit-Limit": str(RATE_LIMIT_PER_MINUTE),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int((time.time() + retry_after_s) * 1000)),
    }
    return error_response(
        429,
        "Rate limit exceeded: sim-requests-per-min. ",
        {"headers": limits, "provider_name": None},
        headers={"Retry-After": str(retry_after_s), **limits},
    )


def upstream_failed(model: SimModel, status: int) -> web.Response:
    """A 4xx/5xx error response blaming the simulated upstream."""
    message = _ERROR_MESSAGES.get(status, "Simulated upstream error")
    return error_response(status, message, _upstream_metadata(model))


def _upstream_metadata(model: SimModel) -> dict[str, Any]:
    return {"provider_name": model.upstream, "raw": "simulated fault"}


def _ttft_s(model: SimModel, fate: Fate) -> float:
    return max(0.0, model.ttft_s + fate.jitter_s)


def _drop(request: web.Request) -> None:
    """Close the connection without finishing the response (what a crashed upstream does)."""
    if request.transport is not None:
        request.transport.close()


def _generation_headers(head: Head) -> dict[str, str]:
    return {"X-Generation-Id": head.id} if head.dialect == "openrouter" else {}


async def send_completion(
    request: web.Request,
    head: Head,
    order: Order,
    fate: Fate,
    completion: Completion,
    usage_obj: dict[str, Any],
    closing: asyncio.Event,
    meter: Meter,
    shape: Reshape | None = None,
) -> web.StreamResponse:
    """Answer a non-streaming request after the whole generation time, or fail as fated."""
    model = order.model
    ttft_s = _ttft_s(model, fate)
    if fate.fault not in ("error_body", "stream_error"):  # those fail before generating
        meter.pace(completion.completion_tokens, ttft_s)
    if fate.fault == "hang":
        await closing.wait()
        _drop(request)
        return web.Response()
    if fate.fault in ("disconnect", "error_body", "stream_error"):
        if ttft_s > 0:
            await asyncio.sleep(ttft_s)
        if fate.fault == "disconnect":
            _drop(request)
            return web.Response()
        # A 200 whose body is only an error: the upstream failed after OpenRouter committed.
        body = error_body(502, "Provider returned error", _upstream_metadata(model))
        return web.Response(status=200, body=body, content_type="application/json")
    total_s = ttft_s + max(0, completion.completion_tokens - 1) * model.s_per_token
    if total_s > 0:
        await asyncio.sleep(total_s)
    body = completion_body(head, completion, usage_obj, order.reasoning_visible, shape)
    if fate.fault == "malformed":
        body = body[: len(body) // 2]
    meter.complete(completion.completion_tokens)
    return web.Response(
        status=200, body=body, content_type="application/json", headers=_generation_headers(head)
    )


async def send_stream(
    request: web.Request,
    head: Head,
    order: Order,
    fate: Fate,
    completion: Completion,
    usage_obj: dict[str, Any],
    closing: asyncio.Event,
    meter: Meter,
    shape: Reshape | None = None,
) -> web.StreamResponse:
    """Stream the completion as SSE at the model's pace, breaking it as fated."""
    response = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                 **_generation_headers(head)},
    )  # fmt: skip
    events = StreamEvents(head)
    try:
        await response.prepare(request)
        opening = events.opening()
        if opening:
            await response.write(opening)
        if fate.fault == "hang":
            meter.pace(completion.completion_tokens, _ttft_s(order.model, fate))
            await closing.wait()
            _drop(request)
            return response
        if fate.fault != "error_body":  # that one fails before generating
            meter.count()
        timeline, finishes = _timeline(events, order, fate, completion, usage_obj, shape)
        await _pace(response, timeline, meter)
        if fate.fault not in ("disconnect", "stream_error", "error_body"):
            meter.complete(completion.completion_tokens)
        if finishes:
            await response.write_eof()
        else:
            _drop(request)
    except ConnectionResetError:
        pass  # the client went away: nobody is left to tell
    return response


def _timeline(
    events: StreamEvents,
    order: Order,
    fate: Fate,
    completion: Completion,
    usage_obj: dict[str, Any],
    shape: Reshape | None = None,
) -> tuple[Timeline, bool]:
    """Every event with its due time, and whether the stream ends cleanly (else: dropped)."""
    model = order.model
    ttft_s = _ttft_s(model, fate)
    s_per_token = model.s_per_token
    timeline: Timeline = []
    if ttft_s >= KEEP_ALIVE_MIN_TTFT_S and events.keep_alive():
        timeline.append((ttft_s / 2, events.keep_alive(), 0))
    if fate.fault == "error_body":
        metadata = _upstream_metadata(model)
        timeline.append((ttft_s, events.error_only(502, "Provider returned error", metadata), 0))
        return timeline, True
    timeline.append((ttft_s, events.first(), 0))
    due_s = ttft_s
    if order.reasoning_visible:
        for token in completion.reasoning:
            timeline.append((due_s, events.reasoning(token), 1))
            due_s += s_per_token
    else:  # generated (and billed) all the same, only not shown
        due_s += len(completion.reasoning) * s_per_token
        timeline.append((due_s, b"", len(completion.reasoning)))
    content = completion.content
    cut = break_index(fate, len(content)) if fate.fault in _STREAM_BREAKS else len(content)
    for token in content[:cut]:
        timeline.append((due_s, events.content(token), 1))
        due_s += s_per_token
    if fate.fault == "disconnect":
        return timeline, False
    if fate.fault == "stream_error":
        timeline.append((due_s, events.error(502, "Provider disconnected unexpectedly"), 0))
        return timeline, True
    if fate.fault == "malformed":
        timeline.append((due_s, events.malformed(), 0))
    for token in content[cut:]:
        timeline.append((due_s, events.content(token), 1))
        due_s += s_per_token
    final = events.final(completion, usage_obj, order.include_usage, shape)
    timeline.append((due_s, final, 0))
    return timeline, True


async def _pace(response: web.StreamResponse, timeline: Timeline, meter: Meter) -> None:
    """Write each event at its due time; events already due are joined into one write. The
    meter counts the tokens of each write as it goes out (a cut stream is billed for them)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending: list[bytes] = []
    tokens = 0
    for due_s, data, n_tokens in timeline:
        delay_s = start + due_s - loop.time()
        if delay_s > 0:
            if pending:
                meter.sent(tokens)
                await response.write(b"".join(pending))
                pending.clear()
                tokens = 0
            await asyncio.sleep(delay_s)
        pending.append(data)
        tokens += n_tokens
    if pending:
        meter.sent(tokens)
        await response.write(b"".join(pending))
