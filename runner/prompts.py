"""Prompts of a job file: validated `PromptIn` items in (inline or `file:` rows), `Prompt`
values out, each template checked, its vars expanded and its Jinja logic tried at load.

Part of loading a job (`config.load_job`); errors are gathered into the load's `Problems`.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from . import schema
from .checks import Check, compile_expected
from .content import Content, build_parts, content_template
from .errors import JobFileError
from .prompt_files import read_prompt_file
from .sources import Problems
from .templates import Template


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


def resolve_prompts(path: Path, job: schema.JobIn, problems: Problems,
                    skip: set[int]) -> tuple[Prompt, ...]:
    """Every prompt of the job, in order (file rows where their `file:` item is); the items in
    `skip` were already reported."""
    items: list[tuple[str, schema.PromptIn]] = []
    for i, item in enumerate(job.prompts):
        if i in skip:
            continue
        where = f"prompts[{i}]"
        if isinstance(item, str):
            item = schema.PromptIn(text=item)
        if item.file is not None:
            file_path = (path.parent / item.file).resolve()
            with problems.gather():
                for row_no, row in read_prompt_file(file_path, f"{where}.file", problems):
                    items.append((f"{file_path.name}: row {row_no}", row))
        else:
            items.append((where, item))
    prompts: list[Prompt] = []
    seen: dict[str, str] = {}
    load = _Load()
    for where, item in items:
        with problems.gather():
            if item.id is not None:  # checked first: a prompt with other problems still has it
                _unique(path, where, item.id, seen)
            prompt = _prompt(path, where, item, job, load)
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
    """Work shared by the prompts of one load: templates by source, renders left."""

    __slots__ = ("templates", "renders_left")

    def __init__(self) -> None:
        self.templates: dict[str, Template] = {}
        self.renders_left = LOAD_RENDER_BUDGET


def _prompt(path: Path, where: str, item: schema.PromptIn, job: schema.JobIn,
            load: _Load) -> Prompt:
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
    available = {**job.vars, **item.vars}
    used: dict[str, tuple[Any, ...]] = {}
    templates = []
    for message, field_name in sourced:
        template = content_template(path, field_name, message.content, available,
                                    load.templates)
        templates.append(template)
        for var in template.names:
            if var not in used:
                used[var] = _values(path, f"{where}.vars.{var}" if var in item.vars
                                    else f"vars.{var}", available[var])
    _try_renders(path, [(t, f) for t, (_, f) in zip(templates, sourced, strict=True)
                        if t.parts is None], used, load)
    prompt_id = item.id or "p-" + hashlib.sha256(
        "\x1f".join(str(m.content) for m in messages).encode()).hexdigest()[:10]
    return Prompt(id=prompt_id, messages=tuple(messages), vars=dict(sorted(used.items())),
                  expected=item.expected, metadata=dict(item.metadata),
                  checks=compile_expected(item.expected, path=path, field_name=f"{where}.expected"),
                  templates=tuple(templates), turns=len(item.turns or ()))


def _content(path: Path, where: str, content: str | list[str | schema.PartIn],
             role: str) -> Content:
    return content if isinstance(content, str) else build_parts(path, where, content, role)


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


def _try_renders(path: Path, jinja: list[tuple[Template, str]],
                 used: Mapping[str, tuple[Any, ...]], load: _Load) -> None:
    """Render the Jinja templates of a prompt with every var combination (or, past the limits,
    with every value of every var at least once), so that a value that trips a template (a
    filter, the sandbox) is a load-time error rather than a run that stops half way. Plain
    templates cannot fail and are not rendered."""
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
