"""Bytes on the wire: a `Head` (dialect, id, model, upstream) plus a `Completion` and usage in,
the SSE events and JSON bodies of an OpenRouter or plain OpenAI response out.

Shapes follow the captures in /work/shared/openrouter/. Per-token events are rendered from
templates made once per response, so the zero-latency path costs one `orjson.dumps` per token.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from runner.simulator.models import SimModel
from runner.simulator.text import Completion

Dialect = Literal["openrouter", "openai"]
Reshape = Callable[[dict[str, Any]], dict[str, Any]]

KEEP_ALIVE = b": OPENROUTER PROCESSING\n\n"
DONE = b"data: [DONE]\n\n"

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_HOLE = "\x00"
_HOLE_JSON = orjson.dumps(_HOLE)
_FINGERPRINT = "fp_sim"


@dataclass(frozen=True, slots=True)
class Head:
    """The fields every chunk of one response repeats."""

    dialect: Dialect
    id: str
    created: int
    model: str
    provider: str


def new_head(dialect: Dialect, model: SimModel) -> Head:
    """A fresh response id (`gen-<unix>-<20 chars>` or `chatcmpl-<29 chars>`) for `model`."""
    created = int(time.time())
    if dialect == "openrouter":
        gen_id = f"gen-{created}-{_random_alnum(20)}"
    else:
        gen_id = f"chatcmpl-{_random_alnum(29)}"
    return Head(dialect, gen_id, created, model.id, model.upstream)


def _random_alnum(n: int) -> str:
    return "".join(_ALNUM[b % len(_ALNUM)] for b in os.urandom(n))


def cost_usd(model: SimModel, prompt_tokens: int, completion_tokens: int) -> float:
    """What OpenRouter would bill: prompt and completion tokens at their prices plus the fee."""
    prompt = prompt_tokens * model.prompt_usd_per_token
    completion = completion_tokens * model.completion_usd_per_token
    return prompt + completion + model.request_usd


def usage(
    head: Head, model: SimModel, prompt_tokens: int, completion: Completion
) -> dict[str, Any]:
    """The `usage` object: with `cost` and OpenRouter's details, or OpenAI's plain one."""
    completion_tokens = completion.completion_tokens
    counts: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    reasoning_tokens = len(completion.reasoning)
    if head.dialect == "openai":
        return counts | {
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
    return counts | {
        "cost": cost_usd(model, prompt_tokens, completion_tokens),
        "is_byok": False,
        "prompt_tokens_details": {
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "audio_tokens": 0,
            "video_tokens": 0,
        },
        "cost_details": {
            "upstream_inference_cost": cost_usd(model, prompt_tokens, completion_tokens),
            "upstream_inference_prompt_cost": prompt_tokens * model.prompt_usd_per_token,
            "upstream_inference_completions_cost": (
                completion_tokens * model.completion_usd_per_token
            ),
        },
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "image_tokens": 0,
            "audio_tokens": 0,
        },
    }


def error_object(code: int, message: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """`{"code", "message", "metadata"?}`: the inside of every error the simulator sends."""
    error: dict[str, Any] = {"code": code, "message": message}
    if metadata is not None:
        error["metadata"] = metadata
    return error


def error_body(code: int, message: str, metadata: dict[str, Any] | None = None) -> bytes:
    """An OpenRouter error body: `{"error": {"code", "message", "metadata"?}}`."""
    return orjson.dumps({"error": error_object(code, message, metadata)})


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class StreamEvents:
    """The SSE events of one streamed response, in either dialect."""

    __slots__ = ("_content", "_head", "_reasoning")

    def __init__(self, head: Head) -> None:
        self._head = head
        if head.dialect == "openrouter":
            content_delta: dict[str, Any] = {"role": "assistant", "content": _HOLE}
            reasoning_delta: dict[str, Any] = {
                "role": "assistant",
                "content": "",
                "reasoning": _HOLE,
                "reasoning_details": [
                    {"type": "reasoning.text", "text": _HOLE, "format": "unknown", "index": 0}
                ],
            }
        else:
            content_delta = {"content": _HOLE}
            reasoning_delta = {}
        self._content = _event(self._chunk(content_delta)).split(_HOLE_JSON)
        self._reasoning = _event(self._chunk(reasoning_delta)).split(_HOLE_JSON)

    def _chunk(
        self,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        native_finish_reason: str | None = None,
    ) -> dict[str, Any]:
        head = self._head
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        chunk: dict[str, Any] = {
            "id": head.id,
            "object": "chat.completion.chunk",
            "created": head.created,
            "model": head.model,
        }
        if head.dialect == "openrouter":
            choice["native_finish_reason"] = native_finish_reason
            choice["logprobs"] = None
            chunk["provider"] = head.provider
        else:
            choice["logprobs"] = None
            chunk["system_fingerprint"] = _FINGERPRINT
        chunk["choices"] = [choice]
        if head.dialect == "openai":
            chunk["usage"] = None
        return chunk

    def opening(self) -> bytes:
        """What goes out right after the headers: OpenRouter's keep-alive comment."""
        return KEEP_ALIVE if self._head.dialect == "openrouter" else b""

    def keep_alive(self) -> bytes:
        """A mid-wait keep-alive comment (OpenRouter only)."""
        return self.opening()

    def first(self) -> bytes:
        """The role-only first chunk with empty content."""
        if self._head.dialect == "openrouter":
            return _event(self._chunk({"role": "assistant", "content": ""}))
        return _event(self._chunk({"role": "assistant", "content": "", "refusal": None}))

    def content(self, token: str) -> bytes:
        """One content delta."""
        return orjson.dumps(token).join(self._content)

    def reasoning(self, token: str) -> bytes:
        """One reasoning delta (OpenRouter); OpenAI servers do not stream reasoning: empty."""
        if self._head.dialect == "openai":
            return b""
        return orjson.dumps(token).join(self._reasoning)

    def final(
        self, completion: Completion, usage_obj: dict[str, Any], include_usage: bool,
        shape: Reshape | None = None,
    ) -> bytes:
        """The finish chunk(s) and `[DONE]`: OpenRouter puts usage on the finish chunk itself;
        OpenAI sends it in an extra empty-choices chunk only when `include_usage` is set.
        `shape` rewrites the last chunk (a hostile server's odd shapes)."""
        same: Reshape = shape or (lambda obj: obj)
        if self._head.dialect == "openrouter":
            chunk = self._chunk(
                {"content": "", "role": "assistant"},
                completion.finish_reason,
                completion.native_finish_reason,
            )
            del chunk["choices"][0]["logprobs"]
            chunk["usage"] = usage_obj
            return _event(same(chunk)) + DONE
        finish = self._chunk({}, completion.finish_reason)
        if not include_usage:
            return _event(same(finish)) + DONE
        tail = self._chunk({})
        tail["choices"] = []
        tail["usage"] = usage_obj
        return _event(finish) + _event(same(tail)) + DONE

    def error(self, code: int, message: str) -> bytes:
        """A mid-stream failure: top-level `error` and `finish_reason: "error"` (no `[DONE]`)."""
        chunk = self._chunk({"content": ""}, "error", "error")
        chunk["error"] = error_object(code, message)
        return _event(chunk)

    def error_only(self, code: int, message: str, metadata: dict[str, Any]) -> bytes:
        """A data event that is nothing but `{"error": {...}}`."""
        return _event({"error": error_object(code, message, metadata)})

    def malformed(self) -> bytes:
        """A data line that is not JSON: a chunk cut off halfway."""
        return self.content("trunc").split(b'"content"')[0] + b'"content":"tru\n\n'


def completion_body(
    head: Head, completion: Completion, usage_obj: dict[str, Any], reasoning_visible: bool,
    shape: Reshape | None = None,
) -> bytes:
    """The non-streaming `chat.completion` body, in the head's dialect (rewritten by `shape`)."""
    obj = completion_obj(head, completion, usage_obj, reasoning_visible)
    return orjson.dumps(shape(obj) if shape is not None else obj)


def completion_obj(
    head: Head, completion: Completion, usage_obj: dict[str, Any], reasoning_visible: bool
) -> dict[str, Any]:
    """The non-streaming `chat.completion` object, in the head's dialect."""
    message: dict[str, Any] = {"role": "assistant", "content": completion.text, "refusal": None}
    choice: dict[str, Any]
    if head.dialect == "openrouter":
        shown = reasoning_visible and bool(completion.reasoning)
        message["reasoning"] = completion.reasoning_text if shown else None
        if shown:
            message["reasoning_details"] = [
                {"type": "reasoning.text", "text": completion.reasoning_text,
                 "format": "unknown", "index": 0}
            ]  # fmt: skip
        choice = {
            "logprobs": None,
            "finish_reason": completion.finish_reason,
            "native_finish_reason": completion.native_finish_reason,
            "index": 0,
            "message": message,
        }
        return {
            "id": head.id,
            "provider": head.provider,
            "model": head.model,
            "object": "chat.completion",
            "created": head.created,
            "choices": [choice],
            "usage": usage_obj,
        }
    message["annotations"] = []
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": completion.finish_reason,
    }
    return {
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "choices": [choice],
        "usage": usage_obj,
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }
