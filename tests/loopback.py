"""A small OpenAI-compatible server on loopback whose answers the test writes: a `reply`
function (the request's JSON body, how many requests that model had before) in, (status,
headers, JSON body) out. It runs on its own loop in a thread, so sync tests (`cli.main`) and
async ones can both use it, and it keeps a bill: every `usage.cost` it sent.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web

Reply = tuple[int, dict[str, str], dict[str, Any]]


def completion(model: str, cost_usd: float | None, text: str = "hello",
               prompt_tokens: int = 5, completion_tokens: int = 2) -> Reply:
    """A non-streamed chat completion billed `cost_usd` (None: no cost in usage)."""
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens,
                             "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}
    if cost_usd is not None:
        usage["cost"] = cost_usd
    return 200, {}, {
        "id": "gen-loopback", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": usage,
    }


def rate_limited(headers: dict[str, str]) -> Reply:
    return 429, headers, {"error": {"code": 429, "message": "Rate limit exceeded"}}


class Loopback:
    """`with Loopback(reply) as server:` serves `server.base_url` until the block ends."""

    def __init__(self, reply: Callable[[dict[str, Any], int], Reply]) -> None:
        self._reply = reply
        self.bodies: list[dict[str, Any]] = []     # every chat request received, in order
        self.billed_usd = 0.0                      # the sum of the costs it answered with
        self.base_url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def sent_to(self, model: str) -> int:
        return sum(body.get("model") == model for body in self.bodies)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        model = body.get("model")
        n = self.sent_to(model)
        self.bodies.append(body)
        status, headers, answer = self._reply(body, n)
        cost = (answer.get("usage") or {}).get("cost")
        if isinstance(cost, int | float):
            self.billed_usd += cost
        return web.Response(status=status, headers=headers, text=json.dumps(answer),
                            content_type="application/json")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> Loopback:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the loopback server did not start")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def job_yaml(url: str, body: str, key_env: str = "LOOPBACK_KEY") -> str:
    """A job on a provider `lb` at `url` (key from `key_env`), followed by `body` (dedented)."""
    import textwrap

    return textwrap.dedent(f"""
        name: money
        providers:
          lb: {{base_url: "{url}", api_key_env: {key_env}}}
        provider: lb
    """) + textwrap.dedent(body)
