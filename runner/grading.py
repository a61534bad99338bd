"""Grading one row: compiled `Check`s, a response, its row and the row's template context in, a
`Verdict` (passed, score, failures, one `Outcome` per check) out (pure). The rules are in
`checks`' docstring; `checks` compiles what the job file says into these."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .graders import GRADERS, Grade, Grader, short
from .templates import Template, TemplateError
from .transforms import TransformFn

ESCAPED_KINDS = frozenset({"regex", "not_regex"})   # inserted values match literally
TARGET = "target"


@dataclass(frozen=True, slots=True)
class ValueTemplate:
    """A check value whose strings are templates: the value with each string parsed."""

    value: Any                            # str | list | dict with Template leaves
    names: frozenset[str]

    def render(self, context: Mapping[str, Any], escape: bool) -> Any:
        if escape:
            context = {k: re.escape(str(v)) for k, v in context.items()}
        return _render(self.value, context)


def _render(value: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(value, Template):
        return value.render(context)
    if isinstance(value, list):
        return [_render(v, context) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, context) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True, eq=False)
class Check:
    """One compiled check. `grade` is None for checks graded per row (a templated value, whose
    grader is built for each row's values) and for llm_judge checks (graded by the worker)."""

    kind: str                             # one of schema.CHECK_TYPES
    name: str                             # unique per prompt: "contains 'Paris'"
    arg: Any                              # the value as written in the job file
    grade: Grader | None
    min_score: float = 1.0
    prompts: frozenset[str] | None = None  # job-level: only these prompt ids (None: every one)
    strict: bool = True                   # json_schema: response_format strict mode
    weight: float = 1.0
    transform: TransformFn | None = None
    values: ValueTemplate | None = None   # the value's templates, when it has any
    send_schema: bool = True              # json_schema: sent as response_format
    target: str | None = None             # a scalar `expected:`: the prompt's target
    uses_target: bool = False             # reads {{ target }} (or judges against it)
    named: bool = False                   # the name was given in the job file

    @property
    def label(self) -> str:
        return self.name

    def grader_for(self, context: Mapping[str, Any]) -> Grader | str:
        """This row's grader, or why the check cannot be applied to the row (not graded)."""
        if self.grade is not None:
            return self.grade
        assert self.values is not None and self.kind != "llm_judge"
        missing = sorted(self.values.names - set(context))
        if missing:
            return (f"the row has no {missing[0]!r}" if missing[0] != TARGET
                    else "the row has no target")
        try:
            value = self.values.render(context, self.kind in ESCAPED_KINDS)
            return GRADERS[self.kind](value)
        except (TemplateError, re.error, ValueError, TypeError) as exc:
            return f"its value cannot be made for this row: {short(str(exc))}"


@dataclass(frozen=True, slots=True)
class Judged:
    """What a judge said about one row: its score (None: not graded) and the bill."""

    score: float | None
    reason: str | None
    cost_usd: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """One check on one row: a line of checks.parquet (with the row's ids)."""

    name: str
    kind: str
    passed: bool | None                   # None: not graded
    score: float | None
    weight: float
    reason: str | None                    # why it failed or was not graded; a judge's reason
    judge_cost_usd: float | None = None
    judge_prompt_tokens: int | None = None
    judge_completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of a row's checks: the `passed`, `score` and `check_failures` columns, and
    one `Outcome` per check."""

    passed: bool | None
    score: float | None
    failures: str | None
    outcomes: tuple[Outcome, ...] = field(default=(), compare=False)


NOT_GRADED = Verdict(None, None, None)


@dataclass(frozen=True, slots=True)
class CheckSet:
    """Every prompt's checks: its `expected` first, then the job-level checks that apply; and
    each prompt's target from a scalar `expected:`."""

    by_prompt: Mapping[str, tuple[Check, ...]] = field(default_factory=dict)
    targets: Mapping[str, str] = field(default_factory=dict)

    def for_prompt(self, prompt_id: str) -> tuple[Check, ...]:
        return self.by_prompt.get(prompt_id, ())

    def __bool__(self) -> bool:
        return any(self.by_prompt.values())


def context_for(request: Any, checks: CheckSet | None = None) -> dict[str, Any]:
    """What check values are rendered over: the row's vars and its `target` (from the row, or
    the prompt's scalar `expected:`); no `target` key when it has none."""
    context = dict(request.vars)
    target = getattr(request, "target", None)
    if target is None and checks is not None:
        target = checks.targets.get(request.prompt_id)
    if target is not None:
        context[TARGET] = target
    return context


def evaluate(checks: Sequence[Check], response_text: str | None, row: Mapping[str, Any], *,
             graded: Mapping[Check, Judged | float] | None = None,
             context: Mapping[str, Any] | None = None) -> Verdict:
    """Grade one row: `row` is `Result.as_row()` (status, latency_s, cost_usd, ...), `context`
    the row's template vars (`context_for`), `graded` the judges' answers."""
    if not checks:
        return NOT_GRADED
    status = row.get("status")
    if status == "skipped" or row.get("error_type") == "bad_input":  # never sent (bad_rows)
        return Verdict(None, None, None, tuple(
            Outcome(c.name, c.kind, None, None, c.weight, "not sent") for c in checks))
    if status == "error":
        why = f"no response (request failed: {row.get('error_type') or 'error'})"
        return Verdict(False, 0.0, why, tuple(
            Outcome(c.name, c.kind, False, 0.0, c.weight, why) for c in checks))
    text = response_text or ""
    context = context or {}
    outcomes = [_one(check, text, row, context, (graded or {}).get(check)) for check in checks]
    return _combine(outcomes)


def _one(check: Check, text: str, row: Mapping[str, Any], context: Mapping[str, Any],
         judged: Judged | float | None) -> Outcome:
    bill: dict[str, Any] = {}
    why: str | None
    score: float | None
    if check.kind == "llm_judge":
        if judged is None:
            score, why = None, "the judge was not asked"
        elif isinstance(judged, Judged):
            score, why = judged.score, judged.reason
            bill = {"judge_cost_usd": judged.cost_usd,
                    "judge_prompt_tokens": judged.prompt_tokens,
                    "judge_completion_tokens": judged.completion_tokens}
        else:
            score, why = float(judged), None
    else:
        score, why = _grade(check, text, row, context)
    if score is None:
        return Outcome(check.name, check.kind, None, None, check.weight, why, **bill)
    passed = score >= check.min_score
    if not passed and (why is None or check.kind == "llm_judge"):
        low = f"score {score:.2f} < {check.min_score:g}"
        why = f"{low} ({why})" if why else low
    return Outcome(check.name, check.kind, passed, score, check.weight, why, **bill)


def _grade(check: Check, text: str, row: Mapping[str, Any], context: Mapping[str, Any]) -> Grade:
    grader = check.grader_for(context)
    if isinstance(grader, str):
        return None, grader
    if check.transform is not None:
        try:
            changed, why = check.transform(text)
        except Exception as exc:  # a hostile response must not crash the run
            changed, why = None, f"transform failed: {type(exc).__name__}"
        if changed is None:
            return 0.0, why
        text = changed
    if check.kind == "python":  # a user's check also sees the row's vars and target
        row = {**row, "vars": {k: v for k, v in context.items() if k != TARGET},
               "target": context.get(TARGET)}
    try:
        return grader(text, row)
    except Exception as exc:  # a user's python check must not crash the run
        return 0.0, f"raised {type(exc).__name__}: {short(str(exc))}"


def _combine(outcomes: Sequence[Outcome]) -> Verdict:
    failed = [o for o in outcomes if o.passed is False]
    ungraded = [o for o in outcomes if o.passed is None]
    scored = [o for o in outcomes if o.score is not None]
    weights = sum(o.weight for o in scored)
    if not scored:
        score = None
    elif weights > 0:
        score = sum((o.score or 0.0) * o.weight for o in scored) / weights
    else:  # every weight 0: the plain mean
        score = sum(o.score or 0.0 for o in scored) / len(scored)
    lines = [f"{o.name}: {o.reason or 'failed'}" for o in failed]
    lines += [f"{o.name}: not graded ({o.reason or 'unknown'})" for o in ungraded]
    passed = False if failed else None if ungraded else True
    return Verdict(passed, score, "; ".join(lines) or None, tuple(outcomes))


def response_format_for(checks: Sequence[Check]) -> dict[str, Any] | None:
    """The `response_format` param that requests output in a prompt's JSON schema, or None."""
    for check in checks:
        if check.kind == "json_schema" and check.send_schema:
            return {"type": "json_schema", "json_schema": {
                "name": "response", "schema": check.arg, "strict": check.strict}}
    return None
