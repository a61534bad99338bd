"""The simulator over real HTTP on loopback: wire shapes of both dialects, determinism, faults,
the arrival log, and shutdown. Every model is zero-latency, so nothing here sleeps for real."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pydantic
import pytest
from openai import AsyncOpenAI

from runner.simulator import (
    DEFAULT_MODELS,
    FAULT_NAMES,
    Charge,
    Faults,
    SimModel,
    Simulator,
    read_bill,
    total_usd,
)
from runner.simulator.text import generate

FAST: dict[str, Any] = {"ttft_s": 0.0, "tokens_per_s": 0.0}
AUTH = {"Authorization": "Bearer test-key"}
PLAIN = SimModel("t/plain", "Plain", 1e-7, 4e-7, request_usd=0.001, **FAST)
REASONER = SimModel("t/reasoner", "Reasoner", 1e-6, 4e-6, reasoning=True, **FAST)
FREE = SimModel("t/free:free", "Free", 0.0, 0.0, max_completion_tokens=None, **FAST)
FAULTS = {
    "rate_limit": Faults(rate_limit_rate=1.0, retry_after_s=1.5),
    "error": Faults(error_rate=1.0, error_statuses=(503,)),
    "hang": Faults(hang_rate=1.0),
    "disconnect": Faults(disconnect_rate=1.0),
    "stream_error": Faults(stream_error_rate=1.0),
    "error_body": Faults(error_body_rate=1.0),
    "malformed": Faults(malformed_rate=1.0),
    "coin": Faults(error_rate=0.5),
    "echo_error": Faults(echo_error_rate=1.0, error_statuses=(500,)),
    "echo_text": Faults(echo_text_rate=1.0),
    "odd_shape": Faults(odd_shape_rate=1.0),
    "negative_cost": Faults(negative_cost_rate=1.0),
    "overbill": Faults(overbill_rate=1.0, overbill_factor=50.0),
    "endless_stream": Faults(endless_stream_rate=1.0),
    "gzip_bomb": Faults(gzip_bomb_rate=1.0, gzip_bomb_bytes=4 << 20),
    "redirect": Faults(redirect_rate=1.0),
    "json_to_stream": Faults(json_to_stream_rate=1.0),
    "long_retry_after": Faults(long_retry_after_rate=1.0),
}
FAULTY = [SimModel(f"t/{name}", name, 1e-7, 4e-7, faults=f, **FAST) for name, f in FAULTS.items()]
SLOW = SimModel("t/slow", "Slow", 1e-7, 4e-7, ttft_s=0.0, tokens_per_s=200.0)
CRAWL = SimModel("t/crawl", "Crawl", 1e-7, 4e-7, request_usd=0.001, ttft_s=0.0, tokens_per_s=50.0)
MODELS = [PLAIN, REASONER, FREE, SLOW, CRAWL, *FAULTY]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(MODELS, seed=7) as simulator:
        yield simulator


def request(model: str = "t/plain", stream: bool = False, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Say hello to the benchmark."}]
    return {"model": model, "messages": messages, "stream": stream, **extra}


async def post(
    base_url: str, payload: object, headers: dict[str, str] = AUTH
) -> tuple[int, Any, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/chat/completions", json=payload, headers=headers) as resp,
    ):
        return resp.status, resp.headers, await resp.read()


def sse(raw: bytes) -> list[str]:
    return [event for event in raw.decode().split("\n\n") if event]


def chunks(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(e.removeprefix("data: ")) for e in sse(raw) if e.startswith("data: {")]


def content_of(raw: bytes) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks(raw)
                   if c["choices"])  # fmt: skip


async def test_openrouter_stream_shape(sim: Simulator) -> None:
    status, headers, raw = await post(sim.base_url, request(stream=True))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse(raw)
    assert events[0] == ": OPENROUTER PROCESSING" and events[-1] == "data: [DONE]"
    first, *middle, final = chunks(raw)
    assert re.fullmatch(r"gen-\d+-[A-Za-z0-9]{20}", first["id"])
    assert headers["X-Generation-Id"] == first["id"] == final["id"]
    assert first["object"] == "chat.completion.chunk" and first["provider"] == "SimCloud"
    assert first["model"] == "t/plain"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["choices"][0]["delta"]["content"].endswith(" ") for c in middle)
    choice = final["choices"][0]
    assert choice["delta"] == {"content": "", "role": "assistant"}
    assert (choice["finish_reason"], choice["native_finish_reason"]) == ("stop", "stop")
    usage = final["usage"]
    assert usage["completion_tokens"] == len(middle)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    expected_cost = usage["prompt_tokens"] * 1e-7 + usage["completion_tokens"] * 4e-7 + 0.001
    assert usage["cost"] == pytest.approx(expected_cost)
    assert usage["is_byok"] is False and usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert set(usage["cost_details"]) >= {"upstream_inference_cost"}
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0


async def test_nonstream_matches_stream_text(sim: Simulator) -> None:
    _, headers, raw = await post(sim.base_url, request())
    body = json.loads(raw)
    assert set(body) == {"id", "provider", "model", "object", "created", "choices", "usage"}
    assert headers["X-Generation-Id"] == body["id"] and body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["reasoning"] is None
    assert (choice["finish_reason"], choice["native_finish_reason"]) == ("stop", "stop")
    assert body["usage"]["cost"] > 0.001
    _, _, streamed = await post(sim.base_url, request(stream=True))
    assert choice["message"]["content"] == content_of(streamed)


async def test_prompt_tokens_are_a_quarter_of_chars_plus_four_per_message(sim: Simulator) -> None:
    messages = [{"role": "system", "content": "x" * 40}, {"role": "user", "content": "y" * 2}]
    _, _, raw = await post(sim.base_url, {"model": "t/plain", "messages": messages})
    assert json.loads(raw)["usage"]["prompt_tokens"] == (42 + 2) // 4 + 2 * 4


async def test_text_is_deterministic(sim: Simulator) -> None:
    async def text(base_url: str, **kw: Any) -> str:
        _, _, raw = await post(base_url, request(**kw))
        return str(json.loads(raw)["choices"][0]["message"]["content"])

    same = await text(sim.base_url)
    assert same == await text(sim.base_url) == await text(sim.openai_base_url)
    assert same != await text(sim.base_url, model="t/free:free")
    assert same != await text(sim.base_url, seed=1)
    with Simulator(MODELS, seed=8) as other:
        assert same != await text(other.base_url)
    with Simulator(MODELS, seed=7) as again:
        assert same == await text(again.base_url)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_cap_ends_with_length(sim: Simulator, field: str) -> None:
    _, _, raw = await post(sim.base_url, request(stream=True, **{field: 5}))
    final = chunks(raw)[-1]
    assert final["choices"][0]["finish_reason"] == "length"
    assert final["choices"][0]["native_finish_reason"] == "MAX_TOKENS"
    assert final["usage"]["completion_tokens"] == 5
    assert len(content_of(raw).split()) == 5


async def test_reasoning_streams_before_content(sim: Simulator) -> None:
    _, _, raw = await post(sim.base_url, request("t/reasoner", stream=True))
    deltas = [c["choices"][0]["delta"] for c in chunks(raw)[1:-1]]
    kinds = ["reasoning" if d.get("reasoning") else "content" for d in deltas]
    n_reasoning = kinds.count("reasoning")
    assert n_reasoning >= 8 and kinds == sorted(kinds, key=lambda kind: kind != "reasoning")
    assert deltas[0]["reasoning_details"][0]["type"] == "reasoning.text"
    assert deltas[0]["reasoning_details"][0]["text"] == deltas[0]["reasoning"]
    usage = chunks(raw)[-1]["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == n_reasoning
    assert usage["completion_tokens"] == len(deltas)
    _, _, plain = await post(sim.base_url, request("t/reasoner"))
    assert json.loads(plain)["choices"][0]["message"]["reasoning"]


@pytest.mark.parametrize("prefix", ["/api/v1", "/v1"])
async def test_models_list_string_prices(sim: Simulator, prefix: str) -> None:
    url = f"http://127.0.0.1:{sim.port}{prefix}/models"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        entries = {m["id"]: m for m in (await resp.json())["data"]}
    plain, free = entries["t/plain"], entries["t/free:free"]
    assert plain["pricing"]["prompt"] == "0.0000001"
    assert plain["pricing"]["completion"] == "0.0000004"
    assert plain["pricing"]["request"] == "0.001"
    assert free["pricing"]["prompt"] == free["pricing"]["completion"] == "0"
    assert free["top_provider"] == {
        "context_length": 32768, "max_completion_tokens": None, "is_moderated": False,
    }  # fmt: skip
    assert "reasoning" in entries["t/reasoner"]["supported_parameters"]


def test_default_models_are_the_documented_ones() -> None:
    ids = {m.id: m for m in DEFAULT_MODELS}
    assert {"sim/fast-mini", "sim/balanced", "sim/premium-large", "sim/reasoner"} <= set(ids)
    assert ids["sim/free:free"].max_completion_tokens is None and ids["sim/reasoner"].reasoning
    assert ids["sim/premium-large"].completion_usd_per_token == 15e-6


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer "}, {"Authorization": "x"}])
async def test_missing_auth_is_401(sim: Simulator, headers: dict[str, str]) -> None:
    status, _, raw = await post(sim.base_url, request(), headers=headers)
    assert status == 401
    assert json.loads(raw) == {"error": {"code": 401, "message": "No auth credentials found"}}
    assert sim.arrivals()[-1].authorization_ok is False


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (request("nope/missing"), 404),
        ({"model": "t/plain", "messages": []}, 400),
        ({"model": "t/plain"}, 400),
        ({"model": "t/plain", "messages": "hi"}, 400),
        (request(max_tokens=0), 400),
        ([1, 2], 400),
    ],
)
async def test_invalid_requests(sim: Simulator, payload: object, status: int) -> None:
    got, _, raw = await post(sim.base_url, payload)
    assert got == status and json.loads(raw)["error"]["code"] == status
    if status == 404:
        assert "nope/missing" in json.loads(raw)["error"]["message"]


async def test_rate_limit_fault(sim: Simulator) -> None:
    now_ms = time.time() * 1000
    status, headers, raw = await post(sim.base_url, request("t/rate_limit", stream=True))
    error = json.loads(raw)["error"]
    assert status == 429 == error["code"] and headers["Retry-After"] == "2"
    limits = error["metadata"]["headers"]
    assert set(limits) == {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
    assert int(limits["X-RateLimit-Reset"]) >= now_ms + 1000
    assert headers["X-RateLimit-Reset"] == limits["X-RateLimit-Reset"]


async def test_error_fault(sim: Simulator) -> None:
    status, _, raw = await post(sim.base_url, request("t/error"))
    assert status == 503 == json.loads(raw)["error"]["code"]
    assert sim.arrivals()[-1].fault == "error" and sim.arrivals()[-1].status == 503


async def test_fault_draws_vary_per_arrival_but_repeat_per_seed(sim: Simulator) -> None:
    statuses = [(await post(sim.base_url, request("t/coin")))[0] for _ in range(20)]
    assert 200 in statuses and any(status >= 500 for status in statuses)
    with Simulator(MODELS, seed=7) as again:
        assert statuses == [(await post(again.base_url, request("t/coin")))[0] for _ in range(20)]


async def _read_until_cut(sim: Simulator) -> bytes:
    """What a streamed request to the disconnecting model received before the server cut it."""
    received = b""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            url = f"{sim.base_url}/chat/completions"
            async with session.post(url, json=request("t/disconnect", True), headers=AUTH) as r:
                async for piece in r.content.iter_any():
                    received += piece
    return received


async def test_disconnect_fault(sim: Simulator) -> None:
    received = b""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            url = f"{sim.base_url}/chat/completions"
            async with session.post(url, json=request("t/disconnect", True), headers=AUTH) as r:
                async for piece in r.content.iter_any():
                    received += piece
        assert b"[DONE]" not in received and content_of(received)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.post(url, json=request("t/disconnect"), headers=AUTH)
    assert [a.status for a in sim.arrivals()] == [200, 0]


async def test_stream_error_fault(sim: Simulator) -> None:
    status, _, raw = await post(sim.base_url, request("t/stream_error", stream=True))
    *before, last = chunks(raw)
    assert status == 200 and b"[DONE]" not in raw and content_of(raw)
    assert set(last["error"]) == {"code", "message"}
    assert last["choices"][0]["finish_reason"] == "error"
    assert all("error" not in c for c in before)


async def test_error_body_fault(sim: Simulator) -> None:
    status, _, raw = await post(sim.base_url, request("t/error_body"))
    assert status == 200 and "choices" not in json.loads(raw)
    assert json.loads(raw)["error"]["code"] == 502
    status, _, raw = await post(sim.base_url, request("t/error_body", stream=True))
    assert status == 200 and sse(raw)[0] == ": OPENROUTER PROCESSING"
    assert [json.loads(e.removeprefix("data: ")).keys() for e in sse(raw)[1:]] == [{"error"}]


async def test_malformed_fault(sim: Simulator) -> None:
    _, _, raw = await post(sim.base_url, request("t/malformed", stream=True))
    bad = []
    for event in sse(raw):
        if event.startswith("data: {"):
            try:
                json.loads(event.removeprefix("data: "))
            except json.JSONDecodeError:
                bad.append(event)
    assert len(bad) == 1 and sse(raw)[-1] == "data: [DONE]"
    status, _, body = await post(sim.base_url, request("t/malformed"))
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


async def test_hang_fault_holds_until_stop_and_stop_is_prompt(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{sim.base_url}/chat/completions"
        async with session.post(url, json=request("t/hang", True), headers=AUTH) as resp:
            assert resp.status == 200
            assert await resp.content.readexactly(25) == b": OPENROUTER PROCESSING\n\n"
            started = time.monotonic()
            await asyncio.to_thread(sim.stop)
            assert time.monotonic() - started < 1.0
            with pytest.raises((aiohttp.ClientPayloadError, asyncio.IncompleteReadError)):
                await resp.content.readexactly(1)
    assert sim.arrivals()[-1].fault == "hang"
    sim.stop()  # idempotent


async def test_openai_dialect_stream(sim: Simulator) -> None:
    _, headers, raw = await post(sim.openai_base_url, request(stream=True))
    assert "X-Generation-Id" not in headers and not raw.startswith(b":")
    first, *_, finish = chunks(raw)
    assert first["id"].startswith("chatcmpl-") and "provider" not in first
    assert all(c["usage"] is None for c in chunks(raw)) and sse(raw)[-1] == "data: [DONE]"
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop",
                                    "logprobs": None}  # fmt: skip
    opts = {"stream_options": {"include_usage": True}}
    _, _, raw = await post(sim.openai_base_url, request(stream=True, **opts))
    *_, finish, tail = chunks(raw)
    assert finish["usage"] is None and finish["choices"][0]["finish_reason"] == "stop"
    assert tail["choices"] == [] and "cost" not in tail["usage"]
    assert tail["usage"]["completion_tokens"] == len(content_of(raw).split())
    _, _, raw = await post(sim.openai_base_url, request())
    body = json.loads(raw)
    assert "cost" not in body["usage"] and "native_finish_reason" not in body["choices"][0]


@pytest.mark.parametrize(
    "field", ["provider", "models", "usage", "transforms", "route", "reasoning"]
)
async def test_openai_dialect_rejects_openrouter_fields(sim: Simulator, field: str) -> None:
    status, _, raw = await post(sim.openai_base_url, request(**{field: {}}))
    assert status == 400 and field in json.loads(raw)["error"]["message"]


async def test_openrouter_dialect_accepts_its_fields(sim: Simulator) -> None:
    extra = {
        "provider": {"sort": "price", "max_price": {"prompt": 1}},
        "models": ["t/plain"],
        "reasoning": {"effort": "low"},
        "usage": {"include": True},
        "stream_options": {"include_usage": True},
    }
    status, _, _ = await post(sim.base_url, request(stream=True, **extra))
    assert status == 200


async def test_arrivals_and_request_log(tmp_path: Path) -> None:
    log_path = tmp_path / "arrivals.jsonl"
    with Simulator(MODELS, request_log=log_path) as sim:
        before = time.monotonic()
        for i, model in enumerate(["t/plain", "t/rate_limit", "nope/missing"]):
            headers = {**AUTH, "X-Runner-Request-Id": f"req-{i}"}
            await post(sim.base_url, request(model, stream=i == 0), headers=headers)
        await post(sim.base_url, request(), headers={})
        arrivals = sim.arrivals()
        sim.clear_arrivals()
        assert sim.arrivals() == []
    assert [(a.request_id, a.status, a.fault, a.stream) for a in arrivals] == [
        ("req-0", 200, None, True),
        ("req-1", 429, "rate_limit", False),
        ("req-2", 404, None, False),
        (None, 401, None, False),
    ]
    assert all(a.t_monotonic >= before and a.t_unix > 1e9 for a in arrivals)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [line["request_id"] for line in lines] == ["req-0", "req-1", "req-2", None]
    assert lines[1] | {"t_monotonic": 0, "t_unix": 0} == {
        "t_monotonic": 0, "t_unix": 0, "model": "t/rate_limit", "stream": False, "status": 429,
        "fault": "rate_limit", "request_id": "req-1", "authorization_ok": True,
    }  # fmt: skip


async def test_openai_sdk_consumes_a_stream(sim: Simulator) -> None:
    async with AsyncOpenAI(api_key="sim", base_url=sim.openai_base_url, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="t/plain",
            messages=[{"role": "user", "content": "Say hello to the benchmark."}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
    assert usage is not None and usage.completion_tokens == len(pieces) > 0


async def test_openai_sdk_reads_openrouter_dialect(sim: Simulator) -> None:
    async with AsyncOpenAI(api_key="sim", base_url=sim.base_url, max_retries=0) as client:
        reply = await client.chat.completions.create(
            model="t/reasoner", messages=[{"role": "user", "content": "Hi"}], max_tokens=50
        )
    assert reply.usage is not None and reply.usage.completion_tokens == 50
    assert reply.choices[0].finish_reason == "length"


async def test_hundreds_of_concurrent_streams_without_noise(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> bytes:
            payload = request(stream=True, seed=i)
            url = f"{sim.base_url}/chat/completions"
            async with session.post(url, json=payload, headers=AUTH) as resp:
                return await resp.read()

        raws = await asyncio.gather(*(one(i) for i in range(300)))
    assert all(raw.endswith(b"data: [DONE]\n\n") for raw in raws)
    async with aiohttp.ClientSession() as session:  # a client that walks away mid-stream
        url = f"{sim.base_url}/chat/completions"
        async with session.post(url, json=request("t/slow", True), headers=AUTH) as resp:
            await resp.content.readline()
    sim.stop()
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]


@pytest.mark.parametrize(
    "kwargs", [{"error_rate": 1.5}, {"error_rate": 0.6, "hang_rate": 0.6}, {"error_statuses": ()}]
)
def test_faults_reject_impossible_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Faults"):
        Faults(**kwargs)


# --- structured outputs ---------------------------------------------------------------------

JUDGE = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "minimum": 1, "maximum": 5},
        "reason": {"type": "string", "minLength": 10, "maxLength": 40},
    },
    "required": ["score", "reason"],
    "additionalProperties": False,
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "judge": JUDGE,
    "kitchen_sink": {
        "type": "object",
        "properties": {
            "verdict": {"enum": ["pass", "fail"]},
            "stars": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 6},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.01},
            "ok": {"type": "boolean"},
            "nothing": {"type": "null"},
            "version": {"const": 2},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
                     "minItems": 2, "maxItems": 4},
            "either": {"anyOf": [{"type": "integer", "minimum": 100}, {"type": "string"}]},
            "one": {"oneOf": [{"type": "string", "minLength": 50}, {"type": "null"}]},
            "maybe": {"type": ["string", "null"]},
            "nested": {
                "type": "object",
                "properties": {"inner": {"type": "object", "properties": {
                    "deep": {"type": "array", "items": {"type": "integer", "minimum": -3,
                                                        "maximum": -1}}}}},
                "required": ["inner"],
                "additionalProperties": False,
            },
            "ignored": {"type": "string", "title": "T", "format": "no-such-format", "x-vendor": 1},
        },
        "required": ["verdict", "stars", "ratio", "ok", "nothing", "version", "tags", "either",
                     "one", "nested"],
        "additionalProperties": False,
    },
    "pydantic_refs": {  # what pydantic writes for a recursive model (Optional -> anyOf + null)
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                },
                "required": ["name", "children", "parent"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Node"}},
        "required": ["root"],
    },
    "draft4_bool_exclusive": {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 5, "exclusiveMinimum": True,
                             "maximum": 6}},
        "required": ["n"],
    },
    "bare_array": {"type": "array", "items": {"type": "number"}, "maxItems": 0},
}  # fmt: skip


def schema_format(schema: dict[str, Any], strict: bool | None = True) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema,
                                                   "strict": strict}}  # fmt: skip


def validate(document: object, schema: dict[str, Any]) -> None:
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    validator(schema).validate(document)


def message_of(raw: bytes) -> str:
    return str(json.loads(raw)["choices"][0]["message"]["content"])


@pytest.mark.parametrize("name", list(SCHEMAS))
@pytest.mark.parametrize("base", ["base_url", "openai_base_url"])
async def test_json_schema_reply_validates(sim: Simulator, name: str, base: str) -> None:
    schema = SCHEMAS[name]
    for seed in range(15):
        status, _, raw = await post(getattr(sim, base), request(
            seed=seed, response_format=schema_format(schema)))  # fmt: skip
        assert status == 200, raw
        validate(json.loads(message_of(raw)), schema)
        assert json.loads(raw)["choices"][0]["finish_reason"] == "stop"


async def test_json_reply_is_deterministic(sim: Simulator) -> None:
    async def reply(base_url: str, **kw: Any) -> str:
        fmt = schema_format(SCHEMAS["kitchen_sink"])
        return message_of((await post(base_url, request(response_format=fmt, **kw)))[2])

    same = await reply(sim.base_url)
    assert same == await reply(sim.base_url) == await reply(sim.openai_base_url)
    assert same != await reply(sim.base_url, seed=3)
    with Simulator(MODELS, seed=7) as again:
        assert same == await reply(again.base_url)


async def test_json_object_reply(sim: Simulator) -> None:
    _, _, raw = await post(sim.openai_base_url, request(response_format={"type": "json_object"}))
    answer = json.loads(message_of(raw))
    assert list(answer) == ["answer"] and len(answer["answer"].split()) >= 3
    _, _, text = await post(sim.base_url, request(response_format={"type": "text"}))
    assert message_of(text) == message_of((await post(sim.base_url, request()))[2])


@pytest.mark.parametrize("base", ["base_url", "openai_base_url"])
async def test_streamed_json_deltas_join_into_the_document(sim: Simulator, base: str) -> None:
    fmt = schema_format(SCHEMAS["kitchen_sink"])
    opts = {"stream_options": {"include_usage": True}}
    _, _, raw = await post(getattr(sim, base), request(stream=True, response_format=fmt, **opts))
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks(raw) if c["choices"]]
    pieces = [d for d in deltas if d]
    assert len(pieces) > 5 and all(p.strip() for p in pieces)
    validate(json.loads("".join(pieces)), SCHEMAS["kitchen_sink"])
    usage = chunks(raw)[-1]["usage"]
    assert usage["completion_tokens"] == len(pieces)
    _, _, whole = await post(getattr(sim, base), request(response_format=fmt))
    assert message_of(whole) == "".join(pieces)
    assert json.loads(whole)["usage"]["completion_tokens"] == len(pieces)


@pytest.mark.parametrize(("model", "cap"), [("t/plain", 1), ("t/plain", 3), ("t/reasoner", 4)])
async def test_json_is_packed_into_max_tokens_not_cut(sim: Simulator, model: str, cap: int) -> None:
    fmt = schema_format(SCHEMAS["kitchen_sink"])
    _, _, raw = await post(sim.base_url, request(model, True, response_format=fmt, max_tokens=cap))
    final = chunks(raw)[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    validate(json.loads(content_of(raw)), SCHEMAS["kitchen_sink"])
    deltas = [c["choices"][0]["delta"] for c in chunks(raw)[1:-1]]
    usage = final["usage"]
    assert usage["completion_tokens"] == len(deltas) == cap
    assert sum(1 for d in deltas if d.get("content")) >= 1
    assert usage["cost"] == pytest.approx(
        usage["prompt_tokens"] * (1e-7 if model == "t/plain" else 1e-6)
        + cap * (4e-7 if model == "t/plain" else 4e-6) + (0.001 if model == "t/plain" else 0)
    )
    _, _, whole = await post(sim.base_url, request(model, response_format=fmt, max_tokens=cap))
    assert json.loads(whole)["usage"]["completion_tokens"] == cap
    assert message_of(whole) == content_of(raw)


async def test_judge_score_is_spread_over_its_bounds(sim: Simulator) -> None:
    scores = []
    for seed in range(60):
        _, _, raw = await post(sim.base_url, request(seed=seed,
                                                     response_format=schema_format(JUDGE)))
        scores.append(json.loads(message_of(raw))["score"])
    assert all(1 <= s <= 5 for s in scores)
    assert min(scores) < 2 and max(scores) > 4 and len(set(scores)) > 30


async def test_openai_sdk_parses_a_structured_reply(sim: Simulator) -> None:
    class Verdict(pydantic.BaseModel):
        score: int = pydantic.Field(ge=0, le=10)
        reason: str

    async with AsyncOpenAI(api_key="sim", base_url=sim.openai_base_url, max_retries=0) as client:
        reply = await client.chat.completions.parse(
            model="t/plain", messages=[{"role": "user", "content": "Grade this."}],
            response_format=Verdict,
        )
    parsed = reply.choices[0].message.parsed
    assert parsed is not None and 0 <= parsed.score <= 10


@pytest.mark.parametrize(
    "response_format",
    [
        "json",
        {"type": "yaml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": JUDGE}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": JUDGE, "strict": "yes"}},
    ],
)
async def test_bad_response_format_is_400(sim: Simulator, response_format: object) -> None:
    status, _, raw = await post(sim.openai_base_url, request(response_format=response_format))
    assert status == 400 and "response_format" in json.loads(raw)["error"]["message"]


async def test_openai_dialect_accepts_response_format_but_not_openrouter_fields(
    sim: Simulator,
) -> None:
    fmt = schema_format(JUDGE, strict=None)
    status, _, _ = await post(sim.openai_base_url, request(response_format=fmt))
    assert status == 200
    status, _, raw = await post(sim.openai_base_url, request(response_format=fmt, provider={}))
    assert status == 400 and "provider" in json.loads(raw)["error"]["message"]


# --- the bill -------------------------------------------------------------------------------

SECRET = "sk-or-v1-TESTSECRET0123456789abcdef"
SECRET_AUTH = {"Authorization": f"Bearer {SECRET}", "X-Custom-Secret": "hdr-TESTSECRET-42"}


def price(model: SimModel, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * model.prompt_usd_per_token
            + completion_tokens * model.completion_usd_per_token + model.request_usd)


def natural_tokens(model: str, seed: object = None) -> int:
    """How many tokens the simulator (seed 7) generates for `request(model, seed=seed)`."""
    return generate(sim_seed=7, model_id=model, messages=request()["messages"],
                    request_seed=seed, reasoning=False, cap_tokens=4096).completion_tokens


async def charges_once(sim: Simulator, n: int) -> list[Charge]:
    """The bill once it holds `n` charges (a cut request is billed when the server notices)."""
    deadline = time.monotonic() + 10
    while len(sim.bill()) < n:
        assert time.monotonic() < deadline, f"bill: {sim.bill()}"
        await asyncio.sleep(0.01)
    return sim.bill()


async def test_bill_prices_every_request_like_its_usage_and_survives_in_a_file(
        tmp_path: Path) -> None:
    path = tmp_path / "bill.jsonl"
    with Simulator(MODELS, seed=7, bill=path) as sim:
        _, _, body = await post(sim.base_url, request())
        _, _, streamed = await post(sim.base_url, request(stream=True, seed=3))
        await post(sim.base_url, request("t/rate_limit"))
        async with (aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{sim.port}/_sim/bill") as resp):
            served = await resp.json()
        bill = sim.bill()
        assert sim.billed_usd() == pytest.approx(total_usd(bill))
    usages = [json.loads(body)["usage"], chunks(streamed)[-1]["usage"]]
    assert [(c.outcome, c.cost_usd) for c in bill[:2]] == [
        ("complete", pytest.approx(u["cost"])) for u in usages]
    assert [c.completion_tokens for c in bill[:2]] == [u["completion_tokens"] for u in usages]
    assert (bill[2].outcome, bill[2].status, bill[2].cost_usd) == ("free", 429, 0.0)
    assert served["requests"] == 3 and served["total_usd"] == pytest.approx(total_usd(bill))
    assert read_bill(path) == served["charges"]


async def test_a_stream_cut_by_the_client_is_billed_for_the_tokens_sent(sim: Simulator) -> None:
    total = natural_tokens("t/crawl", seed=27)  # 185 tokens: 3.7 s at 50 tokens/s
    received = 0
    async with aiohttp.ClientSession() as session:
        url = f"{sim.base_url}/chat/completions"
        payload = request("t/crawl", stream=True, seed=27)
        async with session.post(url, json=payload, headers=AUTH) as resp:
            async for line in resp.content:
                received += line.startswith(b"data: {") and b'"content":""' not in line
                if received == 3:
                    break  # the client walks away after three tokens
    cut = (await charges_once(sim, 1))[0]
    assert cut.outcome == "cut" and received <= cut.completion_tokens < total
    assert cut.cost_usd == pytest.approx(price(CRAWL, cut.prompt_tokens, cut.completion_tokens))


async def test_a_stream_the_server_breaks_is_billed_for_what_it_sent(sim: Simulator) -> None:
    received = await _read_until_cut(sim)
    charge = (await charges_once(sim, 1))[0]
    assert charge.outcome == "cut" and charge.fault == "disconnect"
    assert charge.completion_tokens == len(content_of(received).split()) > 0


async def test_a_hung_request_is_billed_when_it_is_cut(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{sim.base_url}/chat/completions"
        async with session.post(url, json=request("t/hang", True), headers=AUTH) as resp:
            await resp.content.readexactly(25)
    charge = (await charges_once(sim, 1))[0]
    # a zero-latency model has generated everything by the time it is cut
    assert charge.outcome == "cut" and charge.fault == "hang"
    assert charge.completion_tokens == natural_tokens("t/hang") > 0


@pytest.mark.parametrize("model", ["t/rate_limit", "t/error", "t/echo_error", "t/gzip_bomb",
                                   "t/redirect", "t/long_retry_after", "t/error_body",
                                   "nope/missing"])
async def test_errors_before_generation_are_free(sim: Simulator, model: str) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{sim.base_url}/chat/completions"
        async with session.post(url, json=request(model), headers=AUTH,
                                allow_redirects=False) as resp:
            assert resp.status >= 300 or model == "t/error_body"
    assert [(c.outcome, c.cost_usd) for c in await charges_once(sim, 1)] == [("free", 0.0)]


async def test_an_endless_stream_is_billed_at_most_its_cap(sim: Simulator) -> None:
    events = 0
    async with aiohttp.ClientSession() as session:
        url = f"{sim.base_url}/chat/completions"
        payload = request("t/endless_stream", stream=True, max_tokens=5)
        async with session.post(url, json=payload, headers=AUTH) as resp:
            async for line in resp.content:
                events += line.startswith(b"data: ")
                if events == 500:
                    break
    charge = (await charges_once(sim, 1))[0]
    assert (charge.outcome, charge.completion_tokens) == ("cut", 5)


# --- hostile faults -------------------------------------------------------------------------


async def test_echo_error_leaks_every_header_into_the_error(sim: Simulator) -> None:
    status, _, raw = await post(sim.base_url, request("t/echo_error"), headers=SECRET_AUTH)
    error = json.loads(raw)["error"]
    assert status == 500 and SECRET in error["message"] and "hdr-TESTSECRET-42" in raw.decode()
    assert SECRET in error["metadata"]["raw"]


@pytest.mark.parametrize("stream", [False, True])
async def test_echo_text_leaks_headers_into_the_completion_split_across_deltas(
        sim: Simulator, stream: bool) -> None:
    _, _, raw = await post(sim.base_url, request("t/echo_text", stream), headers=SECRET_AUTH)
    text = content_of(raw) if stream else message_of(raw)
    assert SECRET in text and "hdr-TESTSECRET-42" in text
    if stream:
        assert not any(SECRET in c["choices"][0]["delta"].get("content", "") for c in chunks(raw))


async def test_odd_shapes_are_valid_json_of_every_unexpected_shape(sim: Simulator) -> None:
    seen: set[str] = set()
    for i in range(40):
        _, _, raw = await post(sim.base_url, request("t/odd_shape", stream=bool(i % 2)))
        body = chunks(raw)[-1] if i % 2 else json.loads(raw)
        usage = body.get("usage")
        seen |= {name for name, odd in [
            ("usage_list", isinstance(usage, list)), ("usage_string", isinstance(usage, str)),
            ("choices_dict", isinstance(body["choices"], dict)),
            ("id_int", isinstance(body["id"], int)),
            ("counts_strings", isinstance(usage, dict)
             and isinstance(usage["completion_tokens"], str))] if odd}
    assert seen == {"usage_list", "usage_string", "choices_dict", "id_int", "counts_strings"}


async def test_usage_lies_are_lies_the_bill_does_not_tell(sim: Simulator) -> None:
    _, _, negative = await post(sim.base_url, request("t/negative_cost"))
    _, _, over = await post(sim.base_url, request("t/overbill", stream=True))
    lie, inflated = json.loads(negative)["usage"], chunks(over)[-1]["usage"]
    assert lie["cost"] < 0 and lie["completion_tokens"] < 0 and lie["prompt_tokens"] < 0
    first, second = await charges_once(sim, 2)
    assert first.cost_usd > 0 and inflated["cost"] == pytest.approx(50 * second.cost_usd)


async def test_gzip_bomb_inflates_far_beyond_what_was_sent(sim: Simulator) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        url = f"{sim.base_url}/chat/completions"
        async with session.post(url, json=request("t/gzip_bomb"), headers=AUTH) as resp:
            assert resp.status == 502 and resp.headers["Content-Encoding"] == "gzip"
            packed = await resp.read()
    inflated = gzip.decompress(packed)
    assert len(packed) < 64 * 1024 and len(inflated) == 4 << 20
    assert json.loads(inflated)["error"]["code"] == 502


async def test_redirect_points_at_another_origin_which_notes_credentials(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{sim.base_url}/chat/completions"
        async with session.post(url, json=request("t/redirect"), headers=SECRET_AUTH,
                                allow_redirects=False) as resp:
            location = resp.headers["Location"]
            assert resp.status == 307
        assert location == f"http://localhost:{sim.port}/_sim/elsewhere/api/v1/chat/completions"
        for headers in (SECRET_AUTH, {"Content-Type": "application/json"}):
            async with session.post(location, json=request(), headers=headers) as resp:
                assert resp.status == 400 and (SECRET in await resp.text()) == (
                    headers is SECRET_AUTH)
    outcomes = [c.outcome for c in await charges_once(sim, 3)]
    assert outcomes == ["free", "redirect_target_credentials", "redirect_target"]


async def test_json_answer_to_a_streaming_request(sim: Simulator) -> None:
    _, headers, raw = await post(sim.base_url, request("t/json_to_stream", stream=True))
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(raw)["object"] == "chat.completion"
    assert (await charges_once(sim, 1))[0].outcome == "complete"


async def test_long_retry_after_is_a_day(sim: Simulator) -> None:
    status, headers, _ = await post(sim.base_url, request("t/long_retry_after"))
    assert status == 429 and headers["Retry-After"] == "86400"


def test_simulate_has_a_flag_for_every_fault_and_refuses_rates_over_one(
        capsys: pytest.CaptureFixture[str]) -> None:
    from runner import cli

    assert cli._FAULT_NAMES == FAULT_NAMES
    assert cli.main(["simulate", "--port", "0", "--all-faults", "0.1"]) == 2
    assert "rates must sum to at most 1" in capsys.readouterr().err


def test_job_files_set_every_fault_per_model_and_refuse_rates_over_one(write_job) -> None:  # type: ignore[no-untyped-def]
    import runner
    from runner.errors import JobFileError
    from runner.providers import simulated_models

    rates = ", ".join(f"{name}_rate: 0.05" for name in FAULT_NAMES)
    job = runner.load_job(write_job(f"""
        name: hostile
        provider: simulated
        simulator: {{models: [{{id: sim/fast-mini, faults: {{{rates}, overbill_factor: 7}}}}]}}
        models: [sim/fast-mini]
        prompts: [hi]
    """))
    model = {m.id: m for m in simulated_models(job.simulator)}["sim/fast-mini"]  # type: ignore[attr-defined]
    assert model.faults.rates() == (0.05,) * len(FAULT_NAMES)
    assert model.faults.overbill_factor == 7
    doubled = rates.replace("0.05", "0.1")
    with pytest.raises(JobFileError, match=r"simulator.models\[0\].*sum to at most 1"):
        runner.load_job(write_job(f"""
            name: hostile
            provider: simulated
            simulator: {{models: [{{id: sim/fast-mini, faults: {{{doubled}}}}}]}}
            models: [sim/fast-mini]
            prompts: [hi]
        """))


@pytest.mark.parametrize("base", ["base_url", "openai_base_url"])
async def test_every_fault_in_both_dialects_gets_one_charge_and_no_server_error(
        sim: Simulator, base: str, caplog: pytest.LogCaptureFixture) -> None:
    names = [n for n in FAULTS if n not in ("hang", "endless_stream")]
    async with aiohttp.ClientSession() as session:
        for name in names:
            for stream in (False, True):
                url = f"{getattr(sim, base)}/chat/completions"
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.post(url, json=request(f"t/{name}", stream),
                                            headers=AUTH, allow_redirects=False) as resp:
                        await resp.read()
    bill = await charges_once(sim, 2 * len(names))
    assert len(bill) == 2 * len(names) and all(c.cost_usd >= 0 for c in bill)
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
