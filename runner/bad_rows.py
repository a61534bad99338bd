"""Dataset rows that cannot make their request: a row's failure in, the one-line message of its
`bad_input` row out; and the bounded count of such rows `runner validate` and `runner plan`
print (`scan`).

A row whose values trip a template or name an image that cannot be sent is recorded as an error
row and never sent (`worker.handle`); the run goes on. Only a prompt no row can fill is refused,
at load (`prompts._try_renders`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import TemplateError

from .errors import JobFileError

if TYPE_CHECKING:
    from .datasets import Dataset
    from .plan import Plan
    from .templates import Template

BAD_INPUT = "bad_input"       # the error_type of a row that cannot make its request
ROWS_SCANNED = 10_000         # rows of each dataset prompt `scan` renders...
ROWS_SCANNED_TOTAL = 100_000  # ...and of all of them (a prompts file x a dataset)
MAX_PROBLEM_CHARS = 300       # of a bad_input row's problem, in its one-line message


def bad_input_message(dataset: Dataset, k: int, row_id: str, exc: Exception, field_name: str,
                      template: Template | None) -> str:
    """The one-line message of a bad_input row: the dataset file, the row (position and id),
    the job-file field, the problem and the row vars the template reads, and the fix."""
    if isinstance(exc, JobFileError):  # an image: its own field and problem
        field_name, problem = exc.field, exc.problem
    else:
        problem = f"cannot be rendered: {exc}" if isinstance(exc, TemplateError) \
            else f"cannot be rendered: {type(exc).__name__}: {exc}"
        reads = [name for name in template.names if name in dataset.fields] \
            if template is not None else []
        if reads:
            problem += f" (it reads the row's {', '.join(reads)})"
    problem = " ".join(problem.split())
    if len(problem) > MAX_PROBLEM_CHARS:
        problem = problem[:MAX_PROBLEM_CHARS] + "..."
    shown_id = row_id if len(row_id) <= 60 else row_id[:60] + "..."
    return (f"{dataset.path.name} row {dataset.position(k) + 1} (row_id {shown_id}): "
            f"{field_name}: {problem}; not sent: fix the row in the dataset (or leave it out "
            "with where: or limit:) and resume with --force --retry-errors")


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
    from .plan import combinations  # (plan imports this module)

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
    from .content import templated_images

    prompt = plan.job.prompts[p]
    return any(t.parts is None for t in plan.templates(p)) \
        or (prompt.target is not None and prompt.target.parts is None) \
        or bool(templated_images([m.content for m in prompt.messages]))
