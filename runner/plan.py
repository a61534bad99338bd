"""The plan: a `Job` in, a lazy, indexable sequence of `Request`s out (pure; no I/O).

Request i of N is computed from i alone (no expansion of the ones before it), so a run can
resume anywhere and big jobs never sit in memory as a list. The order interleaves
models (prompt combination -> repeat -> model) so that a run stopped early, by a budget or a
signal, still has comparable data for every model. A dataset row that cannot make its
request (its values trip a template, its image cannot be sent) gives requests that carry the
reason (`Request.input_error`, worded by `Dataset.bad_row`), never a raise: they are recorded as
`bad_input` rows and not sent.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, overload

from .checks import response_format_for
from .config import Job, Message, ModelSpec, Prompt
from .content import ROW_ERRORS, render_content
from .conversation import first_turn
from .datasets import merge_kinds, value_kind
from .errors import JobFileError
from .prompts import render_view
from .templates import RENDER_ERRORS, Template, parse, problem

_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Request:
    index: int
    request_id: str
    model: ModelSpec
    prompt_id: str
    repeat: int
    vars: Mapping[str, Any]
    messages: tuple[Message, ...]   # rendered
    params: Mapping[str, Any]       # the model's params, plus a json_schema check's format
    turns: tuple[Message, ...] = ()  # a conversation's user turns, rendered (conversation.py)
    # issue 12 (agreed interface): the row's expected answer, rendered, and its metadata
    target: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: _NO_METADATA)
    row_id: str | None = None       # a dataset prompt's row: its id field, else position-hash
    # why this request cannot be made from its dataset row: a `bad_input` row, never sent
    input_error: str | None = None


class Plan(Sequence[Request]):
    """All requests of a job, computed on demand."""

    __slots__ = ("job", "_prefix", "_units", "_models", "_repeats", "_param_cache",
                 "_templates", "_keys", "_last", "_plain")

    def __init__(self, job: Job) -> None:
        self.job = job
        self._models = len(job.models)
        self._repeats = job.repeats
        self._param_cache: dict[tuple[int, int], Mapping[str, Any]] = {}
        self._prefix: list[int] = [0]
        for prompt in job.prompts:
            self._prefix.append(self._prefix[-1] + combinations(prompt))
        self._units = self._prefix[-1]
        self._templates: dict[int, tuple[Template, ...]] = {}
        self._keys: dict[tuple[int, int], str] = {}   # (model, prompt) -> id key (datasets)
        # the last dataset unit rendered: its models and repeats follow it in plan order
        self._last: tuple[int, int, _Unit] | None = None
        self._plain: _Plain | None = None  # the same for the last unit of a prompt without one

    def __len__(self) -> int:
        return self._units * self._repeats * self._models

    @overload
    def __getitem__(self, i: int) -> Request: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Request]: ...

    def __getitem__(self, i: int | slice) -> Request | Sequence[Request]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"request {i} out of range (plan has {n})")
        rest, m = divmod(i, self._models)
        unit, repeat = divmod(rest, self._repeats)
        p = bisect.bisect_right(self._prefix, unit) - 1
        prompt = self.job.prompts[p]
        model = self.job.models[m]
        if prompt.dataset is not None:
            return self._row_request(i, m, p, unit - self._prefix[p], repeat)
        c = unit - self._prefix[p]
        plain = self._plain
        if plain is None or plain.p != p or plain.c != c:
            plain = self._plain = self._plain_unit(p, c)
        ids = plain.ids.get(m)
        if ids is None:
            params = self._params(m, p)
            ids = plain.ids[m] = (params, _id_hasher(model, prompt.id, plain.variables,
                                                     plain.messages, params))
        params, hasher = ids
        hasher = hasher.copy()
        hasher.update(f"{repeat}]".encode())
        messages = plain.messages
        return Request(index=i, request_id=hasher.hexdigest()[:20],
                       model=model, prompt_id=prompt.id, repeat=repeat, vars=plain.variables,
                       messages=plain.first, params=params,
                       turns=messages[len(messages) - prompt.turns:] if prompt.turns else (),
                       metadata=prompt.metadata)

    def _plain_unit(self, p: int, c: int) -> _Plain:
        """Combination c of prompt p (no dataset), rendered once for all its models and
        repeats (they follow it in plan order)."""
        prompt = self.job.prompts[p]
        variables = combination(prompt, c)
        try:
            messages = tuple(Message(msg.role, render_content(msg.content, template, variables))
                             for msg, template in zip(prompt.messages, self.templates(p),
                                                      strict=True))
        except RENDER_ERRORS as exc:  # only some var values trip the sandbox or a filter
            raise JobFileError(self.job.path, f"prompts[id={prompt.id}]",
                               f"template cannot be rendered with {variables}: {problem(exc)}") \
                from None
        return _Plain(p, c, variables, messages, first_turn(messages, prompt.turns), {})

    def _row_request(self, i: int, m: int, p: int, c: int, repeat: int) -> Request:
        """Request i of a dataset prompt: combination c is row c // inner, other vars c % inner.
        A unit is rendered once for all its models and repeats; its id is a hash of a key
        made once per (model, prompt), the row id, the other vars' index and the repeat."""
        last = self._last
        if last is not None and last[0] == p and last[1] == c:
            unit = last[2]
        else:
            unit = self._unit(p, c)
            self._last = (p, c, unit)
        key = self._keys.get((m, p))
        if key is None:
            key = self._keys[(m, p)] = self._key(m, p)
        rid = hashlib.blake2b(f"{key}\x1f{unit.row_id}\x1f{unit.rest}\x1f{repeat}".encode(),
                              digest_size=10).hexdigest()
        prompt = self.job.prompts[p]
        return Request(index=i, request_id=rid, model=self.job.models[m],
                       prompt_id=prompt.id, repeat=repeat, vars=unit.variables,
                       messages=first_turn(unit.messages, prompt.turns), params=self._params(m, p),
                       turns=unit.messages[len(unit.messages) - prompt.turns:] if prompt.turns
                       else (),
                       target=unit.target, metadata=unit.metadata, row_id=unit.row_id,
                       input_error=unit.error)

    def unit_messages(self, p: int, c: int) -> tuple[Message, ...]:
        """The rendered messages of combination c of dataset prompt p (for estimates); a row
        that cannot be rendered sends nothing, so its messages are empty."""
        unit = self._unit(p, c)
        if unit.error is not None:
            return tuple(Message(msg.role, "") for msg in self.job.prompts[p].messages)
        return unit.messages

    def _unit(self, p: int, c: int, check: bool = False) -> _Unit:
        """Combination c of dataset prompt p, rendered; a row whose values cannot make it (they
        trip a template, its image cannot be loaded) is a unit with an `error`, not a raise:
        its requests become `bad_input` rows and the run goes on. With `check`, images are
        checked but not read (`unit_error`)."""
        prompt = self.job.prompts[p]
        dataset = prompt.dataset
        assert dataset is not None
        inner = combinations(prompt) // len(dataset)
        k, rest = divmod(c, inner)
        row = dataset.row(k)
        variables = {**combination(prompt, rest), **row.fields}
        view = {**combination(prompt, rest), **render_view(row.fields)}
        error: str | None = None
        messages: tuple[Message, ...] = ()
        templates = self.templates(p)
        rendered: list[Message] = []
        try:
            for msg, template in zip(prompt.messages, templates, strict=True):
                rendered.append(Message(msg.role, render_content(msg.content, template, view,
                                                                 check)))
            messages = tuple(rendered)
        except ROW_ERRORS as exc:
            n = len(rendered)   # the message that failed
            error = dataset.bad_row(k, row.row_id, exc, f"prompts[id={prompt.id}] message "
                                    f"{n + 1} ({prompt.messages[n].role})", templates[n].names)
        target: str | None = None
        try:
            if prompt.target is not None:
                target = prompt.target.render(view)
            elif prompt.target_field is not None:
                value = row.fields[prompt.target_field]
                target = None if value is None else str(value)
        except ROW_ERRORS as exc:
            error = error or dataset.bad_row(k, row.row_id, exc, f"{dataset.where}.target",
                                             prompt.target.names if prompt.target else ())
        metadata = prompt.metadata
        if prompt.metadata_fields:
            metadata = {**metadata, **{f: row.fields[f] for f in prompt.metadata_fields}}
        return _Unit(row.row_id, rest, variables, messages, target, metadata, error)

    def unit_error(self, p: int, c: int) -> str | None:
        """Why combination c of dataset prompt p cannot make its requests (None: it can),
        its images checked but not read (`bad_rows.scan`)."""
        return self._unit(p, c, check=True).error

    def _key(self, m: int, p: int) -> str:
        """What makes requests of model m and dataset prompt p differ from any other's."""
        model, prompt = self.job.models[m], self.job.prompts[p]
        target = prompt.target.source if prompt.target is not None else prompt.target_field
        return hashlib.sha256(json.dumps(
            ["dataset-v1", model.id, model.provider, model.label, prompt.id,
             [[msg.role, t.source] for msg, t in zip(prompt.messages, self.templates(p),
                                                     strict=True)],
             # a literal template (templating: false) and a templated one split differently
             [list(t.parts) if t.parts is not None else None for t in self.templates(p)],
             {k: list(v) for k, v in prompt.vars.items()}, target,
             dict(self._params(m, p)), dict(model.extra_body)],
            sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
        ).encode()).hexdigest()[:32]

    def var_kinds(self) -> dict[str, str]:
        """Every var a request of this plan can hold, with the kind of its result column
        (`var_<name>`): dataset fields as their file types them, job vars from their values."""
        kinds: dict[str, str] = {}
        for prompt in self.job.prompts:
            found = dict(prompt.dataset.kinds) if prompt.dataset is not None else {}
            for name, values in prompt.vars.items():
                found[name] = value_kind(list(values))
            for name, kind in found.items():
                kinds[name] = merge_kinds(kinds[name], kind) if name in kinds else kind
        return kinds

    def templates(self, p: int) -> tuple[Template, ...]:
        """The message templates of prompt p (parsed at load; parsed here for a hand-made Job)."""
        prompt = self.job.prompts[p]
        if prompt.templates:
            return prompt.templates
        found = self._templates.get(p)
        if found is None:
            found = self._templates[p] = tuple(parse(str(m.content))
                                               for m in prompt.messages)
        return found

    def params(self, m: int, p: int) -> Mapping[str, Any]:
        """The params model m sends with prompt p (a json_schema check adds response_format)."""
        return self._params(m, p)

    def _params(self, m: int, p: int) -> Mapping[str, Any]:
        key = (m, p)
        params = self._param_cache.get(key)
        if params is None:
            model, prompt = self.job.models[m], self.job.prompts[p]
            params = model.params
            fmt = response_format_for(self.job.checks.for_prompt(prompt.id))
            if fmt is not None and "response_format" not in params:
                # a json_schema check asks for structured output (explicit params win)
                params = {**params, "response_format": fmt}
            self._param_cache[key] = params
        return params

    def __iter__(self) -> Iterator[Request]:
        for i in range(len(self)):
            yield self[i]

    def count_by_model(self) -> dict[str, int]:
        """Requests per model label, without expanding the plan."""
        per_model = self._units * self._repeats
        return {model.label: per_model for model in self.job.models}


@dataclass(frozen=True, slots=True)
class _Plain:
    """One var combination of a prompt without a dataset, rendered, with the request-id hash
    of each model so far fed everything but the repeat (`_id_hasher`)."""

    p: int
    c: int
    variables: Mapping[str, Any]
    messages: tuple[Message, ...]
    first: tuple[Message, ...]      # what is sent first (a conversation's first turn)
    ids: dict[int, tuple[Mapping[str, Any], Any]]  # model -> (params, sha256 before repeat)


@dataclass(frozen=True, slots=True)
class _Unit:
    """One row of a dataset prompt with one combination of its other vars, rendered."""

    row_id: str
    rest: int
    variables: Mapping[str, Any]
    messages: tuple[Message, ...]
    target: str | None
    metadata: Mapping[str, Any]
    error: str | None = None        # why the row cannot make this unit (a bad_input row)


def combinations(prompt: Prompt) -> int:
    """How many var combinations a prompt is sent with (rows x other vars, with a dataset)."""
    count = 1 if prompt.dataset is None else len(prompt.dataset)
    for values in prompt.vars.values():
        count *= len(values)
    return count


def combination(prompt: Prompt, c: int) -> dict[str, Any]:
    """The c-th combination of a prompt's var values (mixed radix, last var fastest)."""
    out: dict[str, Any] = {}
    for name in reversed(list(prompt.vars)):
        values = prompt.vars[name]
        c, k = divmod(c, len(values))
        out[name] = values[k]
    return dict(reversed(list(out.items())))


def request_id(model: ModelSpec, prompt_id: str, variables: Mapping[str, Any],
               messages: tuple[Message, ...], repeat: int,
               params: Mapping[str, Any] | None = None) -> str:
    """A stable id: the same request in a rerun or a resume gets the same id."""
    hasher = _id_hasher(model, prompt_id, variables, messages,
                        model.params if params is None else params)
    hasher.update(f"{repeat}]".encode())
    return str(hasher.hexdigest()[:20])


def _id_hasher(model: ModelSpec, prompt_id: str, variables: Mapping[str, Any],
               messages: tuple[Message, ...], params: Mapping[str, Any]) -> Any:
    """sha256 fed the JSON of a request id's key up to its last item, the repeat (the key is
    a JSON list; sort_keys orders only the dicts inside it, so the repeat stays last and a
    unit's requests share everything before it)."""
    # label and vars too: one model under two aliases, or two var values that render the same
    # text, are still different requests
    key = json.dumps(
        [model.id, model.provider, model.label, prompt_id, dict(variables),
         [[m.role, m.content] for m in messages], dict(params), dict(model.extra_body)],
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
    )
    return hashlib.sha256(f"{key[:-1]},".encode())
