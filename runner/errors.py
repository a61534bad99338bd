"""The exception hierarchy: every error a user can meet is one of these, with a message that says
what to fix.

    RunnerError
    ├── JobFileError        bad job file: names the file, the field and the fix (exit 2)
    │   └── JobFileErrors   several of them at once (`runner validate` prints each)
    ├── ConfigError         bad command-line input or environment, e.g. a missing API key (exit 2)
    ├── ProviderError       an endpoint that cannot be used at all (unreachable, bad key) (exit 2)
    └── ResultsError        a results folder that cannot be read or written

A failed *request* is never an exception that escapes the engine: it becomes a result row with an
`error_type` (see `client.classify_status`).
"""

from __future__ import annotations

from collections.abc import Sequence


class RunnerError(Exception):
    """Base of every error the runner raises on purpose."""

    exit_code = 2


class JobFileError(RunnerError):
    """A job file that cannot be used; the message is one line: `path: field: problem (fix)`."""

    def __init__(self, path: object, field: str, problem: str) -> None:
        self.path = str(path)
        self.field = field
        self.problem = problem
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
        super().__init__(where + problem)


class JobFileErrors(JobFileError):
    """Every problem one load found; reads as the first, `errors` holds them all."""

    def __init__(self, errors: Sequence[JobFileError]) -> None:
        first = errors[0]
        super().__init__(first.path, first.field, first.problem)
        self.errors = tuple(errors)
        more = len(errors) - 1
        self.args = (f"{first} (and {more} more problem{'s' if more > 1 else ''}: "
                     "`runner validate` lists them all)",)


class ConfigError(RunnerError):
    """Bad input that is not in a job file: command-line flags, environment variables."""


class ProviderError(RunnerError):
    """An endpoint that cannot serve the run at all (not a single failed request)."""


class ResultsError(RunnerError):
    """A results folder that is missing, unreadable, or would be written outside its root."""


def first_runner_error(group: BaseExceptionGroup[BaseException]) -> RunnerError | None:
    """The first RunnerError inside a task group's exceptions (nested groups included), so that
    an error raised in a worker task reaches the user as the one line it is."""
    for exc in group.exceptions:
        if isinstance(exc, RunnerError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = first_runner_error(exc)
            if found is not None:
                return found
    return None
