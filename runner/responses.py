"""What a provider answers, read defensively: JSON bodies and SSE events in, `Attempt` fields out.

Nothing here raises for a shape a server chose: a structural surprise (`choices` an object,
`usage` a list, a stream event that is a number) makes the attempt a `malformed` error with the
reason in its message; a harmless one is converted (an integer `id` becomes a string; a negative
or non-numeric token count or cost becomes unknown, never a credit). Strings are stored as sent:
`client` redacts and clips them once the attempt is over.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

MAX_COUNT = 2**53         # a token count above this is not one (and would not fit int64 safely)
SNIPPET_CHARS = 2000   # of a server string quoted in a message (clipped again after redaction)


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
    cost_unusable: bool = False   # the server sent a cost that is negative or not a number
    finish_reason: str | None = None
    native_finish_reason: str | None = None
    text: str = ""
    content_at_s: list[float] = field(default_factory=list)  # when content chunks came (ITL)

    def fail(self, error_type: str, message: str, status: int | None = None) -> Attempt:
        self.ok = False
        self.error_type = error_type
        self.error_message = message
        if status is not None:
            self.http_status = status
        return self


class Malformed(Exception):
    """A shape no chat completion has; its text is the reason that goes in the row."""


def kind(value: object) -> str:
    """How a JSON value is named in a message: 'a list', 'a number', 'null'..."""
    if value is None:
        return "null"
    return _KINDS.get(type(value), type(value).__name__)


_KINDS = {dict: "an object", list: "a list", str: "a string", int: "a number",
          float: "a number", bool: "a boolean"}


def snippet(raw: bytes | str) -> str:
    """A server's bytes quoted in a message: bounded, decoded, on one line."""
    text = raw[:SNIPPET_CHARS]
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(text.split())


def label(value: object) -> str | None:
    """An id, model name or finish reason: strings kept, numbers written out, others dropped."""
    if type(value) is str:
        return value
    if type(value) in (int, float):
        return str(value)
    return None


def count(value: object) -> int | None:
    """A token count, or None when the server's value is not one (negative, a bool, beyond
    what a result file's int64 column holds...)."""
    if type(value) is int:
        return value if 0 <= value <= MAX_COUNT else None
    if type(value) is float and 0 <= value <= MAX_COUNT and value.is_integer():
        return int(value)
    if type(value) is str and value.isascii() and value.isdigit() and len(value) < 16:
        return int(value)
    return None


def content_text(value: object, where: str) -> str:
    """A message's content: a string, or the text parts of a list of content parts."""
    if value is None:
        return ""
    if type(value) is str:
        return value
    if type(value) is list:
        texts = []
        for part in value:
            if type(part) is not dict:
                raise Malformed(f"{where} holds {kind(part)}, not a content part")
            text = part.get("text")
            if part.get("type", "text") == "text" and type(text) is str:
                texts.append(text)
        return "".join(texts)
    raise Malformed(f"{where} is {kind(value)}, not a string")


def take_usage(usage: object, attempt: Attempt) -> None:
    """Token counts and cost from a `usage` object (the last one a stream sends wins)."""
    if type(usage) is not dict:
        raise Malformed(f"usage is {kind(usage)}, not an object")
    attempt.prompt_tokens = count(usage.get("prompt_tokens"))
    attempt.completion_tokens = count(usage.get("completion_tokens"))
    details = usage.get("completion_tokens_details")
    if type(details) is dict:
        attempt.reasoning_tokens = count(details.get("reasoning_tokens"))
    details = usage.get("prompt_tokens_details")
    if type(details) is dict:
        attempt.cached_tokens = count(details.get("cached_tokens"))
    cost = usage.get("cost")
    if cost is None:
        return
    if type(cost) in (int, float) and math.isfinite(cost) and cost >= 0:
        attempt.cost_usd = float(cost)
    else:   # never a credit: the budget keeps what it reserved
        attempt.cost_usd = None
        attempt.cost_unusable = True


def take_ids(body: Mapping[str, Any], attempt: Attempt) -> None:
    attempt.generation_id = label(body.get("id"))
    attempt.model_served = label(body.get("model"))
    attempt.upstream = label(body.get("provider"))


def error_fields(error: object) -> tuple[str | None, Mapping[str, Any], str | None]:
    """Message, metadata and code of an `error` value of any type."""
    if type(error) is dict:
        message, metadata, code = error.get("message"), error.get("metadata"), error.get("code")
        if message is not None and type(message) is not str:
            message = snippet(orjson.dumps(message))
        return (message or None, metadata if type(metadata) is dict else {},
                label(code) if code is not None else None)
    if type(error) is str:
        return error or None, {}, None
    return snippet(orjson.dumps(error)), {}, None


def with_code(message: str, code: str | None) -> str:
    return f"{message} (code {code})" if code is not None else message


def error_details(raw: bytes) -> tuple[str | None, Mapping[str, Any]]:
    """Message and metadata of an HTTP error body, parsed defensively (shapes vary)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return snippet(raw) or None, {}
    if type(body) is dict:
        if body.get("error") is not None:   # the status says what the code would
            message, metadata, _ = error_fields(body["error"])
            return message, metadata
        for key in ("message", "detail"):
            if body.get(key):
                return error_fields({"message": body[key]})[0], {}
    return snippet(raw) or None, {}


def parse_body(raw: bytes, attempt: Attempt) -> Attempt:
    """Fill `attempt` from a whole (non-streamed) JSON answer."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return attempt.fail("malformed", f"response is not JSON: {snippet(raw)[:200]}")
    if type(body) is not dict:
        return attempt.fail("malformed", f"response is {kind(body)}, not a JSON object")
    error = body.get("error")
    if error is not None and not body.get("choices"):
        message, metadata, code = error_fields(error)
        attempt.fail("error_body", with_code(message or "error in a 200 response", code))
        attempt.retry_after_s = retry_after_s({}, metadata, time.time())
        return attempt
    try:
        return parse_completion(body, attempt)
    except Malformed as exc:
        return attempt.fail("malformed", str(exc))


def parse_completion(body: Mapping[str, Any], attempt: Attempt) -> Attempt:
    """Fill `attempt` from a chat completion object; raises `Malformed` for a wrong shape."""
    take_ids(body, attempt)
    choices = body.get("choices")
    if not choices:
        return attempt.fail("malformed", "response has no choices")
    choice = first_choice(choices)
    message = choice.get("message")
    if message is not None and type(message) is not dict:
        raise Malformed(f"choices[0].message is {kind(message)}, not an object")
    attempt.text = content_text(message.get("content") if message else None,
                                "choices[0].message.content")
    attempt.finish_reason = label(choice.get("finish_reason"))
    attempt.native_finish_reason = label(choice.get("native_finish_reason"))
    if body.get("usage") is not None:
        take_usage(body["usage"], attempt)
    if attempt.finish_reason == "error":
        return attempt.fail("stream_error", "the provider returned finish_reason=error")
    attempt.ok = True
    return attempt


class StreamParser:
    """Folds SSE lines into an `Attempt`, counting events against a bound."""

    __slots__ = ("attempt", "parts", "events", "max_events")

    def __init__(self, attempt: Attempt, max_events: int) -> None:
        self.attempt = attempt
        self.parts: list[str] = []
        self.events = 0
        self.max_events = max_events

    def feed(self, lines: Iterable[bytes], at_s: float) -> bool | None:
        """True at [DONE], False once the stream failed, None while it goes on."""
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, ": OPENROUTER PROCESSING" keep-alives, event:/id:
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return True
            self.events += 1
            if self.events > self.max_events:
                self.attempt.fail("too_large", f"more than {self.max_events} stream events "
                                  "(limits.max_stream_events)")
                return False
            try:
                if self._event(orjson.loads(payload), at_s):
                    return False
            except orjson.JSONDecodeError:
                self.attempt.fail("malformed", f"invalid JSON in stream: {snippet(payload)[:200]}")
                return False
            except Malformed as exc:
                self.attempt.fail("malformed", f"stream event: {exc}")
                return False
        return None

    def _event(self, chunk: object, at_s: float) -> bool:
        """Fold one event; True when it ends the stream with an error."""
        attempt = self.attempt
        if type(chunk) is not dict:
            raise Malformed(f"{kind(chunk)}, not an object")
        if chunk.get("error") is not None:
            message, _, code = error_fields(chunk["error"])
            attempt.fail("stream_error", with_code(message or "error chunk in stream", code))
            return True
        choices = chunk.get("choices")
        if choices:
            choice = first_choice(choices)
            delta = choice.get("delta")
            if delta:
                if type(delta) is not dict:
                    raise Malformed(f"choices[0].delta is {kind(delta)}, not an object")
                text = delta.get("content")
                if text:
                    if type(text) is not str:
                        text = content_text(text, "choices[0].delta.content")
                    self.parts.append(text)
                    attempt.content_at_s.append(at_s)
                if attempt.ttft_s is None and (text or delta.get("reasoning")
                                               or delta.get("reasoning_content")):
                    attempt.ttft_s = at_s
            finish = choice.get("finish_reason")
            if finish:
                attempt.finish_reason = label(finish)
            native = choice.get("native_finish_reason")
            if native:
                attempt.native_finish_reason = label(native)
        usage = chunk.get("usage")
        if usage is not None:
            take_usage(usage, attempt)
        if attempt.generation_id is None:
            take_ids(chunk, attempt)
        return False


def _reset_s(reset: float, now_unix: float) -> float:
    """Seconds until an `X-RateLimit-Reset`: epoch milliseconds (OpenRouter), epoch seconds, or
    seconds from now (other servers), told apart by size relative to now."""
    if reset >= now_unix * 100:
        return reset / 1000.0 - now_unix
    if reset >= now_unix / 2:
        return reset - now_unix
    return reset


def retry_after_s(headers: Mapping[str, str], metadata: Mapping[str, Any],
                  now_unix: float) -> float | None:
    """Seconds to wait before the next request, from any hint the server gave (or None)."""
    hints: list[float] = []
    value = headers.get("Retry-After")
    if value:
        try:
            hints.append(float(value))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError, OverflowError):
                hints.append(parsedate_to_datetime(value).timestamp() - now_unix)
    inner = metadata.get("headers")
    inner_headers = inner if isinstance(inner, Mapping) else {}
    for source in (headers, inner_headers):
        reset: Any = source.get("X-RateLimit-Reset")
        if reset:
            with contextlib.suppress(TypeError, ValueError, OverflowError):
                hints.append(_reset_s(float(reset), now_unix))
    seconds = metadata.get("retry_after_seconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        hints.append(float(seconds))
    hints = [h for h in hints if math.isfinite(h)]  # no NaN, no "wait forever"
    return max(0.0, max(hints)) if hints else None


def first_choice(choices: object) -> dict[str, Any]:
    """`choices[0]` of a completion or a chunk, checked: a list whose first item is an object."""
    if type(choices) is not list:
        raise Malformed(f"choices is {kind(choices)}, not a list")
    choice = choices[0]
    if type(choice) is not dict:
        raise Malformed(f"choices[0] is {kind(choice)}, not an object")
    return choice
