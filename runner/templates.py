"""Prompt templates: Jinja2 text in, rendered text out, in a sandbox with strict undefined vars.

A template can read the job's variables and nothing else: the sandbox blocks attribute access to
Python internals, and an undefined variable is an error instead of an empty string.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment

from .errors import JobFileError

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                            keep_trailing_newline=True)


@lru_cache(maxsize=4096)
def _compiled(text: str) -> Any:
    return _ENV.from_string(text)


def render(text: str, variables: Mapping[str, Any]) -> str:
    """Render one template with its variables (plain text when it has no `{{`/`{%`)."""
    if "{" not in text:
        return text
    return str(_compiled(text).render(variables))


def check_template(path: Path, field: str, text: str, available: Mapping[str, Any]) -> list[str]:
    """The variables a template uses; a syntax error or an undefined variable is a JobFileError."""
    if "{" not in text:
        return []
    try:
        used = sorted(meta.find_undeclared_variables(_ENV.parse(text)))
    except TemplateSyntaxError as exc:
        raise JobFileError(path, field, f"template error on line {exc.lineno}: {exc.message}") \
            from None
    missing = [name for name in used if name not in available]
    if missing:
        raise JobFileError(path, field, f"undefined variable {missing[0]!r} (define it under "
                           "vars: of the job or of this prompt)")
    sample = {name: _first(available[name]) for name in used}
    try:
        render(text, sample)
    except TemplateError as exc:
        raise JobFileError(path, field, f"template cannot be rendered: {exc}") from None
    return used


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value
