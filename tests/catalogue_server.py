"""A loopback OpenAI-compatible server for catalogue tests, in its own thread (so a test can run
`runner` commands, which start their own event loop, against it).

`GET /models` answers the JSON given (or a bare status); `POST /chat/completions` answers a
one-word reply with usage and cost, streamed or not, and records the model id asked for.
"""

from __future__ import annotations

import asyncio
import json
import threading
from types import TracebackType
from typing import Any

from aiohttp import web


def entry(model_id: str, prompt_usd_per_mtok: float, completion_usd_per_mtok: float, *,
          max_completion_tokens: int | None = 1000, web_search_usd: float = 0.0,
          request_usd: float = 0.0) -> dict[str, Any]:
    """One OpenRouter-shaped `/models` entry (prices as strings in USD per token)."""
    return {
        "id": model_id, "name": model_id, "context_length": 100_000,
        "pricing": {"prompt": f"{prompt_usd_per_mtok / 1e6:.12f}",
                    "completion": f"{completion_usd_per_mtok / 1e6:.12f}",
                    "request": f"{request_usd:.6f}", "web_search": f"{web_search_usd:.6f}"},
        "top_provider": {"context_length": 100_000,
                         "max_completion_tokens": max_completion_tokens},
    }


class CatalogueServer:
    """Use as a context manager; `base_url` ends in /api/v1; `asked` lists the model ids sent."""

    def __init__(self, models: Any = None, *, models_status: int = 200) -> None:
        self._models = models if models is not None else {"data": []}
        self._models_status = models_status
        self.asked: list[str] = []
        self.base_url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> CatalogueServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the catalogue server did not start")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/models", self._list)
        app.router.add_post("/api/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/api/v1"

    async def _list(self, request: web.Request) -> web.Response:
        if self._models_status != 200:
            return web.json_response({"error": {"code": self._models_status,
                                                "message": "no such route"}},
                                     status=self._models_status)
        return web.json_response(self._models)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model"))
        self.asked.append(model)
        usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6,
                 "cost": 0.000001}
        if not body.get("stream"):
            return web.json_response({
                "id": "gen-1", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "Hello"}}],
                "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta, finish, extra in (({"content": "Hello"}, None, {}),
                                     ({}, "stop", {"usage": usage})):
            chunk = {"id": "gen-1", "object": "chat.completion.chunk", "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
