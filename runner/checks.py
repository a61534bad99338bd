"""Checks (evals): validated `CheckIn`s in, compiled `Check`s out (graded by `grading`, whose
names are re-exported here: `evaluate`, `Verdict`, `CheckSet`, ...).

Pure apart from one thing: compiling a `python:` check or transform imports its module, so that a
target that does not import is a job-file error at load time rather than a failure on every row.

Semantics (the README's "Checks" section says the same):

- A check scores a response 0..1; binary checks score 0 or 1 and pass at 1, a `python:` or
  `llm_judge` check passes at `min_score` (default 0.5). A check that could not be applied to a
  row (its judge was refused by the budget or failed, a value needs a var the row lacks) is *not
  graded*: score and passed are null, never a failure.
- A row fails when any check fails; else it is not graded (`passed` null) when any check was not
  graded; else it passes. Its `score` is the mean of the graded checks' scores weighted by
  `weight` (default 1).
- Every string in a check's value is a template over the row's vars and `target`
  (`equals: "{{ target }}"`, `icontains: "{{ city }}"`). In `regex` and `not_regex` an inserted
  value matches literally (it is `re.escape`d); the text around it is the pattern.
- A `transform:` turns the response text into what the check reads (see `transforms`).
- A scalar `expected:` is the prompt's target; it is checked with `equals` unless another check
  of the prompt reads `{{ target }}` (then that check decides how).
- A row whose request failed (`status = error`) fails every check ("no response"); a skipped row
  (never sent) is not graded.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import JobFileError
from .graders import GRADERS, python, short, shown
from .grading import (
    ESCAPED_KINDS,
    NOT_GRADED,
    TARGET,
    Check,
    CheckSet,
    Judged,
    Outcome,
    ValueTemplate,
    Verdict,
    context_for,
    evaluate,
    response_format_for,
)
from .schema import CHECK_TYPES, CheckIn, JudgeIn
from .sources import invalid
from .templates import Template, TemplateError, TemplateSyntaxError, parse
from .transforms import compile_transform

__all__ = ["NOT_GRADED", "Check", "CheckSet", "Judged", "Outcome", "Verdict", "build_check_set",
           "compile_check", "compile_expected", "context_for", "evaluate",
           "response_format_for"]

DEFAULT_MIN_SCORE = 0.5                   # python and judge checks returning a score


# --- compiling -------------------------------------------------------------------------------

def compile_check(check: CheckIn, *, path: Path, field_name: str) -> Check:
    """A validated `CheckIn` as a `Check`; imports a python target (JobFileError if it fails)."""
    kind = next(k for k in CHECK_TYPES if getattr(check, k) is not None)
    arg = getattr(check, kind)
    common: dict[str, Any] = {
        "prompts": frozenset(check.prompts) if check.prompts is not None else None,
        "weight": check.weight, "named": check.name is not None}
    if check.transform is not None:
        compiled = compile_transform(check.transform, lambda target, where: _import_target(
            target, path=path, field_name=f"{field_name}.transform{where}", takes="text"))
        if isinstance(compiled, str):
            raise JobFileError(path, f"{field_name}.transform{compiled.split(':')[0]}",
                               compiled.partition(": ")[2])
        common["transform"] = compiled[0]
    min_score = check.min_score if check.min_score is not None else DEFAULT_MIN_SCORE
    if kind == "python":
        fn = _import_target(arg, path=path, field_name=f"{field_name}.python")
        return Check(kind, check.name or f"python {arg}", arg, python(fn), min_score=min_score,
                     **common)
    if kind == "llm_judge":  # graded by the worker through the pool: see worker._judge
        uses_target = _check_judge(arg, path=path, field_name=f"{field_name}.llm_judge")
        return Check(kind, check.name or _judge_name(arg), arg, None, min_score=min_score,
                     uses_target=uses_target, **common)
    plain = arg.model_dump() if kind == "number_close" else arg
    values = _value_template(plain, path=path, field_name=f"{field_name}.{kind}")
    label = check.name or (kind if kind in ("json_valid", "json_schema")
                           else f"{kind} {shown(_written(plain))}")
    if values is not None and kind in ESCAPED_KINDS:
        try:  # the pattern around the inserted values must compile
            re.compile(values.render(dict.fromkeys(values.names, "x"), escape=True))
        except (re.error, TemplateError) as exc:
            raise JobFileError(path, f"{field_name}.{kind}",
                               f"invalid regular expression: {exc}") from None
    return Check(kind, label, arg, GRADERS[kind](plain) if values is None else None,
                 values=values, uses_target=values is not None and TARGET in values.names,
                 strict=check.strict if check.strict is not None else True,
                 send_schema=check.response_format is not False, **common)


def _written(value: Any) -> Any:
    """A value as the job file wrote it, for a default name."""
    if isinstance(value, dict) and "value" in value:
        tol = [f"{k}={value[k]:g}" for k in ("rel_tol", "abs_tol") if value.get(k)]
        return f"{value['value']}{' (' + ', '.join(tol) + ')' if tol else ''}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return value


def _value_template(value: Any, *, path: Path, field_name: str) -> ValueTemplate | None:
    """The value with its strings parsed as templates; None when no string is a template."""
    names: set[str] = set()

    def walk(item: Any, where: str) -> Any:
        if isinstance(item, str):
            if "{" not in item:
                return item
            try:
                template = parse(item)
            except TemplateSyntaxError as exc:
                raise JobFileError(path, where, f"template error on line {exc.lineno}: "
                                   f"{exc.message}") from None
            names.update(template.names)
            return template if template.names or template.parts is None else item
        if isinstance(item, list):
            return [walk(v, f"{where}[{n}]") for n, v in enumerate(item)]
        if isinstance(item, dict):
            return {k: walk(v, f"{where}.{k}") for k, v in item.items()}
        return item

    if isinstance(value, dict) and "value" not in value:   # a JSON schema is no template
        return None
    walked = walk(value, field_name)
    if not _has_template(walked):
        return None
    return ValueTemplate(walked, frozenset(names))


def _has_template(value: Any) -> bool:
    if isinstance(value, Template):
        return True
    if isinstance(value, list):
        return any(_has_template(v) for v in value)
    if isinstance(value, dict):
        return any(_has_template(v) for v in value.values())
    return False


def _check_judge(spec: JudgeIn, *, path: Path, field_name: str) -> bool:
    """Parse the judge's templates (a syntax error is a job-file error); whether it reads the
    row's target (a judge without a rubric or prompt grades against the target)."""
    uses_target = spec.rubric is None and spec.prompt is None
    for key in ("rubric", "prompt"):
        text = getattr(spec, key)
        if text is None:
            continue
        try:
            uses_target = uses_target or TARGET in parse(text).names
        except TemplateSyntaxError as exc:
            raise JobFileError(path, f"{field_name}.{key}", f"template error on line "
                               f"{exc.lineno}: {exc.message}") from None
    return uses_target


def _judge_name(spec: JudgeIn) -> str:
    """`llm_judge <model>: <the rubric's start>`, so that judges of one row read apart."""
    about = spec.rubric or spec.prompt or "matches the target"
    return f"llm_judge {spec.model}: {short(about, 48)}"


def compile_expected(value: Any, *, path: Path, field_name: str) -> tuple[Check, ...]:
    """A prompt's `expected:` (string, mapping or list of them) as checks; a scalar is the
    prompt's target, checked with `equals` (see `build_check_set`)."""
    if value is None:
        return ()
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        literal = str(value)
        return (Check("equals", f"equals {shown(literal)}", literal, GRADERS["equals"](literal),
                      target=literal),)
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
                    path: Path, vars_of: Mapping[str, frozenset[str]] | None = None) -> CheckSet:
    """Job-level `checks:` plus each prompt's expected checks (prompt id -> checks). With
    `vars_of` (prompt id -> the vars its rows have, dataset target included as `target`), a
    job-level check whose value reads a var a prompt's rows lack is refused here, not left
    ungraded on every row of the run."""
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
    targets: dict[str, str] = {}
    for prompt_id, own in expected.items():
        schema_from = "expected" if any(c.kind == "json_schema" and c.send_schema
                                        for c in own) else None
        applied = list(own)
        for where, check in compiled:
            if check.prompts is not None and prompt_id not in check.prompts:
                continue
            if check.kind == "json_schema" and check.send_schema:
                if schema_from is not None:
                    raise JobFileError(path, f"{where}.json_schema", f"prompt {prompt_id!r} "
                                       f"already has a json_schema check (in {schema_from}); "
                                       "only one schema can be sent as response_format "
                                       "(limit this one with prompts:, or set "
                                       "response_format: false on it)")
                schema_from = where
            applied.append(check)
        target = next((c.target for c in own if c.target is not None), None)
        if vars_of is not None and prompt_id in vars_of:
            _check_names(path, compiled, applied, vars_of[prompt_id] | (
                {TARGET} if target is not None else set()), prompt_id)
        if target is not None:
            targets[prompt_id] = target
            if any(c.uses_target for c in applied):  # that check decides how it is compared
                applied = [c for c in applied if c.target is None]
        if applied:
            by_prompt[prompt_id] = _unique_names(applied, path=path, prompt_id=prompt_id)
    return CheckSet(by_prompt, targets)


def _check_names(path: Path, compiled: Sequence[tuple[str, Check]], applied: Sequence[Check],
                 known: frozenset[str] | set[str], prompt_id: str) -> None:
    """A job-level check applied to a prompt reads only vars that prompt's rows have."""
    for where, check in compiled:
        if check not in applied or check.values is None or check.kind == "llm_judge":
            continue
        missing = sorted(check.values.names - known)
        if not missing:
            continue
        if missing[0] == TARGET:
            raise JobFileError(path, f"{where}.{check.kind}", f"reads {{{{ target }}}} but prompt "
                               f"{prompt_id!r} has no target (give its dataset a target: or "
                               "the prompt an expected:, or limit the check with prompts:)")
        have = ", ".join(sorted(known)[:12]) or "none"
        raise JobFileError(path, f"{where}.{check.kind}", f"undefined variable {missing[0]!r} "
                           f"for prompt {prompt_id!r} (its vars: {have}; limit the check with "
                           "prompts: if it is meant for other prompts)")


def _unique_names(checks: list[Check], *, path: Path, prompt_id: str) -> tuple[Check, ...]:
    """The checks with default names made unique (`#2`, `#3`); two checks given one name are a
    job-file error (their lines would read as one)."""
    import dataclasses

    seen: dict[str, int] = {}
    named = [c.name for c in checks if c.named]
    for name in named:
        if named.count(name) > 1:
            raise JobFileError(path, "checks", f"two checks of prompt {prompt_id!r} are named "
                               f"{name!r}: give each check its own name:")
    out = []
    for check in checks:
        count = seen[check.name] = seen.get(check.name, 0) + 1
        if count > 1 and not check.named:
            check = dataclasses.replace(check, name=f"{check.name} #{count}")
        out.append(check)
    return tuple(out)


def _import_target(target: str, *, path: Path, field_name: str,
                   takes: str = "check") -> Callable[..., object]:
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
        hint = ("(define `def {f}(text)` returning the text to check)" if takes == "text" else
                "(define `def {f}(response_text, row)` returning a bool or a score 0..1)")
        raise JobFileError(path, field_name, f"module {module_name!r} has no function "
                           f"{function_name!r} " + hint.format(f=function_name))
    return fn  # type: ignore[no-any-return]
