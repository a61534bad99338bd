"""The row contract: one `Result` per planned request, and the Arrow schema of result files.

Column names carry their units (`_s` seconds, `_usd` US dollars, `_at` UTC timestamps).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import pyarrow as pa

OK, ERROR, SKIPPED = "ok", "error", "skipped"
INTERRUPTED = "interrupted"   # error_type of a request cut off by Ctrl-C: `--resume` sends it again

# (column, kind): the kinds are spelled out here and made Arrow types in `arrow_schema`, so that
# a run can start (and send) before pyarrow is imported
TYPES: tuple[tuple[str, str], ...] = (
    ("run_id", "string"),
    ("job", "string"),
    ("request_id", "string"),
    ("index", "int64"),
    ("model", "category"),
    ("model_id", "string"),
    ("model_served", "string"),
    ("provider", "category"),
    ("upstream", "string"),
    ("prompt_id", "string"),
    ("repeat", "int32"),
    ("vars_json", "string"),
    ("status", "category"),
    ("error_type", "string"),
    ("error_message", "string"),
    ("http_status", "int32"),
    ("attempts", "int32"),
    ("started_at", "timestamp"),
    ("ended_at", "timestamp"),
    ("queue_s", "float64"),
    ("ttft_s", "float64"),
    ("latency_s", "float64"),
    ("wall_s", "float64"),
    ("tpot_s", "float64"),
    ("output_tokens_per_s", "float64"),
    ("prompt_tokens", "int64"),
    ("completion_tokens", "int64"),
    ("reasoning_tokens", "int64"),
    ("cached_tokens", "int64"),
    ("cost_usd", "float64"),
    ("cost_source", "string"),
    ("estimated_cost_usd", "float64"),
    ("cost_over_estimate", "bool"),
    ("finish_reason", "string"),
    ("native_finish_reason", "string"),
    ("generation_id", "string"),
    ("stream", "bool"),
    ("response_text", "string"),
    ("passed", "bool"),
    ("score", "float64"),
    ("check_failures", "string"),
    ("judge_cost_usd", "float64"),
    ("judge_prompt_tokens", "int64"),
    ("judge_completion_tokens", "int64"),
    # issue 12, checks: one JSON object per check (name, type, passed, score, weight, reason,
    # judge cost and tokens); checks.parquet is these, one line each
    ("checks_json", "string"),
    # conversations (turns:): per turn latency, ttft, tokens, cost, finish reason, reply (JSON)
    ("turns_json", "string"),
    # batch mode and the response cache (issue 15): `runner/batch.py`, `runner/cache.py`
    ("batch_id", "string"),
    ("batch_wall_s", "float64"),
    ("cache_hit", "bool"),
    ("cached_latency_s", "float64"),
    ("cached_ttft_s", "float64"),
    ("cached_cost_usd", "float64"),
    # issue 12, inputs: the row's id in its dataset, the rendered messages, target, metadata
    # (and one `var_<name>` column per var of the job: `var_column`, typed per job)
    ("row_id", "string"),
    ("messages_json", "string"),
    ("target", "string"),
    ("metadata_json", "string"),
    # load tests (runner/load.py): the stage, when it was due and how late it went out; and
    # the gaps between content chunks of a streamed answer (any run)
    ("stage", "string"),
    ("load_phase", "string"),
    ("requested_rps", "float64"),
    ("scheduled_at", "timestamp"),
    ("send_lag_s", "float64"),
    ("itl_p50_s", "float64"),
    ("itl_p99_s", "float64"),
    ("itl_max_s", "float64"),
    ("slo_met", "bool"),
)
COLUMNS = tuple(name for name, _ in TYPES)
VAR_PREFIX = "var_"   # `var_<name>`: one column per var (every dataset field), kinds per job


@functools.cache
def arrow_schema() -> pa.Schema:
    """The Arrow schema of result files (categories: int32 dictionaries; times: UTC, µs)."""
    import pyarrow as pa

    kinds = {"string": pa.string(), "int64": pa.int64(), "int32": pa.int32(),
             "float64": pa.float64(), "bool": pa.bool_(),
             "category": pa.dictionary(pa.int32(), pa.string()),
             "timestamp": pa.timestamp("us", tz="UTC")}
    return pa.schema([(name, kinds[kind]) for name, kind in TYPES])


if TYPE_CHECKING:
    SCHEMA: pa.Schema


def __getattr__(name: str) -> Any:  # `SCHEMA`: built (and pyarrow imported) on first use
    if name == "SCHEMA":
        return arrow_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    checks_json: str | None = None          # the per-check outcomes (see check_results)
    turns_json: str | None = None           # a conversation's turns (conversation.py)
    batch_id: str | None = None             # the provider batch that answered it
    batch_wall_s: float | None = None       # that batch's submission to its results
    cache_hit: bool | None = None           # None: the cache was off
    cached_latency_s: float | None = None   # a cache hit: the original answer's timings
    cached_ttft_s: float | None = None
    cached_cost_usd: float | None = None    # ...and what it cost then (cost_usd is 0)
    row_id: str | None = None               # the dataset row (its id field, else position-hash)
    messages_json: str | None = None        # the messages sent, rendered: [{role, content}]
    target: str | None = None               # the row's expected answer, rendered
    metadata_json: str | None = None        # the prompt's metadata and the row's metadata fields
    var_values: dict[str, Any] | None = None  # not a column: var name -> value (`var_<name>`)
    stage: str | None = None                # load tests: e.g. "03 poisson 4.5/s"
    load_phase: str | None = None           # warmup, measure (the figures) or cooldown
    requested_rps: float | None = None      # the stage's rate (a ramp: its mean); None: closed
    scheduled_at: datetime | None = None    # when the schedule said to send it
    send_lag_s: float | None = None         # how late it was sent (incl. waiting for the cap)
    itl_p50_s: float | None = None          # gaps between content chunks of the answer
    itl_p99_s: float | None = None
    itl_max_s: float | None = None
    slo_met: bool | None = None             # met every load.goodput SLO (None: none set)

    def as_row(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in _FIELD_NAMES}
        if self.var_values:
            row.update({VAR_PREFIX + k: v for k, v in self.var_values.items()})
        return row


def column_value(kind: str, value: Any) -> Any:
    """A var value as its `var_<name>` column stores it (`kind`: one of datasets.KINDS)."""
    if value is None:
        return None
    if kind == "json":
        return json_text(value)
    if kind == "string":
        return value if isinstance(value, str) else str(value)
    if kind == "float64" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def json_text(value: Any) -> str:
    """A value as compact JSON text (what the `_json` columns hold); never raises: what JSON
    has no form for is written as its text."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, ValueError):  # an integer beyond 64 bits, a nesting too deep
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def var_column(name: str) -> str:
    """The result column of a var."""
    return VAR_PREFIX + name


_FIELD_NAMES = tuple(f.name for f in fields(Result) if f.name != "var_values")
assert set(_FIELD_NAMES) == set(COLUMNS), set(_FIELD_NAMES) ^ set(COLUMNS)
