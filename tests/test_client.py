"""The client parses what OpenRouter and OpenAI-style servers really send (verbatim captures,
served over real loopback HTTP)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from runner.client import Attempt, Endpoint, build_body, classify_status, retry_after_s
from runner.config import Provider, load_job
from runner.plan import Plan
from runner.pricing import price_from_entry

SSE = {"Content-Type": "text/event-stream"}
JSON = {"Content-Type": "application/json"}


def _provider(openrouter: bool = True) -> Provider:
    return Provider("test", "http://unused", None, {}, openrouter, True)


async def _send(canned, request_, status, headers, body, *, stream=True):  # type: ignore[no-untyped-def]
    url = await canned((status, headers, body))
    if not stream:
        request_ = replace(request_, params={**request_.params, "stream": False})
    async with Endpoint(_provider(), url, "sk-or-v1-secret", connections=2) as endpoint:
        return await endpoint.send(request_, timeout_s=5, stall_timeout_s=5)


async def test_nonstream_capture(canned, request_, captures: Path) -> None:  # type: ignore[no-untyped-def]
    body = (captures / "nonstream-response.json").read_bytes()
    attempt = await _send(canned, request_, 200, JSON, body, stream=False)
    assert attempt.ok
    assert (attempt.prompt_tokens, attempt.completion_tokens) == (32, 45)
    assert attempt.cached_tokens == 4 and attempt.reasoning_tokens == 0
    assert attempt.cost_usd == 0.0
    assert attempt.upstream == "Xiaomi"
    assert attempt.model_served == "xiaomi/mimo-v2-flash:free"
    assert attempt.finish_reason == "stop" and attempt.native_finish_reason == "stop"
    assert attempt.generation_id == "gen-1768598902-c6b7oNEA4LEwLeeN30Jq"
    assert attempt.text.startswith("```cpp")


async def test_openrouter_final_chunk_capture(canned, request_, captures: Path) -> None:  # type: ignore[no-untyped-def]
    body = b": OPENROUTER PROCESSING\n\n" + (captures / "stream-final-chunk.txt").read_bytes()
    attempt = await _send(canned, request_, 200, SSE, body)
    assert attempt.ok
    assert (attempt.prompt_tokens, attempt.completion_tokens) == (7, 96)
    assert attempt.cost_usd == pytest.approx(0.0002915)
    assert attempt.upstream == "Google"
    assert attempt.finish_reason == "length" and attempt.native_finish_reason == "MAX_TOKENS"
    assert attempt.model_served == "google/gemini-3-flash-preview-20251217"


async def test_openai_usage_tail_with_empty_choices(canned, request_, captures: Path) -> None:  # type: ignore[no-untyped-def]
    first = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                          "finish_reason": None}]}
    body = f"data: {json.dumps(first)}\n\n".encode() + \
        (captures / "openai-stream-usage-tail.txt").read_bytes()
    attempt = await _send(canned, request_, 200, SSE, body)
    assert attempt.ok and attempt.text == "Hi"
    assert (attempt.prompt_tokens, attempt.completion_tokens) == (14, 3)
    assert attempt.cost_usd is None  # OpenAI sends no cost: the engine prices it instead
    assert attempt.finish_reason == "stop"
    assert attempt.ttft_s is not None


async def test_402_capture(canned, request_, captures: Path) -> None:  # type: ignore[no-untyped-def]
    body = (captures / "402-insufficient-credits.json").read_bytes()
    attempt = await _send(canned, request_, 402, JSON, body)
    assert not attempt.ok and attempt.error_type == "insufficient_credits"
    assert attempt.http_status == 402
    assert "more credits" in (attempt.error_message or "")


async def test_429_capture_gives_retry_hint(canned, request_, captures: Path) -> None:  # type: ignore[no-untyped-def]
    payload = json.loads((captures / "429-rate-limit.json").read_text())
    reset_ms = int((time.time() + 30) * 1000)
    payload["error"]["metadata"]["headers"]["X-RateLimit-Reset"] = str(reset_ms)
    attempt = await _send(canned, request_, 429, JSON, json.dumps(payload).encode())
    assert attempt.error_type == "rate_limited" and attempt.http_status == 429
    assert attempt.retry_after_s == pytest.approx(30, abs=2)


async def test_in_stream_error_chunk(canned, request_) -> None:  # type: ignore[no-untyped-def]
    ok = {"id": "gen-1", "choices": [{"index": 0, "delta": {"content": "par"}}]}
    err = {"id": "gen-1", "error": {"code": 502, "message": "upstream died"},
           "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}
    body = f"data: {json.dumps(ok)}\n\ndata: {json.dumps(err)}\n\n".encode()
    attempt = await _send(canned, request_, 200, SSE, body)
    assert not attempt.ok and attempt.error_type == "stream_error"
    assert attempt.http_status == 200 and attempt.error_message == "upstream died (code 502)"
    assert attempt.text == "par"  # partial output is kept for inspection


async def test_error_in_200_body(canned, request_) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({"error": {"code": 503, "message": "no provider"}}).encode()
    attempt = await _send(canned, request_, 200, JSON, body, stream=False)
    assert attempt.error_type == "error_body" and attempt.error_message == "no provider (code 503)"


async def test_malformed_chunk_and_missing_done(canned, request_) -> None:  # type: ignore[no-untyped-def]
    attempt = await _send(canned, request_, 200, SSE, b"data: {not json\n\n")
    assert attempt.error_type == "malformed"
    ok = {"id": "gen-1", "choices": [{"index": 0, "delta": {"content": "cut"}}]}
    attempt = await _send(canned, request_, 200, SSE, f"data: {json.dumps(ok)}\n\n".encode())
    assert attempt.error_type == "disconnect" and attempt.text == "cut"


async def test_availability_error_without_code(canned, request_) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({"message": "model temporarily unavailable"}).encode()
    attempt = await _send(canned, request_, 503, JSON, body)
    assert attempt.error_type == "unavailable"
    assert attempt.error_message == "model temporarily unavailable"


def test_models_entry_capture_prices(captures: Path) -> None:
    price = price_from_entry(json.loads((captures / "models-entry.json").read_text()))
    assert price is not None
    assert price.prompt_usd_per_token == pytest.approx(0.00000015)
    assert price.completion_usd_per_token == pytest.approx(0.0000006)
    assert price.max_completion_tokens == 16384
    assert price.cost_usd(1000, 100) == pytest.approx(0.00015 + 0.00006)


@pytest.mark.parametrize(("status", "kind"), [
    (400, "bad_request"), (401, "auth"), (402, "insufficient_credits"), (403, "forbidden"),
    (404, "not_found"), (408, "timeout"), (413, "payload_too_large"), (422, "unprocessable"),
    (429, "rate_limited"), (500, "server_error"), (502, "bad_gateway"), (503, "unavailable"),
    (524, "upstream_timeout"), (529, "overloaded"), (418, "http_418"),
])
def test_status_classes(status: int, kind: str) -> None:
    assert classify_status(status) == kind


@pytest.mark.parametrize(("headers", "metadata", "expected"), [
    ({"Retry-After": "7"}, {}, 7.0),
    ({"X-RateLimit-Reset": str(int((1000 + 12) * 1000))}, {}, 12.0),
    ({}, {"retry_after_seconds": 3}, 3.0),
    ({}, {"headers": {"X-RateLimit-Reset": str((1000 + 5) * 1000)}}, 5.0),
    ({"Retry-After": "2"}, {"retry_after_seconds": 9}, 9.0),
    ({}, {}, None),
    # X-RateLimit-Reset as epoch seconds or as seconds from now, not only epoch milliseconds
    ({"X-RateLimit-Reset": str(1000 + 86400)}, {}, 86400.0),
    ({"X-RateLimit-Reset": "30"}, {}, 30.0),
    ({}, {"headers": {"X-RateLimit-Reset": 1000 + 7200}}, 7200.0),
    # odd hints never crash and never mean "wait forever"
    ({"Retry-After": "inf"}, {"headers": {"X-RateLimit-Reset": [1]}}, None),
    ({"Retry-After": "1e999"}, {"retry_after_seconds": True}, None),
])
def test_retry_hints(headers: dict[str, str], metadata: dict[str, object],
                     expected: float | None) -> None:
    assert retry_after_s(headers, metadata, now_unix=1000.0) == expected


def test_body_respects_dialect(write_job) -> None:  # type: ignore[no-untyped-def]
    job = load_job(write_job("""
        name: t
        providers:
          vllm: {base_url: "http://localhost:8000/v1", stream_usage: true}
        models:
          - {id: m, provider: vllm}
          - {id: openai/gpt-4o-mini, extra_body: {provider: {sort: price}}}
        prompts: ["hi"]
        params: {max_tokens: 8, temperature: 0}
    """))
    plan = Plan(job)
    vllm = json.loads(build_body(job.providers["vllm"], plan[0], True))
    assert vllm["stream_options"] == {"include_usage": True}
    assert "provider" not in vllm and vllm["max_tokens"] == 8 and vllm["temperature"] == 0
    router = json.loads(build_body(job.providers["openrouter"], plan[1], True))
    assert router["provider"] == {"sort": "price"}



class _Blocks:
    """The part of a `transport.Response` the stream parser uses: `read_any()`, scripted."""

    def __init__(self, blocks: list[bytes]) -> None:
        self._blocks = blocks

    async def read_any(self) -> bytes:
        return self._blocks.pop(0) if self._blocks else b""


async def test_events_split_anywhere_across_reads() -> None:
    first = {"id": "gen-1", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hé"}}]}
    last = {"id": "gen-1", "choices": [{"index": 0, "delta": {"content": "!"},
                                        "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "cost": 0.5}}
    wire = (b": OPENROUTER PROCESSING\r\n\r\n"
            + f"data: {json.dumps(first, ensure_ascii=False)}\r\n\r\n".encode()
            + f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
    # cut lines anywhere: mid-"\r\n", mid-"data:", inside the two UTF-8 bytes of "é"
    for size in (1, 2, 7, 64, len(wire)):
        blocks = [wire[i:i + size] for i in range(0, len(wire), size)]
        response = _Blocks(blocks)
        attempt = Attempt()
        async with Endpoint(_provider(), "http://127.0.0.1:9/api/v1", "k", connections=1) as ep:
            await ep._read_stream(response, attempt, 0.0)  # type: ignore[arg-type]
        assert attempt.ok, (size, attempt.error_message)
        assert attempt.text == "Hé!" and attempt.cost_usd == 0.5 and attempt.ttft_s is not None
        assert (attempt.finish_reason, attempt.generation_id) == ("stop", "gen-1")
