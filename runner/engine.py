"""The worker pool: a `Job` in, a run directory with one row per planned request out.

One anyio task group holds a producer that streams the plan, `concurrency` workers (each runs
`worker.handle` on one request at a time), a flusher that moves finished rows to disk in
batches, and, from the CLI, a signal watcher. Set-up (`setup`), resume (`resume`) and the final
files (`collect`) are called from here.
"""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .budget import Budget
from .collect import Collector, file_schema, new_run_id, run_dir_for
from .config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_ERROR_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRY_WAIT_S,
    DEFAULT_MAX_STREAM_EVENTS,
    DEFAULT_RETRIES,
    DEFAULT_STALL_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    Job,
    Limits,
)
from .errors import ProviderError
from .health import Health
from .limits import Gates
from .manifest import Manifest
from .plan import Plan
from .result import SKIPPED
from .resume import find_run_dir, load_previous, plan_summary
from .setup import open_providers
from .worker import Progress, RunState, flush, handle

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Progress", "RunOutcome", "run_job"]


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """Where a run's files are, and what it did."""

    run_dir: Path
    run_id: str
    status: str
    counts: dict[str, int]
    manifest: dict[str, Any] = field(repr=False)

    @property
    def rows(self) -> pd.DataFrame:
        from .report import read_results

        return read_results(self.run_dir)


async def run_job(job: Job, *, out_dir: Path | None = None, concurrency: int | None = None,
                  rpm: float | None = None, budget_usd: float | None = None,
                  progress: Progress | None = None, refresh_prices: bool = False,
                  resume: str | Path | None = None, retry_errors: bool = False,
                  force: bool = False, handle_signals: bool = False, grace_s: float = 10.0,
                  on_stopping: Callable[[float], None] | None = None,
                  clock: Callable[[], float] = time.perf_counter,
                  flush_rows: int = 500, flush_s: float = 1.0) -> RunOutcome:
    """Run every request of `job` and write the results; request errors are rows, not raises.

    `resume` ("latest" or a run directory) continues an earlier run in place. With
    `handle_signals`, the first SIGINT/SIGTERM stops scheduling and lets in-flight requests
    finish for `grace_s` (`on_stopping(grace_s)` is called then); a second cancels them at once.
    Either way the rows are flushed.
    """
    plan = Plan(job)
    limits = Limits(concurrency=concurrency, rpm=rpm).over(job.limits).over(
        Limits(concurrency=DEFAULT_CONCURRENCY, timeout_s=DEFAULT_TIMEOUT_S,
               stall_timeout_s=DEFAULT_STALL_TIMEOUT_S, retries=DEFAULT_RETRIES,
               max_retry_wait_s=DEFAULT_MAX_RETRY_WAIT_S,
               max_response_bytes=DEFAULT_MAX_RESPONSE_BYTES,
               max_error_bytes=DEFAULT_MAX_ERROR_BYTES,
               max_stream_events=DEFAULT_MAX_STREAM_EVENTS))
    root = out_dir or job.output_dir
    previous = None
    if resume is not None:
        previous = load_previous(find_run_dir(root, job.name, str(resume)), job, force=force)
    budget = Budget(budget_usd if budget_usd is not None else job.budget_usd,
                    spent_usd=previous.spent_usd if previous else 0.0)
    async with AsyncExitStack() as stack:
        providers = await open_providers(stack, job, connections=limits.concurrency or 1,
                                         clock=clock, refresh_prices=refresh_prices,
                                         need_prices=budget.budget_usd is not None
                                         or job.max_cost_per_request_usd is not None)
        if previous is not None:
            run_dir, run_id = previous.run_dir, str(previous.manifest["run_id"])
        else:
            run_id = new_run_id()
            run_dir = run_dir_for(root, job.name, run_id)
        collector = Collector(run_dir, write_csv=job.write_csv, flush_rows=flush_rows)
        manifest = Manifest(run_dir, job, run_id, plan_size=len(plan), limits=limits,
                            plan=plan_summary(job), previous=previous)
        manifest.write("running", budget=budget.figures())
        # limits wait on the event loop's clock (what anyio.sleep counts in), not on `clock`
        run = RunState(job, run_id, providers, Gates.build(job, limits, anyio.current_time),
                       budget, collector, limits, clock, progress,
                       skip=previous.skip(retry_errors) if previous else set())
        if progress is not None:
            progress.start(len(plan) - len(run.skip))
        health = Health()
        file_schema()  # imports pandas now, not in the first flush while requests are timed
        gc.collect()
        gc.freeze()  # set-up objects live all run: keep them out of every later collection
        status = "failed"
        try:
            await _pool(run, plan, flush_s, handle_signals, grace_s, health, on_stopping)
            if run.interrupted:
                status = "interrupted"
            else:
                status = "failed" if "auth" in run.stop_reason.values() else "completed"
        finally:
            if progress is not None:
                progress.stop()
            with anyio.CancelScope(shield=True):
                totals = await anyio.to_thread.run_sync(_finish_files, collector,
                                                        previous is not None)
                final = manifest.write(status, budget=budget.figures(),
                                       counts=totals.pop("counts", run.counts), totals=totals,
                                       stopped=run.stop_reason, client=health.report())
            gc.unfreeze()
    rejected = [name for name, why in run.stop_reason.items() if why == "auth"]
    if rejected:
        provider = job.providers[rejected[0]]
        raise ProviderError(
            f"provider {provider.name!r} rejected the API key in {provider.api_key_env} "
            f"(HTTP 401): check that key; the run stopped after the first rejection "
            f"({run.counts[SKIPPED]} requests not sent; rows in {run_dir})")
    return RunOutcome(run_dir, run_id, status, dict(final["counts"]), final)


async def _pool(run: RunState, plan: Plan, flush_s: float, handle_signals: bool,
                grace_s: float, health: Health,
                on_stopping: Callable[[float], None] | None) -> None:
    workers = run.limits.concurrency or 1
    # one generator shared by every worker: each next() runs without a checkpoint, so no two
    # workers get the same request, and it costs far less than a memory object stream
    todo = (request for request in plan if request.request_id not in run.skip)

    async def work() -> None:
        for request in todo:
            if run.stopping:
                return  # not attempted: a resume sends it
            await handle(run, request)

    async def flush_every() -> None:
        while True:
            await anyio.sleep(flush_s)
            await flush(run)

    async def on_signals(pool: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if run.stopping:  # the second signal: cancel in-flight requests now
                    pool.cancel()
                    return
                run.stopping = run.interrupted = True  # idle workers end, busy ones finish
                pool.deadline = anyio.current_time() + grace_s
                if on_stopping is not None:
                    on_stopping(grace_s)

    async with anyio.create_task_group() as outer:
        outer.start_soon(flush_every)
        outer.start_soon(health.watch)
        async with anyio.create_task_group() as tg:
            if handle_signals:
                outer.start_soon(on_signals, tg.cancel_scope)
            for _ in range(workers):
                tg.start_soon(work)
        outer.cancel_scope.cancel()


def _finish_files(collector: Collector, resumed: bool) -> dict[str, Any]:
    """Write the final files and summary.csv; return the run's totals for the manifest."""
    import pyarrow.parquet as pq

    from .collect import write_summary
    from .report import summarize

    final = collector.finish(dedupe=resumed)
    columns = ["model", "status", "latency_s", "ttft_s", "tpot_s", "output_tokens_per_s",
               "prompt_tokens", "completion_tokens", "cost_usd", "passed"]
    df = pq.read_table(final, columns=columns).to_pandas()  # not the texts: memory stays flat
    counts = {str(k): int(v) for k, v in df["status"].value_counts().items()}
    if not len(df):
        return {"requests": 0, "counts": counts}
    summary = summarize(df)
    write_summary(collector.run_dir, summary)
    return {
        "counts": counts,
        "requests": len(df),
        "cost_usd": float(df["cost_usd"].sum()),
        "prompt_tokens": int(df["prompt_tokens"].sum()),
        "completion_tokens": int(df["completion_tokens"].sum()),
        "per_model": {str(r["model"]): {"n": int(r["n"]), "ok": int(r["ok"]),
                                         "cost_usd": float(r["cost_usd"])}
                      for r in summary.to_dict("records")},
    }


