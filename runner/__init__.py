"""runner: an async batch and benchmark runner for LLM APIs.

    job = runner.load_job("jobs/quickstart.yaml")
    outcome = runner.run(job)                  # or: await runner.run_job(job)
    df = runner.read_results(outcome.run_dir)  # one row per request
    runner.summarize(df)                       # per-model latency, TTFT, tokens, cost
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__: str  # from the installed metadata (see __getattr__)
__all__ = ["load_job", "run_job", "run", "read_results", "summarize", "read_checks",
           "__version__"]

if TYPE_CHECKING:
    from .check_results import read_checks
    from .config import load_job
    from .engine import RunOutcome, run_job
    from .results import read_results, summarize


def __getattr__(name: str) -> Any:  # lazy: `import runner` stays cheap
    if name == "__version__":  # one home for the version: pyproject.toml, via the metadata
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("runner")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    if name == "load_job":
        from .config import load_job

        return load_job
    if name == "run_job":
        from .engine import run_job

        return run_job
    if name in {"read_results", "summarize"}:
        from . import results

        return getattr(results, name)
    if name == "read_checks":  # the per-check long table (issue 12)
        from .check_results import read_checks

        return read_checks
    raise AttributeError(name)


def run(job: Any, **kwargs: Any) -> RunOutcome:
    """Run a job (a `Job` or a path to a job file) to completion from synchronous code."""
    import functools
    from pathlib import Path

    import anyio

    from .config import load_job
    from .engine import run_job

    if isinstance(job, str | Path):
        job = load_job(job)
    return anyio.run(functools.partial(run_job, job, **kwargs))
