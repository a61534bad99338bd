"""A server that lies: echoed credentials, odd shapes, negative costs, endless streams, gzip bombs,
redirects, JSON where a stream was asked for, broken `/models`. Each lie ends as one row (or a
one-line warning), never a crash, a hang, a secret in a file, or money credited back.

The server is real aiohttp on loopback; what it does depends on the model id it is asked for.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import struct
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import anyio
import pandas as pd
import pytest
from aiohttp import web

from runner.client import Endpoint
from runner.config import Provider, load_job
from runner.engine import run_job
from runner.errors import ProviderError
from runner.redact import Redactor

ROOT = Path(__file__).resolve().parents[1]

KEY = "sk-or-v1-TESTSECRET0123456789abcdef"            # the provider's API key
HEADER = 'TESTSECRET/hdr"9876+5432 =x'                  # a custom credential header value
OTHER = "sk-other-TESTSECRET-provider-b-0001"           # another provider's key in the job
SECRETS = (KEY, HEADER, OTHER)


def _echo(request: web.Request) -> str:
    """Everything a careless server might repeat back: headers raw, JSON-dumped, URL-encoded."""
    headers = dict(request.headers)
    return (f"bearer={request.headers['Authorization']} auth={quote(HEADER)} "
            f"plus={quote_plus(HEADER)} other={OTHER} you sent {json.dumps(headers)} {headers}")


def _completion(content: Any = "fine", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "gen-1", "model": "m", "provider": "P",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "cost": 0.0001},
    }
    body.update(changes)
    return body


def _chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    chunk = {"id": "gen-1", "model": "m",
             "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}
    chunk.update(extra)
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


_BOMBS: dict[bytes, bytes] = {}
BOMB_BYTES = 256 * 1024 * 1024


def _bomb(fill: bytes) -> bytes:
    """`BOMB_BYTES` of `fill` as a valid gzip body of a few hundred KB: one deflated MB, made
    position-independent by a full flush, repeated."""
    if fill not in _BOMBS:
        block = fill * (1024 * 1024 // len(fill))
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        unit = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
        repeats = BOMB_BYTES // len(block)
        crc = 0
        for _ in range(repeats):
            crc = zlib.crc32(block, crc)
        _BOMBS[fill] = (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + unit * repeats
                        + packer.flush() + struct.pack("<II", crc, (len(block) * repeats)
                                                       & 0xFFFFFFFF))
    return _BOMBS[fill]


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(),
                        content_type="application/json")


async def _sse(request: web.Request, *events: bytes, done: bool = True) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in events:
        await resp.write(event)
    if done:
        await resp.write(b"data: [DONE]\n\n")
    return resp


async def _endless(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    event = _chunk("x" * 200)
    try:
        while True:
            await resp.write(event * 50)
    except (ConnectionError, RuntimeError):
        pass  # the client hung up: that is the point
    return resp


@dataclass
class Hostile:
    """The lying server: `url` to point a provider at; `received` counts what reached it."""

    url: str = ""
    other_url: str = ""                       # a second server a redirect points to
    received: list[str] = field(default_factory=list)
    other_received: list[str] = field(default_factory=list)
    models_reply: str = "ok"                  # how GET /models answers
    release: anyio.Event = field(default_factory=anyio.Event)


Behaviour = Callable[[web.Request, Hostile], Awaitable[web.StreamResponse]]


async def _redirect(request: web.Request, h: Hostile) -> web.StreamResponse:
    return web.Response(status=307, headers={"Location": f"{h.other_url}/chat/completions"})


BEHAVIOURS: dict[str, Behaviour] = {
    # echoed credentials
    "echo-error": lambda r, h: _async(_json({"error": {"code": 400, "message": _echo(r)}}, 400)),
    "echo-plain": lambda r, h: _async(web.Response(status=500, text=_echo(r))),
    "echo-body": lambda r, h: _async(_json(_completion(
        _echo(r), id=KEY, model=f"Bearer {KEY}", provider=HEADER))),
    "echo-stream": lambda r, h: _sse(
        r, _chunk(KEY[:10], id=f"gen-{KEY}", model=OTHER, provider=HEADER),
        _chunk(KEY[10:] + " " + _echo(r)),   # a key cut across two chunks
        _chunk(None, "stop", native_finish_reason=f"Bearer {KEY}",
               usage={"prompt_tokens": 1, "completion_tokens": 2, "cost": 0.0001})),
    # a key where a message is clipped before redaction; parts and base64 of the secrets
    "echo-at-the-cut": lambda r, h: _async(web.Response(
        text="data: not json " + "x" * 160 + KEY + " " + HEADER,
        content_type="text/plain")),
    "echo-parts": lambda r, h: _async(_json({"error": {"message": (
        f"key ...{KEY[9:]}, {KEY[:-6]}..., {HEADER[4:]}; basic "
        f"{base64.b64encode(f'user:{KEY}'.encode()).decode()} "
        f"{base64.b64encode(r.headers['Authorization'].encode()).decode()} "
        f"{base64.urlsafe_b64encode(HEADER.encode()).decode()}")}}, 400)),
    "echo-stream-error": lambda r, h: _sse(
        r, _chunk("par"), b"data: " + json.dumps({"error": {"message": _echo(r)}}).encode()
        + b"\n\n", done=False),
    # odd shapes
    "usage-list": lambda r, h: _async(_json(_completion(usage=[1, 2]))),
    "usage-string": lambda r, h: _sse(r, _chunk("a"), _chunk(None, "stop", usage="lots")),
    "choices-dict": lambda r, h: _async(_json(_completion(choices={"0": {"message": {}}}))),
    "message-string": lambda r, h: _async(_json(_completion(
        choices=[{"index": 0, "message": "hello", "finish_reason": "stop"}]))),
    "content-int": lambda r, h: _async(_json(_completion(42))),
    "delta-list": lambda r, h: _sse(r, b'data: {"choices": [{"delta": [1]}]}\n\n'),
    "id-int": lambda r, h: _async(_json(_completion(id=12345, model=7))),
    "tokens-odd": lambda r, h: _async(_json(_completion(usage={
        "prompt_tokens": "12", "completion_tokens": -5, "cost": 0.0001,
        "completion_tokens_details": {"reasoning_tokens": True},
        "prompt_tokens_details": {"cached_tokens": 10**20}}))),
    "error-int": lambda r, h: _async(_json({"error": 7})),
    "error-list-chunk": lambda r, h: _sse(r, _chunk("a"), b'data: {"error": ["x", 1]}\n\n'),
    "error-null-chunk": lambda r, h: _sse(r, _chunk("a", error=None), _chunk(None, "stop")),
    "chunk-list": lambda r, h: _sse(r, b"data: [1, 2]\n\n"),
    "chunk-number": lambda r, h: _sse(r, b"data: 42\n\n"),
    "negative-cost": lambda r, h: _async(_json(_completion(usage={
        "prompt_tokens": -3, "completion_tokens": 2, "cost": -10.0}))),
    "string-cost": lambda r, h: _sse(r, _chunk("a", "stop", usage={
        "prompt_tokens": 3, "completion_tokens": 2, "cost": "-1"})),
    # resources
    "endless": lambda r, h: _endless(r),
    "bomb-body": lambda r, h: _async(web.Response(body=_bomb(b"{"), headers={
        "Content-Encoding": "gzip", "Content-Type": "application/json"})),
    "bomb-error": lambda r, h: _async(web.Response(status=500, body=_bomb(b"A"), headers={
        "Content-Encoding": "gzip", "Content-Type": "text/plain"})),
    "bomb-stream": lambda r, h: _async(web.Response(body=_bomb(b"data: {}\n\n"), headers={
        "Content-Encoding": "gzip", "Content-Type": "text/event-stream"})),
    # redirects, JSON for a stream
    "redirect": _redirect,
    "json-for-stream": lambda r, h: _async(_json(_completion("whole"))),
    "sse-for-json": lambda r, h: _sse(r, _chunk("who"), _chunk("le", "stop", usage={
        "prompt_tokens": 3, "completion_tokens": 2, "cost": 0.0001})),
    "sse-as-json": lambda r, h: _async(web.Response(
        body=_chunk("who") + _chunk("le", "stop", usage={"prompt_tokens": 3,
                                                         "completion_tokens": 2, "cost": 0.0001})
        + b"data: [DONE]\n\n", content_type="application/json")),
    "json-as-sse": lambda r, h: _async(web.Response(
        body=json.dumps(_completion("whole")).encode(),
        headers={"Content-Type": "text/event-stream"})),
}
STREAMED = {"echo-stream", "echo-stream-error", "usage-string", "delta-list", "error-list-chunk",
            "error-null-chunk",
            "chunk-list", "chunk-number", "string-cost", "endless", "bomb-stream",
            "json-for-stream", "json-as-sse", "sse-as-json"}


async def _async(response: web.StreamResponse) -> web.StreamResponse:
    return response


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1"


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    state = Hostile()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.received.append(body["model"])
        return await BEHAVIOURS[body["model"]](request, state)

    async def models(request: web.Request) -> web.StreamResponse:
        kind = state.models_reply
        if kind == "html":
            return web.Response(text="<html><body>Welcome to nginx!</body></html>",
                                content_type="text/html")
        if kind == "no-data":
            return _json({"models": ["a"]})
        if kind == "data-dict":
            return _json({"data": {"id": "a"}})
        if kind == "text":
            return web.Response(text="not json at all")
        if kind == "status":
            return web.Response(status=418, text="teapot")
        if kind == "redirect":
            return web.Response(status=302, headers={"Location": f"{state.other_url}/models"})
        if kind == "hang-up":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if kind == "hang":
            await state.release.wait()
            return _json({"data": []})
        if kind == "odd-entries":
            return _json({"data": [
                {"id": "good", "pricing": {"prompt": "0.000001", "completion": "0.000002"}},
                {"id": 5}, "text", None,
                {"id": "nan", "pricing": {"prompt": "NaN", "completion": "Infinity"}},
                {"id": "weird", "pricing": [1], "top_provider": "x", "context_length": "big"},
                {"id": "neg", "pricing": {"prompt": "-1", "completion": "-1"},
                 "top_provider": {"max_completion_tokens": -4}}]})
        return _json({"data": [{"id": name} for name in BEHAVIOURS]})

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        state.other_received.append(f"{request.method} {request.path} {dict(request.headers)}"
                                    f" {await request.text()}")
        return _json(_completion("stolen"))

    app = web.Application()
    app.router.add_post("/api/v1/chat/completions", chat)
    app.router.add_get("/api/v1/models", models)
    other = web.Application()
    other.router.add_route("*", "/{tail:.*}", elsewhere)
    runner, state.url = await _serve(app)
    other_runner, state.other_url = await _serve(other)
    yield state
    state.release.set()
    await runner.cleanup()
    await other_runner.cleanup()


def _provider(url: str) -> Provider:
    return Provider("hostile", url, "HOSTILE_KEY", {"X-Api-Key": HEADER, "X-Title": "t"},
                    False, True)


async def _send(hostile: Hostile, request_: Any, behaviour: str, **bounds: Any) -> Any:
    model = dc_replace(request_.model, id=behaviour)
    request = dc_replace(request_, model=model,
                         params={**request_.params, "stream": behaviour in STREAMED})
    async with Endpoint(_provider(hostile.url), hostile.url, KEY, connections=2,
                        redactor=Redactor(SECRETS)) as endpoint:
        return await endpoint.send(request, timeout_s=60, stall_timeout_s=60, **bounds)


def _assert_clean(text: str, where: str = "") -> None:
    for secret in SECRETS:
        for form in {secret, json.dumps(secret)[1:-1], quote(secret, safe=""),
                     quote_plus(secret, safe=""), KEY[:24], HEADER[:20], secret[-16:],
                     base64.b64encode(secret.encode()).decode()[4:20]}:
            assert form not in text, f"{form!r} leaked {where}: ...{text[:400]}"


def _strings(attempt: Any) -> str:
    return "\n".join(str(getattr(attempt, name)) for name in (
        "error_message", "text", "model_served", "upstream", "generation_id", "finish_reason",
        "native_finish_reason"))


@pytest.mark.parametrize("behaviour", ["echo-error", "echo-plain", "echo-body", "echo-stream",
                                       "echo-stream-error", "echo-at-the-cut", "echo-parts"])
async def test_echoed_credentials_are_redacted(hostile: Hostile, request_: Any,
                                               behaviour: str) -> None:
    attempt = await _send(hostile, request_, behaviour)
    assert attempt.error_type != "client_error"
    assert attempt.text or attempt.error_message
    _assert_clean(_strings(attempt), behaviour)


async def test_the_key_cut_across_chunks_is_still_redacted(hostile: Hostile,
                                                           request_: Any) -> None:
    attempt = await _send(hostile, request_, "echo-stream")
    assert attempt.ok and "***" in attempt.text and "***" in (attempt.model_served or "")


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("usage-list", "usage"), ("usage-string", "usage"), ("choices-dict", "choices"),
    ("message-string", "message"), ("content-int", "content"), ("delta-list", "delta"),
    ("chunk-list", "list"), ("chunk-number", "number"),
])
async def test_odd_shapes_are_malformed_rows(hostile: Hostile, request_: Any, behaviour: str,
                                             reason: str) -> None:
    attempt = await _send(hostile, request_, behaviour)
    assert not attempt.ok and attempt.error_type == "malformed"
    assert reason in (attempt.error_message or "")


@pytest.mark.parametrize(("behaviour", "error_type"), [
    ("error-int", "error_body"), ("error-list-chunk", "stream_error"), ("error-null-chunk", None),
])
async def test_errors_of_any_type_are_error_rows(hostile: Hostile, request_: Any,
                                                 behaviour: str, error_type: str | None) -> None:
    attempt = await _send(hostile, request_, behaviour)
    assert attempt.error_type == error_type
    assert attempt.ok == (error_type is None) and attempt.ok != bool(attempt.error_message)


async def test_harmless_oddities_are_converted(hostile: Hostile, request_: Any) -> None:
    attempt = await _send(hostile, request_, "id-int")
    assert attempt.ok
    assert (attempt.generation_id, attempt.model_served) == ("12345", "7")
    attempt = await _send(hostile, request_, "tokens-odd")
    assert attempt.ok
    assert attempt.completion_tokens is None          # negative: unknown
    assert attempt.reasoning_tokens is None           # a bool is not a count
    for count in (attempt.prompt_tokens, attempt.cached_tokens):
        assert count is None or (type(count) is int and count >= 0)


@pytest.mark.parametrize("behaviour", ["negative-cost", "string-cost"])
async def test_unusable_costs_are_unknown_never_negative(hostile: Hostile, request_: Any,
                                                         behaviour: str) -> None:
    from runner.pricing import Price
    from runner.rows import attempt_cost

    attempt = await _send(hostile, request_, behaviour)
    assert attempt.cost_usd is None
    assert attempt.prompt_tokens is None or attempt.prompt_tokens >= 0
    cost, _ = attempt_cost(attempt, Price(1e-6, 2e-6))
    assert cost is None  # the server's bill is unknown: the reservation stays spent


def test_attempt_cost_never_negative() -> None:
    from runner.client import Attempt
    from runner.pricing import Price
    from runner.rows import attempt_cost

    for attempt in (Attempt(cost_usd=-1.0), Attempt(prompt_tokens=-100, completion_tokens=1),
                    Attempt(cost_usd=float("nan")), Attempt(cost_usd=float("-inf"))):
        cost, _ = attempt_cost(attempt, Price(1e-6, 2e-6, request_usd=-5.0))
        assert cost is None or cost >= 0


async def test_an_endless_stream_ends_at_the_byte_bound(hostile: Hostile, request_: Any) -> None:
    attempt = await _send(hostile, request_, "endless", max_response_bytes=2_000_000)
    assert attempt.error_type == "too_large"
    assert "2000000" in (attempt.error_message or "")
    assert len(attempt.text) <= 2_000_000


async def test_an_endless_stream_ends_at_the_event_bound(hostile: Hostile,
                                                         request_: Any) -> None:
    attempt = await _send(hostile, request_, "endless", max_stream_events=500)
    assert attempt.error_type == "too_large" and "500" in (attempt.error_message or "")


@pytest.mark.parametrize("behaviour", ["bomb-body", "bomb-stream"])
async def test_a_gzip_bomb_answer_stops_at_the_bound(hostile: Hostile, request_: Any,
                                                     behaviour: str) -> None:
    attempt = await _send(hostile, request_, behaviour, max_response_bytes=4_000_000)
    assert attempt.error_type == "too_large", attempt.error_message


async def test_a_gzip_bomb_error_body_is_read_only_up_to_its_bound(hostile: Hostile,
                                                                   request_: Any) -> None:
    _bomb(b"A")   # built before measuring
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    attempt = await _send(hostile, request_, "bomb-error", max_error_bytes=10_000)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024
    assert attempt.error_type == "server_error" and attempt.http_status == 500
    assert "cut at 10000 bytes" in (attempt.error_message or "")
    assert grown_mb < 100, f"reading a bounded error body grew the process by {grown_mb:.0f} MB"


async def test_a_redirect_is_not_followed(hostile: Hostile, request_: Any) -> None:
    attempt = await _send(hostile, request_, "redirect")
    assert not attempt.ok and attempt.error_type == "redirect" and attempt.http_status == 307
    message = attempt.error_message or ""
    assert hostile.other_url.removesuffix("/api/v1") in message and "not followed" in message
    assert "/chat/completions" not in message    # the origin only
    assert hostile.other_received == []          # the other host got nothing at all


@pytest.mark.parametrize("behaviour", ["json-for-stream", "json-as-sse"])
async def test_a_json_answer_to_a_stream_request_is_a_completion(hostile: Hostile,
                                                                 request_: Any,
                                                                 behaviour: str) -> None:
    attempt = await _send(hostile, request_, behaviour)
    assert attempt.ok, attempt.error_message
    assert attempt.text == "whole" and attempt.cost_usd == pytest.approx(0.0001)


# --- GET /models ---------------------------------------------------------------------------

def _catalogue_job(write_job: Any, url: str, provider_name: str = "hostile") -> Any:
    return load_job(write_job(f"""
        name: t
        providers:
          {provider_name}: {{base_url: "{url}", api_key_env: HOSTILE_KEY,
                      headers: {{X-Api-Key: '{HEADER}'}}}}
        models: [{{id: id-int, provider: {provider_name}}}]
        prompts: ["hi"]
        params: {{max_tokens: 4}}
    """))


@pytest.mark.parametrize("reply", ["html", "no-data", "data-dict", "text", "status", "redirect",
                                   "hang", "hang-up"])
async def test_a_custom_provider_without_a_usable_catalogue_is_a_warning(
        hostile: Hostile, write_job: Any, monkeypatch: pytest.MonkeyPatch, reply: str) -> None:
    from contextlib import AsyncExitStack

    from runner.providers import open_providers

    monkeypatch.setenv("HOSTILE_KEY", KEY)
    hostile.models_reply = reply
    job = _catalogue_job(write_job, hostile.url)
    async with AsyncExitStack() as stack:
        providers = await open_providers(stack, job, connections=2, catalogue_timeout_s=0.5)
    assert providers.catalogues.get("hostile") is None
    assert len(providers.warnings) == 1 and "hostile" in providers.warnings[0]
    assert "\n" not in providers.warnings[0]
    _assert_clean(providers.warnings[0])
    assert hostile.other_received == []


@pytest.mark.parametrize("reply", ["html", "no-data", "status", "hang"])
async def test_openrouter_without_a_usable_catalogue_is_a_provider_error(
        hostile: Hostile, write_job: Any, monkeypatch: pytest.MonkeyPatch, reply: str) -> None:
    from contextlib import AsyncExitStack

    from runner.providers import open_providers

    monkeypatch.setenv("HOSTILE_KEY", KEY)
    hostile.models_reply = reply
    job = _catalogue_job(write_job, hostile.url, provider_name="openrouter")
    with pytest.raises(ProviderError, match="openrouter") as caught:
        async with AsyncExitStack() as stack:
            await open_providers(stack, job, connections=2, catalogue_timeout_s=0.5)
    assert "\n" not in str(caught.value)
    _assert_clean(str(caught.value))


async def test_odd_catalogue_entries_are_dropped(hostile: Hostile, write_job: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.catalogue import load_catalogue

    hostile.models_reply = "odd-entries"
    async with Endpoint(_provider(hostile.url), hostile.url, KEY, connections=1) as endpoint:
        ids, prices = await load_catalogue(endpoint)
    assert {"good", "nan", "weird", "neg"} <= ids and 5 not in ids
    assert set(prices) == {"good"}


# --- end to end: the run directory and the terminal stay clean ------------------------------

E2E_MODELS = [name for name in BEHAVIOURS if not name.startswith("bomb-")] + ["bomb-error"]


def _e2e_job(write_job: Any, hostile: Hostile) -> Path:
    models = "\n".join(
        f"  - {{id: {name}, provider: hostile, params: {{stream: {name in STREAMED}}}}}"
        for name in E2E_MODELS)
    models += "\n  - {id: echo-error, provider: second, alias: second-echo}"
    pricing = "\n".join(f"  {name}: {{usd_per_mtok_prompt: 1, usd_per_mtok_completion: 2}}"
                        for name in E2E_MODELS)
    return write_job(f"""
name: hostile
providers:
  hostile: {{base_url: "{hostile.url}", api_key_env: HOSTILE_KEY,
            headers: {{X-Api-Key: '{HEADER}', X-Title: app}}}}
  second: {{base_url: "{hostile.url}", api_key_env: SECOND_KEY}}
models:
{models}
prompts: [{{text: "say {KEY[:3]}", metadata: {{pasted_by_mistake: "{OTHER}"}}}}]
params: {{max_tokens: 8}}
limits: {{retries: 0, concurrency: 8}}
budget_usd: 5
pricing:
{pricing}
""")


def _leaks(root: Path) -> list[str]:
    """Every (file, secret form) where a secret is found under `root`, parquet cells included."""
    found = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        texts = [path.read_bytes().decode("utf-8", "replace")]
        if path.suffix == ".parquet":
            texts.append(pd.read_parquet(path).to_csv())
        for text in texts:
            try:
                _assert_clean(text)
            except AssertionError as exc:
                found.append(f"{path.relative_to(root)}: {str(exc)[:200]}")
    return found


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTILE_KEY", KEY)
    monkeypatch.setenv("SECOND_KEY", OTHER)


async def test_a_run_against_a_lying_server_ends_clean(hostile: Hostile, write_job: Any,
                                                       tmp_path: Path, secrets_env: None) -> None:
    hostile.models_reply = "html"
    job = load_job(_e2e_job(write_job, hostile))
    outcome = await run_job(job, out_dir=tmp_path / "out")
    assert outcome.status == "completed"
    rows = outcome.rows
    assert len(rows) == len(job.models) and rows["request_id"].is_unique
    assert _leaks(tmp_path / "out") == []
    assert hostile.other_received == []
    by_model = rows.set_index("model")
    assert by_model.loc["redirect", "error_type"] == "redirect"
    assert by_model.loc["endless", "error_type"] == "too_large"
    assert by_model.loc["json-for-stream", "status"] == "ok"
    assert (rows["cost_usd"].dropna() >= 0).all()
    assert outcome.manifest["budget"]["spent_usd"] >= 0
    assert outcome.manifest["totals"]["cost_usd"] >= 0


async def test_the_cli_against_a_lying_server_prints_no_secret(
        hostile: Hostile, write_job: Any, tmp_path: Path, secrets_env: None) -> None:
    hostile.models_reply = "html"
    path = _e2e_job(write_job, hostile)
    done = await anyio.run_process(
        [sys.executable, "-m", "runner", "run", str(path), "--out", str(tmp_path / "out"),
         "--html", "--junit", str(tmp_path / "out" / "junit.xml")],
        cwd=ROOT, env=dict(os.environ), check=False)
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    warnings = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2 and all("catalogue" in w for w in warnings)  # the HTML /models
    _assert_clean(stdout + stderr, "to the terminal")
    assert _leaks(tmp_path / "out") == []
    assert hostile.other_received == []


async def test_an_unreachable_provider_still_stops_the_run(write_job: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    from contextlib import AsyncExitStack

    from runner.providers import open_providers

    with socket.socket() as sock:   # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HOSTILE_KEY", KEY)
    job = _catalogue_job(write_job, f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ProviderError, match="cannot reach provider 'hostile'"):
        async with AsyncExitStack() as stack:
            await open_providers(stack, job, connections=1)


@pytest.mark.parametrize("price", ["-0.001", -1, "nan", "inf", [1], "1e400"])
def test_a_catalogue_price_that_is_negative_or_odd_is_unknown_never_a_credit(price: Any) -> None:
    from runner.catalogue import clean_entry
    from runner.pricing import catalogue_prices

    entry = clean_entry({"id": "acme/m", "pricing": {"prompt": price, "completion": "0.000002"}})
    assert entry is not None and entry["pricing"] is None
    assert "acme/m" not in catalogue_prices([entry])   # no price: a budget refuses the model


def test_a_catalogue_web_search_price_is_kept() -> None:
    from runner.catalogue import clean_entry

    entry = clean_entry({"id": "acme/m", "pricing": {"prompt": "0", "web_search": "0.01"}})
    assert entry is not None and entry["pricing"] == {"prompt": "0", "web_search": "0.01"}


@pytest.mark.parametrize("behaviour", ["sse-for-json", "sse-as-json"])
async def test_a_stream_answer_to_a_plain_request_is_read_as_one(hostile: Hostile,
                                                                request_: Any,
                                                                behaviour: str) -> None:
    """The other way round: a server that streams although `stream: false` was asked, or
    labels its stream `application/json`, is read as a stream (its answer was billed), not a
    `malformed` row retried and billed again."""
    attempt = await _send(hostile, request_, behaviour)
    assert attempt.ok, attempt.error_message
    assert attempt.text == "whole" and attempt.cost_usd == pytest.approx(0.0001)
