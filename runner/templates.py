"""Prompt templates: Jinja2 text in, a `Template` (its variables, a renderer) out, rendered in a
sandbox with strict undefined variables.

A template can read the job's variables and nothing else: the sandbox blocks attribute access to
Python internals, and an undefined variable is an error instead of an empty string.

Most prompt templates only substitute variables (`Translate {{ text }} to {{ lang }}`). Those are
recognised by a pattern and kept as their literal parts and variable names: no Jinja compile at
load (a compile costs ~0.6 ms, so 100k distinct templates took a minute and a half), rendering is
a join, and the size of every rendering is known by arithmetic (`runner plan` on 10M requests).
Templates with any logic go through Jinja, compiled once per source while the cache holds them.

This is the only module that imports Jinja, and only when a template has logic: a job whose
templates are all plain never imports it (a tenth of a short run's start, issue 11). Jinja's
errors leave this module as `TemplateError` / `TemplateSyntaxError` below.
"""

from __future__ import annotations

import functools
import keyword
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import JobFileError


class TemplateError(Exception):
    """A template that cannot be rendered with these values (an undefined variable, a filter on
    the wrong kind of value, the sandbox), or, as `TemplateSyntaxError`, not parsed at all."""


# what a template's expression can raise on a value of the wrong kind, besides a TemplateError
# (`{{ n + 1 }}` with n a string, a division by zero, a missing key or index): the caller names
# it in a one-line error, never a traceback
PYTHON_ERRORS: tuple[type[Exception], ...] = (ArithmeticError, TypeError, ValueError,
                                              LookupError, AttributeError, RecursionError)


def problem(exc: Exception) -> str:
    """A render failure in words: a template's own error as it is, Python's with its name."""
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, PYTHON_ERRORS) else str(exc)


class TemplateSyntaxError(TemplateError):
    def __init__(self, message: str, lineno: int) -> None:
        super().__init__(message)
        self.message = message
        self.lineno = lineno


# everything rendering a template with some values can raise
RENDER_ERRORS: tuple[type[Exception], ...] = (TemplateError, *PYTHON_ERRORS)


@functools.cache
def _jinja_error() -> type[Exception]:
    from jinja2 import TemplateError as JinjaError

    return JinjaError


@functools.cache
def _env() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                keep_trailing_newline=True)


# `{{ name }}` with plain whitespace; anything else (filters, `-` trimming, logic) is Jinja's
_VAR = re.compile(r"\{\{[ \t\n]*([A-Za-z_][A-Za-z0-9_]*)[ \t\n]*\}\}")
# literals and variable names Jinja reads differently from a context lookup
_NOT_PLAIN_NAMES = {"true", "false", "none", "True", "False", "None"} | set(keyword.kwlist)
# the globals of a Jinja environment (`jinja2.defaults.DEFAULT_NAMESPACE`): such a name is
# Jinja's, not a variable (written out so that a plain template needs no Jinja import; a test
# keeps it equal to Jinja's)
JINJA_GLOBALS = frozenset({"range", "dict", "lipsum", "cycler", "joiner", "namespace"})
COMPILED_CACHE_SIZE = 16_384   # Jinja-compiled templates kept (~4 KB each)


class Stats:
    """How much template work this process did: tests bound the work of a load or a plan."""

    __slots__ = ("renders", "compiles")

    def __init__(self) -> None:
        self.renders = 0    # renderings of a template (either path)
        self.compiles = 0   # Jinja compilations (the expensive step)


STATS = Stats()


@dataclass(frozen=True, slots=True, eq=False)
class Template:
    """One message template: its source, the variables it reads, and how to render it."""

    source: str
    names: tuple[str, ...]               # variables it reads, sorted
    parts: tuple[str, ...] | None        # plain: text, name, text, name, ..., text; else None

    def render(self, variables: Mapping[str, Any]) -> str:
        """The text sent for these variable values (a `TemplateError` if they trip it)."""
        STATS.renders += 1
        parts = self.parts
        if parts is None:
            try:
                return str(_compiled(self.source).render(variables))
            except _jinja_error() as exc:
                raise TemplateError(str(exc)) from exc
            except PYTHON_ERRORS as exc:  # an expression on a value of the wrong kind
                raise TemplateError(problem(exc)) from exc
        if len(parts) == 1:
            return parts[0]
        out = list(parts)
        for k in range(1, len(parts), 2):
            name = parts[k]
            if name not in variables:
                raise TemplateError(f"{name!r} is undefined")  # Jinja's words
            out[k] = str(variables[name])   # what Jinja's `{{ name }}` writes
        return "".join(out)

    def bytes_total(self, values: Mapping[str, tuple[Any, ...]], combinations: int) -> int | None:
        """The UTF-8 bytes of every rendering over all `combinations` of `values` (each var's
        values repeat combinations/len times), by arithmetic; None for a Jinja template."""
        parts = self.parts
        if parts is None:
            return None
        total = combinations * sum(len(p.encode()) for p in parts[0::2])
        for name in parts[1::2]:
            options = values[name]
            total += combinations // len(options) * sum(len(str(v).encode()) for v in options)
        return total


def parse(text: str) -> Template:
    """A template from its source; `TemplateSyntaxError` when Jinja cannot parse it."""
    if "{" not in text:
        return Template(text, (), (text,))
    parts = tuple(_VAR.split(text))
    if _plain(parts):
        return Template(text, tuple(sorted(set(parts[1::2]))), parts)
    from jinja2 import TemplateSyntaxError as JinjaSyntaxError
    from jinja2 import meta

    try:
        names = tuple(sorted(meta.find_undeclared_variables(_env().parse(text))))
    except JinjaSyntaxError as exc:
        raise TemplateSyntaxError(exc.message or str(exc), exc.lineno) from exc
    return Template(text, names, None)


def literal(text: str) -> Template:
    """A template that is its text, sent as written (`templating: false`)."""
    return Template(text, (), (text,))


def _plain(parts: tuple[str, ...]) -> bool:
    """Whether Jinja would read these split parts exactly as literal text and variables."""
    literals, names = parts[0::2], parts[1::2]
    if any(name in _NOT_PLAIN_NAMES or name in JINJA_GLOBALS for name in names):
        return False
    for k, literal in enumerate(literals):
        # Jinja normalises newlines in text and starts a tag at {{ {% {#; a brace next to a
        # variable could join it into another token
        if "\r" in literal or "{{" in literal or "{%" in literal or "{#" in literal:
            return False
        if (k > 0 and literal.startswith("}")) or (k < len(literals) - 1
                                                   and literal.endswith("{")):
            return False
    return True


_CACHE: OrderedDict[str, Any] = OrderedDict()


def _compiled(text: str) -> Any:
    found = _CACHE.get(text)
    if found is not None:
        _CACHE.move_to_end(text)
        return found
    STATS.compiles += 1
    compiled = _env().from_string(text)  # (parsed before: it compiles)
    _CACHE[text] = compiled
    if len(_CACHE) > COMPILED_CACHE_SIZE:
        _CACHE.popitem(last=False)
    return compiled


def render(text: str, variables: Mapping[str, Any]) -> str:
    """Render one template source with its variables."""
    return parse(text).render(variables)


def check_template(path: Path, field: str, text: str, available: Mapping[str, Any],
                   seen: dict[str, Template] | None = None, rows: bool = False) -> Template:
    """The template of a job-file field; a syntax error or an undefined variable is a
    JobFileError. `seen` maps sources already checked in this load (each is parsed once).
    With `rows` (a dataset prompt), the caller tries the renders, row by row."""
    template = seen.get(text) if seen is not None else None
    if template is None:
        try:
            template = parse(text)
        except TemplateSyntaxError as exc:
            raise JobFileError(path, field, f"template error on line {exc.lineno}: "
                               f"{exc.message}") from None
    missing = [name for name in template.names if name not in available]
    if missing:
        where = "a field of the dataset or under vars:" if rows \
            else "under vars: of the job or of this prompt"
        raise JobFileError(path, field, f"undefined variable {missing[0]!r} (define it {where}; "
                           "templating: false sends the text as written)")
    # plain templates cannot fail; Jinja ones are tried once here (dataset rows: by the caller)
    if template.parts is None and not rows:
        sample = {name: _first(available[name]) for name in template.names}
        try:
            template.render(sample)
        except RENDER_ERRORS as exc:
            raise JobFileError(path, field, f"template cannot be rendered: {problem(exc)}") \
                from None
    if seen is not None:
        seen[text] = template
    return template


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value
