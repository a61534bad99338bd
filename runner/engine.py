"""The worker pool: a `Job` in, a run directory with one row per planned request out.

One anyio task group holds `concurrency` workers sharing one stream of the plan (each runs
`worker.handle` on one request at a time), a flusher that moves finished rows to disk in
batches, and the spend journal's writer; from the CLI, a signal watcher outlives it until the
final files are written. The run directory is locked for the whole run. Set-up (`providers`),
resume (`resume`) and the final files (`collect`) are called from here.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from . import gc_policy
from .budget import Budget
from .collect import PREPARE_ROWS, Collector
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
from .errors import ConfigError, ProviderError, ResultsError, RunnerError, first_runner_error
from .health import Health
from .journal import Journal
from .limits import Gates
from .manifest import Manifest
from .plan import Plan, Request
from .providers import Providers, open_providers
from .remote import refuse_local
from .result import SKIPPED
from .resume import Previous, load_previous, plan_summary
from .rundir import RunLock, find_run_dir, is_run_dir, new_run_id, run_dir_for, shard_root
from .shards import PlanView, Shard, check_run_id, merge_if_done, shard_run_dir
from .worker import Progress, RunState, flush, handle

if TYPE_CHECKING:
    import pandas as pd

# Batch mode, the response cache and load tests (`batch`, `cache`, `load*`) are imported where a
# run uses them: a plain run does not pay for their modules before its first request (issue 11).

__all__ = ["Progress", "RunOutcome", "run_job"]


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """Where a run's files are, and what it did."""

    run_dir: Path
    run_id: str
    status: str
    counts: dict[str, int]
    manifest: dict[str, Any] = field(repr=False)
    url: str | None = None   # where the run is when its output is a filesystem URL (issue 13)

    @property
    def rows(self) -> pd.DataFrame:
        from .results import read_results

        return read_results(self.url or self.run_dir)


async def run_job(job: Job, *, out_dir: Path | str | None = None, concurrency: int | None = None,
                  rpm: float | None = None, budget_usd: float | None = None,
                  progress: Progress | None = None, refresh_prices: bool = False,
                  resume: str | Path | None = None, retry_errors: bool = False,
                  force: bool = False, handle_signals: bool = False, grace_s: float = 10.0,
                  on_stopping: Callable[[float], None] | None = None,
                  clock: Callable[[], float] = time.perf_counter,
                  flush_rows: int = 500, flush_s: float = 1.0, batch: bool = False,
                  cache: bool | None = None,
                  run_id: str | None = None, shard: Shard | None = None,
                  ray: str | None = None, ray_workers: int | None = None) -> RunOutcome:
    """Run every request of `job` and write the results; request errors are rows, not raises.

    `resume` ("latest" or a run directory) continues an earlier run in place. With
    `handle_signals`, the first SIGINT/SIGTERM stops scheduling and lets in-flight requests
    finish for `grace_s` (`on_stopping(grace_s)` is called then); a second cancels them at once;
    later ones wait for the final files. Either way the rows are flushed and run.json says how
    the run ended. A results folder that cannot be written (full, read-only) ends the run as
    `failed` with a ResultsError naming the path; the rows already on disk stay for a resume.
    `run_id` names a new run; with `shard`, this process runs that part of the plan into the
    run's `shards/<i>/` (see `shards`). `ray` (a cluster address, or "" for a local instance or
    the one `ray.init` started) runs the job on `ray_workers` actors (see `ray_backend`).
    """
    if shard is not None:  # its share of the job's budget and rates
        job = shard.scaled(job)
    if ray is not None:  # issue 13: the same job on a Ray cluster
        if batch or cache or job.cache or any(m.batch for m in job.models):
            raise ConfigError("--ray runs chat requests: batch mode and the response cache "
                              "are for one process (drop --ray, or --batch/--cache)")
        if job.load is not None:
            raise ConfigError("--ray: a load test (load:) runs in one process, on one schedule "
                              "(drop --ray)")
        from .ray_backend import run_on_ray

        return await run_on_ray(job, address=ray, workers=ray_workers, out_dir=out_dir,
                                concurrency=concurrency, rpm=rpm, budget_usd=budget_usd,
                                refresh_prices=refresh_prices, resume=resume,
                                retry_errors=retry_errors, force=force,
                                handle_signals=handle_signals, grace_s=grace_s,
                                on_stopping=on_stopping, flush_rows=flush_rows, flush_s=flush_s)
    refuse_local(out_dir if out_dir is not None else job.output_url)  # issue 13: Ray only
    out_dir = Path(out_dir) if out_dir is not None else None
    plan = Plan(job)
    if job.load is not None and (shard is not None or batch or cache):
        raise ConfigError("a load test (load:) runs one schedule in one process: drop "
                          + ("--shard" if shard is not None else "--batch" if batch
                             else "--cache"))
    if job.load is not None and concurrency is None:  # a load test: its cap is the run's
        concurrency = job.load.max_concurrency
    work: Plan | PlanView = shard.view(plan) if shard is not None else plan
    limits = run_limits(job, concurrency, rpm)
    root = out_dir or job.output_dir
    budget_usd = budget_usd if budget_usd is not None else job.budget_usd
    batched: set[str] = set()
    if batch or any(m.batch for m in job.models):  # batch mode (issue 15): refused before anything
        from .batch import batched_providers

        batched = batched_providers(job, batch)
    response_cache = None
    if cache if cache is not None else job.cache:
        from .cache import open_cache

        response_cache = open_cache(job, cache)
    with ExitStack() as locks:
        previous = None
        if shard is not None:
            run_dir, run_id, resuming = shard_run_dir(root, job, shard, run_id, resume,
                                                      len(plan))
            resume = run_dir if resuming else None
            if not resuming:
                locks.enter_context(RunLock(run_dir))
        if resume is not None:  # locked before reading: another process may be writing it
            run_dir = find_run_dir(root, job.name, str(resume))
            locks.enter_context(RunLock(run_dir))
            previous = load_previous(run_dir, job, force=force)
            from .batch import open_batch_providers

            batched |= open_batch_providers(run_dir) & set(job.providers)
            if shard is not None:  # the run's merged rows hold the other shards' too
                previous.restrict({request.request_id for request in work})
        async with AsyncExitStack() as stack:
            providers = await open_providers(stack, job, connections=limits.concurrency or 1,
                                             clock=clock, refresh_prices=refresh_prices,
                                             need_prices=budget_usd is not None
                                             or job.max_cost_per_request_usd is not None)
            if previous is not None:
                run_id = str(previous.manifest["run_id"])
            elif shard is None:
                run_id = new_run_id() if run_id is None else check_run_id(run_id)
                run_dir = run_dir_for(root, job.name, run_id)
                if is_run_dir(run_dir):
                    raise ConfigError(f"--run-id {run_id}: that run exists ({run_dir}); "
                                      "continue it with --resume")
                locks.enter_context(RunLock(run_dir))
            if response_cache is not None:
                stack.callback(response_cache.close)
            assert run_id is not None
            outcome = await _run(job, work, limits, providers, run_dir, run_id, previous,
                                 budget_usd, progress, retry_errors, handle_signals, grace_s,
                                 on_stopping, clock, flush_rows, flush_s,
                                 extras={"batched": frozenset(batched),
                                         "cache": response_cache})
    top = shard_root(run_dir) if shard is not None else None
    if top is not None and outcome.status == "completed":  # the last shard to end merges
        await anyio.to_thread.run_sync(merge_if_done, top, job.write_csv)
    return outcome


def run_limits(job: Job, concurrency: int | None, rpm: float | None) -> Limits:
    """The run's limits: the flags over the job's over the defaults."""
    return Limits(concurrency=concurrency, rpm=rpm).over(job.limits).over(
        Limits(concurrency=DEFAULT_CONCURRENCY, timeout_s=DEFAULT_TIMEOUT_S,
               stall_timeout_s=DEFAULT_STALL_TIMEOUT_S, retries=DEFAULT_RETRIES,
               max_retry_wait_s=DEFAULT_MAX_RETRY_WAIT_S,
               max_response_bytes=DEFAULT_MAX_RESPONSE_BYTES,
               max_error_bytes=DEFAULT_MAX_ERROR_BYTES,
               max_stream_events=DEFAULT_MAX_STREAM_EVENTS))


async def _run(job: Job, plan: Plan | PlanView, limits: Limits, providers: Providers,
               run_dir: Path, run_id: str, previous: Previous | None, budget_usd: float | None,
               progress: Progress | None, retry_errors: bool, handle_signals: bool,
               grace_s: float, on_stopping: Callable[[float], None] | None,
               clock: Callable[[], float], flush_rows: int, flush_s: float,
               extras: dict[str, Any] | None = None) -> RunOutcome:
    """The run itself, in a locked run directory: set up the files, run the pool, end the files."""
    budget = Budget(budget_usd, spent_usd=previous.spent_usd if previous else 0.0,
                    raised_estimates=previous.raised_estimates if previous else None)
    skip = previous.skip(retry_errors) if previous else set()
    if job.load is None:
        planned = len(plan)
    else:
        from .load_plan import expected_rows

        planned = expected_rows(job.load, len(skip))
    collector = Collector(run_dir, write_csv=job.write_csv, flush_rows=flush_rows,
                          rows_expected=planned - len(skip), var_kinds=plan.var_kinds())
    journal = Journal(run_dir, session=(previous.journal_sessions or 0) + 1 if previous else 1,
                      carried_usd=previous.spent_usd if previous else 0.0)
    manifest = Manifest(run_dir, job, run_id, plan_size=len(plan), limits=limits,
                        plan=plan_summary(job), previous=previous)
    # limits wait on the event loop's clock (what anyio.sleep counts in), not on `clock`
    run = RunState(job, run_id, providers, Gates.build(job, limits, anyio.current_time),
                   budget, collector, limits, clock, progress,
                   skip=skip, journal=journal, **(extras or {}))
    if job.load is not None:  # a resumed sweep reuses the rates it measured
        run.load = {"resumed_from": previous.manifest.get("load") if previous else None}
        run.save_facts = lambda: manifest.write("running", budget=budget.figures(), load=run.load)
    health = Health()
    pool = anyio.CancelScope()
    status, failure = "failed", None
    final: dict[str, Any] = {}
    # the signal watcher outlives the pool: a Ctrl-C during the final files must not cut them
    async with anyio.create_task_group() as watcher:
        if handle_signals:
            watcher.start_soon(_watch_signals, run, pool, grace_s, on_stopping)
        try:
            manifest.write("running", budget=budget.figures())
            if progress is not None:
                progress.start(planned - len(run.skip))
            if planned - len(run.skip) >= PREPARE_ROWS:
                collector.prepare()
            gc_policy.before_run()
            try:
                await _pool(run, plan, flush_s, health, pool)
            except BaseExceptionGroup as group:
                failure = first_runner_error(group)
                if failure is None:
                    raise
            if failure is None:
                if run.interrupted:
                    status = "interrupted"
                else:
                    status = "failed" if "auth" in run.stop_reason.values() else "completed"
        except RunnerError as exc:
            failure = exc
        finally:
            if progress is not None:
                progress.stop()
            with anyio.CancelScope(shield=True):
                final, failure = await _end(run, manifest, health, status, failure,
                                            previous is not None)
            gc.unfreeze()
            watcher.cancel_scope.cancel()
    if failure is not None:
        raise ResultsError(f"{failure} (rows so far are kept in {run_dir}; continue with "
                           "--resume once fixed)") if isinstance(failure, ResultsError) \
            else failure
    rejected = key_rejected(job, run.stop_reason, run.counts[SKIPPED], run_dir)
    if rejected is not None:
        raise rejected
    return RunOutcome(run_dir, run_id, status, dict(final["counts"]), final)


def key_rejected(job: Job, stop_reason: dict[str, str], skipped: int,
                 run_dir: Path | str) -> ProviderError | None:
    """The one line for a run stopped by a rejected key (HTTP 401), or None (also a Ray run's)."""
    rejected = [name for name, why in stop_reason.items() if why == "auth"]
    if not rejected:
        return None
    provider = job.providers[rejected[0]]
    return ProviderError(
        f"provider {provider.name!r} rejected the API key in {provider.api_key_env} "
        f"(HTTP 401): check that key; the run stopped after the first rejection "
        f"({skipped} requests not sent; rows in {run_dir})")


async def _end(run: RunState, manifest: Manifest, health: Health, status: str,
               failure: RunnerError | None, resumed: bool
               ) -> tuple[dict[str, Any], RunnerError | None]:
    """The final files, the journal's last lines and run.json; a write that fails makes the run
    `failed` (run.json is still written when it can be)."""
    assert run.journal is not None
    totals: dict[str, Any] = {}
    try:
        await anyio.to_thread.run_sync(run.journal.close)
    except ResultsError as exc:
        failure, status = failure or exc, "failed"
    try:
        totals = await anyio.to_thread.run_sync(_finish_files, run.collector, resumed)
    except ResultsError as exc:
        failure, status = failure or exc, "failed"
    if failure is not None:
        status = "failed"
    counts = totals.pop("counts", None) or {k: v for k, v in run.counts.items() if v}
    facts = {"budget": run.budget.figures(), "counts": counts, "totals": totals,
             "stopped": run.stop_reason, "client": health.report()}
    if run.cache is not None:  # the gates refuse a run that used it (quality_gate)
        facts["cache"] = run.cache.stats()
    if run.batched:
        from .batch import batch_summary

        with contextlib.suppress(ResultsError):  # batches.jsonl is the record; this a copy
            facts["batches"] = batch_summary(run.collector.run_dir)
    if run.load is not None:
        facts["load"] = run.load
    if failure is not None:
        facts["error"] = str(failure)
    try:
        final = manifest.write(status, **facts)
    except ResultsError as exc:
        failure = failure or exc
        final = {"status": status, **facts}
    if failure is None:
        with contextlib.suppress(ResultsError):  # a smaller journal is nice, not needed
            await anyio.to_thread.run_sync(run.journal.compact)
    return final, failure


async def _watch_signals(run: RunState, pool: anyio.CancelScope, grace_s: float,
                         on_stopping: Callable[[float], None] | None) -> None:
    """First SIGINT/SIGTERM: stop scheduling, give in-flight requests `grace_s`; second: cancel
    them. Later ones are absorbed until the final files and run.json are written."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if run.stopping:  # the second signal: cancel in-flight requests now
                pool.cancel()
                continue
            run.stopping = run.interrupted = True  # idle workers end, busy ones finish
            pool.deadline = anyio.current_time() + grace_s
            if on_stopping is not None:
                on_stopping(grace_s)


async def _pool(run: RunState, plan: Sequence[Request], flush_s: float, health: Health,
                pool: anyio.CancelScope) -> None:
    workers = run.limits.concurrency or 1
    # one generator shared by every worker: each next() runs without a checkpoint, so no two
    # workers get the same request, and it costs far less than a memory object stream
    todo = (request for request in plan if request.request_id not in run.skip
            and (request.model.provider not in run.batched or request.turns
                 or request.input_error is not None))
    # (a conversation is sent turn by turn through chat even in batch mode: each turn needs the
    # reply before it)

    async def work() -> None:
        for request in todo:
            if run.stopping:
                return  # not attempted: a resume sends it
            await handle(run, request)

    async def flush_every() -> None:
        while True:
            await anyio.sleep(flush_s)
            await flush(run)

    assert run.journal is not None
    async with anyio.create_task_group() as outer:
        outer.start_soon(flush_every)
        outer.start_soon(health.watch)
        outer.start_soon(run.journal.write_forever)
        with pool:
            if run.job.load is not None:  # a load test sends on its own schedule
                from .load import drive as drive_load

                assert isinstance(plan, Plan)  # (refused with shards, above)
                await drive_load(run, plan)
            else:
                async with anyio.create_task_group() as tg:
                    if run.batched:
                        from .batch import drive

                        tg.start_soon(drive, run, plan, set(run.batched))
                    for _ in range(workers):
                        tg.start_soon(work)
        outer.cancel_scope.cancel()


def _finish_files(collector: Collector, resumed: bool) -> dict[str, Any]:
    """Write the final files and summary.csv; return the run's totals for the manifest (both from
    the summary the merge folds: the rows are not read again)."""
    from .collect import write_summary

    collector.finish(dedupe=resumed)
    assert collector.summary is not None
    lines = collector.summary.lines()
    if lines:
        write_summary(collector.run_dir, lines)
    return collector.summary.totals()
