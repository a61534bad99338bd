"""Model catalogues: an endpoint in, its model ids and prices out, cached on disk with a TTL.

Entries are untrusted like anything a server sends: only the fields we use are kept, with the
types `pricing` expects, and an entry without a usable id is dropped.

OpenRouter's `/models` is large and changes slowly; a run reads it from
`$XDG_CACHE_HOME/runner/` (default `~/.cache/runner/`) when the copy there is younger than
`CACHE_TTL_S`, and `--refresh-prices` fetches it anew. The simulator's catalogue is never cached.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .client import CATALOGUE_TIMEOUT_S, Endpoint
from .pricing import Price, catalogue_prices
from .rundir import write_atomic

CACHE_TTL_S = 24 * 3600.0
MAX_ID_CHARS = 300
# what `pricing.price_from_entry` reads
PRICE_KEYS = ("prompt", "completion", "request", "web_search")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "runner"


def _cache_path(endpoint: Endpoint) -> Path:
    digest = hashlib.sha256(endpoint.base_url.encode()).hexdigest()[:12]
    return cache_dir() / f"models-{endpoint.provider.name}-{digest}.json"


async def load_catalogue(endpoint: Endpoint, *, refresh: bool = False,
                         ttl_s: float = CACHE_TTL_S, timeout_s: float = CATALOGUE_TIMEOUT_S,
                         ) -> tuple[set[str], dict[str, Price]]:
    """Model ids and prices of one endpoint, from the disk cache when it is fresh; raises
    `client.NoCatalogue` when the endpoint has no usable `/models`."""
    entries: list[dict[str, Any]] | None = None
    path = None if endpoint.provider.simulated else _cache_path(endpoint)
    if path is not None and not refresh:
        entries = _read_cache(path, ttl_s)
    if entries is None:
        cleaned = (clean_entry(e, endpoint.redact) for e in
                   await endpoint.models(timeout_s=timeout_s))
        entries = [e for e in cleaned if e is not None]
        if path is not None and entries:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, json.dumps({"fetched_at": time.time(),
                                               "data": entries}).encode())
            except OSError:
                pass  # a read-only home must not stop a run; we just fetch next time
    ids = {e["id"] for e in entries}
    return ids, catalogue_prices(entries)


def clean_entry(entry: Mapping[str, Any], redact: Callable[[str], str] = str,
                ) -> dict[str, Any] | None:
    """The parts of a `/models` entry we use, with the types `pricing` expects; None when it has
    no usable id. A price that is not a finite number >= 0 drops the whole price (unknown, not
    0)."""
    model_id = entry.get("id")
    if type(model_id) is not str or not model_id or len(model_id) > MAX_ID_CHARS:
        return None
    pricing = entry.get("pricing")
    if type(pricing) is dict:
        pricing = {k: pricing[k] for k in PRICE_KEYS if k in pricing}
        if not all(_price_value(v) for v in pricing.values()):
            pricing = None
    else:
        pricing = None
    top = entry.get("top_provider")
    cap = top.get("max_completion_tokens") if type(top) is dict else None
    return {
        "id": redact(model_id),
        "pricing": pricing,
        "top_provider": {"max_completion_tokens": _positive_int(cap)},
        "context_length": _positive_int(entry.get("context_length")),
    }


def _price_value(value: object) -> bool:
    if value is None:
        return True
    if type(value) not in (str, int, float) or (type(value) is str and len(value) > 40):
        return False
    try:
        number = float(value)  # type: ignore[arg-type]
    except ValueError:
        return False
    return math.isfinite(number) and number >= 0  # a negative price would credit the budget


def _positive_int(value: object) -> int | None:
    return value if type(value) is int and value > 0 else None


def _read_cache(path: Path, ttl_s: float) -> list[dict[str, Any]] | None:
    try:
        body = json.loads(path.read_text())
        if time.time() - float(body["fetched_at"]) > ttl_s:
            return None
        data = body["data"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(data, list):
        return None
    cleaned = (clean_entry(e) for e in data if isinstance(e, dict))
    return [e for e in cleaned if e is not None]
