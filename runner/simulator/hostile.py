"""A hostile server's answers: the request, its `Order` and `Fate` in, replies that leak the
request's credentials back, lie in `usage`, change JSON shapes, never end, inflate, or redirect
out (the hostile entries of `FAULT_NAMES`; `replies.py` sends the ordinary ones).
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from typing import Any

import orjson
from aiohttp import web

from runner.simulator.bill import Meter
from runner.simulator.models import SimModel
from runner.simulator.orders import Order
from runner.simulator.text import Completion
from runner.simulator.wire import Head, Reshape, StreamEvents, error_body

ELSEWHERE = "/_sim/elsewhere"  # where a redirect points: another origin of the same server
ODD_SHAPES = ("usage_list", "usage_string", "choices_dict", "id_int", "counts_strings")
_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
_ENDLESS_BATCH = 64  # tokens per write when the model has no pace (a flood, bounded by drain)
_ECHO_PIECES = 4  # the echo is sent in this many deltas, so a key is split across chunks

# Headers the runner sends by itself; any other one reaching ELSEWHERE is a credential it leaked
RUNNER_OWN_HEADERS = frozenset({
    "host", "accept", "accept-encoding", "content-type", "content-length", "connection",
    "user-agent", "x-runner-request-id", "http-referer", "x-title", "x-openrouter-title",
    "x-openrouter-categories",
})  # fmt: skip


def echo(request: web.Request) -> str:
    """Every request header as `Name: value; ...` (what a careless upstream puts in errors)."""
    return "; ".join(f"{name}: {value}" for name, value in request.headers.items())


def echo_error(request: web.Request, model: SimModel, status: int) -> web.Response:
    """An error whose message and metadata repeat the request's headers, credentials included."""
    text = echo(request)
    headers = {str(name): value for name, value in request.headers.items()}
    metadata = {"provider_name": model.upstream, "raw": text, "headers": headers}
    return web.Response(status=status, content_type="application/json",
                        body=error_body(status, f"Upstream rejected the request ({text})",
                                        metadata))  # fmt: skip


def echoing(completion: Completion, request: web.Request) -> Completion:
    """The completion with its last content tokens replaced by the echoed request headers."""
    text = f" [{echo(request)}] "
    n = max(1, min(_ECHO_PIECES, len(completion.content)))
    size = -(-len(text) // n)
    pieces = tuple(text[i : i + size] for i in range(0, len(text), size))
    kept = completion.content[: max(0, len(completion.content) - len(pieces))]
    return Completion(completion.reasoning, kept + pieces, completion.finish_reason)


def lying_usage(usage_obj: dict[str, Any], fault: str | None,
                overbill_factor: float) -> dict[str, Any]:
    """`usage` with a negative or inflated cost (token counts where a dialect has no cost)."""
    lie = dict(usage_obj)
    if fault == "negative_cost":
        for name in _COUNTS:
            lie[name] = -int(lie[name]) - 1
        if "cost" in lie:
            lie["cost"] = -10.0
    elif fault == "overbill":
        if "cost" in lie:
            lie["cost"] = float(lie["cost"]) * overbill_factor
        else:
            lie["completion_tokens"] = int(lie["completion_tokens"] * overbill_factor)
            lie["total_tokens"] = lie["prompt_tokens"] + lie["completion_tokens"]
    return lie


def odd_shape(variant: float) -> Reshape:
    """A rewrite of a completion or its last chunk into valid JSON of an unexpected shape."""
    kind = ODD_SHAPES[min(len(ODD_SHAPES) - 1, int(variant * len(ODD_SHAPES)))]

    def reshape(obj: dict[str, Any]) -> dict[str, Any]:
        obj = dict(obj)
        usage = obj.get("usage")
        if kind == "usage_list":
            obj["usage"] = [usage]
        elif kind == "usage_string":
            obj["usage"] = orjson.dumps(usage).decode()
        elif kind == "choices_dict":
            choices = obj.get("choices") or [{"index": 0}]
            obj["choices"] = {"0": choices[0]}
        elif kind == "id_int":
            obj["id"] = 12345
        elif isinstance(usage, dict):
            obj["usage"] = usage | {k: str(usage[k]) for k in _COUNTS if k in usage}
        return obj

    return reshape


@functools.lru_cache(maxsize=2)
def _bomb(size: int) -> bytes:
    head, tail = b'{"error": {"code": 502, "message": "', b'"}}'
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    parts = [deflate.compress(head)]
    block = b" " * (1 << 20)
    left = max(0, size - len(head) - len(tail))
    while left > 0:
        parts.append(deflate.compress(block[: min(left, len(block))]))
        left -= len(block)
    parts += [deflate.compress(tail), deflate.flush()]
    return b"".join(parts)


async def gzip_bomb(size: int) -> web.Response:
    """A 502 whose gzip body inflates to `size` bytes (compressed once per size, off the loop)."""
    body = await asyncio.to_thread(_bomb, size)
    return web.Response(status=502, body=body, headers={
        "Content-Type": "application/json", "Content-Encoding": "gzip"})  # fmt: skip


def redirect(request: web.Request) -> web.Response:
    """A 307 to the same path under ELSEWHERE on another origin (127.0.0.1 <-> localhost)."""
    host = request.url.host or "127.0.0.1"
    other = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}.get(host, host)
    location = request.url.with_host(other).with_path(ELSEWHERE + request.path)
    return web.Response(status=307, headers={"Location": str(location)})


def carries_credentials(request: web.Request) -> bool:
    """True when a request holds Authorization or a header the runner does not send itself."""
    return any(name.lower() == "authorization" or (
        name.lower() not in RUNNER_OWN_HEADERS and not name.lower().startswith("x-stainless"))
        for name in request.headers)  # fmt: skip


async def endless(
    request: web.Request, head: Head, order: Order, completion: Completion, meter: Meter,
    closing: asyncio.Event,
) -> web.StreamResponse:
    """A reply that never ends: SSE content events for a stream, else a JSON string that never
    closes; at the model's pace, or as fast as the client reads. Ends when the client goes."""
    events = StreamEvents(head)
    words = completion.content or ("more ",)
    if order.stream:
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        opening = events.opening() + events.first()

        def piece(word: str) -> bytes:
            return events.content(word)
    else:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        opening = (b'{"id": "' + head.id.encode() + b'", "object": "chat.completion", '
                   b'"choices": [{"index": 0, "message": {"role": "assistant", "content": "')

        def piece(word: str) -> bytes:
            return orjson.dumps(word)[1:-1]
    s_per_token = order.model.s_per_token
    batch = _ENDLESS_BATCH if s_per_token == 0 else 1
    try:
        await response.prepare(request)
        await response.write(opening)
        meter.count()
        i = 0
        while not closing.is_set():
            chunk = b"".join(piece(words[(i + k) % len(words)]) for k in range(batch))
            meter.sent(batch)
            await response.write(chunk)
            i += batch
            await asyncio.sleep(s_per_token)  # 0 still yields: other requests go on
    except ConnectionResetError:
        pass  # the client cut it: what it was sent is on the bill
    if request.transport is not None:
        request.transport.close()
    return response
