"""Checks (evals): validated `CheckIn`s in, compiled `Check`s out; a response and its row in, a
`Verdict` (passed, score, failures) out.

Pure apart from one thing: compiling a `python:` check imports its module, so that a target that
does not import is a job-file error at load time rather than a failure on every row.

Semantics (the README's "Checks" section says the same):

- A check scores a response 0..1; binary checks score 0 or 1 and pass at 1, a `python:` check
  passes at `min_score` (default 0.5). A row passes when every check that applies passes; its
  `score` is the mean of the check scores.
- Text checks compare the response text: `equals` after stripping both sides, `contains` /
  `not_contains` case-sensitively, `icontains` case-insensitively (casefold), `regex` with
  `re.search` (anchor it yourself; `(?i)` for case-insensitive).
- `json_valid` / `json_schema` parse the stripped text, or the inside of one enclosing
  ``` fence. `max_latency_s` compares `latency_s` (the final attempt), `max_cost_usd` compares
  `cost_usd` (an unknown cost fails).
- A row whose request failed (`status = error`) fails every check ("no response"); a skipped row
  (never sent) is not graded. Rows of prompts without checks get `passed = None`.
- `expected:` on a prompt is shorthand: a string (or number) is `equals`; a mapping is one check
  (`{contains: Paris}`); a list is several checks, each a string or a mapping.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import JobFileError
from .graders import GRADERS, Grade, Grader, PythonCheck, python, short, shown
from .schema import CHECK_TYPES, CheckIn
from .sources import invalid

DEFAULT_MIN_SCORE = 0.5                   # python checks returning a score


@dataclass(frozen=True, slots=True, eq=False)
class Check:
    """One compiled check. `grade` is None for checks graded outside `evaluate` (llm_judge),
    whose scores are passed to `evaluate(graded=...)`."""

    kind: str                             # one of schema.CHECK_TYPES
    label: str                            # how failures name it: "contains 'Paris'"
    arg: Any                              # the value as written in the job file
    grade: Grader | None
    min_score: float = 1.0
    prompts: frozenset[str] | None = None  # job-level: only these prompt ids (None: every one)
    strict: bool = True                   # json_schema: response_format strict mode


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of a row's checks: the `passed`, `score` and `check_failures` columns."""

    passed: bool | None
    score: float | None
    failures: str | None


NOT_GRADED = Verdict(None, None, None)


@dataclass(frozen=True, slots=True)
class CheckSet:
    """Every prompt's checks: its `expected` first, then the job-level checks that apply."""

    by_prompt: Mapping[str, tuple[Check, ...]] = field(default_factory=dict)

    def for_prompt(self, prompt_id: str) -> tuple[Check, ...]:
        return self.by_prompt.get(prompt_id, ())

    def __bool__(self) -> bool:
        return any(self.by_prompt.values())


def evaluate(checks: Sequence[Check], response_text: str | None, row: Mapping[str, Any], *,
             graded: Mapping[Check, float] | None = None) -> Verdict:
    """Grade one row: `row` is `Result.as_row()` (status, latency_s, cost_usd, ...)."""
    if not checks or row.get("status") == "skipped":
        return NOT_GRADED
    if row.get("status") == "error":
        why = row.get("error_type") or "error"
        return Verdict(False, 0.0, f"no response (request failed: {why})")
    text = response_text or ""
    scores: list[float] = []
    failures: list[str] = []
    for check in checks:
        if check.grade is not None:
            score, why = _safely(check, text, row)
        elif graded is not None and check in graded:
            score, why = graded[check], None
        else:
            score, why = 0.0, "not graded"
        if why is None and score < check.min_score:
            why = f"score {score:.2f} < {check.min_score:g}"
        scores.append(score)
        if why is not None:
            failures.append(f"{check.label}: {why}")
    return Verdict(not failures, sum(scores) / len(scores), "; ".join(failures) or None)


def response_format_for(checks: Sequence[Check]) -> dict[str, Any] | None:
    """The `response_format` param that requests output in a prompt's JSON schema, or None."""
    for check in checks:
        if check.kind == "json_schema":
            return {"type": "json_schema", "json_schema": {
                "name": "response", "schema": check.arg, "strict": check.strict}}
    return None


def _safely(check: Check, text: str, row: Mapping[str, Any]) -> Grade:
    assert check.grade is not None
    try:
        return check.grade(text, row)
    except Exception as exc:  # a user's python check must not crash the run
        return 0.0, f"raised {type(exc).__name__}: {short(str(exc))}"


# --- compiling -------------------------------------------------------------------------------

def compile_check(check: CheckIn, *, path: Path, field_name: str) -> Check:
    """A validated `CheckIn` as a `Check`; imports a python target (JobFileError if it fails)."""
    kind = next(k for k in CHECK_TYPES if getattr(check, k) is not None)
    arg = getattr(check, kind)
    prompts = frozenset(check.prompts) if check.prompts is not None else None
    if kind == "python":
        fn = _import_target(arg, path=path, field_name=f"{field_name}.python")
        return Check(kind, f"python {arg}", arg, python(fn), prompts=prompts,
                     min_score=check.min_score if check.min_score is not None
                     else DEFAULT_MIN_SCORE)
    if kind == "llm_judge":  # graded by the engine through the pool: see engine._judge
        return Check(kind, f"llm_judge {arg.model}", arg, None, prompts=prompts,
                     min_score=check.min_score if check.min_score is not None
                     else DEFAULT_MIN_SCORE)
    label = kind if kind in ("json_valid", "json_schema") else f"{kind} {shown(arg)}"
    return Check(kind, label, arg, GRADERS[kind](arg), prompts=prompts,
                 strict=check.strict if check.strict is not None else True)


def compile_expected(value: Any, *, path: Path, field_name: str) -> tuple[Check, ...]:
    """A prompt's `expected:` (string, mapping or list of them) as checks."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    out = []
    for n, item in enumerate(items):
        where = f"{field_name}[{n}]" if isinstance(value, list) else field_name
        if isinstance(item, bool) or not isinstance(item, str | int | float | Mapping | CheckIn):
            raise JobFileError(path, where, "must be a string (equals), a mapping such as "
                               f"{{contains: ...}}, or a list of them (got {item!r})")
        if isinstance(item, str | int | float):
            item = {"equals": str(item)}
        try:
            check_in = item if isinstance(item, CheckIn) else CheckIn.model_validate(item)
        except ValidationError as exc:
            raise invalid(path, exc, prefix=where, names=CheckIn.model_fields,
                          unknown_hint=f"check types: {', '.join(CHECK_TYPES)}") from None
        if check_in.prompts is not None:
            raise JobFileError(path, f"{where}.prompts", "only job-level checks take prompts: "
                               "(a prompt's expected applies to that prompt)")
        out.append(compile_check(check_in, path=path, field_name=where))
    return tuple(out)


def build_check_set(checks: Sequence[CheckIn], expected: Mapping[str, tuple[Check, ...]], *,
                    path: Path) -> CheckSet:
    """Job-level `checks:` plus each prompt's expected checks (prompt id -> checks)."""
    compiled = []
    for i, check_in in enumerate(checks):
        where = f"checks[{i}]"
        for k, prompt_id in enumerate(check_in.prompts or ()):
            if prompt_id not in expected:
                known = ", ".join(sorted(expected)[:10])
                raise JobFileError(path, f"{where}.prompts[{k}]",
                                   f"unknown prompt id {prompt_id!r} (known: {known})")
        compiled.append((where, compile_check(check_in, path=path, field_name=where)))
    by_prompt: dict[str, tuple[Check, ...]] = {}
    for prompt_id, own in expected.items():
        schema_from = "expected" if any(c.kind == "json_schema" for c in own) else None
        applied = list(own)
        for where, check in compiled:
            if check.prompts is not None and prompt_id not in check.prompts:
                continue
            if check.kind == "json_schema":
                if schema_from is not None:
                    raise JobFileError(path, f"{where}.json_schema", f"prompt {prompt_id!r} "
                                       f"already has a json_schema check (in {schema_from}); "
                                       "only one schema can be sent as response_format "
                                       "(limit this one with prompts:)")
                schema_from = where
            applied.append(check)
        if applied:
            by_prompt[prompt_id] = tuple(applied)
    return CheckSet(by_prompt)


def _import_target(target: str, *, path: Path, field_name: str) -> PythonCheck:
    """`module:function`, imported from the job file's folder or the Python path."""
    module_name, _, function_name = target.partition(":")
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise JobFileError(path, field_name, f"cannot import {module_name!r} ({exc}): put "
                           f"{module_name.replace('.', '/')}.py next to the job file or on "
                           "PYTHONPATH") from None
    except Exception as exc:
        raise JobFileError(path, field_name, f"importing {module_name!r} failed: "
                           f"{type(exc).__name__}: {short(str(exc))}") from None
    finally:
        sys.path.remove(folder)
    fn = getattr(module, function_name, None)
    if not callable(fn):
        raise JobFileError(path, field_name, f"module {module_name!r} has no function "
                           f"{function_name!r} (define `def {function_name}(response_text, "
                           "row)` returning a bool or a score 0..1)")
    return fn  # type: ignore[no-any-return]
