"""The batch routes of a provider's API: `POST /files`, `POST /batches`, `GET /batches[/{id}]`,
`POST /batches/{id}/cancel`, through `Endpoint.call` (bounded reads, no redirects, redacted
one-line `ProviderError`s); every answer checked before use.

Not the openai SDK's `files`/`batches`: the SDK reads a file's content whole with no size
bound and raises its own error types, where ours bounds every read, redacts every string and
fails in one line.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ..client import Endpoint
from ..errors import ProviderError
from ..responses import error_details, label
from .files import CHAT_URL, Chunk
from .store import BatchStore, Entry

log = logging.getLogger("runner")

CALL_TIMEOUT_S = 120.0
BATCH_OBJECT_BYTES = 1024 * 1024      # a batch object (or a page of them) is small
LIST_PAGES = 50                       # of the provider's batch list, looking for a lost id
CLOCK_SLACK_S = 300.0                 # our clock against the provider's created_at
STATUSES = frozenset({"validating", "in_progress", "finalizing", "completed", "failed",
                      "expired", "cancelling", "cancelled"})


async def create(endpoint: Endpoint, run_id: str, chunk: Chunk) -> str:
    """Upload the chunk's input file and create its batch; the batch id."""
    data, content_type = upload_form(chunk.data, f"{chunk.key}.jsonl")
    file_obj = await call_json(endpoint, "POST", "files", data=data, content_type=content_type,
                               timeout_s=CALL_TIMEOUT_S + len(chunk.data) / 1e6)
    file_id = safe_id(file_obj.get("id"))
    if not file_id:
        raise ProviderError(f"POST files: no file id in the answer ({_keys(file_obj)})")
    batch = await call_json(endpoint, "POST", "batches", json_body={
        "input_file_id": file_id, "endpoint": CHAT_URL, "completion_window": "24h",
        "metadata": {"runner_run": run_id, "runner_chunk": chunk.key}})
    batch_id = safe_id(batch.get("id"))
    if not batch_id:
        raise ProviderError(f"POST batches: no batch id in the answer ({_keys(batch)})")
    return batch_id


def upload_form(data: bytes, filename: str) -> tuple[bytes, str]:
    """The multipart/form-data body of a `POST /files` (purpose `batch`, the file as JSONL) and
    its content type. Two fixed parts (RFC 7578) written here: the HTTP client takes bytes, and
    the libraries that write forms want their own connection to write them to."""
    boundary = secrets.token_hex(16)
    while boundary.encode() in data:  # as good as never; a boundary may not occur in a part
        boundary = secrets.token_hex(16)
    name = filename.replace('"', "").replace("\r", "").replace("\n", "")
    body = b"".join([
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n".encode(),
        data, f"\r\n--{boundary}--\r\n".encode()])
    return body, f"multipart/form-data; boundary={boundary}"


async def find_lost(endpoint: Endpoint, run_id: str, entry: Entry) -> tuple[str | None, bool]:
    """The id of the batch created for `entry` whose id never reached our file, found by the
    metadata we gave it in the provider's list of batches (newest first, page by page, back to
    the ones created before the entry); and whether a None is certain (the list was read back
    that far: nothing was created, nothing will be billed)."""
    after = ""
    for _ in range(LIST_PAGES):
        try:
            page = await call_json(endpoint, "GET", f"batches?limit=100{after}")
        except ProviderError as exc:
            log.warning("batch %s: cannot list the provider's batches (%s); its requests are "
                        "sent again", entry.key, exc)
            return None, False
        data = page.get("data")
        items = [item for item in data if type(item) is dict] if type(data) is list else []
        for item in items:
            meta = item.get("metadata")
            if type(meta) is dict and meta.get("runner_run") == run_id \
                    and meta.get("runner_chunk") == entry.key:
                return safe_id(item.get("id")), True
        created = [float(item["created_at"]) for item in items
                   if type(item.get("created_at")) in (int, float)]
        if page.get("has_more") is not True:
            return None, True  # read to the end of the list
        if created and min(created) < entry.at - CLOCK_SLACK_S:
            return None, True  # read back to batches older than the entry
        if not items:
            return None, False
        after = f"&after={safe_id(items[-1].get('id')) or ''}"
    return None, False


async def call_json(endpoint: Endpoint, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """A JSON object from the batch routes; `ProviderError` (one redacted line) otherwise."""
    timeout_s = kwargs.pop("timeout_s", CALL_TIMEOUT_S)
    status, raw = await endpoint.call(method, path, max_bytes=BATCH_OBJECT_BYTES,
                                      timeout_s=timeout_s, **kwargs)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if status != 200 or type(body) is not dict:
        message, _ = error_details(raw)
        raise ProviderError(endpoint.redact.clip(
            f"{method} {path.split('?')[0]}: HTTP {status}: {message or 'no JSON object'}", 500))
    return body


def safe_id(value: object) -> str | None:
    """A file or batch id we put in a URL path: letters, digits and `-_.:`, at most 200
    characters; anything else (a path, a query, a number of another type) is no id."""
    text = label(value)
    return text if text is not None and _ID.fullmatch(text) else None


_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")


def _keys(obj: dict[str, Any]) -> str:
    return ", ".join(sorted(str(k) for k in obj)[:10]) or "empty"


async def cancel_batches(run_dir: Path, run_id: str,
                         endpoints: Mapping[str, object]) -> list[str]:
    """Cancel every batch of the run without a `done` line (those whose id was lost too, found
    by their metadata); one line per batch."""
    lines = []
    for entry in BatchStore(run_dir).read().values():
        endpoint = endpoints.get(entry.provider)
        if entry.done:
            continue
        if not isinstance(endpoint, Endpoint):
            lines.append(f"{entry.key}: provider {entry.provider!r} is not in the job")
            continue
        if entry.batch_id is None:
            entry.batch_id, _ = await find_lost(endpoint, run_id, entry)
            if entry.batch_id is None:
                continue
        try:
            obj = await call_json(endpoint, "POST", f"batches/{entry.batch_id}/cancel",
                              json_body={})
            status = obj.get("status")
            lines.append(f"{entry.batch_id}: "
                         f"{status if status in STATUSES else 'cancel asked'}")
        except ProviderError as exc:
            lines.append(f"{entry.batch_id}: {exc}")
    return lines
