"""Model catalogues: an endpoint in, its model ids and prices out, cached on disk with a TTL.

OpenRouter's `/models` is large and changes slowly; a run reads it from
`$XDG_CACHE_HOME/runner/` (default `~/.cache/runner/`) when the copy there is younger than
`CACHE_TTL_S`, and `--refresh-prices` fetches it anew. The simulator's catalogue is never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from .client import Endpoint
from .collect import write_atomic
from .pricing import Price, catalogue_prices

CACHE_TTL_S = 24 * 3600.0
_KEEP = ("id", "pricing", "top_provider", "context_length")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "runner"


def _cache_path(endpoint: Endpoint) -> Path:
    digest = hashlib.sha256(endpoint.base_url.encode()).hexdigest()[:12]
    return cache_dir() / f"models-{endpoint.provider.name}-{digest}.json"


async def load_catalogue(endpoint: Endpoint, *, refresh: bool = False,
                         ttl_s: float = CACHE_TTL_S) -> tuple[set[str], dict[str, Price]]:
    """Model ids and prices of one endpoint, from the disk cache when it is fresh."""
    entries: list[dict[str, Any]] | None = None
    path = None if endpoint.provider.simulated else _cache_path(endpoint)
    if path is not None and not refresh:
        entries = _read_cache(path, ttl_s)
    if entries is None:
        entries = [{k: e.get(k) for k in _KEEP} for e in await endpoint.models()]
        if path is not None and entries:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, json.dumps({"fetched_at": time.time(),
                                               "data": entries}).encode())
            except OSError:
                pass  # a read-only home must not stop a run; we just fetch next time
    ids = {e["id"] for e in entries if isinstance(e.get("id"), str)}
    return ids, catalogue_prices(entries)


def _read_cache(path: Path, ttl_s: float) -> list[dict[str, Any]] | None:
    try:
        body = json.loads(path.read_text())
        if time.time() - float(body["fetched_at"]) > ttl_s:
            return None
        data = body["data"]
        return data if isinstance(data, list) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
