"""LLM-as-judge: a judge's settings, the row's template context, the graded conversation and its
response in, the judge's messages and response_format out; the judge's reply in, a score 0..1
and its reason out (pure).

The grading prompt: `prompt:` (a template) when given; else, with a `rubric:`, the rubric, the
conversation and the response (and the target when the row has one); else, without a rubric, a
comparison of the response with the row's target in the style of inspect_ai's
`model_graded_fact` (`FACT_PROMPT`). Every template reads the row's vars, `target`, `response`,
`input` (the conversation as text) and `rubric`; values are inserted as text, never re-parsed.

Scales (`scale:`), each asked for as JSON through response_format and read back here:
`0-1` a number (the default with a rubric), `pass_fail` PASS or FAIL (the default without one;
1 or 0), `1-10` an integer (n/10), `letter` A, B, C, D or F (1, 0.75, 0.5, 0.25, 0).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .config import Message
from .schema import JudgeIn
from .templates import parse

SCALES = ("0-1", "pass_fail", "1-10", "letter")
LETTERS = {"A": 1.0, "B": 0.75, "C": 0.5, "D": 0.25, "F": 0.0}
MAX_REASON_CHARS = 500

_ANSWER = {
    "0-1": "\"score\": a number from 0 (fails) to 1 (fully meets it)",
    "pass_fail": "\"grade\": \"PASS\" or \"FAIL\"",
    "1-10": "\"score\": an integer from 1 (worst) to 10 (best)",
    "letter": "\"grade\": one of \"A\", \"B\", \"C\", \"D\", \"F\" (A best, F fails)",
}

SYSTEM = ("You are a strict grader. Judge the response only by what you are asked, and answer "
          "with JSON: {{{answer}, \"reason\": one short sentence}}.")

RUBRIC_PROMPT = """Rubric:
{{ rubric }}

Conversation:
{{ input }}

Response to grade:
{{ response }}"""

TARGET_PART = """

Expected answer (the target):
{{ target }}"""

FACT_PROMPT = """You are comparing a submitted answer to an expert answer on a given question.
Here is the data:

[BEGIN DATA]
************
[Question]: {{ input }}
************
[Expert]: {{ target }}
************
[Submission]: {{ response }}
************
[END DATA]

Compare the factual content of the submitted answer with the expert answer. Ignore any
differences in style, grammar, or punctuation. Does the submission contain the content in the
expert answer?"""


def scale_of(spec: JudgeIn) -> str:
    """The judge's scale: as set, else `0-1` with a rubric or prompt, `pass_fail` without."""
    if spec.scale is not None:
        return spec.scale
    return "0-1" if spec.rubric is not None or spec.prompt is not None else "pass_fail"


def judge_messages(spec: JudgeIn, context: Mapping[str, Any], conversation: Sequence[Message],
                   response: str) -> tuple[Message, ...]:
    """What the judge model is asked about one row (a TemplateError if a template needs a var
    the row lacks)."""
    shown = "\n".join(f"[{m.role}] {m.content}" for m in conversation)
    values: dict[str, Any] = {**context, "response": response, "input": shown}
    if spec.rubric is not None:
        values["rubric"] = parse(spec.rubric).render(values)
    if spec.prompt is not None:
        text = spec.prompt
    elif spec.rubric is not None:
        text = RUBRIC_PROMPT + (TARGET_PART if "target" in context else "")
    else:
        text = FACT_PROMPT
    system = SYSTEM.format(answer=_ANSWER[scale_of(spec)])
    return Message("system", system), Message("user", parse(text).render(values))


def response_format(scale: str) -> dict[str, Any]:
    """The structured output the judge is asked for on this scale."""
    shapes: dict[str, dict[str, Any]] = {
        "0-1": {"type": "number", "minimum": 0, "maximum": 1},
        "1-10": {"type": "integer", "minimum": 1, "maximum": 10},
        "pass_fail": {"type": "string", "enum": ["PASS", "FAIL"]},
        "letter": {"type": "string", "enum": list(LETTERS)},
    }
    score = shapes[scale]
    key = "grade" if scale in ("pass_fail", "letter") else "score"
    return {"type": "json_schema", "json_schema": {
        "name": "grade", "strict": True,
        "schema": {"type": "object", "properties": {key: score, "reason": {"type": "string"}},
                   "required": [key, "reason"], "additionalProperties": False}}}


RESPONSE_FORMAT = response_format("0-1")

_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/\s*(10|100|5))?")
_GRADE = re.compile(r"\b(?:GRADE|grade|Grade)\s*[:=]\s*\"?([A-Za-z]+)")


def parse_verdict(text: str, scale: str = "0-1") -> tuple[float | None, str | None]:
    """(score 0..1 or None when unreadable, the judge's reason) from the judge's reply: its
    JSON, else a `GRADE: X` line or a bare word/number."""
    body = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```")
    try:
        value = json.loads(body) if len(body) < 100_000 else None
    except (ValueError, RecursionError):  # a hostile judge nests arrays past the stack
        value = None
    reason = None
    if isinstance(value, dict):
        if isinstance(value.get("reason"), str):
            reason = " ".join(value["reason"].split())[:MAX_REASON_CHARS] or None
        raw = value.get("grade", value.get("score"))
        if raw is not None:
            return _on_scale(raw, scale), reason
    grade = _GRADE.search(text)
    if grade is not None:
        return _on_scale(grade.group(1), scale), reason
    if scale in ("pass_fail", "letter"):
        word = text.strip().split()[0].strip(".,:;\"'") if text.strip() else ""
        return _on_scale(word, scale), reason
    return parse_score(text) if scale == "0-1" else _on_scale(_first_number(text), scale), reason


def _on_scale(raw: Any, scale: str) -> float | None:
    if scale == "pass_fail":
        word = str(raw).strip().upper()
        return {"PASS": 1.0, "FAIL": 0.0, "C": 1.0, "I": 0.0}.get(word)
    if scale == "letter":
        return LETTERS.get(str(raw).strip().upper())
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    if scale == "1-10":
        return float(raw) / 10 if 1 <= raw <= 10 else None
    return float(raw) if 0 <= raw <= 1 else None


def _first_number(text: str) -> float | None:
    match = _NUMBER.search(text[:10_000])
    if match is None:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


def parse_score(text: str) -> float | None:
    """The judge's score in 0..1: from its JSON, else the first number (`7/10` -> 0.7)."""
    body = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # a hostile judge nests arrays past the stack
        value = None
    if isinstance(value, dict) and isinstance(value.get("score"), int | float) \
            and not isinstance(value.get("score"), bool):
        score = float(value["score"])
        return score if 0 <= score <= 1 else None
    match = _NUMBER.search(text)
    if match is None:
        return None
    number = float(match.group(1))
    scale = float(match.group(2)) if match.group(2) else (1.0 if number <= 1 else 10.0)
    score = number / scale
    return score if 0 <= score <= 1 else None
