"""Job files: a YAML path in, a validated, frozen `Job` out (or one `JobFileError` line).

The dataclasses here are what flows through the rest of the runner; `schema.py` holds the pydantic
models that check the YAML on the way in.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import TemplateError
from pydantic import ValidationError

from . import schema
from .checks import Check, CheckSet, build_check_set, compile_expected
from .errors import ConfigError, JobFileError
from .pricing import Price
from .prompt_files import read_prompt_file
from .templates import check_template, render

OPENROUTER_URL = "https://openrouter.ai/api/v1"
SIMULATED = "simulated"
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_STALL_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3
DEFAULT_MAX_RETRY_WAIT_S = 120.0            # a longer Retry-After ends the request instead
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024   # one answer, decompressed (stream or body)
DEFAULT_MAX_ERROR_BYTES = 64 * 1024             # one error body, decompressed
DEFAULT_MAX_STREAM_EVENTS = 200_000             # SSE events in one streamed answer


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    timeout_s: float | None = None
    stall_timeout_s: float | None = None
    retries: int | None = None
    max_retry_wait_s: float | None = None
    max_response_bytes: int | None = None
    max_error_bytes: int | None = None
    max_stream_events: int | None = None

    def over(self, base: Limits) -> Limits:
        """These limits with unset fields taken from `base`."""
        return Limits(*(
            mine if mine is not None else theirs
            for mine, theirs in zip(_astuple(self), _astuple(base), strict=True)
        ))


def _astuple(limits: Limits) -> tuple[Any, ...]:
    return (limits.concurrency, limits.rpm, limits.tpm, limits.timeout_s,
            limits.stall_timeout_s, limits.retries, limits.max_retry_wait_s,
            limits.max_response_bytes, limits.max_error_bytes, limits.max_stream_events)


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    base_url: str | None          # None for `simulated`: known once the simulator listens
    api_key_env: str | None
    headers: Mapping[str, str]
    openrouter: bool              # speaks OpenRouter's extensions (provider/models/usage/cost)
    stream_usage: bool            # send stream_options.include_usage when streaming
    limits: Limits = Limits()
    check_models: bool = True     # refuse model ids its catalogue does not list

    @property
    def simulated(self) -> bool:
        return self.name == SIMULATED


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    provider: str
    label: str                    # the `model` column: alias if given, else id
    params: Mapping[str, Any]     # merged job + model params, None values dropped
    extra_body: Mapping[str, Any]
    limits: Limits = Limits()


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str                  # a Jinja2 template until the plan renders it


@dataclass(frozen=True, slots=True)
class Prompt:
    id: str
    messages: tuple[Message, ...]
    vars: Mapping[str, tuple[Any, ...]]   # only the vars the templates use, each a value list
    expected: Any = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()        # from `expected`, compiled


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    description: str
    path: Path
    providers: Mapping[str, Provider]
    models: tuple[ModelSpec, ...]
    prompts: tuple[Prompt, ...]
    repeats: int
    limits: Limits
    budget_usd: float | None
    max_cost_per_request_usd: float | None
    pricing: Mapping[str, Price]  # model id -> price given in the job file
    output_dir: Path
    write_csv: bool
    simulator: schema.SimulatorIn
    snapshot: Mapping[str, Any]   # the job file as parsed (it holds env var names, never keys)
    checks: CheckSet = CheckSet()  # each prompt's checks: its expected + job-level `checks:`
    judges: Mapping[tuple[str, str | None], ModelSpec] = field(default_factory=dict)


def load_job(path: str | os.PathLike[str]) -> Job:
    """Read, validate and resolve a job file; raise `JobFileError` naming file and field."""
    path = Path(path)
    raw = _read_yaml(path)
    try:
        job_in = schema.JobIn.model_validate(raw)
    except ValidationError as exc:
        raise _translate(path, exc) from None
    return _resolve(path, job_in, raw)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise JobFileError(path, "", "no such job file (check the path)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise JobFileError(path, "", f"{line}invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise JobFileError(path, "", "not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise JobFileError(path, "", "must be a YAML mapping with name:, models: and prompts:")
    return raw


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


# pydantic puts the union member it tried into the location: "str", "ModelIn",
# "function-after[_one_source(), PromptIn]", "list[union[...]]"; user keys ("Local") stay
_SCALAR_TAGS = {"str", "int", "float", "bool"}
_MODEL_TAGS = {model.__name__ for model in schema.Strict.__subclasses__()}


def _union_tag(part: int | str) -> bool:
    return isinstance(part, str) and (part in _SCALAR_TAGS or part in _MODEL_TAGS
                                      or part.startswith(("list[", "function-")))


def _inside_mapping(err: Any) -> bool:
    """An error inside a mapping given for `str | ModelIn` (it says more than "not a string")."""
    return err["type"] != "model_type" and any(
        isinstance(p, str) and (p in _MODEL_TAGS or p.startswith("function-")) for p in err["loc"])


def _translate(path: Path, exc: ValidationError) -> JobFileError:
    errors = exc.errors()
    err = next((e for e in errors if _inside_mapping(e)), errors[0])
    loc = tuple(p for p in err["loc"] if not _union_tag(p))
    field_name = _loc(loc)
    if err["type"] == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        close = difflib.get_close_matches(key, schema.field_names(), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "remove it or check the README"
        return JobFileError(path, field_name, f"unknown key ({hint})")
    if err["type"] == "missing":
        return JobFileError(path, field_name, "required field is missing")
    msg = str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, str | int | float | bool) and \
        "got" not in msg else ""
    return JobFileError(path, field_name, f"{msg[:1].lower()}{msg[1:]}{shown}")


def _resolve(path: Path, job: schema.JobIn, raw: dict[str, Any]) -> Job:
    providers = resolve_providers(path, job)
    if job.provider not in providers:
        raise _unknown_provider(path, "provider", job.provider, providers)
    base_params = _params(job.params)
    models = []
    labels: set[str] = set()
    for i, item in enumerate(job.models):
        model = schema.ModelIn(id=item) if isinstance(item, str) else item
        provider = model.provider or job.provider
        if provider not in providers:
            raise _unknown_provider(path, f"models[{i}].provider", provider, providers)
        label = model.alias or model.id
        if label in labels:
            raise JobFileError(path, f"models[{i}]", f"duplicate model {label!r} "
                               "(give one of them an alias:)")
        labels.add(label)
        extra = dict(model.extra_body)
        if model.max_price_usd_per_mtok is not None:
            # OpenRouter's max_price is per million tokens, like this field: no conversion
            extra.setdefault("provider", {})["max_price"] = \
                model.max_price_usd_per_mtok.model_dump(exclude_none=True)
        if extra and not providers[provider].openrouter:
            bad = sorted(set(extra) & {"provider", "models", "usage", "transforms", "route",
                                       "reasoning", "plugins"})
            if bad:
                raise JobFileError(path, f"models[{i}].extra_body.{bad[0]}",
                                   f"OpenRouter-only field, but provider {provider!r} does not "
                                   "speak OpenRouter (set openrouter: true on it or remove it)")
        params = {**base_params, **(_params(model.params) if model.params else {})}
        models.append(ModelSpec(id=model.id, provider=provider, label=label, params=params,
                                extra_body=extra, limits=_limits(model.limits)))
    prompts = _prompts(path, job)
    checks = build_check_set(job.checks, {p.id: p.checks for p in prompts}, path=path)
    return Job(
        name=job.name, description=job.description, path=path.resolve(),
        providers=providers, models=tuple(models), prompts=prompts, repeats=job.repeats,
        limits=_limits(job.limits), budget_usd=job.budget_usd,
        max_cost_per_request_usd=job.max_cost_per_request_usd,
        pricing={model_id: Price(p.usd_per_mtok_prompt / 1e6, p.usd_per_mtok_completion / 1e6,
                                 p.usd_per_request, p.max_completion_tokens)
                 for model_id, p in job.pricing.items()},
        output_dir=Path(job.output.dir) if Path(job.output.dir).is_absolute()
        else Path.cwd() / job.output.dir,
        write_csv=job.output.csv, simulator=job.simulator, snapshot=raw,
        checks=checks, judges=_judges(path, checks, job.provider, providers),
    )


def _judges(path: Path, checks: CheckSet, default_provider: str,
            providers: Mapping[str, Provider]) -> dict[tuple[str, str | None], ModelSpec]:
    """The model of every llm_judge check, keyed by (model, provider as written)."""
    judges: dict[tuple[str, str | None], ModelSpec] = {}
    for applied in checks.by_prompt.values():
        for check in applied:
            if check.kind != "llm_judge":
                continue
            spec = check.arg
            provider = spec.provider or default_provider
            if provider not in providers:
                raise _unknown_provider(path, "llm_judge.provider", provider, providers)
            judges[(spec.model, spec.provider)] = ModelSpec(
                id=spec.model, provider=provider, label=f"judge {spec.model}",
                params={"temperature": 0, "max_tokens": spec.max_tokens, "stream": False},
                extra_body={})
    return judges


def _unknown_provider(path: Path, field_name: str, name: str,
                      providers: Mapping[str, Provider]) -> JobFileError:
    known = ", ".join(sorted(providers))
    return JobFileError(path, field_name, f"unknown provider {name!r} (known: {known}; "
                        "define it under providers:)")


def _params(params: schema.ParamsIn) -> dict[str, Any]:
    return {k: v for k, v in params.model_dump().items() if v is not None}


def _limits(limits: schema.LimitsIn | None) -> Limits:
    return Limits(**limits.model_dump()) if limits is not None else Limits()


def resolve_providers(path: Path, job: schema.JobIn) -> dict[str, Provider]:
    """The built-in providers with the job's `providers:` entries applied."""
    builtin = {
        "openrouter": Provider("openrouter", OPENROUTER_URL, "OPENROUTER_API_KEY", {}, True, True),
        SIMULATED: Provider(SIMULATED, None, None, {}, True, True),
    }
    out = dict(builtin)
    for name, spec in job.providers.items():
        base = builtin.get(name)
        if base is None and spec.base_url is None:
            raise JobFileError(path, f"providers.{name}.base_url",
                               "required for a custom provider (e.g. http://localhost:8000/v1)")
        if name == SIMULATED and (spec.base_url or spec.api_key_env):
            raise JobFileError(path, f"providers.{name}", "the simulated provider takes only "
                               "headers/limits (its URL is chosen at run time)")
        out[name] = Provider(
            name=name,
            base_url=(spec.base_url or (base.base_url if base else None)),
            api_key_env=spec.api_key_env or (base.api_key_env if base else None),
            headers=dict(spec.headers),
            openrouter=spec.openrouter if spec.openrouter is not None
            else (base.openrouter if base else False),
            stream_usage=spec.stream_usage,
            limits=_limits(spec.limits),
            check_models=spec.check_models,
        )
    return out


def _prompts(path: Path, job: schema.JobIn) -> tuple[Prompt, ...]:
    items: list[tuple[str, schema.PromptIn]] = []
    for i, item in enumerate(job.prompts):
        where = f"prompts[{i}]"
        if isinstance(item, str):
            item = schema.PromptIn(text=item)
        if item.file is not None:
            file_path = (path.parent / item.file).resolve()
            for row_no, row in enumerate(read_prompt_file(file_path, f"{where}.file"), 1):
                items.append((f"{file_path.name}: row {row_no}", row))
        else:
            items.append((where, item))
    prompts: list[Prompt] = []
    seen: dict[str, str] = {}
    for where, item in items:
        prompt = _prompt(path, where, item, job)
        if prompt.id in seen:
            raise JobFileError(path, f"{where}.id", f"duplicate prompt id {prompt.id!r} "
                               f"(also at {seen[prompt.id]}); ids must be unique")
        seen[prompt.id] = where
        prompts.append(prompt)
    return tuple(prompts)


def _prompt(path: Path, where: str, item: schema.PromptIn, job: schema.JobIn) -> Prompt:
    sourced: list[tuple[Message, str]] = []   # each message with the field it came from
    if item.messages is not None:
        sourced += [(Message(m.role, m.content), f"{where}.messages[{n}].content")
                    for n, m in enumerate(item.messages)]
    else:
        sourced.append((Message("user", item.text or ""), f"{where}.text"))
    system = item.system if item.system is not None else job.system
    if system is not None and not any(m.role == "system" for m, _ in sourced):
        sourced.insert(0, (Message("system", system),
                           f"{where}.system" if item.system is not None else "system"))
    messages = [message for message, _ in sourced]
    available = {**job.vars, **item.vars}
    used: dict[str, tuple[Any, ...]] = {}
    for message, field_name in sourced:
        for var in check_template(path, field_name, message.content, available):
            value = available[var]
            values = used[var] = tuple(value) if isinstance(value, list) else (value,)
            var_field = f"{where}.vars.{var}" if var in item.vars else f"vars.{var}"
            if not values:
                raise JobFileError(path, var_field, "empty list: give at least one value")
            # a repeated value would plan the same request twice under one request_id
            if len({(type(v), v) for v in values}) < len(values):
                raise JobFileError(path, var_field, "duplicate value in the list (use repeats: "
                                   "to send a request more than once)")
    _render_all(path, sourced, used)
    prompt_id = item.id or "p-" + hashlib.sha256(
        "\x1f".join(m.content for m in messages).encode()).hexdigest()[:10]
    return Prompt(id=prompt_id, messages=tuple(messages), vars=dict(sorted(used.items())),
                  expected=item.expected, metadata=dict(item.metadata),
                  checks=compile_expected(item.expected, path=path, field_name=f"{where}.expected"))


RENDER_CHECK_LIMIT = 10_000   # var combinations rendered at load; bigger matrices: at run time


def _render_all(path: Path, sourced: list[tuple[Message, str]],
                used: Mapping[str, tuple[Any, ...]]) -> None:
    """Render every var combination once, so a value that trips a template (a filter, the
    sandbox) is a load-time error rather than a run that stops half way."""
    names = list(used)
    for n, values in enumerate(itertools.product(*(used[name] for name in names))):
        if n >= RENDER_CHECK_LIMIT:
            return
        variables = dict(zip(names, values, strict=True))
        for message, field_name in sourced:
            try:
                render(message.content, variables)
            except TemplateError as exc:
                raise JobFileError(path, field_name, f"template cannot be rendered with "
                                   f"{variables}: {exc}") from None


def api_key(provider: Provider) -> str:
    """The provider's key from its environment variable; the simulator takes any value."""
    if provider.simulated:
        return "sim-key"
    if provider.api_key_env is None:
        return "EMPTY"  # servers without auth (local vLLM, Ollama) still want a bearer header
    value = os.environ.get(provider.api_key_env, "").strip()
    if not value:
        raise ConfigError(f"provider {provider.name!r} needs an API key: set the environment "
                          f"variable {provider.api_key_env} (e.g. export "
                          f"{provider.api_key_env}=...)")
    return value
