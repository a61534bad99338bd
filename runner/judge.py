"""LLM-as-judge: a rubric, the graded conversation and its response in, the judge's messages out;
the judge's reply in, a score 0..1 out (pure)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from .config import Message

SYSTEM = (
    "You are a strict grader. Read the conversation and the response, judge the response "
    "against the rubric only, and answer with JSON: {\"score\": a number from 0 (fails the "
    "rubric) to 1 (fully meets it), \"reason\": one short sentence}."
)

RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "grade",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "reason": {"type": "string"},
            },
            "required": ["score", "reason"],
            "additionalProperties": False,
        },
    },
}


def judge_messages(rubric: str, conversation: Sequence[Message],
                   response: str) -> tuple[Message, ...]:
    """What the judge model is asked."""
    shown = "\n".join(f"[{m.role}] {m.content}" for m in conversation)
    return (
        Message("system", SYSTEM),
        Message("user", f"Rubric:\n{rubric}\n\nConversation:\n{shown}\n\n"
                        f"Response to grade:\n{response}"),
    )


_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/\s*(10|100|5))?")


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
