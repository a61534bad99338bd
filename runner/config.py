"""Job files: a YAML path in, a validated, frozen `Job` out (or a `JobFileError` per problem).

The dataclasses here are what flows through the rest of the runner; `schema.py` holds the pydantic
models that check the YAML on the way in, `sources.py` reads the files and translates library
errors, `prompts.py` resolves the prompts.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from . import schema
from .checks import CheckSet, build_check_set
from .errors import ConfigError, JobFileError
from .offers import check_models
from .pricing import Price, catalogue_prices
from .prompts import Message as Message
from .prompts import Prompt as Prompt
from .prompts import resolve_prompts
from .remote import is_url
from .sources import Problems, invalid, load_yaml, locations
from .stored import STORED, check_stored, check_stored_judges

if TYPE_CHECKING:
    from .load_plan import Load

OPENROUTER_URL = "https://openrouter.ai/api/v1"
SIMULATED = "simulated"
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_STALL_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 3
# request body fields the runner writes (or prices) itself, so never taken from extra_body
RUNNER_BODY_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "max_tokens",
                                "max_completion_tokens", "n"})
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
class BatchOptions:
    """A provider's batch API settings as the job gives them (None: `batch.py`'s default)."""

    max_requests: int | None = None   # requests in one input file
    max_bytes: int | None = None      # bytes of one input file
    poll_s: float | None = None       # the first wait between status checks...
    poll_max_s: float | None = None   # ...growing to this
    max_wait_s: float | None = None   # give up on a batch after this long (then cancel it)
    discount: float | None = None     # off the chat price (0.5: half price)


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
    batch: bool = False           # its requests go through its batch API
    batch_options: BatchOptions = BatchOptions()

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
    batch: bool = False           # through its provider's batch API


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
    cache: bool = False           # answer identical requests from the response cache
    load: Load | None = None      # a load test (`load:`): when each request is sent
    output_url: str | None = None  # output.dir when it is a filesystem URL (a Ray run's)


def load_job(path: str | os.PathLike[str]) -> Job:
    """Read, validate and resolve a job file; raise `JobFileError` naming file and field (or
    `JobFileErrors` holding every problem found)."""
    path = Path(path)
    raw = _read_yaml(path)
    try:
        job_in = schema.JobIn.model_validate(raw)
    except ValidationError as exc:
        error = invalid(path, exc, names=schema.field_names())
        problems = Problems()
        problems.add(error)
        # the rest of the job is still checked, so that one `validate` shows everything
        _check_the_rest(path, raw, exc, problems)
        problems.raise_any()
        raise error from None
    except RecursionError:
        raise JobFileError(path, "", "nested too deeply") from None
    return _resolve(path, job_in, raw)


_ITEMS = ("models", "prompts", "checks")   # lists whose bad items are skipped, not the list


def _check_the_rest(path: Path, raw: dict[str, Any], exc: ValidationError,
                    problems: Problems) -> None:
    """Resolve the job without the parts that failed validation: a bad item of models/prompts/
    checks is skipped (its place kept, so later items keep their index), a bad key of any other
    mapping is dropped (a bad var or provider is replaced by a harmless stand-in, so that what
    uses it is not reported too). If that does not validate either, the first errors stand."""
    pruned: dict[str, Any] = copy.deepcopy(raw)
    skip: dict[str, set[int]] = {key: set() for key in _ITEMS}
    try:
        for loc in locations(exc):
            _prune(pruned, loc, skip)
        job_in = schema.JobIn.model_validate(pruned)
    except (ValidationError, LookupError, TypeError, ValueError):
        return
    with problems.gather():
        _resolve(path, job_in, raw, skip)


def _prune(pruned: dict[str, Any], loc: tuple[int | str, ...], skip: dict[str, set[int]]) -> None:
    """Take the part at `loc` out of a job file's data (see `_check_the_rest`)."""
    key = loc[0] if loc else None
    if not isinstance(key, str):
        raise ValueError("the whole file is wrong")
    tail = loc[1] if len(loc) > 1 else None
    if key in _ITEMS and isinstance(tail, int):
        skip[key].add(tail)
        pruned[key][tail] = {"json_valid": True} if key == "checks" else "-"
    elif key == "vars" and tail is not None:
        pruned["vars"][tail] = "-"
    elif key == "providers" and tail is not None:
        pruned["providers"][tail] = {} if tail in ("openrouter", SIMULATED) \
            else {"base_url": "http://invalid"}
    elif key == "name":
        pruned["name"] = "job"
    elif tail is None or key not in ("params", "limits", "pricing", "output", "simulator"):
        pruned.pop(key, None)
    else:
        parent: Any = pruned
        for part in loc[:-1]:
            parent = parent[part]
        if isinstance(parent, dict):
            parent.pop(loc[-1], None)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise JobFileError(path, "", "no such job file (check the path)")
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise JobFileError(path, "", "must be a YAML mapping with name:, models: and prompts:")
    return raw


def _resolve(path: Path, job: schema.JobIn, raw: dict[str, Any],
             skip: Mapping[str, set[int]] | None = None) -> Job:
    """The Job of a validated job file; `skip`: items of models/prompts/checks already reported
    (by index), whose checks against the rest are left out."""
    skip = skip or {}
    problems = Problems()
    providers = resolve_providers(path, job, problems)
    known = providers
    if job.provider not in providers:
        problems.add(_unknown_provider(path, "provider", job.provider, providers))
        # reported once: the models that use it by default are not reported again
        known = {**providers, job.provider: Provider(job.provider, None, None, {}, False, True)}
    models: list[ModelSpec] = []
    labels: set[str] = set()
    for i, item in enumerate(job.models):
        if i not in skip.get("models", ()):
            with problems.gather():
                models.append(_model(path, i, item, job, known, labels))
    with problems.gather():
        _check_simulator(path, job.simulator)
    prompts = resolve_prompts(path, job, problems, skip.get("prompts", set()))
    if not skip.get("models") and not skip.get("prompts"):
        with problems.gather():
            check_stored(path, [(i, m.id, m.provider) for i, m in enumerate(models)],
                         [(p.id, p.dataset.fields if p.dataset is not None else None)
                          for p in prompts])
    checks = CheckSet()
    judges: dict[tuple[str, str | None], ModelSpec] = {}
    if not skip.get("checks"):  # their positions name them: checked once all are valid
        with problems.gather():
            checks = build_check_set(job.checks, {p.id: p.checks for p in prompts}, path=path,
                                     vars_of={p.id: _vars_of(p) for p in prompts})
            judges = _judges(path, checks, job.provider, known)
            check_stored_judges(path, judges.values())
    load = None
    if job.load is not None:
        from .load_plan import build_load  # it reads plans, which read this module

        with problems.gather():
            load = build_load(path, job.load)
            # a load test measures the endpoint: an answer from a batch or the cache is not one
            if job.cache:
                raise JobFileError(path, "cache", "a load test (load:) measures the endpoint: "
                                   "drop cache: true (answers from the cache are not measured)")
            if any(isinstance(m, schema.ModelIn) and m.batch for m in job.models) or any(
                    p.batch for p in job.providers.values()):
                raise JobFileError(path, "load", "a load test sends on a schedule; batch mode "
                                   "(batch: true) sends through a batch API: drop one of them")
    problems.raise_any()
    resolved = Job(
        name=job.name, description=job.description, path=path.resolve(),
        providers=providers, models=tuple(models), prompts=prompts, repeats=job.repeats,
        limits=_limits(job.limits), budget_usd=job.budget_usd,
        max_cost_per_request_usd=job.max_cost_per_request_usd,
        pricing={model_id: Price(p.usd_per_mtok_prompt / 1e6, p.usd_per_mtok_completion / 1e6,
                                 p.usd_per_request, p.max_completion_tokens,
                                 batch_discount=p.batch_discount)
                 for model_id, p in job.pricing.items()},
        output_dir=Path(job.output.dir) if Path(job.output.dir).is_absolute()
        else Path.cwd() / job.output.dir,
        write_csv=job.output.csv, simulator=job.simulator, snapshot=raw,
        checks=checks, judges=judges, cache=job.cache, load=load,
        output_url=job.output.dir if is_url(job.output.dir) else None,
    )
    if not (skip.get("models") or skip.get("checks")):  # else models[i] would name another
        _check_offers(resolved)
    return resolved


def _check_offers(job: Job) -> None:
    """The model checks `run` makes once it has read the catalogues, made now for what the
    files decide: models of the simulator (its catalogue is the job's `simulator:`) and, with
    a budget, models priced by `pricing:`."""
    used = {m.provider for m in (*job.models, *job.judges.values())}
    known = {SIMULATED} & used
    listed = simulated_catalogue(job.simulator, job.path) if known else {}
    prices = {(SIMULATED, model_id): price for model_id, price in listed.items()}
    check_models(job, {SIMULATED: set(listed)}, prices, known=known,
                 need_prices=job.budget_usd is not None
                 or job.max_cost_per_request_usd is not None)


def _model(path: Path, i: int, item: str | schema.ModelIn, job: schema.JobIn,
           providers: Mapping[str, Provider], labels: set[str]) -> ModelSpec:
    """One entry of `models:` resolved against the providers and the job's params."""
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
    # extra_body is merged last: these would replace what the runner sends and prices
    owned = sorted(set(extra) & RUNNER_BODY_FIELDS)
    if owned:
        raise JobFileError(path, f"models[{i}].extra_body.{owned[0]}",
                           "the runner sets this field itself (its worst-case cost and the "
                           "budget depend on it): use params: or remove it")
    if extra and not providers[provider].openrouter:
        bad = sorted(set(extra) & {"provider", "models", "usage", "transforms", "route",
                                   "reasoning", "plugins"})
        if bad:
            raise JobFileError(path, f"models[{i}].extra_body.{bad[0]}",
                               f"OpenRouter-only field, but provider {provider!r} does not "
                               "speak OpenRouter (set openrouter: true on it or remove it)")
    params = {**_params(job.params), **(_params(model.params) if model.params else {})}
    batch = providers[provider].batch if model.batch is None else model.batch
    if model.batch and no_batch_api(providers[provider]):
        raise JobFileError(path, f"models[{i}].batch", NO_BATCH_API)
    return ModelSpec(id=model.id, provider=provider, label=label, params=params,
                     extra_body=extra, limits=_limits(model.limits), batch=batch)


def simulated_models(settings: schema.SimulatorIn, path: object = "<job>") -> tuple[object, ...]:
    """The built-in simulated models with the job's overrides and additions applied (the
    simulator's own checks, such as fault rates summing to at most 1, as JobFileErrors)."""
    from .simulator import DEFAULT_MODELS, Faults, SimModel

    models = {m.id: m for m in DEFAULT_MODELS}
    for i, spec in enumerate(settings.models):
        base = models.get(spec.id) or SimModel(
            id=spec.id, name=spec.id, prompt_usd_per_token=1e-6, completion_usd_per_token=2e-6)
        changes: dict[str, object] = {}
        if spec.usd_per_mtok_prompt is not None:
            changes["prompt_usd_per_token"] = spec.usd_per_mtok_prompt / 1e6
        if spec.usd_per_mtok_completion is not None:
            changes["completion_usd_per_token"] = spec.usd_per_mtok_completion / 1e6
        if spec.usd_per_request is not None:
            changes["request_usd"] = spec.usd_per_request
        for name in ("ttft_s", "tokens_per_s", "jitter_s", "max_completion_tokens",
                     "reasoning"):
            if getattr(spec, name) is not None:
                changes[name] = getattr(spec, name)
        where = f"simulator.models[{i}]"
        if spec.faults is not None:
            faults = spec.faults.model_dump()
            faults["error_statuses"] = tuple(faults["error_statuses"])
            try:
                changes["faults"] = Faults(**faults)
            except ValueError as exc:
                raise JobFileError(path, f"{where}.faults",
                                   str(exc).removeprefix("Faults: ")) from None
        try:
            models[spec.id] = dataclasses.replace(base, **changes)  # type: ignore[arg-type]
        except ValueError as exc:
            raise JobFileError(path, where, str(exc)) from None
    return tuple(models.values())


def simulated_catalogue(settings: schema.SimulatorIn, path: object = "<job>",
                        ) -> dict[str, Price]:
    """The simulator's catalogue as a run reads it from its `/models`: model id -> price."""
    from .simulator.catalogue import model_entry

    return catalogue_prices([model_entry(m, "openrouter")  # type: ignore[arg-type]
                             for m in simulated_models(settings, path)])


def _check_simulator(path: Path, settings: schema.SimulatorIn) -> None:
    """What the simulator would refuse at run time, refused at load (only when the job
    changes its models: the simulator is imported only then)."""
    if settings.models:
        simulated_models(settings, path)


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


def resolve_providers(path: Path, job: schema.JobIn,
                      problems: Problems | None = None) -> dict[str, Provider]:
    """The built-in providers with the job's `providers:` entries applied (a bad entry is
    still listed, so that models using it are not reported as well)."""
    builtin = {
        "openrouter": Provider("openrouter", OPENROUTER_URL, "OPENROUTER_API_KEY", {}, True, True),
        SIMULATED: Provider(SIMULATED, None, None, {}, True, True),
        STORED: Provider(STORED, None, None, {}, False, False),   # answers from dataset rows
    }
    gathered = problems if problems is not None else Problems()
    out = dict(builtin)
    for name, spec in job.providers.items():
        base = builtin.get(name)
        if base is None and spec.base_url is None:
            gathered.add(JobFileError(path, f"providers.{name}.base_url", "required for a "
                                      "custom provider (e.g. http://localhost:8000/v1)"))
        if name == SIMULATED and (spec.base_url or spec.api_key_env):
            gathered.add(JobFileError(path, f"providers.{name}", "the simulated provider takes "
                                      "only headers/limits (its URL is chosen at run time)"))
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
            batch=bool(spec.batch),
            batch_options=BatchOptions(**spec.batch_options.model_dump())
            if spec.batch_options is not None else BatchOptions(),
        )
        if spec.batch and no_batch_api(out[name]):
            gathered.add(JobFileError(path, f"providers.{name}.batch", NO_BATCH_API))
    if problems is None:
        gathered.raise_any()
    return out


NO_BATCH_API = ("OpenRouter has no batch API: remove batch: here (or use a provider that has "
                "one, e.g. api.openai.com)")


def no_batch_api(provider: Provider) -> bool:
    """Whether the provider is OpenRouter (or speaks only its dialect), which has no batch API;
    the simulator speaks OpenRouter's dialect and also serves the batch routes."""
    return provider.openrouter and not provider.simulated


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
    if any(ord(c) < 32 or ord(c) == 127 for c in value):  # it would break the request's head
        raise ConfigError(f"the API key in {provider.api_key_env} (provider {provider.name!r}) "
                          "contains a line break or control character: set it to the key alone")
    return value


def _vars_of(prompt: Prompt) -> frozenset[str]:
    """The vars every request of a prompt has: its used vars, its dataset's fields, and
    `target` when its dataset gives one."""
    names = set(prompt.vars)
    if prompt.dataset is not None:
        names |= set(prompt.dataset.fields)
    if prompt.target is not None or prompt.target_field is not None:
        names.add("target")
    return frozenset(names)
