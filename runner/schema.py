"""Pydantic models of a job file as written in YAML; `config.load_job` turns them into a `Job`.

Every model forbids unknown keys so that a typo is an error, never a silently ignored setting.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

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


class BatchIn(Strict):
    """How a provider's batch API is used (`batch: true`): its per-file limits, the polling,
    and the batch price (a discount off the chat price)."""

    max_requests: int | None = Field(default=None, gt=0, le=1_000_000)
    max_bytes: int | None = Field(default=None, gt=0)
    poll_s: float | None = Field(default=None, gt=0)
    poll_max_s: float | None = Field(default=None, gt=0)
    max_wait_s: float | None = Field(default=None, gt=0)
    discount: float | None = Field(default=None, ge=0, lt=1)


class ProviderIn(Strict):
    """A named endpoint. Built-ins `openrouter` and `simulated` need no entry at all."""

    base_url: str | None = None
    api_key_env: str | None = None
    headers: dict[str, str] = {}
    openrouter: bool | None = None
    stream_usage: bool = True
    limits: LimitsIn | None = None
    check_models: bool = True     # false: send model ids its /models does not list (aliases)
    batch: bool | None = None     # send its requests through its batch API (issue 15)
    batch_options: BatchIn | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https:// (got {value!r})")
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must not contain spaces or control characters")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        if not parts.hostname:
            raise ValueError(f"has no host name (got {value!r})")
        return value

    @field_validator("headers")
    @classmethod
    def _header_lines(cls, value: dict[str, str]) -> dict[str, str]:
        from .transport import check_header  # what the HTTP client will send, checked now

        for name, text in value.items():
            check_header(name, text)
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
    batch_delay_s: float = Field(default=0.0, ge=0)          # its batch API (issue 15)
    batch_expire: bool = False
    batch_line_error_rate: float = Field(default=0.0, ge=0, le=1)
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
    batch_discount: float | None = Field(default=None, ge=0, lt=1)  # off these, in batch mode


class ModelIn(Strict):
    id: str = Field(min_length=1)
    provider: str | None = None
    alias: str | None = Field(default=None, min_length=1)
    params: ParamsIn | None = None
    extra_body: dict[str, Any] = {}
    limits: LimitsIn | None = None
    max_price_usd_per_mtok: MaxPriceIn | None = None
    batch: bool | None = None     # through its provider's batch API (default: the provider's)


class ImageUrlIn(Strict):
    """OpenAI's `image_url` object: a URL (http(s) or data:) or a path relative to the job."""

    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class PartIn(Strict):
    """One part of a message's content (runner/content.py): `text:`, or an image given as
    `image: path-or-url` or in OpenAI's shape `{type: image_url, image_url: {url: ...}}`."""

    type: Literal["text", "image_url"] | None = None
    text: str | None = None
    image: str | None = Field(default=None, min_length=1)
    image_url: ImageUrlIn | None = None
    detail: Literal["auto", "low", "high"] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> PartIn:
        given = [k for k in ("text", "image", "image_url") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of text, image or image_url"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.type is not None and (self.type == "text") != (self.text is not None):
            raise ValueError(f"type {self.type!r} does not match its {given[0]}:")
        if self.detail is not None and self.text is not None:
            raise ValueError("detail: only applies to an image")
        return self


CONTENT = str | list[str | PartIn]


class MessageIn(Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[str | PartIn]

    @field_validator("content")
    @classmethod
    def _some_parts(cls, value: CONTENT) -> CONTENT:
        if isinstance(value, list) and not value:
            raise ValueError("empty list: give at least one part (a text or an image)")
        return value


class DatasetIn(Strict):
    """Rows a prompt is sent with: each row's fields are template vars (see runner/datasets.py).
    A plain string is the same as `{path: ...}`."""

    path: str = Field(min_length=1)
    id_field: str | None = Field(default=None, min_length=1)   # else: position + row hash
    rename: dict[str, str] = {}                     # file field -> var name
    target: str | None = None                       # a field name, or a template over the row
    metadata: list[str] = []                        # fields also recorded as metadata
    where: dict[str, SCALAR | list[SCALAR]] = {}    # field equals the value / is in the list
    sample: int | None = Field(default=None, gt=0)  # n rows drawn with `seed`, in file order
    seed: int = 0
    limit: int | None = Field(default=None, gt=0)   # the first n (after where and sample)

    @field_validator("rename")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for old, new in value.items():
            if not new:
                raise ValueError(f"rename of {old!r}: give a new name")
        return value


class PromptIn(Strict):
    id: str | None = Field(default=None, min_length=1)
    text: str | None = None
    messages: list[MessageIn] | None = None
    system: str | None = None
    vars: dict[str, SCALAR | list[SCALAR]] = {}
    expected: Any = None
    metadata: dict[str, Any] = {}
    file: str | None = None           # a file of whole prompts (same as prompts_file)
    prompts_file: str | None = None   # .jsonl/.json/.csv/.yaml rows, .txt (--- between), chat .json
    dataset: DatasetIn | None = None   # each row x each template of this item (or a path)
    templating: bool = True           # false: the text is sent as written (no {{ }} at all)
    turns: list[CONTENT] | None = None      # a conversation: user turns (conversation.py)

    @field_validator("turns", mode="before")
    @classmethod
    def _no_empty_turn(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("empty list: give at least one user turn")
            for n, turn in enumerate(value, 1):
                if turn is None or turn == [] or (isinstance(turn, str) and not turn.strip()):
                    raise ValueError(f"turn {n} is empty: each turn is the text (a template) "
                                     "or the parts of one user message")
        return value

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> PromptIn:
        given = [k for k in ("text", "messages", "turns", "file", "prompts_file")
                 if getattr(self, k) is not None]
        files = [k for k in ("file", "prompts_file") if getattr(self, k) is not None]
        if files and len(given) > 1 and len(files) == 1:
            raise ValueError(f"{files[0]}: holds whole prompts, and {given[0]}: is a prompt; "
                             f"to fill {given[0]}: with the rows of a data file, name the file "
                             "under dataset: instead")
        if len(given) != 1:
            if self.dataset is not None and not given:
                raise ValueError("a dataset: needs the prompt it fills: give text:, messages:, "
                                 "turns: or prompts_file: (row fields are its {{ vars }})")
            raise ValueError(
                "give exactly one of text, messages, turns or prompts_file"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if (self.file or self.prompts_file) is not None and (
                self.id or self.system or self.vars or self.expected or self.metadata):
            raise ValueError("a prompts file item takes only dataset: and templating:; put the "
                             "other keys in the file's rows")
        return self


class OutputIn(Strict):
    dir: str = "results"
    csv: bool = True

    @field_validator("dir")
    @classmethod
    def _no_key_in_url(cls, value: str) -> str:  # issue 13: a URL output (a Ray run's)
        from .remote import check_url, is_url

        return check_url(value) if is_url(value) else value


CHECK_TYPES = ("equals", "contains", "icontains", "not_contains", "regex", "json_valid",
               "json_schema", "max_latency_s", "max_cost_usd", "python", "llm_judge",
               # issue 12: named checks, values from the row
               "contains_any", "contains_all", "starts_with", "not_regex", "number_close")
"""The keys that name a check's type; a check gives exactly one of them (see runner/checks.py)."""


class JudgeIn(Strict):
    """An LLM judge: a model grades each response (against a rubric, or the row's target)."""

    model: str = Field(min_length=1)
    provider: str | None = None              # default: the job's provider
    rubric: str | None = Field(default=None, min_length=1)  # a template; none: target-based
    prompt: str | None = Field(default=None, min_length=1)  # the whole grading prompt
    scale: Literal["0-1", "pass_fail", "1-10", "letter"] | None = None
    max_tokens: int = Field(default=300, gt=0)


class NumberCloseIn(Strict):
    """`number_close`: the first number in the response within a tolerance of `value`."""

    value: str | float
    rel_tol: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    abs_tol: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    @field_validator("value", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) \
            else value


TRANSFORMS = ("strip", "lower", "last_line", "first_line")
"""The transforms named by a word; `{json_path: ...}` and `{python: module:function}` too."""


class TransformIn(Strict):
    json_path: str | None = None
    python: str | None = None

    @model_validator(mode="after")
    def _one(self) -> TransformIn:
        if (self.json_path is None) == (self.python is None):
            raise ValueError("give one of json_path or python")
        if self.python is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*",
                                                         self.python):
            raise ValueError(f"python: must be 'module:function' (got {self.python!r})")
        return self


def transform_steps(value: Any) -> list[str | TransformIn] | None:
    """A check's `transform:` as a list of steps (a word or a TransformIn); ValueError saying
    what is wrong."""
    if value is None:
        return None
    steps = value if isinstance(value, list) else [value]
    if not steps:
        raise ValueError("give at least one step")
    out: list[str | TransformIn] = []
    for n, step in enumerate(steps):
        at = f"step {n + 1}: " if isinstance(value, list) else ""
        if isinstance(step, str) and step in TRANSFORMS or isinstance(step, TransformIn):
            out.append(step)
        elif isinstance(step, dict):
            try:
                out.append(TransformIn.model_validate(step))
            except ValueError as exc:
                errors: list[Any] = getattr(exc, "errors", lambda: [])()
                why = errors[0]["msg"].removeprefix("Value error, ") if errors else str(exc)
                raise ValueError(f"{at}{why}") from None
        else:
            raise ValueError(f"{at}must be one of {', '.join(TRANSFORMS)}, {{json_path: "
                             f"$.field}} or {{python: module:function}} (got {step!r})")
    return out


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
    contains_any: list[str] | None = Field(default=None, min_length=1)
    contains_all: list[str] | None = Field(default=None, min_length=1)
    starts_with: str | None = None
    not_regex: str | None = None
    number_close: NumberCloseIn | None = None
    name: str | None = Field(default=None, min_length=1, max_length=200)
    weight: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    transform: Any = None   # a step or a list of steps: see transform_steps
    response_format: bool | None = None   # json_schema: send it as response_format (default)
    prompts: list[str] | None = Field(default=None, min_length=1)  # job-level checks only
    strict: bool | None = None                       # json_schema: response_format strict mode
    min_score: float | None = Field(default=None, ge=0, le=1)     # python: passing score

    @field_validator("equals", "contains", "icontains", "not_contains", "starts_with",
                     mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) \
            else value

    @field_validator("contains_any", "contains_all", mode="before")
    @classmethod
    def _numbers_as_text(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                    for v in value]
        return value

    @field_validator("transform")
    @classmethod
    def _steps(cls, value: Any) -> Any:
        return transform_steps(value)

    @field_validator("regex", "not_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        # a template's pattern is compiled once its values are in (see checks.compile_check)
        if value is not None and "{{" not in value and "{%" not in value:
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
        if self.response_format is not None and self.json_schema is None:
            raise ValueError("response_format: only applies to a json_schema check")
        if self.strict is not None and self.response_format is False:
            raise ValueError("strict: only applies when the schema is sent (response_format)")
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
    cache: bool = False           # answer identical requests from the response cache
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
    for model in (BatchIn, JudgeIn, MaxPriceIn, PriceIn, ParamsIn, LimitsIn, ProviderIn, FaultsIn,
                  SimModelIn, SimulatorIn, ModelIn, MessageIn, PromptIn, OutputIn, CheckIn,
                  JobIn, NumberCloseIn, TransformIn, PartIn, ImageUrlIn, DatasetIn, StageIn,
                  GoodputIn, LoadIn, CapacityIn):
        names.update(model.model_fields)
    return names
