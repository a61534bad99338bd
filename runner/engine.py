"""The worker pool: a `Job` in, a run directory with one row per planned request out.

One anyio task group holds a producer that streams the plan, `concurrency` workers, and a
flusher that moves finished rows to disk in batches. Every attempt passes the limits (`limits`)
and the cost guard (`budget`) before it is sent; retries, backoff and 429 pauses live here.
"""

from __future__ import annotations

import functools
import random
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .budget import Budget, Reservation
from .checks import Check, evaluate
from .client import Attempt
from .collect import Collector, new_run_id, run_dir_for
from .config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_RETRIES,
    DEFAULT_STALL_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    Job,
    Limits,
)
from .errors import ProviderError
from .judge import RESPONSE_FORMAT, judge_messages, parse_score
from .limits import Gates
from .manifest import Manifest
from .plan import Plan, Request
from .pricing import typical_prompt_tokens, worst_case_usd
from .result import ERROR, OK, SKIPPED, Result
from .resume import INTERRUPTED, find_run_dir, load_previous, plan_summary
from .rows import attempt_cost, fold, new_result
from .setup import Providers, open_providers

if TYPE_CHECKING:
    import pandas as pd

RETRIABLE = frozenset({
    "connection", "timeout", "stall", "disconnect", "stream_error", "error_body", "malformed",
    "rate_limited", "server_error", "bad_gateway", "unavailable", "gateway_timeout",
    "upstream_timeout", "overloaded", "client_error",
})
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, result: Result, spent_usd: float) -> None: ...
    def stop(self) -> None: ...


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


@dataclass(slots=True)
class _Run:
    job: Job
    run_id: str
    providers: Providers
    gates: Gates
    budget: Budget
    collector: Collector
    limits: Limits
    clock: Callable[[], float]
    progress: Progress | None
    counts: dict[str, int] = field(default_factory=lambda: {OK: 0, ERROR: 0, SKIPPED: 0})
    stop_reason: dict[str, str] = field(default_factory=dict)   # provider -> why it stopped
    budget_changed: anyio.Event = field(default_factory=anyio.Event)
    skip: set[str] = field(default_factory=set)     # request ids a resumed run must not send
    stopping: bool = False                          # a signal came: schedule nothing more
    interrupted: bool = False


async def run_job(job: Job, *, out_dir: Path | None = None, concurrency: int | None = None,
                  rpm: float | None = None, budget_usd: float | None = None,
                  progress: Progress | None = None, refresh_prices: bool = False,
                  resume: str | Path | None = None, retry_errors: bool = False,
                  force: bool = False, handle_signals: bool = False, grace_s: float = 10.0,
                  clock: Callable[[], float] = time.perf_counter,
                  flush_rows: int = 500, flush_s: float = 1.0) -> RunOutcome:
    """Run every request of `job` and write the results; request errors are rows, not raises.

    `resume` ("latest" or a run directory) continues an earlier run in place. With
    `handle_signals`, the first SIGINT/SIGTERM stops scheduling and lets in-flight requests
    finish for `grace_s`; a second cancels them at once. Either way the rows are flushed.
    """
    plan = Plan(job)
    limits = Limits(concurrency=concurrency, rpm=rpm).over(job.limits).over(
        Limits(concurrency=DEFAULT_CONCURRENCY, timeout_s=DEFAULT_TIMEOUT_S,
               stall_timeout_s=DEFAULT_STALL_TIMEOUT_S, retries=DEFAULT_RETRIES))
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
        run = _Run(job, run_id, providers, Gates.build(job, limits, anyio.current_time), budget,
                   collector, limits, clock, progress,
                   skip=previous.skip(retry_errors) if previous else set())
        if progress is not None:
            progress.start(len(plan) - len(run.skip))
        status = "failed"
        try:
            await _pool(run, plan, flush_s, handle_signals, grace_s)
            if run.interrupted:
                status = "interrupted"
            else:
                status = "failed" if "auth" in run.stop_reason.values() else "completed"
        finally:
            if progress is not None:
                progress.stop()
            with anyio.CancelScope(shield=True):
                totals = await anyio.to_thread.run_sync(_finish_files, collector)
                final = manifest.write(status, budget=budget.figures(),
                                       counts=totals.pop("counts", run.counts), totals=totals,
                                       stopped=run.stop_reason)
    rejected = [name for name, why in run.stop_reason.items() if why == "auth"]
    if rejected:
        provider = job.providers[rejected[0]]
        raise ProviderError(
            f"provider {provider.name!r} rejected the API key in {provider.api_key_env} "
            f"(HTTP 401): check that key; the run stopped after the first rejection "
            f"({run.counts[SKIPPED]} requests not sent; rows in {run_dir})")
    return RunOutcome(run_dir, run_id, status, dict(final["counts"]), final)


async def _pool(run: _Run, plan: Plan, flush_s: float, handle_signals: bool,
                grace_s: float) -> None:
    workers = run.limits.concurrency or 1
    send, receive = anyio.create_memory_object_stream[Request](max_buffer_size=workers)

    producing = anyio.CancelScope()

    async def produce() -> None:
        with producing:
            async with send:
                for request in plan:
                    if request.request_id not in run.skip:
                        await send.send(request)

    async def work(inbox: anyio.abc.ObjectReceiveStream[Request]) -> None:
        async with inbox:
            async for request in inbox:
                if run.stopping:
                    return  # not attempted: a resume sends it
                await _handle(run, request)

    async def flush_every() -> None:
        while True:
            await anyio.sleep(flush_s)
            await _flush(run)

    async def on_signals(pool: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if run.stopping:  # the second signal: cancel in-flight requests now
                    pool.cancel()
                    return
                run.stopping = run.interrupted = True
                producing.cancel()  # closes the stream: idle workers end, busy ones finish
                pool.deadline = anyio.current_time() + grace_s

    async with anyio.create_task_group() as outer:
        outer.start_soon(flush_every)
        async with anyio.create_task_group() as tg:
            if handle_signals:
                outer.start_soon(on_signals, tg.cancel_scope)
            tg.start_soon(produce)
            for _ in range(workers):
                tg.start_soon(work, receive.clone())
            receive.close()
        outer.cancel_scope.cancel()


def _finish_files(collector: Collector) -> dict[str, Any]:
    """Write the final files and summary.csv; return the run's totals for the manifest."""
    import pyarrow.parquet as pq

    from .collect import write_summary
    from .report import summarize

    final = collector.finish()
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


async def _flush(run: _Run) -> None:
    rows = run.collector.take()
    if rows:
        await anyio.to_thread.run_sync(run.collector.write_part, rows)


async def _handle(run: _Run, request: Request) -> None:
    result = new_result(run.run_id, run.job.name, request)
    t_ready = run.clock()
    started = datetime.now(UTC)
    model = request.model
    endpoint = run.providers.endpoints[model.provider]
    price = run.providers.prices.get((model.provider, model.id))
    limits = model.limits.over(run.job.providers[model.provider].limits).over(run.limits)
    worst = worst_case_usd(request, price) if price is not None else None
    result.estimated_cost_usd = worst
    tokens = typical_prompt_tokens(request.messages) + int(request.params.get("max_tokens") or 0)
    retries = limits.retries or 0
    attempt: Attempt | None = None
    for n in range(1, retries + 2):
        if _refused(run, result, model.provider, worst):
            break
        async with run.gates.slot(model, tokens):
            if result.queue_s is None:
                result.queue_s = run.clock() - t_ready
                started = datetime.now(UTC)
            if _refused(run, result, model.provider, worst):
                break
            reservation = await _reserve(run, worst or 0.0)
            if reservation is None:
                _skip(result, "budget", f"not sent: its worst case (${worst or 0:.6f}) does not "
                      "fit in what is left of budget_usd")
                run.stop_reason.setdefault("*", "budget")
                break
            try:
                attempt = await endpoint.send(request, timeout_s=limits.timeout_s or 0,
                                              stall_timeout_s=limits.stall_timeout_s or 0)
            except anyio.get_cancelled_exc_class():
                # cut off by a second Ctrl-C: the cost is unknown, so its reservation stays spent,
                # and the row says so (a resume sends the request again)
                _settle(run, reservation, None)
                result.attempts = n
                result.status, result.error_type = ERROR, INTERRUPTED
                result.error_message = "cancelled by an interrupt while in flight"
                _close_row(run, result, t_ready, started)
                raise
            cost, source = attempt_cost(attempt, price)
            _settle(run, reservation, cost)
        result.attempts = n
        fold(result, attempt, cost, source, worst)
        if attempt.ok:
            break
        _on_failure(run, model.provider, attempt)
        if attempt.error_type == "rate_limited" and attempt.retry_after_s:
            run.gates.pause(model, attempt.retry_after_s)  # before sleeping: others must see it
        if attempt.error_type not in RETRIABLE or n > retries:
            break
        await anyio.sleep(_backoff_s(n, attempt.retry_after_s))
    checks = run.job.checks.for_prompt(request.prompt_id)
    if checks:
        await _grade(run, request, result, checks)
    _close_row(run, result, t_ready, started)
    if run.collector.pending >= run.collector.flush_rows:
        await _flush(run)


async def _grade(run: _Run, request: Request, result: Result, checks: tuple[Check, ...]) -> None:
    """Fill `passed`, `score` and `check_failures` from the prompt's checks."""
    graded: dict[Check, float] = {}
    if result.status == OK:
        for check in checks:
            if check.kind == "llm_judge":
                score = await _judge(run, request, result, check)
                if score is not None:
                    graded[check] = score
    row = result.as_row()
    if any(check.kind == "python" for check in checks):  # user code: keep it off the loop
        verdict = await anyio.to_thread.run_sync(
            functools.partial(evaluate, checks, result.response_text, row, graded=graded))
    else:
        verdict = evaluate(checks, result.response_text, row, graded=graded)
    result.passed, result.score, result.check_failures = \
        verdict.passed, verdict.score, verdict.failures


async def _judge(run: _Run, request: Request, result: Result, check: Check) -> float | None:
    """Ask the check's judge model for a score, through the same limits and budget; its cost
    and tokens go on the judged row. None when the judge could not be asked or answered."""
    spec = run.job.judges[(check.arg.model, check.arg.provider)]
    messages = judge_messages(check.arg.rubric, request.messages, result.response_text or "")
    asked = Request(index=request.index, request_id=request.request_id, model=spec,
                    prompt_id=request.prompt_id, repeat=request.repeat, vars=request.vars,
                    messages=messages, params={**spec.params, "response_format": RESPONSE_FORMAT})
    price = run.providers.prices.get((spec.provider, spec.id))
    worst = worst_case_usd(asked, price) if price is not None else None
    limits = spec.limits.over(run.job.providers[spec.provider].limits).over(run.limits)
    tokens = typical_prompt_tokens(messages) + int(spec.params.get("max_tokens") or 0)
    for n in range(1, (limits.retries or 0) + 2):
        if _refusal(run, spec.provider, worst) is not None:
            return None
        async with run.gates.slot(spec, tokens):
            reservation = await _reserve(run, worst or 0.0)
            if reservation is None:
                run.stop_reason.setdefault("*", "budget")
                return None
            attempt = await run.providers.endpoints[spec.provider].send(
                asked, timeout_s=limits.timeout_s or 0,
                stall_timeout_s=limits.stall_timeout_s or 0)
            cost, _ = attempt_cost(attempt, price)
            _settle(run, reservation, cost)
        result.judge_cost_usd = (result.judge_cost_usd or 0.0) + (cost or 0.0)
        result.judge_prompt_tokens = (result.judge_prompt_tokens or 0) + \
            (attempt.prompt_tokens or 0)
        result.judge_completion_tokens = (result.judge_completion_tokens or 0) + \
            (attempt.completion_tokens or 0)
        if attempt.ok:
            return parse_score(attempt.text)
        _on_failure(run, spec.provider, attempt)
        if attempt.error_type not in RETRIABLE:
            return None
        if attempt.error_type == "rate_limited" and attempt.retry_after_s:
            run.gates.pause(spec, attempt.retry_after_s)
        await anyio.sleep(_backoff_s(n, attempt.retry_after_s))
    return None


def _close_row(run: _Run, result: Result, t_ready: float, started: datetime) -> None:
    result.wall_s = run.clock() - t_ready - (result.queue_s or 0.0)
    result.started_at = started
    result.ended_at = started + timedelta(seconds=result.wall_s or 0.0)
    _record(run, result)


def _refused(run: _Run, result: Result, provider: str, worst: float | None) -> bool:
    reason = _refusal(run, provider, worst)
    if reason is not None:
        _skip(result, *reason)
    return reason is not None


async def _reserve(run: _Run, worst: float) -> Reservation | None:
    """Reserve `worst` USD; wait while in-flight reservations might free enough room."""
    while True:
        reservation = run.budget.reserve(worst)
        if reservation is not None or not run.budget.could_fit(worst):
            return reservation
        await run.budget_changed.wait()


def _settle(run: _Run, reservation: Reservation, cost: float | None) -> None:
    run.budget.settle(reservation, cost)
    run.budget_changed.set()
    run.budget_changed = anyio.Event()


def _refusal(run: _Run, provider: str, worst: float | None) -> tuple[str, str] | None:
    """Why a request must not be sent now (error_type, message), or None to go ahead."""
    stopped = run.stop_reason.get(provider)
    if stopped is not None:
        return stopped, f"not sent: provider {provider!r} stopped the run's sending ({stopped})"
    if run.stop_reason.get("*") == "budget":
        return "budget", "not sent: the run's budget_usd is used up"
    cap = run.job.max_cost_per_request_usd
    if cap is not None and worst is not None and worst > cap:
        return "cost_cap", (f"worst-case cost ${worst:.6f} exceeds max_cost_per_request_usd "
                            f"${cap:g} (lower max_tokens or raise the cap)")
    return None


def _skip(result: Result, error_type: str, message: str) -> None:
    result.status = SKIPPED
    result.error_type = error_type
    result.error_message = message


def _on_failure(run: _Run, provider: str, attempt: Attempt) -> None:
    """Failures that stop sending to a provider: a rejected key, no credits left."""
    if attempt.error_type == "auth":
        run.stop_reason.setdefault(provider, "auth")
    elif attempt.error_type == "insufficient_credits":
        run.stop_reason.setdefault(provider, "insufficient_credits")


def _backoff_s(attempt_no: int, hint_s: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the server's hint."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt_no - 1))
    return max(random.uniform(0, ceiling), hint_s or 0.0)


def _record(run: _Run, result: Result) -> None:
    run.counts[result.status] = run.counts.get(result.status, 0) + 1
    run.collector.add(result)
    if run.progress is not None:
        run.progress.advance(result, run.budget.spent_usd)
