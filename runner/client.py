"""The only module that talks HTTP to a provider: one `Request` in, one `Attempt` out.

The openai SDK (`AsyncOpenAI`) owns what it is good at: configuration, base URL, auth and
platform headers, and the model catalogue. The hot path builds the JSON body itself and reads the
SSE stream at the transport level (aiohttp + orjson), because the SDK's request transform and its
per-chunk pydantic objects cost more CPU than the whole rest of the runner and would show up in
the latencies we measure. Timestamps are taken right where the bytes are read.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from .config import Provider
from .errors import ProviderError
from .plan import Request

# HTTP status -> error_type; anything else is "http_<status>"
STATUS_ERRORS = {
    400: "bad_request", 401: "auth", 402: "insufficient_credits", 403: "forbidden",
    404: "not_found", 408: "timeout", 409: "conflict", 413: "payload_too_large",
    422: "unprocessable", 429: "rate_limited", 500: "server_error", 502: "bad_gateway",
    503: "unavailable", 504: "gateway_timeout", 524: "upstream_timeout", 529: "overloaded",
}
MAX_EVENT_BYTES = 16 * 1024 * 1024  # an SSE line longer than this is not a chat chunk


def classify_status(status: int) -> str:
    """The `error_type` of an HTTP error status."""
    return STATUS_ERRORS.get(status, f"http_{status}")


@dataclass(slots=True)
class Attempt:
    """What one HTTP attempt produced; the engine folds attempts into a `Result`."""

    ok: bool = False
    error_type: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    retry_after_s: float | None = None
    http_error: bool = False      # a non-200 answer: no model ran, so nothing was billed
    ttft_s: float | None = None
    latency_s: float | None = None
    model_served: str | None = None
    upstream: str | None = None
    generation_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    cost_usd: float | None = None
    finish_reason: str | None = None
    native_finish_reason: str | None = None
    text: str = ""

    def fail(self, error_type: str, message: str, status: int | None = None) -> Attempt:
        self.ok = False
        self.error_type = error_type
        self.error_message = message[:500]
        if status is not None:
            self.http_status = status
        return self


class Endpoint:
    """One provider's connection, created inside the running loop; use `async with`."""

    def __init__(self, provider: Provider, base_url: str, api_key: str, *,
                 connections: int, clock: Any = time.perf_counter) -> None:
        from openai import AsyncOpenAI  # lazy: keeps `runner --help` fast

        self.provider = provider
        self._clock = clock
        self._sdk = AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0,
                                default_headers=dict(provider.headers))
        self._url = str(self._sdk.base_url).rstrip("/") + "/chat/completions"
        headers = {k: v for k, v in self._sdk.default_headers.items() if isinstance(v, str)}
        headers.update(self._sdk.auth_headers)
        self._headers = headers
        self._secret = api_key
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(connections, 1), ttl_dns_cache=300),
            headers=headers, json_serialize=lambda o: orjson.dumps(o).decode(),
            auto_decompress=True,
        )

    async def __aenter__(self) -> Endpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._session.close()
        await self._sdk.close()

    def redact(self, text: str) -> str:
        """`text` with this endpoint's key removed (SDK and transport errors can echo it)."""
        return text.replace(self._secret, "***") if self._secret and len(self._secret) > 3 \
            else text

    @property
    def base_url(self) -> str:
        return str(self._sdk.base_url)

    async def models(self) -> list[dict[str, Any]]:
        """The provider's `GET /models` entries (empty if it has no such route)."""
        import openai

        try:
            page = await self._sdk.models.list()
        except openai.AuthenticationError:
            raise ProviderError(f"provider {self.provider.name!r} rejected the API key in "
                                f"{self.provider.api_key_env}") from None
        except openai.APIConnectionError as exc:
            raise ProviderError(f"cannot reach provider {self.provider.name!r} at "
                                f"{self._sdk.base_url}: {self.redact(str(exc))}") from None
        except openai.APIStatusError:
            return []  # some OpenAI-compatible servers have no /models
        return [m.model_dump() for m in page.data]

    async def send(self, request: Request, *, timeout_s: float, stall_timeout_s: float) -> Attempt:
        """One HTTP attempt; never raises for a failed request (it returns a failed Attempt)."""
        stream = bool(request.params.get("stream", True))
        attempt = Attempt()
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_read=stall_timeout_s)
        t0 = self._clock()
        try:
            async with self._session.post(
                self._url, data=build_body(self.provider, request, stream), timeout=timeout,
                headers={"X-Runner-Request-Id": request.request_id},
            ) as resp:
                attempt.http_status = resp.status
                if resp.status != 200:
                    await self._http_error(resp, attempt)
                elif stream:
                    await self._read_stream(resp, attempt, t0)
                else:
                    self._parse_body(await resp.read(), attempt)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            elapsed = self._clock() - t0
            kind = "timeout" if elapsed >= timeout_s * 0.99 else "stall"
            limit = timeout_s if kind == "timeout" else stall_timeout_s
            attempt.fail(kind, f"no {'answer' if kind == 'timeout' else 'data'} within "
                         f"{limit:g} s ({type(exc).__name__})")
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            attempt.fail("disconnect", f"connection closed mid-response: {self.redact(str(exc))}")
        except aiohttp.ClientConnectionError as exc:
            attempt.fail("connection", self.redact(f"{type(exc).__name__}: {exc}"))
        except aiohttp.ClientError as exc:
            attempt.fail("client_error", self.redact(f"{type(exc).__name__}: {exc}"))
        attempt.latency_s = self._clock() - t0
        return attempt

    async def _http_error(self, resp: aiohttp.ClientResponse, attempt: Attempt) -> None:
        raw = await resp.read()
        message, metadata = _error_details(raw)
        attempt.fail(classify_status(resp.status), message or f"HTTP {resp.status}", resp.status)
        attempt.http_error = True
        attempt.retry_after_s = retry_after_s(resp.headers, metadata, time.time())

    async def _read_stream(self, resp: aiohttp.ClientResponse, attempt: Attempt,
                           t0: float) -> None:
        # Block by block, not line by line: aiohttp's readline() costs more per line than the
        # JSON decoding does, and one read returns every event that has arrived. Each block is
        # timestamped once, right after the read that returned it.
        content = resp.content
        parts: list[str] = []
        tail = b""
        done: bool | None = None    # True: [DONE] came; False: the stream failed; None: reading
        while done is None:
            block = await content.readany()
            if not block:           # EOF; a last line without its newline still counts
                if tail:
                    done = self._events((tail,), attempt, parts, self._clock() - t0)
                break
            at_s = self._clock() - t0
            lines = (tail + block if tail else block).split(b"\n")
            tail = lines.pop()
            if len(tail) > MAX_EVENT_BYTES:
                attempt.fail("malformed", f"an SSE line longer than {MAX_EVENT_BYTES} bytes")
                done = False
                break
            done = self._events(lines, attempt, parts, at_s)
        attempt.text = "".join(parts)
        if done is False:
            return
        if not done and attempt.finish_reason is None:
            attempt.fail("disconnect", "stream ended before [DONE] without a finish_reason")
            return
        if attempt.finish_reason == "error":
            attempt.fail("stream_error", "the provider ended the stream with finish_reason=error")
            return
        attempt.ok = True

    @staticmethod
    def _events(lines: Iterable[bytes], attempt: Attempt, parts: list[str],
                at_s: float) -> bool | None:
        """Fold SSE lines into `attempt`: True at [DONE], False if the stream failed, else None."""
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, ": OPENROUTER PROCESSING" keep-alives, event:/id:
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return True
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                attempt.fail("malformed", f"invalid JSON in stream: {payload[:80]!r}")
                return False
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                error = chunk["error"]
                message, _ = _error_fields(error)
                code = error.get("code") if isinstance(error, dict) else None
                attempt.fail("stream_error", _with_code(message or "error chunk in stream", code))
                return False
            choices = chunk.get("choices")
            if choices:
                choice = choices[0]
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if text:
                    parts.append(text)
                if attempt.ttft_s is None and (text or delta.get("reasoning")
                                               or delta.get("reasoning_content")):
                    attempt.ttft_s = at_s
                if choice.get("finish_reason"):
                    attempt.finish_reason = choice["finish_reason"]
                if choice.get("native_finish_reason"):
                    attempt.native_finish_reason = choice["native_finish_reason"]
            usage = chunk.get("usage")
            if usage:
                _take_usage(usage, attempt)
            if attempt.generation_id is None:
                attempt.generation_id = chunk.get("id")
                attempt.model_served = chunk.get("model")
                attempt.upstream = chunk.get("provider")
        return None

    def _parse_body(self, raw: bytes, attempt: Attempt) -> None:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            attempt.fail("malformed", f"response is not JSON: {raw[:80]!r}")
            return
        if not isinstance(body, dict):
            attempt.fail("malformed", "response is not a JSON object")
            return
        if "error" in body and not body.get("choices"):
            message, metadata = _error_fields(body["error"])
            code = body["error"].get("code") if isinstance(body["error"], dict) else None
            attempt.fail("error_body", _with_code(message or "error in a 200 response", code))
            attempt.retry_after_s = retry_after_s({}, metadata, time.time())
            return
        parse_completion(body, attempt)


def build_body(provider: Provider, request: Request, stream: bool) -> bytes:
    """The JSON body of a chat completion; OpenRouter-only fields only go to OpenRouter."""
    params = dict(request.params)
    params.pop("stream", None)
    body: dict[str, Any] = {
        "model": request.model.id,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        **params,
        "stream": stream,
    }
    if stream and provider.stream_usage:
        body["stream_options"] = {"include_usage": True}
    body.update(request.model.extra_body)
    return orjson.dumps(body)


def parse_completion(body: Mapping[str, Any], attempt: Attempt) -> Attempt:
    """Fill `attempt` from a non-streamed chat completion body."""
    attempt.generation_id = body.get("id")
    attempt.model_served = body.get("model")
    attempt.upstream = body.get("provider")
    choices = body.get("choices") or []
    if not choices:
        return attempt.fail("malformed", "response has no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    attempt.text = message.get("content") or ""
    attempt.finish_reason = choice.get("finish_reason")
    attempt.native_finish_reason = choice.get("native_finish_reason")
    if body.get("usage"):
        _take_usage(body["usage"], attempt)
    if attempt.finish_reason == "error":
        return attempt.fail("stream_error", "the provider returned finish_reason=error")
    attempt.ok = True
    return attempt


def _take_usage(usage: Mapping[str, Any], attempt: Attempt) -> None:
    attempt.prompt_tokens = usage.get("prompt_tokens")
    attempt.completion_tokens = usage.get("completion_tokens")
    details = usage.get("completion_tokens_details") or {}
    attempt.reasoning_tokens = details.get("reasoning_tokens")
    prompt_details = usage.get("prompt_tokens_details") or {}
    attempt.cached_tokens = prompt_details.get("cached_tokens")
    cost = usage.get("cost")
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        attempt.cost_usd = float(cost)


def _with_code(message: str, code: object) -> str:
    return f"{message} (code {code})" if code is not None else message


def _error_fields(error: Any) -> tuple[str | None, Mapping[str, Any]]:
    if isinstance(error, dict):
        metadata = error.get("metadata")
        message = error.get("message")
        return (str(message) if message else None,
                metadata if isinstance(metadata, dict) else {})
    return (str(error) if error else None), {}


def _error_details(raw: bytes) -> tuple[str | None, Mapping[str, Any]]:
    """Message and metadata of an error body, parsed defensively (shapes vary)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace").strip()
        return (text[:300] or None), {}
    if isinstance(body, dict):
        if "error" in body:
            return _error_fields(body["error"])
        for key in ("message", "detail"):
            if body.get(key):
                return str(body[key]), {}
    return None, {}


def retry_after_s(headers: Mapping[str, str], metadata: Mapping[str, Any],
                  now_unix: float) -> float | None:
    """Seconds to wait before the next request, from any hint the server gave (or None)."""
    hints: list[float] = []
    value = headers.get("Retry-After")
    if value:
        try:
            hints.append(float(value))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError):
                hints.append(parsedate_to_datetime(value).timestamp() - now_unix)
    inner = metadata.get("headers")
    inner_headers = inner if isinstance(inner, Mapping) else {}
    for source in (headers, inner_headers):
        reset = source.get("X-RateLimit-Reset")
        if reset:
            with contextlib.suppress(ValueError):
                hints.append(float(reset) / 1000.0 - now_unix)  # epoch milliseconds
    seconds = metadata.get("retry_after_seconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        hints.append(float(seconds))
    hints = [h for h in hints if h == h]  # drop NaN
    return max(0.0, max(hints)) if hints else None
