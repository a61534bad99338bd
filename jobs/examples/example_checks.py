"""Checks of the examples in jobs/examples: a response and its result row in, pass or fail out.

The row is the result row (`runner.result.Result` fields), so `row["target"]` is the dataset
row's expected answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any


def letter_matches_target(response_text: str, row: Mapping[str, Any]) -> bool:
    """The first standalone letter A-D of the answer is the target letter."""
    found = re.search(r"\b([ABCD])\b", response_text)
    return found is not None and found.group(1) == (row.get("target") or "").strip()


def contains_target(response_text: str, row: Mapping[str, Any]) -> bool:
    """The answer mentions the target, ignoring case."""
    target = (row.get("target") or "").strip().casefold()
    return bool(target) and target in response_text.casefold()
