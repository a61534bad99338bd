"""The simulator's batch API: JSONL files and batch orders in (`POST /files`, `POST /batches`),
batch objects, output and error files out, in the shape of OpenAI's Batch API.

A batch is `validating` when created, `in_progress` until `delay_s` has passed, then its lines
are answered all at once (each generated like a chat completion, billed at half the list price)
and it is `completed`, or `expired` when `expire` is set (only the first half of its lines is
answered then). `line_error_rate` of the lines get a 500 in the error file instead. Every file
upload and batch creation is recorded as a `Submission`, so a test can prove what was sent.
"""

from __future__ import annotations

import functools
import random
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from runner.simulator.bill import Charge
from runner.simulator.models import SimModel
from runner.simulator.orders import Rejection, authorized, parse_order
from runner.simulator.records import RecordLog
from runner.simulator.replies import error_response
from runner.simulator.text import generate
from runner.simulator.wire import Dialect, completion_obj, new_head, usage

BATCH_DISCOUNT = 0.5          # what a batched line costs, of the list price
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_FILE_LINES = 50_000


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How the simulated batch API behaves."""

    delay_s: float = 0.0          # from creation to results
    expire: bool = False          # end batches `expired`, half their lines answered
    line_error_rate: float = 0.0  # lines answered with a 500 in the error file


@dataclass(frozen=True, slots=True)
class Submission:
    """One upload or batch creation as the simulator received it."""

    t_unix: float
    kind: str                 # "file" or "batch"
    id: str                   # the file or batch id given out
    lines: int                # requests in the file (of the batch's input file)
    custom_ids: tuple[str, ...] = ()


@dataclass(slots=True)
class _Batch:
    id: str
    dialect: Dialect
    input_file_id: str
    created_at: int
    metadata: dict[str, Any]
    status: str = "validating"
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    ended_at: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class BatchService:
    """The state behind the files and batches routes."""

    __slots__ = ("_batches", "_bill", "_files", "_models", "_seed", "settings", "submissions")

    def __init__(self, models: Mapping[str, SimModel], seed: int, bill: RecordLog[Charge],
                 settings: BatchSettings | None = None,
                 submissions: RecordLog[Submission] | None = None) -> None:
        self._models = models
        self._seed = seed
        self._bill = bill
        self.settings = settings or BatchSettings()
        self.submissions: RecordLog[Submission] = submissions if submissions is not None \
            else RecordLog()
        self._files: dict[str, bytes] = {}
        self._batches: dict[str, _Batch] = {}

    def add_routes(self, app: web.Application) -> None:
        """Mount the routes in both dialects: under /api/v1 and /v1."""
        dialects: tuple[tuple[str, Dialect], ...] = (("/api/v1", "openrouter"), ("/v1", "openai"))
        for prefix, dialect in dialects:
            def bind(handler: Any, d: Dialect = dialect) -> Any:
                return functools.partial(handler, dialect=d)

            app.router.add_post(f"{prefix}/files", bind(self.upload))
            app.router.add_get(f"{prefix}/files/{{file_id}}/content", bind(self.content))
            app.router.add_post(f"{prefix}/batches", bind(self.create))
            app.router.add_get(f"{prefix}/batches", bind(self.listing))
            app.router.add_get(f"{prefix}/batches/{{batch_id}}", bind(self.retrieve))
            app.router.add_post(f"{prefix}/batches/{{batch_id}}/cancel", bind(self.cancel))

    async def upload(self, request: web.Request, dialect: Dialect) -> web.Response:
        """POST /files (multipart: purpose=batch, file=<jsonl>)."""
        if not authorized(request.headers.get("Authorization")):
            return error_response(401, "No auth credentials found")
        form = await request.post()
        if form.get("purpose") != "batch":
            return error_response(400, "purpose: only 'batch' is supported here")
        upload = form.get("file")
        data = upload.file.read(MAX_FILE_BYTES + 1) if isinstance(upload, web.FileField) \
            else None
        if data is None:
            return error_response(400, "file: a file part is required")
        if len(data) > MAX_FILE_BYTES:
            return error_response(400, f"file: larger than {MAX_FILE_BYTES} bytes")
        file_id = f"file-{secrets.token_hex(12)}"
        self._files[file_id] = data
        self.submissions.append(Submission(time.time(), "file", file_id,
                                           data.count(b"\n")))
        return web.json_response({"id": file_id, "object": "file", "bytes": len(data),
                                  "created_at": int(time.time()),
                                  "filename": getattr(upload, "filename", "batch.jsonl"),
                                  "purpose": "batch"})

    async def content(self, request: web.Request, dialect: Dialect) -> web.Response:
        """GET /files/{id}/content."""
        data = self._files.get(request.match_info["file_id"])
        if data is None:
            return error_response(404, "No such file")
        return web.Response(body=data, content_type="application/octet-stream")

    async def create(self, request: web.Request, dialect: Dialect) -> web.Response:
        """POST /batches {input_file_id, endpoint, completion_window, metadata?}."""
        if not authorized(request.headers.get("Authorization")):
            return error_response(401, "No auth credentials found")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or body.get("endpoint") != "/v1/chat/completions" \
                or body.get("completion_window") != "24h":
            return error_response(400, "give input_file_id, endpoint /v1/chat/completions and "
                                  "completion_window 24h")
        data = self._files.get(str(body.get("input_file_id")))
        if data is None:
            return error_response(404, "input_file_id: no such file")
        lines = [line for line in data.splitlines() if line.strip()]
        if len(lines) > MAX_FILE_LINES:
            return error_response(400, f"more than {MAX_FILE_LINES} requests in one batch")
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        batch = _Batch(f"batch_{secrets.token_hex(12)}", dialect, str(body["input_file_id"]),
                       int(time.time()), metadata or {}, total=len(lines))
        self._batches[batch.id] = batch
        ids = tuple(_custom_id(line) for line in lines)
        self.submissions.append(Submission(time.time(), "batch", batch.id, len(lines), ids))
        return web.json_response(self._obj(batch))

    async def retrieve(self, request: web.Request, dialect: Dialect) -> web.Response:
        """GET /batches/{id}: the batch, answered once its delay has passed."""
        batch = self._batches.get(request.match_info["batch_id"])
        if batch is None:
            return error_response(404, "No such batch")
        self._advance(batch)
        return web.json_response(self._obj(batch))

    async def listing(self, request: web.Request, dialect: Dialect) -> web.Response:
        """GET /batches?limit=&after=: newest first, a page at a time."""
        batches = list(reversed(self._batches.values()))  # newest first
        after = request.query.get("after")
        if after is not None:
            ids = [b.id for b in batches]
            batches = batches[ids.index(after) + 1:] if after in ids else []
        try:
            limit = max(1, min(100, int(request.query.get("limit", "20"))))
        except ValueError:
            return error_response(400, "limit: must be a number")
        for batch in batches[:limit]:
            self._advance(batch)
        return web.json_response({"object": "list", "has_more": len(batches) > limit,
                                  "data": [self._obj(b) for b in batches[:limit]]})

    async def cancel(self, request: web.Request, dialect: Dialect) -> web.Response:
        """POST /batches/{id}/cancel: unanswered lines are never answered (nor billed)."""
        batch = self._batches.get(request.match_info["batch_id"])
        if batch is None:
            return error_response(404, "No such batch")
        if batch.status in ("validating", "in_progress"):
            batch.status, batch.ended_at = "cancelled", int(time.time())
        return web.json_response(self._obj(batch))

    def _advance(self, batch: _Batch) -> None:
        if batch.status == "validating":
            batch.status = "in_progress"
        if batch.status != "in_progress" or \
                time.time() < batch.created_at + self.settings.delay_s:
            return
        lines = [line for line in self._files[batch.input_file_id].splitlines() if line.strip()]
        if self.settings.expire:
            lines = lines[:len(lines) // 2]
        rng = random.Random(f"{self._seed}:{batch.id}")
        out: list[bytes] = []
        errors: list[bytes] = []
        for line in lines:
            answer, ok = self._answer(batch, line, rng)
            (out if ok else errors).append(orjson.dumps(answer))
        batch.completed, batch.failed = len(out), len(errors)
        batch.output_file_id = self._keep(out)
        batch.error_file_id = self._keep(errors)
        batch.status = "expired" if self.settings.expire else "completed"
        batch.ended_at = int(time.time())

    def _keep(self, lines: list[bytes]) -> str | None:
        if not lines:
            return None
        file_id = f"file-{secrets.token_hex(12)}"
        self._files[file_id] = b"\n".join(lines) + b"\n"
        return file_id

    def _answer(self, batch: _Batch, line: bytes, rng: random.Random
                ) -> tuple[dict[str, Any], bool]:
        """One output (or error) line; billed like a chat completion, at the batch price."""
        custom_id = _custom_id(line)
        line_id = f"batch_req_{secrets.token_hex(12)}"
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            item = None
        body = item.get("body") if isinstance(item, dict) else None
        order = parse_order(body, batch.dialect, self._models)
        if isinstance(order, Rejection) or rng.random() < self.settings.line_error_rate:
            status = order.status if isinstance(order, Rejection) else 500
            message = order.message if isinstance(order, Rejection) else "simulated line error"
            return {"id": line_id, "custom_id": custom_id, "error": None,
                    "response": {"status_code": status, "request_id": line_id,
                                 "body": {"error": {"message": message, "code": status}}}}, \
                False
        model = order.model
        completion = generate(sim_seed=self._seed, model_id=model.id, messages=order.messages,
                              request_seed=order.request_seed, reasoning=model.reasoning,
                              cap_tokens=order.cap_tokens, json_format=order.json_format)
        head = new_head(batch.dialect, model)
        usage_obj = usage(head, model, order.prompt_tokens, completion)
        cost = BATCH_DISCOUNT * (order.prompt_tokens * model.prompt_usd_per_token
                                 + completion.completion_tokens * model.completion_usd_per_token
                                 + model.request_usd)
        if "cost" in usage_obj:
            usage_obj["cost"] = cost
        self._bill.append(Charge(time.time(), custom_id, model.id, False, 200, None, "batch",
                                 order.prompt_tokens, completion.completion_tokens, cost))
        obj = completion_obj(head, completion, usage_obj, order.reasoning_visible)
        return {"id": line_id, "custom_id": custom_id, "error": None,
                "response": {"status_code": 200, "request_id": line_id, "body": obj}}, True

    def _obj(self, batch: _Batch) -> dict[str, Any]:
        ended = batch.ended_at
        return {
            "id": batch.id, "object": "batch", "endpoint": "/v1/chat/completions",
            "errors": None, "input_file_id": batch.input_file_id, "completion_window": "24h",
            "status": batch.status, "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id, "created_at": batch.created_at,
            "in_progress_at": batch.created_at, "expires_at": batch.created_at + 86400,
            "completed_at": ended if batch.status == "completed" else None,
            "expired_at": ended if batch.status == "expired" else None,
            "cancelled_at": ended if batch.status == "cancelled" else None,
            "failed_at": None,
            "request_counts": {"total": batch.total, "completed": batch.completed,
                               "failed": batch.failed},
            "metadata": batch.metadata or None,
        }


def _custom_id(line: bytes) -> str:
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError:
        return ""
    value = item.get("custom_id") if isinstance(item, dict) else None
    return value if isinstance(value, str) else ""
