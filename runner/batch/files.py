"""Batch API files (pure): requests in, JSONL input files split by a provider's limits out; an
output or error file's bytes in, one `Attempt` per request id out.

Output files are untrusted input like any answer: a line that is not a JSON object naming a
known request is left out with a warning (its request then has no line and becomes a
`batch_missing` error row); a line for a known request whose shape is odd is that request's
`malformed` error row. Strings are stored as sent: the caller seals the attempts
(`Endpoint.seal`: redacted, clipped).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson

from ..client import build_body, classify_status
from ..config import Provider
from ..plan import Request
from ..responses import (
    Attempt,
    Malformed,
    error_fields,
    kind,
    label,
    parse_completion,
    snippet,
    with_code,
)

CHAT_URL = "/v1/chat/completions"
WARNINGS_KEPT = 20     # warnings about one output file listed (the rest are counted)


def input_line(provider: Provider, request: Request) -> bytes:
    """One line of an input file: the chat completion body `send` would post, not streamed."""
    body = build_body(provider, request, stream=False)
    return (b'{"custom_id":' + orjson.dumps(request.request_id)
            + b',"method":"POST","url":"' + CHAT_URL.encode() + b'","body":' + body + b"}\n")


@dataclass(frozen=True, slots=True)
class Chunk:
    """The requests of one batch and its input file."""

    key: str                        # stable name of the chunk (its request ids' digest)
    requests: tuple[Request, ...]
    data: bytes


def chunks(provider: Provider, requests: Iterable[Request], *, max_requests: int,
           max_bytes: int) -> tuple[list[Chunk], list[Request]]:
    """Split requests into input files of at most `max_requests` lines and `max_bytes` bytes;
    also returns the requests whose one line is larger than a whole file may be."""
    out: list[Chunk] = []
    too_large: list[Request] = []
    batch: list[Request] = []
    lines: list[bytes] = []
    size = 0

    def close() -> None:
        nonlocal batch, lines, size
        if batch:
            digest = hashlib.sha256("\n".join(r.request_id for r in batch).encode())
            out.append(Chunk(f"{provider.name}-{digest.hexdigest()[:16]}", tuple(batch),
                             b"".join(lines)))
        batch, lines, size = [], [], 0

    for request in requests:
        line = input_line(provider, request)
        if len(line) > max_bytes:
            too_large.append(request)
            continue
        if len(batch) >= max_requests or size + len(line) > max_bytes:
            close()
        batch.append(request)
        lines.append(line)
        size += len(line)
    close()
    return out, too_large


@dataclass(slots=True)
class Read:
    """What an output (or error) file said: an attempt per request id, and warnings."""

    attempts: dict[str, Attempt]
    warnings: list[str]
    ignored: int = 0     # lines left out (the first WARNINGS_KEPT are in `warnings`)


def read_output(raw: bytes, expected: Sequence[str] | set[str], *, max_line_bytes: int,
                into: Read | None = None) -> Read:
    """Read an output or error file (JSON lines); `expected`: the batch's request ids."""
    read = into if into is not None else Read({}, [])
    wanted = expected if isinstance(expected, set) else set(expected)
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        problem = _line(line, number, wanted, read, max_line_bytes)
        if problem is not None:
            read.ignored += 1
            if len(read.warnings) < WARNINGS_KEPT:
                read.warnings.append(problem)
    return read


def _line(line: bytes, number: int, wanted: set[str], read: Read,
          max_line_bytes: int) -> str | None:
    """Fold one line into `read`; a warning when the line is left out."""
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError:
        return f"line {number}: not JSON: {snippet(line)[:120]}"
    if type(item) is not dict:
        return f"line {number}: {kind(item)}, not an object"
    custom_id = item.get("custom_id")
    if type(custom_id) is not str or custom_id not in wanted:
        return f"line {number}: custom_id {snippet(str(custom_id))[:80]!r} is no request of " \
               "this batch: ignored"
    if custom_id in read.attempts:
        return f"line {number}: a second line for {custom_id}: ignored"
    attempt = Attempt()
    read.attempts[custom_id] = attempt
    if len(line) > max_line_bytes:
        attempt.fail("too_large", f"the batch's answer is larger than {max_line_bytes} bytes "
                     "(limits.max_response_bytes)")
        return None
    try:
        _answer(item, attempt)
    except (Malformed, LookupError, TypeError, ValueError) as exc:
        attempt.fail("malformed", f"batch output line: {snippet(str(exc))[:300]}")
    return None


def _answer(item: dict[str, object], attempt: Attempt) -> None:
    """Fill `attempt` from one output line's `error` or `response`."""
    error = item.get("error")
    response = item.get("response")
    if error is not None and not response:
        message, _, code = error_fields(error)
        attempt.fail("batch_error", with_code(message or "error line", code))
        attempt.http_error = True  # the line was not run: nothing billed
        return
    if type(response) is not dict:
        raise Malformed(f"response is {kind(response)}, not an object")
    status = response.get("status_code")
    if type(status) is not int:
        raise Malformed(f"response.status_code is {kind(status)}, not a number")
    attempt.http_status = status
    body = response.get("body")
    if status != 200:
        message, _, code = error_fields(body.get("error") if type(body) is dict else body)
        attempt.fail(classify_status(status), with_code(message or f"HTTP {status}", code),
                     status)
        attempt.http_error = True
        return
    if type(body) is not dict:
        raise Malformed(f"response.body is {kind(body)}, not an object")
    if body.get("error") is not None and not body.get("choices"):
        message, _, code = error_fields(body["error"])
        attempt.fail("error_body", with_code(message or "error in a 200 line", code))
        return
    parse_completion(body, attempt)
    if attempt.generation_id is None:
        attempt.generation_id = label(item.get("id"))
