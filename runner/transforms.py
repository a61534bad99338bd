"""Transforms of a response before a check: a check's `transform:` (validated) in, a function of
the response text out, returning the text to check or why it could not be made (pure, apart from
importing a `python:` transform at load).

`strip` and `lower` (casefold) do what they say; `last_line` / `first_line` take the last / first
non-blank line (stripped); `{json_path: "$.a.b[0]"}` parses the response as JSON (the inside of
one enclosing ``` fence too) and takes that field: a string as it is, anything else as compact
JSON; `{python: module:function}` calls `function(text)`, which returns the new text. Steps of a
list run in order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from .schema import TransformIn

TransformFn = Callable[[str], "tuple[str | None, str | None]"]   # text -> (new text, why not)

_FENCE = re.compile(r"^```[\w-]*[ \t]*\n(.*)\n```$", re.DOTALL)
# $.a.b[0]['key with spaces'] : one step per match
_STEP = re.compile(r"""\.([A-Za-z_][\w-]*)|\[(\d+)\]|\[\s*'([^']*)'\s*\]|\[\s*"([^"]*)"\s*\]""")


def parse_json(text: str) -> tuple[Any, str | None]:
    """The JSON document of a response (or of one enclosing ``` fence), or why not."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return json.loads(body), None
    except ValueError as exc:
        return None, f"not valid JSON ({' '.join(str(exc).split())[:160]})"
    except RecursionError:
        return None, "not valid JSON (nested too deeply)"


def json_path_steps(path: str) -> tuple[str | int, ...] | None:
    """`$.a[0]['b c']` as ("a", 0, "b c"); None when it is not such a path."""
    if not path.startswith("$"):
        return None
    steps: list[str | int] = []
    at = 1
    while at < len(path):
        match = _STEP.match(path, at)
        if match is None:
            return None
        key, index, quoted, dquoted = match.groups()
        steps.append(int(index) if index is not None else
                     key if key is not None else quoted if quoted is not None else dquoted)
        at = match.end()
    return tuple(steps)


def _json_path(path: str) -> TransformFn:
    steps = json_path_steps(path)
    assert steps is not None

    def pick(text: str) -> tuple[str | None, str | None]:
        node, why = parse_json(text)
        if why is not None:
            return None, why
        for step in steps:
            found = (isinstance(step, int) and isinstance(node, list) and step < len(node)) \
                or (isinstance(step, str) and isinstance(node, dict) and step in node)
            if not found:
                return None, f"no value at {path}"
            node = node[step]
        if isinstance(node, str):
            return node, None
        return json.dumps(node, ensure_ascii=False, separators=(",", ":")), None

    return pick


def _lines(last: bool) -> TransformFn:
    def pick(text: str) -> tuple[str | None, str | None]:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            return "", None
        return (lines[-1] if last else lines[0]), None

    return pick


def _python(fn: Callable[[str], object], target: str) -> TransformFn:
    def call(text: str) -> tuple[str | None, str | None]:
        try:
            out = fn(text)
        except Exception as exc:  # a user's transform must not crash the run
            return None, f"transform {target} raised {type(exc).__name__}: {str(exc)[:160]}"
        if not isinstance(out, str):
            return None, f"transform {target} returned {type(out).__name__}, not text"
        return out, None

    return call


_WORDS: dict[str, TransformFn] = {
    "strip": lambda text: (text.strip(), None),
    "lower": lambda text: (text.casefold(), None),
    "last_line": _lines(last=True),
    "first_line": _lines(last=False),
}


def compile_transform(steps: str | TransformIn | Sequence[str | TransformIn],
                      importer: Callable[[str, str], Callable[..., object]],
                      ) -> tuple[TransformFn, str] | str:
    """(function, label) of a check's transform; a str is why it is wrong (for the job-file
    error). `importer(target, field)` imports a python target."""
    items = [steps] if isinstance(steps, str | TransformIn) else list(steps)
    fns: list[TransformFn] = []
    labels: list[str] = []
    for n, step in enumerate(items):
        if isinstance(step, str):
            fns.append(_WORDS[step])
            labels.append(step)
        elif step.json_path is not None:
            if json_path_steps(step.json_path) is None:
                return (f"[{n}].json_path: {step.json_path!r} is not a path like "
                        "$.field.list[0] or $['a key']")
            fns.append(_json_path(step.json_path))
            labels.append(step.json_path)
        else:
            assert step.python is not None
            fns.append(_python(importer(step.python, f"[{n}].python"), step.python))
            labels.append(step.python)

    def run(text: str) -> tuple[str | None, str | None]:
        current: str | None = text
        for fn in fns:
            assert current is not None
            current, why = fn(current)
            if why is not None:
                return None, why
        return current, None

    return run, " | ".join(labels)
