"""A minimal canned-response OpenRouter-shaped server, so that the server is not the bottleneck.

Raw asyncio (no HTTP framework): every `POST .../chat/completions` that asks for a stream
(`"stream": true` in its body) gets the same 10-event SSE stream (a role chunk, eight content
chunks, a finish chunk with `usage` and `cost`, then `data: [DONE]`), chunked like a real SSE
endpoint, in one write; any other gets the same completion as one JSON body. `GET .../models`
lists the one model with a price. Keep-alive HTTP/1.1; no pipelining.

    python benchmarks/canned_server.py --port 8799      # prints "listening <port>" when ready
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable

import orjson

MODEL = "canned/model"
EVENTS = 10


def _stream_body() -> bytes:
    head = {"id": "gen-0-canned", "object": "chat.completion.chunk", "created": 1776655591,
            "model": MODEL, "provider": "Canned"}

    def event(delta: dict[str, object], finish: str | None = None, **extra: object) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish,
                  "native_finish_reason": finish}
        return b"data: " + orjson.dumps({**head, "choices": [choice], **extra}) + b"\n\n"

    usage = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20, "cost": 0.000021,
             "is_byok": False, "prompt_tokens_details": {"cached_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0}}
    events = [event({"role": "assistant", "content": ""})]
    events += [event({"role": "assistant", "content": f"word{i} "}) for i in range(EVENTS - 2)]
    events.append(event({"role": "assistant", "content": ""}, "stop", usage=usage))
    events.append(b"data: [DONE]\n\n")
    assert len(events) == EVENTS + 1  # ten JSON events plus the [DONE] sentinel
    # one HTTP chunk per SSE event, as a streaming server would send them
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


def _completion_body() -> bytes:
    return orjson.dumps({
        "id": "gen-0-canned", "object": "chat.completion", "created": 1776655591, "model": MODEL,
        "provider": "Canned",
        "choices": [{"index": 0, "finish_reason": "stop", "native_finish_reason": "stop",
                     "message": {"role": "assistant",
                                 "content": "".join(f"word{i} " for i in range(EVENTS - 2))}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20,
                  "cost": 0.000021, "is_byok": False,
                  "prompt_tokens_details": {"cached_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0}},
    })


def _models_body() -> bytes:
    return orjson.dumps({"data": [{
        "id": MODEL, "name": "Canned", "context_length": 8192,
        "pricing": {"prompt": "0.000001", "completion": "0.000002"},
        "top_provider": {"context_length": 8192, "max_completion_tokens": 1024},
    }]})


STREAM = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
          b"Transfer-Encoding: chunked\r\n\r\n" + _stream_body())
_COMPLETION = _completion_body()
COMPLETION = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % len(_COMPLETION)) + _COMPLETION
_MODELS = _models_body()
MODELS = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
          % len(_MODELS)) + _MODELS
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class CannedProtocol(asyncio.Protocol):
    """Parses just enough HTTP/1.1 (request line, Content-Length) to answer from constants."""

    __slots__ = ("_buf", "_transport")

    def __init__(self) -> None:
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buf[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17: stop if stop >= 0 else None])
            if len(self._buf) < end + 4 + length:
                return  # body not complete yet
            body = self._buf[end + 4:end + 4 + length]
            self._buf = self._buf[end + 4 + length:]
            line = head[:head.find(b"\r\n")] if b"\r\n" in head else head
            self._answer(line, body)

    def _answer(self, request_line: bytes, body: bytes = b"") -> None:
        assert self._transport is not None
        method, _, rest = request_line.partition(b" ")
        path = rest.partition(b" ")[0]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            streamed = b'"stream":true' in body or b'"stream": true' in body
            self._transport.write(STREAM if streamed else COMPLETION)
            self.answered(streamed)
        elif method == b"GET" and path.endswith(b"/models"):
            self._transport.write(MODELS)
        else:
            self._transport.write(NOT_FOUND)

    def answered(self, streamed: bool) -> None:
        """Called after each completion is written (a hook for subclasses that log them)."""


async def serve(host: str, port: int,
                protocol: Callable[[], asyncio.Protocol] = CannedProtocol) -> None:
    """Serve until SIGTERM/SIGINT; print the bound port once listening."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
