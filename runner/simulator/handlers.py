"""The HTTP endpoints: aiohttp requests in, chat completions and model listings out, with every
chat request recorded as an `Arrival` (its fate decided the moment it arrives) and, once it has
ended, as a `Charge` on the bill (served at GET /_sim/bill).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import orjson
from aiohttp import web

from runner.simulator.account import Account
from runner.simulator.arrivals import Arrival, ArrivalLog
from runner.simulator.bill import Charge, Meter, bill_body
from runner.simulator.capacity import Capacity
from runner.simulator.catalogue import models_body
from runner.simulator.faults import Fate, draw_fate, status_of
from runner.simulator.hostile import (
    ELSEWHERE,
    carries_credentials,
    echo,
    echo_error,
    echoing,
    endless,
    gzip_bomb,
    lying_usage,
    odd_shape,
    redirect,
)
from runner.simulator.models import SimModel
from runner.simulator.orders import Order, Rejection, authorized, parse_order
from runner.simulator.records import RecordLog
from runner.simulator.replies import (
    error_response,
    rate_limited,
    send_completion,
    send_stream,
    upstream_failed,
)
from runner.simulator.text import Completion, generate
from runner.simulator.wire import Dialect, new_head, usage

REQUEST_ID_HEADER = "X-Runner-Request-Id"


class ChatService:
    """The state behind the endpoints: served models, seed, arrival counters and log."""

    __slots__ = ("_account", "_arrival_counts", "_bill", "_capacity", "_closing", "_log",
                 "_models", "_seed")

    def __init__(self, models: Sequence[SimModel], seed: int, log: ArrivalLog,
                 account: Account | None = None, bill: RecordLog[Charge] | None = None,
                 capacity: Capacity | None = None) -> None:
        self._capacity = capacity
        self._account = account or Account()
        self._bill: RecordLog[Charge] = bill if bill is not None else RecordLog()
        self._models = {m.id: m for m in models}
        if len(self._models) != len(models):
            raise ValueError("Simulator: model ids must be unique")
        self._seed = seed
        self._log = log
        self._arrival_counts: dict[str, int] = {}
        self._closing = asyncio.Event()

    def close(self) -> None:
        """Release every hanging request (their connections are dropped)."""
        self._closing.set()

    def add_routes(self, app: web.Application) -> None:
        """Mount both dialects: OpenRouter under /api/v1, plain OpenAI under /v1."""
        app.router.add_post("/api/v1/chat/completions", self.chat_openrouter)
        app.router.add_post("/v1/chat/completions", self.chat_openai)
        app.router.add_get("/api/v1/models", self.models_openrouter)
        app.router.add_get("/v1/models", self.models_openai)
        app.router.add_get("/_sim/bill", self.bill)
        app.router.add_route("*", ELSEWHERE + "/{tail:.*}", self.elsewhere)

    async def chat_openrouter(self, request: web.Request) -> web.StreamResponse:
        """POST /api/v1/chat/completions."""
        return await self._chat(request, "openrouter")

    async def chat_openai(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        return await self._chat(request, "openai")

    async def models_openrouter(self, request: web.Request) -> web.Response:
        """GET /api/v1/models."""
        return self._models_response("openrouter")

    async def models_openai(self, request: web.Request) -> web.Response:
        """GET /v1/models."""
        return self._models_response("openai")

    def _models_response(self, dialect: Dialect) -> web.Response:
        body = models_body(list(self._models.values()), dialect)
        return web.Response(body=body, content_type="application/json")

    async def _chat(self, request: web.Request, dialect: Dialect) -> web.StreamResponse:
        t_monotonic, t_unix = time.monotonic(), time.time()
        request_id = request.headers.get(REQUEST_ID_HEADER)
        meter = Meter()
        try:
            return await self._answer(request, dialect, meter, t_monotonic, t_unix)
        finally:  # however it ends (sent, cut by the client, cancelled at shutdown): one charge
            self._bill.append(meter.charge(t_unix, request_id))

    async def _answer(self, request: web.Request, dialect: Dialect, meter: Meter,
                      t_monotonic: float, t_unix: float) -> web.StreamResponse:
        request_id = request.headers.get(REQUEST_ID_HEADER)
        authorization_ok = authorized(request.headers.get("Authorization"))
        try:
            body: object = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None

        def record(status: int, model: str, stream: bool, fault: str | None = None) -> None:
            meter.describe(model, stream, status, fault)
            self._log.append(
                Arrival(t_monotonic, t_unix, model, stream, status, fault, request_id,
                        authorization_ok)
            )  # fmt: skip

        claimed_model, claimed_stream = _claims(body)
        if not authorization_ok:
            record(401, claimed_model, claimed_stream)
            return error_response(401, "No auth credentials found")
        if self._account.rejects(request.headers.get("Authorization")):
            record(401, claimed_model, claimed_stream, "auth")
            return error_response(401, "User not found.")
        order = parse_order(body, dialect, self._models)
        if isinstance(order, Rejection):
            record(order.status, claimed_model, claimed_stream)
            return error_response(order.status, order.message)
        model = order.model
        arrival_index = self._arrival_counts.get(model.id, 0)
        self._arrival_counts[model.id] = arrival_index + 1
        fate = draw_fate(model, sim_seed=self._seed, arrival_index=arrival_index)
        refused = await _refusal(request, model, fate)
        if refused is not None:
            record(status_of(fate, stream=order.stream), model.id, order.stream, fate.fault)
            return refused
        completion = generate(
            sim_seed=self._seed,
            model_id=model.id,
            messages=order.messages,
            request_seed=order.request_seed,
            reasoning=model.reasoning,
            cap_tokens=order.cap_tokens,
            json_format=order.json_format,
        )
        if fate.fault == "echo_text":
            completion = echoing(completion, request)
        refusal = self._account.charge(model, order.prompt_tokens, order.cap_tokens,
                                       completion.completion_tokens)
        if refusal is not None:
            record(402, model.id, order.stream, "credits")
            return error_response(402, refusal)
        record(status_of(fate, stream=order.stream), model.id, order.stream, fate.fault)
        meter.order(model, order.prompt_tokens, order.cap_tokens)
        if self._capacity is None or fate.fault in ("hang", "endless_stream"):
            return await self._reply(request, dialect, order, fate, completion, meter)
        async with self._capacity.admit(order) as paced:  # beyond capacity: it queues
            return await self._reply(request, dialect, paced, fate, completion, meter)

    async def _reply(
        self, request: web.Request, dialect: Dialect, order: Order, fate: Fate,
        completion: Completion, meter: Meter,
    ) -> web.StreamResponse:
        model = order.model
        head = new_head(dialect, model)
        if fate.fault == "endless_stream":
            return await endless(request, head, order, completion, meter, self._closing)
        usage_obj = lying_usage(usage(head, model, order.prompt_tokens, completion), fate.fault,
                                model.faults.overbill_factor)
        shape = odd_shape(fate.variant) if fate.fault == "odd_shape" else None
        streams = order.stream and fate.fault != "json_to_stream"
        send = send_stream if streams else send_completion
        return await send(request, head, order, fate, completion, usage_obj, self._closing,
                          meter, shape)

    async def elsewhere(self, request: web.Request) -> web.Response:
        """Any request to ELSEWHERE (where redirects point): billed as free, noting whether it
        carried credentials, and answered with a 400 echoing what it received."""
        t_unix = time.time()
        await request.read()
        meter = Meter()
        meter.outcome = "redirect_target_credentials" if carries_credentials(request) \
            else "redirect_target"
        meter.describe("", False, 400, "redirect")
        self._bill.append(meter.charge(t_unix, request.headers.get(REQUEST_ID_HEADER)))
        return error_response(400, f"Not a chat endpoint; received: {echo(request)}")

    async def bill(self, request: web.Request) -> web.Response:
        """GET /_sim/bill: every charge so far and their total."""
        return web.Response(body=bill_body(self._bill.snapshot()),
                            content_type="application/json")


async def _refusal(request: web.Request, model: SimModel, fate: Fate) -> web.Response | None:
    """The answer of a fault that refuses before generating anything (free), or None."""
    if fate.fault == "rate_limit":
        return rate_limited(model.faults.retry_after_s)
    if fate.fault == "long_retry_after":
        return rate_limited(model.faults.long_retry_after_s)
    if fate.fault == "error":
        return upstream_failed(model, fate.error_status)
    if fate.fault == "echo_error":
        return echo_error(request, model, fate.error_status)
    if fate.fault == "gzip_bomb":
        return await gzip_bomb(model.faults.gzip_bomb_bytes)
    if fate.fault == "redirect":
        return redirect(request)
    return None


def _claims(body: object) -> tuple[str, bool]:
    """The model and stream flag a body claims, for the log, before it is validated."""
    if not isinstance(body, dict):
        return "", False
    model = body.get("model")
    return (model if isinstance(model, str) else ""), body.get("stream") is True
