"""The row contract: one `Result` per planned request, and the Arrow schema of result files.

Column names carry their units (`_s` seconds, `_usd` US dollars, `_at` UTC timestamps).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import pyarrow as pa

OK, ERROR, SKIPPED = "ok", "error", "skipped"
INTERRUPTED = "interrupted"   # error_type of a request cut off by Ctrl-C: `--resume` sends it again

_CAT = pa.dictionary(pa.int32(), pa.string())
_TS = pa.timestamp("us", tz="UTC")

SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("job", pa.string()),
    ("request_id", pa.string()),
    ("index", pa.int64()),
    ("model", _CAT),
    ("model_id", pa.string()),
    ("model_served", pa.string()),
    ("provider", _CAT),
    ("upstream", pa.string()),
    ("prompt_id", pa.string()),
    ("repeat", pa.int32()),
    ("vars_json", pa.string()),
    ("status", _CAT),
    ("error_type", pa.string()),
    ("error_message", pa.string()),
    ("http_status", pa.int32()),
    ("attempts", pa.int32()),
    ("started_at", _TS),
    ("ended_at", _TS),
    ("queue_s", pa.float64()),
    ("ttft_s", pa.float64()),
    ("latency_s", pa.float64()),
    ("wall_s", pa.float64()),
    ("tpot_s", pa.float64()),
    ("output_tokens_per_s", pa.float64()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("reasoning_tokens", pa.int64()),
    ("cached_tokens", pa.int64()),
    ("cost_usd", pa.float64()),
    ("cost_source", pa.string()),
    ("estimated_cost_usd", pa.float64()),
    ("cost_over_estimate", pa.bool_()),
    ("finish_reason", pa.string()),
    ("native_finish_reason", pa.string()),
    ("generation_id", pa.string()),
    ("stream", pa.bool_()),
    ("response_text", pa.string()),
    ("passed", pa.bool_()),
    ("score", pa.float64()),
    ("check_failures", pa.string()),
    ("judge_cost_usd", pa.float64()),
    ("judge_prompt_tokens", pa.int64()),
    ("judge_completion_tokens", pa.int64()),
])

COLUMNS = tuple(SCHEMA.names)


@dataclass(slots=True)
class Result:
    """One request's outcome; every field is a result-file column of the same name."""

    run_id: str
    job: str
    request_id: str
    index: int
    model: str
    model_id: str
    provider: str
    prompt_id: str
    repeat: int
    vars_json: str
    status: str = ERROR
    stream: bool | None = None
    model_served: str | None = None
    upstream: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    queue_s: float | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    wall_s: float | None = None
    tpot_s: float | None = None
    output_tokens_per_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    cost_usd: float | None = None
    cost_source: str | None = None
    estimated_cost_usd: float | None = None
    cost_over_estimate: bool | None = None
    finish_reason: str | None = None
    native_finish_reason: str | None = None
    generation_id: str | None = None
    response_text: str | None = None
    passed: bool | None = None              # None: no checks applied (or not sent)
    score: float | None = None              # mean check score, 0..1
    check_failures: str | None = None       # "label: why; label: why"
    judge_cost_usd: float | None = None     # llm_judge: what grading this row cost
    judge_prompt_tokens: int | None = None
    judge_completion_tokens: int | None = None

    def as_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELD_NAMES}


_FIELD_NAMES = tuple(f.name for f in fields(Result))
assert set(_FIELD_NAMES) == set(COLUMNS), set(_FIELD_NAMES) ^ set(COLUMNS)
