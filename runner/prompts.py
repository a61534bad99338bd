"""Prompts of a job file: validated `PromptIn` items in (inline, or the prompts of a prompts
file), `Prompt` values out, each template checked, its vars expanded and its Jinja logic tried at
load; a prompt with a `dataset:` is sent once per selected row (runner/datasets.py).

Part of loading a job (`config.load_job`); errors are gathered into the load's `Problems`.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import schema
from .checks import Check, compile_expected
from .content import (
    ROW_ERRORS,
    Content,
    ImagePart,
    build_parts,
    check_row_images,
    content_template,
    templated_images,
)
from .datasets import Dataset, read_dataset
from .errors import JobFileError
from .prompt_files import read_prompt_file
from .sources import Problems
from .templates import Template, TemplateError, check_template, literal


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: Content              # a Jinja2 template (or parts) until the plan renders it


@dataclass(frozen=True, slots=True)
class Prompt:
    id: str
    messages: tuple[Message, ...]
    vars: Mapping[str, tuple[Any, ...]]   # only the vars the templates use, each a value list
    expected: Any = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()        # from `expected`, compiled
    templates: tuple[Template, ...] = field(default=(), compare=False, repr=False)  # messages'
    turns: int = 0                        # a conversation: its last `turns` messages are turns
    # a dataset: the prompt is sent once per row (x its other vars); row fields are vars
    dataset: Dataset | None = field(default=None, compare=False, repr=False)
    target_field: str | None = None       # the row field that is the target...
    target: Template | None = field(default=None, compare=False, repr=False)  # ...or a template
    metadata_fields: tuple[str, ...] = ()  # row fields also recorded as metadata


def resolve_prompts(path: Path, job: schema.JobIn, problems: Problems,
                    skip: set[int]) -> tuple[Prompt, ...]:
    """Every prompt of the job, in order (file rows where their `file:` item is); the items in
    `skip` were already reported."""
    load = _Load()
    items: list[tuple[str, schema.PromptIn, _Rows | None]] = []
    for i, item in enumerate(job.prompts):
        if i in skip:
            continue
        where = f"prompts[{i}]"
        if isinstance(item, str):
            item = schema.PromptIn(text=item)
        rows: _Rows | None = None
        if item.dataset is not None:
            with problems.gather():
                rows = _dataset(path, f"{where}.dataset", item.dataset, load)
            if rows is None:
                continue   # reported; its prompts would only repeat it
        named = item.prompts_file or item.file
        if named is not None:
            file_path = (path.parent / named).resolve()
            key = "prompts_file" if item.prompts_file is not None else "file"
            with problems.gather():
                for row_no, row in read_prompt_file(file_path, f"{where}.{key}", problems):
                    if not item.templating:
                        row = row.model_copy(update={"templating": False})
                    items.append((f"{file_path.name}: row {row_no}", row, rows))
        else:
            items.append((where, item, rows))
    prompts: list[Prompt] = []
    seen: dict[str, str] = {}
    for where, item, rows in items:
        with problems.gather():
            if item.id is not None:  # checked first: a prompt with other problems still has it
                _unique(path, where, item.id, seen)
            prompt = _prompt(path, where, item, job, load, rows)
            if item.id is None:
                _unique(path, where, prompt.id, seen)
            prompts.append(prompt)
    return tuple(prompts)


def _unique(path: Path, where: str, prompt_id: str, seen: dict[str, str]) -> None:
    if prompt_id in seen:
        raise JobFileError(path, f"{where}.id", f"duplicate prompt id {prompt_id!r} "
                           f"(also at {seen[prompt_id]}); ids must be unique")
    seen[prompt_id] = where


RENDER_CHECK_LIMIT = 10_000   # var combinations of one Jinja prompt all rendered at load...
LOAD_RENDER_BUDGET = 200_000  # ...while the whole load stays under this many renders


class _Load:
    """Work shared by the prompts of one load: templates by source, renders left, datasets."""

    __slots__ = ("templates", "renders_left", "datasets")

    def __init__(self) -> None:
        self.templates: dict[str, Template] = {}
        self.renders_left = LOAD_RENDER_BUDGET
        self.datasets: dict[str, Dataset] = {}


@dataclass(frozen=True, slots=True)
class _Rows:
    """A prompt item's dataset and where it was named, with its target and metadata options."""

    where: str
    dataset: Dataset
    spec: schema.DatasetIn


def _dataset(path: Path, where: str, spec: schema.DatasetIn, load: _Load) -> _Rows:
    """The dataset of a prompt item (read once per load for items that name the same one)."""
    key = spec.model_dump_json()
    dataset = load.datasets.get(key)
    if dataset is None:
        dataset = load.datasets[key] = read_dataset(path, where, spec)
    return _Rows(where, dataset, spec)


def _prompt(path: Path, where: str, item: schema.PromptIn, job: schema.JobIn,
            load: _Load, rows: _Rows | None = None) -> Prompt:
    sourced: list[tuple[Message, str]] = []   # each message with the field it came from
    if item.messages is not None:
        sourced += [(Message(m.role, _content(path, f"{where}.messages[{n}].content", m.content,
                                              m.role)), f"{where}.messages[{n}].content")
                    for n, m in enumerate(item.messages)]
    elif item.turns is not None:  # a conversation (conversation.py): its user turns
        sourced += [(Message("user", _content(path, f"{where}.turns[{n}]", turn, "user")),
                     f"{where}.turns[{n}]") for n, turn in enumerate(item.turns)]
    else:
        sourced.append((Message("user", item.text or ""), f"{where}.text"))
    system = item.system if item.system is not None else job.system
    if system is not None and not any(m.role == "system" for m, _ in sourced):
        sourced.insert(0, (Message("system", system),
                           f"{where}.system" if item.system is not None else "system"))
    messages = [message for message, _ in sourced]
    dataset = rows.dataset if rows is not None else None
    first = dataset.row(0).fields if dataset is not None else {}
    # a row field is a var of its own name (over a job var of the same name)
    available = {**job.vars, **item.vars, **first}
    used: dict[str, tuple[Any, ...]] = {}
    templates = []
    for message, field_name in sourced:
        if item.templating:
            template = content_template(path, field_name, message.content, available,
                                        load.templates, dataset is not None)
        elif isinstance(message.content, str):
            template = literal(message.content)
        else:
            raise JobFileError(path, field_name, "templating: false takes text content only; "
                               "give the text parts as one string, or drop templating: false")
        templates.append(template)
        for var in template.names:
            if var not in used and var not in first:
                used[var] = _values(path, f"{where}.vars.{var}" if var in item.vars
                                    else f"vars.{var}", available[var])
    jinja = [(t, f) for t, (_, f) in zip(templates, sourced, strict=True) if t.parts is None]
    target_field, target = None, None
    if rows is not None:
        target_field, target = _target(path, rows, available, load)
        if target is not None and target.parts is None:
            jinja.append((target, f"{rows.where}.target"))
    _try_renders(path, jinja, used, load, dataset,
                 templated_images([m.content for m in messages]) if item.templating else [])
    # a dataset prompt's default id also names its dataset: one template, two datasets
    named = [str(m.content) for m in messages] + ([dataset.path.name] if dataset is not None
                                                  else [])
    prompt_id = item.id or "p-" + hashlib.sha256("\x1f".join(named).encode()).hexdigest()[:10]
    return Prompt(id=prompt_id, messages=tuple(messages), vars=dict(sorted(used.items())),
                  expected=item.expected, metadata=dict(item.metadata),
                  checks=compile_expected(item.expected, path=path, field_name=f"{where}.expected"),
                  templates=tuple(templates), dataset=dataset, target_field=target_field,
                  target=target,
                  metadata_fields=tuple(rows.spec.metadata) if rows is not None else (),
                  turns=len(item.turns or ()))


def _content(path: Path, where: str, content: str | list[str | schema.PartIn],
             role: str) -> Content:
    return content if isinstance(content, str) else build_parts(path, where, content, role)


def _target(path: Path, rows: _Rows, available: Mapping[str, Any],
            load: _Load) -> tuple[str | None, Template | None]:
    """A dataset's `target:`: the name of a row field, or a template over the row's vars."""
    target = rows.spec.target
    if target is None:
        return None, None
    if target in rows.dataset.fields:
        return target, None
    if "{" not in target:
        raise JobFileError(path, f"{rows.where}.target", f"no field {target!r} in the dataset "
                           f"(its fields: {', '.join(rows.dataset.fields[:12])}); a template "
                           "such as '{{ answer }}' works too")
    return None, check_template(path, f"{rows.where}.target", target, available, load.templates,
                                True)


def render_view(fields: Mapping[str, Any]) -> Mapping[str, Any]:
    """Row fields as templates read them: a missing (null) value is written as nothing."""
    if None in fields.values():
        return {k: "" if v is None else v for k, v in fields.items()}
    return fields


def _values(path: Path, var_field: str, value: Any) -> tuple[Any, ...]:
    """A var's value list, checked: not empty, no value twice, each one writable as text."""
    values = tuple(value) if isinstance(value, list) else (value,)
    if not values:
        raise JobFileError(path, var_field, "empty list: give at least one value")
    # a repeated value would plan the same request twice under one request_id
    if len({(type(v), v) for v in values}) < len(values):
        raise JobFileError(path, var_field, "duplicate value in the list (use repeats: "
                           "to send a request more than once)")
    for v in values:
        try:
            str(v)
        except ValueError as exc:  # an integer of more than 4300 digits
            raise JobFileError(path, var_field, f"a value cannot be written as text: "
                               f"{exc}") from None
    return values


def _row_problem(path: Path, jinja: list[tuple[Template, str]], images: Sequence[ImagePart],
                 variables: Mapping[str, Any], at: str) -> JobFileError | None:
    """Why one row cannot make its request (a template it trips, an image it names that
    cannot be sent), or None."""
    for template, field_name in jinja:
        try:
            template.render(variables)
        except ROW_ERRORS as exc:
            return JobFileError(path, field_name, f"template cannot be rendered with {at}: "
                                f"{exc}")
    try:
        check_row_images(images, variables)
    except JobFileError as exc:
        return JobFileError(exc.path, exc.field, f"{exc.problem} ({at})")
    return None


def _try_renders(path: Path, jinja: list[tuple[Template, str]],
                 used: Mapping[str, tuple[Any, ...]], load: _Load,
                 dataset: Dataset | None = None, images: Sequence[ImagePart] = ()) -> None:
    """Render the Jinja templates of a prompt with every var combination (or, past the limits,
    with every value of every var at least once), so that a value that trips a template (a
    filter, the sandbox) is a load-time error rather than a run that stops half way. Plain
    templates cannot fail and are not rendered. With a dataset, rows are tried (with the first
    value of the other vars, and the images their templated sources name) until one renders:
    a prompt that no row of the first ones the load's render budget allows can fill is refused;
    a row that fails while others do not is a `bad_input` row (plan.py)."""
    if dataset is not None:
        if not jinja and not images:
            return
        count = min(len(dataset), max(1, min(RENDER_CHECK_LIMIT, load.renders_left)))
        base = {name: values[0] for name, values in used.items()}
        first: JobFileError | None = None
        for k in range(count):
            load.renders_left -= 1
            variables = {**base, **render_view(dataset.row(k).fields)}
            problem = _row_problem(path, jinja, images, variables,
                                   f"row {dataset.position(k) + 1} of {dataset.path.name}")
            if problem is None:  # one row makes its request: others that fail are bad_input
                return
            first = first or problem
        assert first is not None
        raise first  # every row tried fails: the prompt is at fault, not a row
    if not jinja:
        return
    names = [name for name in used if any(name in t.names for t, _ in jinja)]
    lists = [used[name] for name in names]
    count = 1
    for values in lists:
        count *= len(values)
    combos: Any
    if count <= min(RENDER_CHECK_LIMIT, load.renders_left):
        load.renders_left -= count
        combos = itertools.product(*lists)
    else:  # combination k takes value k of every var (cycling): each value is tried once
        widest = max((len(values) for values in lists), default=1)
        combos = (tuple(values[k % len(values)] for values in lists) for k in range(widest))
    for values in combos:
        variables = dict(zip(names, values, strict=True))
        for template, field_name in jinja:
            try:
                template.render(variables)
            except TemplateError as exc:
                raise JobFileError(path, field_name, f"template cannot be rendered with "
                                   f"{variables}: {exc}") from None
