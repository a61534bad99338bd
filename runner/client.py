"""The only module that talks HTTP to a provider: one `Request` in, one `Attempt` out.

The hot path builds the JSON body itself and reads the SSE stream at the transport level
(`transport`, our own HTTP/1.1 pool, and orjson), because the SDK's request transform and its
per-chunk pydantic objects cost more CPU than the whole rest of the runner and would show up in
the latencies we measure.
Timestamps are taken right where the bytes are read. Each endpoint also offers an `AsyncOpenAI`
client configured the same way (`Endpoint.sdk`), built on first use: importing the openai package
costs about a second (its `types` alone), which a run that never calls it should not pay before
its first request.

This is also the server boundary: redirects are never followed (the other host would get the
prompt and the credentials), every read is bounded (answer bytes after decompression, stream
events, error bodies), shapes are checked by `responses`, and every string a server sent is
redacted of every secret the job holds before it leaves `send`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import orjson

from .config import (
    DEFAULT_MAX_ERROR_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_STREAM_EVENTS,
    Provider,
)
from .content import wire
from .errors import ProviderError
from .plan import Request
from .redact import Redactor, header_secrets, provider_secrets
from .responses import (
    Attempt,
    StreamParser,
    error_details,
    parse_body,
    parse_completion,
    retry_after_s,
    snippet,
)
from .transport import ConnectFailed, Pool, Response, Stalled, TimedOut, TransportError

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["Attempt", "Endpoint", "NoCatalogue", "build_body", "classify_status",
           "parse_completion", "retry_after_s"]

# HTTP status -> error_type; anything else is "http_<status>"
STATUS_ERRORS = {
    400: "bad_request", 401: "auth", 402: "insufficient_credits", 403: "forbidden",
    404: "not_found", 408: "timeout", 409: "conflict", 413: "payload_too_large",
    422: "unprocessable", 429: "rate_limited", 500: "server_error", 502: "bad_gateway",
    503: "unavailable", 504: "gateway_timeout", 524: "upstream_timeout", 529: "overloaded",
}
MESSAGE_CHARS = 500          # an error message as stored in a row
LABEL_CHARS = 200            # ids, model names, finish reasons
PARTIAL_TEXT_CHARS = 65536   # what a too-large answer keeps of its text, for inspection
CATALOGUE_TIMEOUT_S = 15.0   # GET /models must answer within this
CATALOGUE_MAX_BYTES = 64 * 1024 * 1024
USER_AGENT = "runner"


def request_headers(provider: Provider, api_key: str) -> dict[str, str]:
    """The headers of every request: bearer auth, JSON, then the provider's own headers (which
    win, as with the SDK's `default_headers`)."""
    return {"Authorization": f"Bearer {api_key}", "Accept": "application/json",
            "Content-Type": "application/json", "User-Agent": USER_AGENT,
            "Accept-Encoding": "gzip, deflate", **provider.headers}


def classify_status(status: int) -> str:
    """The `error_type` of an HTTP error status."""
    if 300 <= status < 400:
        return "redirect"
    return STATUS_ERRORS.get(status, f"http_{status}")


class NoCatalogue(ProviderError):
    """`GET /models` gave no usable list (HTML, no `data`, an odd status, no answer)."""


class Endpoint:
    """One provider's connection, created inside the running loop; use `async with`.

    `redactor` should know every secret of the job (see `redact.job_redactor`); by default it
    knows this provider's key and credential headers.
    """

    def __init__(self, provider: Provider, base_url: str, api_key: str, *,
                 connections: int, clock: Any = time.perf_counter,
                 redactor: Redactor | None = None) -> None:
        self.provider = provider
        self._clock = clock
        self._api_key = api_key
        self._sdk: Any = None  # an AsyncOpenAI, once `sdk` is first asked for
        self._base = base_url.rstrip("/")
        self._url = self._base + "/chat/completions"
        headers = request_headers(provider, api_key)
        self.redact = redactor if redactor is not None else Redactor(
            [*provider_secrets(provider, api_key), *header_secrets(headers)])
        self._pool = Pool(self._base, headers, connections=connections)
        self._chat = "chat/completions"

    async def __aenter__(self) -> Endpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._pool.aclose()
        if self._sdk is not None:
            await self._sdk.close()

    @property
    def sdk(self) -> AsyncOpenAI:
        """An `AsyncOpenAI` client for this endpoint (same base URL, key and headers; the SDK's
        own retries off), built on first use and closed with the endpoint."""
        if self._sdk is None:
            from openai import AsyncOpenAI  # lazy: ~1 s of imports a run does not need

            self._sdk = AsyncOpenAI(api_key=self._api_key, base_url=self.base_url,
                                    max_retries=0, default_headers=dict(self.provider.headers))
        return self._sdk  # type: ignore[no-any-return]

    @property
    def base_url(self) -> str:
        """The API root, with one trailing slash (as the SDK writes it)."""
        return self._base + "/"

    async def models(self, *, timeout_s: float = CATALOGUE_TIMEOUT_S) -> list[dict[str, Any]]:
        """The provider's `GET /models` entries; `NoCatalogue` when there is no usable list,
        `ProviderError` when the endpoint cannot be reached or rejects the key."""
        name, url = self.provider.name, self._base + "/models"
        try:
            resp = await self._pool.request("GET", "models", timeout_s=timeout_s,
                                            stall_timeout_s=timeout_s)
            try:
                if resp.status == 401:
                    raise ProviderError(f"provider {name!r} rejected the API key in "
                                        f"{self.provider.api_key_env}")
                if resp.status != 200:
                    raise self._no_catalogue(url, _status_text(resp))
                raw, cut = await _read_upto(resp, CATALOGUE_MAX_BYTES)
                if cut:
                    raise self._no_catalogue(url, f"more than {CATALOGUE_MAX_BYTES} bytes")
                content_type = resp.content_type
            finally:
                resp.release()
        except (TimedOut, Stalled):
            raise self._no_catalogue(url, f"nothing within {timeout_s:g} s") from None
        except ConnectFailed as exc:  # no connection at all (a disconnect later is an odd
            raise ProviderError(self.redact.clip(  # server: NoCatalogue)
                f"cannot reach provider {name!r} at {self._base}: {snippet(str(exc))}",
                MESSAGE_CHARS)) from None
        except TransportError as exc:
            raise self._no_catalogue(url, f"{type(exc).__name__}: {snippet(str(exc))}") from None
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise self._no_catalogue(url, f"{content_type or 'a body'}, not JSON") from None
        data = body.get("data") if type(body) is dict else None
        if type(data) is not list:
            raise self._no_catalogue(url, "JSON without a `data` list")
        return [entry for entry in data if type(entry) is dict]

    async def call(self, method: str, path: str, *, json_body: Any = None,
                   data: bytes | None = None, content_type: str | None = None,
                   max_bytes: int, timeout_s: float) -> tuple[int, bytes]:
        """One call to another route of the provider's API (`files`, `batches`): its status and
        body, read up to `max_bytes` (decompressed). `json_body` is sent as JSON, or `data` as
        `content_type`. No answer, a redirect or a larger body is a `ProviderError` of one
        redacted line; a status is the caller's to judge."""
        url = f"{self._base}/{path.lstrip('/')}"
        what = f"{method} {url}"
        headers = {"Content-Type": content_type} if content_type is not None else None
        body = orjson.dumps(json_body) if json_body is not None else data
        try:
            resp = await self._pool.request(method, path, body, headers, timeout_s=timeout_s,
                                            stall_timeout_s=timeout_s)
            try:
                if 300 <= resp.status < 400:
                    raise ProviderError(self.redact.clip(f"{what}: {_status_text(resp)}; "
                                                         "redirects are not followed",
                                                         MESSAGE_CHARS))
                raw, cut = await _read_upto(resp, max_bytes)
                if cut:
                    raise ProviderError(f"{what}: the answer is larger than {max_bytes} bytes")
                return resp.status, raw
            finally:
                resp.release()
        except (TimedOut, Stalled):
            raise ProviderError(f"{what}: no answer within {timeout_s:g} s") from None
        except TransportError as exc:
            raise ProviderError(self.redact.clip(f"{what}: {type(exc).__name__}: "
                                                 f"{snippet(str(exc))}", MESSAGE_CHARS)) from None

    def _no_catalogue(self, url: str, what: str) -> NoCatalogue:
        return NoCatalogue(self.redact.clip(
            f"provider {self.provider.name!r}: no model catalogue (GET {url} answered "
            f"{' '.join(what.split())})", MESSAGE_CHARS))

    async def send(self, request: Request, *, timeout_s: float, stall_timeout_s: float,
                   max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                   max_error_bytes: int = DEFAULT_MAX_ERROR_BYTES,
                   max_stream_events: int = DEFAULT_MAX_STREAM_EVENTS) -> Attempt:
        """One HTTP attempt; never raises for a failed request (it returns a failed Attempt)."""
        stream = bool(request.params.get("stream", True))
        attempt = Attempt()
        t0 = self._clock()
        ended: float | None = None
        try:
            resp = await self._pool.request(
                "POST", self._chat, build_body(self.provider, request, stream),
                {"X-Runner-Request-Id": request.request_id}, timeout_s=timeout_s,
                stall_timeout_s=stall_timeout_s)
            try:
                attempt.http_status = resp.status
                if resp.status != 200:
                    finished = await self._http_error(resp, attempt, max_error_bytes)
                elif stream or resp.content_type == "text/event-stream":
                    # a stream, asked for or not; a JSON body (whatever the content type
                    # says) is sniffed there and read as a whole completion
                    finished = await self._read_stream(resp, attempt, t0, max_response_bytes,
                                                       max_stream_events)
                else:  # a JSON answer to a plain request
                    finished = await self._read_body(resp, attempt, b"", max_response_bytes)
                ended = self._clock()
                if finished:  # its last bytes, if late, are not the answer's latency
                    await resp.drain()
            finally:
                resp.release()
        except TimedOut:
            attempt.fail("timeout", f"no answer within {timeout_s:g} s")
        except Stalled:
            attempt.fail("stall", f"no data within {stall_timeout_s:g} s")
        except TransportError as exc:  # (a disconnect's message says when it came)
            attempt.fail(exc.kind, snippet(str(exc)))
        except (ValueError, TypeError, LookupError, AttributeError, OverflowError) as exc:
            # a shape the parser did not foresee must end this request, not the run
            attempt.fail("malformed", f"unreadable answer ({type(exc).__name__}: "
                         f"{snippet(str(exc))})")
        attempt.latency_s = (ended if ended is not None else self._clock()) - t0
        return self._seal(attempt)

    def seal(self, attempt: Attempt) -> Attempt:
        """Redact and bound the strings of an attempt read from elsewhere (a batch output line)."""
        return self._seal(attempt)

    def _seal(self, attempt: Attempt) -> Attempt:
        """Redact and bound every string the server put in `attempt` (once, at the end)."""
        redact = self.redact
        if attempt.error_message is not None:
            attempt.error_message = redact.clip(attempt.error_message, MESSAGE_CHARS)
        if attempt.text:
            if attempt.error_type == "too_large":
                attempt.text = redact.clip(attempt.text, PARTIAL_TEXT_CHARS)
            else:
                attempt.text = redact(attempt.text)
        if attempt.generation_id is not None:
            attempt.generation_id = redact.clip(attempt.generation_id, LABEL_CHARS)
        if attempt.model_served is not None:
            attempt.model_served = redact.clip(attempt.model_served, LABEL_CHARS)
        if attempt.upstream is not None:
            attempt.upstream = redact.clip(attempt.upstream, LABEL_CHARS)
        if attempt.finish_reason is not None:
            attempt.finish_reason = redact.clip(attempt.finish_reason, LABEL_CHARS)
        if attempt.native_finish_reason is not None:
            attempt.native_finish_reason = redact.clip(attempt.native_finish_reason,
                                                       LABEL_CHARS)
        return attempt

    async def _http_error(self, resp: Response, attempt: Attempt,
                          max_error_bytes: int) -> bool:
        attempt.http_error = True  # no model ran, so nothing was billed
        status = resp.status
        if 300 <= status < 400:  # its body is of no use, and the other host is never asked
            attempt.fail("redirect", f"{_status_text(resp)}; redirects are not followed "
                         "(set base_url to the address that answers)", status)
            return False
        raw, cut = await _read_upto(resp, max_error_bytes)
        message, metadata = error_details(raw)
        message = message or f"HTTP {status}"
        if cut:
            message = f"{message[:300]} (error body cut at {max_error_bytes} bytes)"
        attempt.fail(classify_status(status), message, status)
        attempt.retry_after_s = retry_after_s(resp.headers, metadata, time.time())
        return not cut

    async def _read_body(self, resp: Response, attempt: Attempt, head: bytes,
                         max_bytes: int) -> bool:
        raw, cut = await _read_upto(resp, max_bytes - len(head))
        if cut:
            attempt.fail("too_large", _too_large(max_bytes))
            return False
        parse_body(head + raw if head else raw, attempt)
        return True

    async def _read_stream(self, resp: Response, attempt: Attempt, t0: float,
                           max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                           max_events: int = DEFAULT_MAX_STREAM_EVENTS) -> bool:
        """Read an SSE answer into `attempt`; whether it was read to its end (then the
        connection may be kept)."""
        # Block by block, not line by line: one read returns every event that has arrived, and
        # splitting a block costs less than a call per line. Each block is timestamped once,
        # right after the read that returned it.
        read_any = resp.read_any
        parser = StreamParser(attempt, max_events)
        pending: list[bytes] = []   # an unfinished line, in pieces (joined once it ends)
        received = 0
        sniffed = False
        done: bool | None = None    # True: [DONE] came; False: the stream failed; None: reading
        while done is None:
            block = await read_any()
            if not block:           # EOF; a last line without its newline still counts
                if pending:
                    done = parser.feed((b"".join(pending),), self._clock() - t0)
                break
            at_s = self._clock() - t0
            received += len(block)
            if received > max_bytes:
                attempt.fail("too_large", _too_large(max_bytes))
                done = False
                break
            if not sniffed:
                first = block.lstrip()
                if not first:
                    continue
                sniffed = True
                if first[:1] in (b"{", b"["):  # one JSON answer, whatever its content type
                    return await self._read_body(resp, attempt, block, max_bytes)
            if b"\n" not in block:
                pending.append(block)
                continue
            if pending:
                pending.append(block)
                block = b"".join(pending)
                pending = []
            lines = block.split(b"\n")
            tail = lines.pop()
            if tail:
                pending.append(tail)
            done = parser.feed(lines, at_s)
        attempt.text = "".join(parser.parts)
        if done is False:
            return False  # unread bytes may follow: this connection is not reused
        if not done and attempt.finish_reason is None:
            attempt.fail("disconnect", "stream ended before [DONE] without a finish_reason")
            return False
        if attempt.finish_reason == "error":
            attempt.fail("stream_error", "the provider ended the stream with finish_reason=error")
            return True
        attempt.ok = True
        return True


def _too_large(max_bytes: int) -> str:
    return f"the answer is larger than {max_bytes} bytes (limits.max_response_bytes)"


def _status_text(resp: Response) -> str:
    """`HTTP 404`, or for a redirect where it pointed (the origin only: no path, no query, no
    user or password)."""
    if not 300 <= resp.status < 400:
        return f"HTTP {resp.status}"
    location = resp.headers.get("Location") or ""
    if not location:
        return f"HTTP {resp.status}: redirected to nowhere"
    try:
        parts = urlsplit(urljoin(resp.url, location.strip()))
        port = parts.port  # (a ValueError if it is no port)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(location)
        # the host as the server wrote it: `hostname` is lower-cased, which a secret echoed
        # there would get past the redactor as
        host = parts.netloc.rpartition("@")[2]
        if port is not None:
            host = host.rpartition(":")[0]
        target = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    except ValueError:
        target = "an unreadable address"
    return f"HTTP {resp.status}: redirected to {target}"


async def _read_upto(resp: Response, max_bytes: int) -> tuple[bytes, bool]:
    """At most `max_bytes` of the decompressed body, and whether there was more (then the
    connection is not reused: the rest is never read, so a gzip bomb never inflates)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await resp.read_any()
        if not chunk:
            return b"".join(chunks), False
        size += len(chunk)
        if size > max_bytes:
            chunks.append(chunk[:max(0, len(chunk) - (size - max_bytes))])
            return b"".join(chunks), True
        chunks.append(chunk)


# the bodies of the last plan unit's messages, one per model (a unit's models and repeats follow
# it in plan order and share its messages and params objects; a body has no per-request field)
_unit_bodies: tuple[object, dict[int, tuple[tuple[object, ...], bytes]]] = ((), {})


def build_body(provider: Provider, request: Request, stream: bool) -> bytes:
    """The JSON body of a chat completion; OpenRouter-only fields only go to OpenRouter."""
    global _unit_bodies
    messages, bodies = _unit_bodies
    if messages is not request.messages:
        bodies = {}
        _unit_bodies = (request.messages, bodies)
    known = bodies.get(id(request.model))
    if known is not None:
        (was_provider, was_model, was_params, was_stream), body = known
        if was_provider is provider and was_model is request.model \
                and was_params is request.params and was_stream is stream:
            return body
    body = _body(provider, request, stream)
    bodies[id(request.model)] = ((provider, request.model, request.params, stream), body)
    return body


def _body(provider: Provider, request: Request, stream: bool) -> bytes:
    params = dict(request.params)
    params.pop("stream", None)
    body: dict[str, Any] = {
        "model": request.model.id,
        "messages": [{"role": m.role, "content": wire(m.content)} for m in request.messages],
        **params,
        "stream": stream,
    }
    if stream and provider.stream_usage:
        body["stream_options"] = {"include_usage": True}
    body.update(request.model.extra_body)
    return orjson.dumps(body)
