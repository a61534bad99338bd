"""Python checks of jobs/nightly.yaml: each takes (response_text, row) and returns a bool or a
score from 0 to 1. The job file names them as `module:function`; this module is imported from
the job file's folder when the job is loaded."""

from __future__ import annotations

import re
from typing import Any


def not_truncated(response_text: str, row: dict[str, Any]) -> bool:
    """The answer ended by itself, not at max_tokens."""
    return row.get("finish_reason") != "length"


def concise(response_text: str, row: dict[str, Any]) -> float:
    """1.0 up to 60 words, falling linearly to 0.0 at 180 words."""
    words = len(response_text.split())
    return max(0.0, min(1.0, (180 - words) / 120))


def short_paragraph(response_text: str, row: dict[str, Any]) -> bool:
    """One paragraph of at most twelve sentences."""
    text = response_text.strip()
    sentences = [s for s in re.split(r"[.!?]+\s", text + " ") if s.strip()]
    return "\n\n" not in text and 1 <= len(sentences) <= 12
