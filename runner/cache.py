"""The response cache: a request about to be sent in, its earlier answer (or nothing) out; a
successful answer in, kept for the next identical request. Off unless a job says `cache: true`
or a run `--cache`.

Keyed by the endpoint's URL and the exact request body (model, messages, params, seed), plus the
repeat number: repeat k of a request is answered only by repeat k of an earlier run, so the
repeats of one run never share an answer (each is a new sample). The key is a SHA-256; the API
key is a header, never part of the body, so it is neither keyed on nor stored, and the answer's
strings were redacted before they got here. A hit is a row with `cache_hit = true`,
`cost_usd = 0`, the original timings and cost in `cached_latency_s`, `cached_ttft_s`,
`cached_cost_usd`, and the measured timing columns null, so no report mixes the two.

One SQLite file (stdlib) in the user's cache directory ($RUNNER_CACHE_DIR, else
$XDG_CACHE_HOME/runner, else ~/.cache/runner), in WAL mode with a busy timeout so several
processes can share it, kept under `max_bytes` by dropping the least recently used answers.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from .errors import ResultsError
from .result import OK, Result

if TYPE_CHECKING:
    from .client import Endpoint
    from .config import Job
    from .plan import Request

FILE_NAME = "responses.sqlite3"
DEFAULT_MAX_BYTES = 512 * 1024 * 1024   # $RUNNER_CACHE_MAX_MB overrides it
BUSY_TIMEOUT_S = 10.0
CHECK_EVERY = 64                        # puts between size checks
KEPT = ("response_text", "prompt_tokens", "completion_tokens", "reasoning_tokens",
        "cached_tokens", "finish_reason", "native_finish_reason", "model_served", "upstream",
        "generation_id", "http_status", "latency_s", "ttft_s", "tpot_s", "output_tokens_per_s",
        "cost_usd")


def cache_dir() -> Path:
    """Where the cache lives: $RUNNER_CACHE_DIR, else $XDG_CACHE_HOME/runner, else
    ~/.cache/runner."""
    override = os.environ.get("RUNNER_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "runner"


def max_bytes() -> int:
    """The cache's size bound ($RUNNER_CACHE_MAX_MB, else 512 MB)."""
    text = os.environ.get("RUNNER_CACHE_MAX_MB", "")
    try:
        value = float(text) if text else 0.0
    except ValueError:
        value = 0.0
    return int(value * 1024 * 1024) if value > 0 else DEFAULT_MAX_BYTES


def open_cache(job: Job, flag: bool | None) -> ResponseCache | None:
    """The cache, when the run (`--cache`) or else the job (`cache: true`) turns it on."""
    on = flag if flag is not None else job.cache
    return ResponseCache(cache_dir() / FILE_NAME, max_bytes()) if on else None


def request_key(endpoint: Endpoint, request: Request) -> str:
    """The key of a request: its URL, exact body and repeat number, hashed."""
    from .client import build_body

    body = build_body(endpoint.provider, request, bool(request.params.get("stream", True)))
    # the embedded simulator listens on a new port each run: it is named, not addressed
    where = "simulated" if endpoint.provider.simulated else endpoint.base_url
    digest = hashlib.sha256(f"{where}chat/completions\n".encode())
    digest.update(body)
    digest.update(f"\nrepeat {request.repeat}".encode())
    return digest.hexdigest()


class ResponseCache:
    """A size-bounded SQLite store of answers; safe to share between processes."""

    __slots__ = ("path", "max_bytes", "hits", "stored", "_db", "_lock", "_puts")

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.hits = 0
        self.stored = 0
        self._puts = 0
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, "
                             "value BLOB NOT NULL, size INTEGER NOT NULL, used REAL NOT NULL)")
            self._db.execute("CREATE INDEX IF NOT EXISTS answers_used ON answers (used)")
        except (OSError, sqlite3.Error) as exc:
            raise ResultsError(f"{path}: cannot open the response cache ({exc}); set "
                               "RUNNER_CACHE_DIR to a writable folder or run without "
                               "--cache") from None

    # -- the run's side -------------------------------------------------------------------------

    async def answer(self, endpoint: Endpoint, request: Request, result: Result) -> bool:
        """Fill `result` from an earlier identical request's answer; False when there is none
        (then `result.cache_hit` is False: the row was measured)."""
        record = await anyio.to_thread.run_sync(self.get, request_key(endpoint, request))
        result.cache_hit = record is not None
        if record is None:
            return False
        self.hits += 1
        for name in KEPT:
            setattr(result, name, record.get(name))
        result.status, result.error_type, result.error_message = OK, None, None
        result.cached_latency_s, result.cached_ttft_s = record.get("latency_s"), \
            record.get("ttft_s")
        result.cached_cost_usd = record.get("cost_usd")
        result.latency_s = result.ttft_s = result.tpot_s = result.output_tokens_per_s = None
        result.cost_usd, result.cost_source = 0.0, "cache"
        return True

    async def keep(self, endpoint: Endpoint, request: Request, result: Result) -> None:
        """Store a successful answer for the next identical request."""
        if result.status != OK or result.cache_hit:
            return
        record = {name: getattr(result, name) for name in KEPT}
        await anyio.to_thread.run_sync(self.put, request_key(endpoint, request), record)
        self.stored += 1

    def stats(self) -> dict[str, Any]:
        """What this run did with the cache (for run.json)."""
        return {"hits": self.hits, "stored": self.stored, "path": str(self.path)}

    # -- the store ------------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE answers SET used = ? WHERE key = ?", (time.time(), key))
        try:
            value = orjson.loads(row[0])
        except orjson.JSONDecodeError:
            return None
        return value if type(value) is dict else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        value = orjson.dumps(record)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)",
                             (key, value, len(value) + len(key), time.time()))
            self._puts += 1
            if self._puts % CHECK_EVERY == 1:
                self._evict()

    def _evict(self) -> None:
        """Drop the least recently used answers until the store is under 90% of its bound."""
        total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM answers").fetchone()[0]
        while total > self.max_bytes:
            goal = total - int(self.max_bytes * 0.9)
            rows = self._db.execute("SELECT key, size FROM answers ORDER BY used LIMIT 512"
                                    ).fetchall()
            if not rows:
                break
            dropped: list[str] = []
            for key, size in rows:
                dropped.append(key)
                total -= size
                goal -= size
                if goal <= 0:
                    break
            self._db.executemany("DELETE FROM answers WHERE key = ?", [(k,) for k in dropped])

    def info(self) -> dict[str, Any]:
        """Where the cache is, how many answers it holds and their size."""
        with self._lock:
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM answers").fetchone()
        return {"path": str(self.path), "answers": count, "bytes": size,
                "max_bytes": self.max_bytes}

    def clear(self) -> int:
        """Forget every answer; how many there were."""
        with self._lock:
            count = self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
            self._db.execute("DELETE FROM answers")
            self._db.execute("VACUUM")
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()
