"""Pydantic models of a job file as written in YAML; `config.load_job` turns them into a `Job`.

Every model forbids unknown keys so that a typo is an error, never a silently ignored setting.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SCALAR = str | int | float | bool


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamsIn(Strict):
    """Sampling parameters; a model's own `params` override the job's."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    response_format: dict[str, Any] | None = None
    stream: bool | None = None


class LimitsIn(Strict):
    """How hard the runner may push an endpoint (job-, provider- or model-level)."""

    concurrency: int | None = Field(default=None, gt=0, le=10_000)
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    stall_timeout_s: float | None = Field(default=None, gt=0)
    retries: int | None = Field(default=None, ge=0, le=20)
    max_retry_wait_s: float | None = Field(default=None, ge=0)
    max_response_bytes: int | None = Field(default=None, gt=0)
    max_error_bytes: int | None = Field(default=None, gt=0)
    max_stream_events: int | None = Field(default=None, gt=0)


class ProviderIn(Strict):
    """A named endpoint. Built-ins `openrouter` and `simulated` need no entry at all."""

    base_url: str | None = None
    api_key_env: str | None = None
    headers: dict[str, str] = {}
    openrouter: bool | None = None
    stream_usage: bool = True
    limits: LimitsIn | None = None
    check_models: bool = True     # false: send model ids its /models does not list (aliases)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https:// (got {value!r})")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(
                f"must be the NAME of an environment variable, not a key (got {len(value)} chars)"
            )
        return value


class FaultsIn(Strict):
    """Fault injection of a simulated model: probabilities per request, 0..1."""

    error_rate: float = Field(default=0.0, ge=0, le=1)
    error_statuses: list[int] = [500, 502, 503]
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1)
    retry_after_s: float = Field(default=1.0, ge=0)
    hang_rate: float = Field(default=0.0, ge=0, le=1)
    disconnect_rate: float = Field(default=0.0, ge=0, le=1)
    stream_error_rate: float = Field(default=0.0, ge=0, le=1)
    error_body_rate: float = Field(default=0.0, ge=0, le=1)
    malformed_rate: float = Field(default=0.0, ge=0, le=1)
    # hostile servers (see runner/simulator/models.py FAULT_NAMES)
    echo_error_rate: float = Field(default=0.0, ge=0, le=1)
    echo_text_rate: float = Field(default=0.0, ge=0, le=1)
    odd_shape_rate: float = Field(default=0.0, ge=0, le=1)
    negative_cost_rate: float = Field(default=0.0, ge=0, le=1)
    overbill_rate: float = Field(default=0.0, ge=0, le=1)
    overbill_factor: float = Field(default=100.0, ge=1)
    endless_stream_rate: float = Field(default=0.0, ge=0, le=1)
    gzip_bomb_rate: float = Field(default=0.0, ge=0, le=1)
    gzip_bomb_bytes: int = Field(default=64 * 1024 * 1024, ge=1, le=1 << 34)
    redirect_rate: float = Field(default=0.0, ge=0, le=1)
    json_to_stream_rate: float = Field(default=0.0, ge=0, le=1)
    long_retry_after_rate: float = Field(default=0.0, ge=0, le=1)
    long_retry_after_s: float = Field(default=86400.0, ge=0)


class SimModelIn(Strict):
    """A simulated model: a new one, or overrides of a built-in one with the same id."""

    id: str
    usd_per_mtok_prompt: float | None = Field(default=None, ge=0)
    usd_per_mtok_completion: float | None = Field(default=None, ge=0)
    usd_per_request: float | None = Field(default=None, ge=0)
    ttft_s: float | None = Field(default=None, ge=0)
    tokens_per_s: float | None = Field(default=None, ge=0)
    jitter_s: float | None = Field(default=None, ge=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    reasoning: bool | None = None
    faults: FaultsIn | None = None


class CapacityIn(Strict):
    """The simulated server's capacity: beyond it requests queue and their TTFT grows."""

    concurrent: int = Field(gt=0, le=100_000)          # generations running at once
    tokens_per_s: float | None = Field(default=None, gt=0)   # output tokens/s, all together


class SimulatorIn(Strict):
    seed: int = 0
    models: list[SimModelIn] = []
    capacity: CapacityIn | None = None


class MaxPriceIn(Strict):
    """OpenRouter's provider.max_price: skip upstreams dearer than this (USD per million tokens,
    per request for `request`)."""

    prompt: float | None = Field(default=None, ge=0)
    completion: float | None = Field(default=None, ge=0)
    request: float | None = Field(default=None, ge=0)
    image: float | None = Field(default=None, ge=0)


class PriceIn(Strict):
    """A model's price for endpoints without a catalogue (or to override it)."""

    usd_per_mtok_prompt: float = Field(ge=0)
    usd_per_mtok_completion: float = Field(ge=0)
    usd_per_request: float = Field(default=0.0, ge=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)


class ModelIn(Strict):
    id: str = Field(min_length=1)
    provider: str | None = None
    alias: str | None = Field(default=None, min_length=1)
    params: ParamsIn | None = None
    extra_body: dict[str, Any] = {}
    limits: LimitsIn | None = None
    max_price_usd_per_mtok: MaxPriceIn | None = None


class MessageIn(Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str


class PromptIn(Strict):
    id: str | None = Field(default=None, min_length=1)
    text: str | None = None
    messages: list[MessageIn] | None = None
    system: str | None = None
    vars: dict[str, SCALAR | list[SCALAR]] = {}
    expected: Any = None
    metadata: dict[str, Any] = {}
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PromptIn:
        given = [k for k in ("text", "messages", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of text, messages or file"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.file is not None and (self.id or self.system or self.vars or self.expected):
            raise ValueError("a `file:` item takes no other keys; put them in the file's rows")
        return self


class OutputIn(Strict):
    dir: str = "results"
    csv: bool = True


CHECK_TYPES = ("equals", "contains", "icontains", "not_contains", "regex", "json_valid",
               "json_schema", "max_latency_s", "max_cost_usd", "python", "llm_judge")
"""The keys that name a check's type; a check gives exactly one of them (see runner/checks.py)."""


class JudgeIn(Strict):
    """An LLM judge: a model grades each response against a rubric with a score 0..1."""

    model: str = Field(min_length=1)
    provider: str | None = None              # default: the job's provider
    rubric: str = Field(min_length=1)
    max_tokens: int = Field(default=300, gt=0)


class CheckIn(Strict):
    """One check of a response: exactly one type key (CHECK_TYPES), plus options."""

    equals: str | None = None
    contains: str | None = None
    icontains: str | None = None
    not_contains: str | None = None
    regex: str | None = None
    json_valid: Literal[True] | None = None
    json_schema: dict[str, Any] | None = None
    max_latency_s: float | None = Field(default=None, gt=0)
    max_cost_usd: float | None = Field(default=None, ge=0)
    python: str | None = None
    llm_judge: JudgeIn | None = None
    prompts: list[str] | None = Field(default=None, min_length=1)  # job-level checks only
    strict: bool | None = None                       # json_schema: response_format strict mode
    min_score: float | None = Field(default=None, ge=0, le=1)     # python: passing score

    @field_validator("equals", "contains", "icontains", "not_contains", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) \
            else value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from jsonschema import SchemaError, validators

            try:
                validators.validator_for(value).check_schema(value)
            except SchemaError as exc:
                where = "/".join(str(p) for p in exc.path)
                raise ValueError(f"invalid JSON schema{' at ' + where if where else ''}: "
                                 f"{exc.message}") from None
        return value

    @field_validator("python")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            raise ValueError(f"must be 'module:function' (got {value!r})")
        return value

    @model_validator(mode="after")
    def _one_type(self) -> CheckIn:
        given = [k for k in CHECK_TYPES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one check type of {', '.join(CHECK_TYPES)}"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.strict is not None and self.json_schema is None:
            raise ValueError("strict: only applies to a json_schema check")
        if self.min_score is not None and self.python is None and self.llm_judge is None:
            raise ValueError("min_score: only applies to a python or llm_judge check")
        return self


class StageIn(Strict):
    """One stage of a load test (see runner/load_plan.py for which keys each mode takes)."""

    mode: Literal["constant", "poisson", "ramp", "concurrency", "synchronous", "throughput",
                  "sweep"]
    rate_rps: float | None = Field(default=None, gt=0, le=1_000_000)
    to_rate_rps: float | None = Field(default=None, gt=0, le=1_000_000)
    ramp: Literal["linear", "exponential"] | None = None
    burstiness: float | None = Field(default=None, gt=0, le=1000)
    concurrency: int | None = Field(default=None, gt=0, le=10_000)
    duration_s: float | None = Field(default=None, gt=0)
    requests: int | None = Field(default=None, gt=0, le=10_000_000)
    warmup_s: float = Field(default=0.0, ge=0)
    cooldown_s: float = Field(default=0.0, ge=0)
    rates: int | None = Field(default=None, ge=1, le=100)          # sweep: K rates between
    arrivals: Literal["constant", "poisson"] | None = None        # sweep: of its K stages
    up_to: float | None = Field(default=None, gt=0, le=10)         # sweep: top rate x throughput


class GoodputIn(Strict):
    """Service-level objectives: a request counts toward goodput when it meets every one."""

    ttft_s: float | None = Field(default=None, gt=0)
    tpot_s: float | None = Field(default=None, gt=0)
    itl_s: float | None = Field(default=None, gt=0)
    latency_s: float | None = Field(default=None, gt=0)


class LoadIn(StageIn):
    """A load test: one stage (its keys inline) or `stages:`, sent in order."""

    mode: Literal["constant", "poisson", "ramp", "concurrency", "synchronous", "throughput",
                  "sweep"] | None = None  # type: ignore[assignment]
    stages: list[StageIn] | None = Field(default=None, min_length=1, max_length=200)
    max_concurrency: int = Field(default=512, gt=0, le=10_000)
    order: Literal["cycle", "sample"] = "cycle"
    seed: int = 0
    goodput: GoodputIn | None = None


class JobIn(Strict):
    name: str
    description: str = ""
    provider: str = "openrouter"
    providers: dict[str, ProviderIn] = {}
    simulator: SimulatorIn = SimulatorIn()
    models: list[str | ModelIn] = Field(min_length=1)
    system: str | None = None
    prompts: list[str | PromptIn] = Field(min_length=1)
    vars: dict[str, SCALAR | list[SCALAR]] = {}
    params: ParamsIn = ParamsIn()
    repeats: int = Field(default=1, ge=1, le=100_000)
    limits: LimitsIn = LimitsIn()
    pricing: dict[str, PriceIn] = {}
    budget_usd: float | None = Field(default=None, gt=0)
    max_cost_per_request_usd: float | None = Field(default=None, gt=0)
    output: OutputIn = OutputIn()
    checks: list[CheckIn] = []
    load: LoadIn | None = None                  # a load test: when each request is sent

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not SAFE_NAME.fullmatch(value) or value in {".", ".."}:
            raise ValueError(
                f"must be one safe folder name: letters, digits, '.', '_', '-' (got {value!r})"
            )
        return value


def model_names() -> set[str]:
    """The class name of every job-file model (pydantic puts them into error locations)."""
    found, todo = set(), list(Strict.__subclasses__())
    while todo:  # subclasses of subclasses too (LoadIn extends StageIn)
        model = todo.pop()
        found.add(model.__name__)
        todo += model.__subclasses__()
    return found


def field_names() -> set[str]:
    """Every key any job-file section accepts (for 'did you mean' hints)."""
    names: set[str] = set()
    for model in (JudgeIn, MaxPriceIn, PriceIn, ParamsIn, LimitsIn, ProviderIn, FaultsIn,
                  SimModelIn, SimulatorIn, ModelIn, MessageIn, PromptIn, OutputIn, CheckIn,
                  JobIn, StageIn, GoodputIn, LoadIn, CapacityIn):
        names.update(model.model_fields)
    return names
