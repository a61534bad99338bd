"""Dataset rows that cannot make their request: a plan in, the bounded count of its rows that
would be `bad_input` rows (and the first messages, worded by `Dataset.bad_row`) out, as
`runner validate` and `runner plan` print it (`scan`).

A row whose values trip a template or name an image that cannot be sent is recorded as an error
row and never sent (`worker.handle`); the run goes on. Only a prompt no row can fill is refused,
at load (`prompts._try_renders`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .content import templated_images
from .plan import Plan, combinations

BAD_INPUT = "bad_input"       # the error_type of a row that cannot make its request
ROWS_SCANNED = 10_000         # rows of each dataset prompt `scan` renders...
ROWS_SCANNED_TOTAL = 100_000  # ...and of all of them (a prompts file x a dataset)


@dataclass(frozen=True, slots=True)
class BadRows:
    """What `scan` found: rows scanned, how many would be bad_input rows, and the messages of
    the first few."""

    scanned: int
    rows: int
    first: tuple[str, ...]

    def lines(self, redact: Callable[[str], str] = str) -> list[str]:
        """What `runner validate` and `runner plan` print (nothing when no row is bad); the
        messages quote row values, so they pass the job's `redact` first."""
        if not self.rows:
            return []
        return [f"{self.rows} of {self.scanned} rows scanned would be error rows (bad_input: "
                f"not sent, the run goes on){', the first:' if self.first else ''}",
                *(f"  {redact(message)}" for message in self.first)]

    def as_json(self, redact: Callable[[str], str] = str) -> dict[str, Any]:
        """The same for `runner plan --json`."""
        return {"scanned": self.scanned, "rows": self.rows,
                "first": [redact(message) for message in self.first]}


def scan(plan: Plan, rows: int = ROWS_SCANNED, total: int = ROWS_SCANNED_TOTAL,
         shown: int = 3) -> BadRows:
    """How many of the first `rows` rows of each dataset prompt a row can fail (each with the
    first value of its other vars; `total` rows at most in all) would be bad_input rows, and
    the first `shown` messages. Images are checked, not read."""
    scanned, bad, first = 0, 0, list[str]()
    for p, prompt in enumerate(plan.job.prompts):
        if prompt.dataset is None or not _can_fail(plan, p):
            continue
        inner = combinations(prompt) // len(prompt.dataset)
        count = min(rows, len(prompt.dataset), total - scanned)
        scanned += count
        for k in range(count):
            error = plan.unit_error(p, k * inner)
            if error is not None:
                bad += 1
                if len(first) < shown:
                    first.append(error)
    return BadRows(scanned, bad, tuple(first))


def _can_fail(plan: Plan, p: int) -> bool:
    """Whether a row can fail prompt p: plain templates (`{{ name }}` only) fill from any row,
    so only Jinja logic, a Jinja target or an image named by the row can."""
    prompt = plan.job.prompts[p]
    return any(t.parts is None for t in plan.templates(p)) \
        or (prompt.target is not None and prompt.target.parts is None) \
        or bool(templated_images([m.content for m in prompt.messages]))
