"""The worker pool: a `Job` in, a run directory with one row per planned request out.

One anyio task group holds a producer that streams the plan, `concurrency` workers, and a
flusher that moves finished rows to disk in batches. Every attempt passes the limits (`limits`)
and the cost guard (`budget`) before it is sent; retries, backoff and 429 pauses live here.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .budget import Budget, Reservation
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
from .limits import Gates
from .manifest import Manifest
from .plan import Plan, Request
from .pricing import Price, typical_prompt_tokens, worst_case_usd
from .result import ERROR, OK, SKIPPED, Result
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


async def run_job(job: Job, *, out_dir: Path | None = None, concurrency: int | None = None,
                  rpm: float | None = None, budget_usd: float | None = None,
                  progress: Progress | None = None, refresh_prices: bool = False,
                  clock: Callable[[], float] = time.perf_counter,
                  flush_rows: int = 500, flush_s: float = 2.0) -> RunOutcome:
    """Run every request of `job` and write the results; request errors are rows, not raises."""
    plan = Plan(job)
    limits = Limits(concurrency=concurrency, rpm=rpm).over(job.limits).over(
        Limits(concurrency=DEFAULT_CONCURRENCY, timeout_s=DEFAULT_TIMEOUT_S,
               stall_timeout_s=DEFAULT_STALL_TIMEOUT_S, retries=DEFAULT_RETRIES))
    budget = Budget(budget_usd if budget_usd is not None else job.budget_usd)
    async with AsyncExitStack() as stack:
        providers = await open_providers(stack, job, connections=limits.concurrency or 1,
                                         clock=clock, refresh_prices=refresh_prices,
                                         need_prices=budget.budget_usd is not None
                                         or job.max_cost_per_request_usd is not None)
        run_id = new_run_id()
        run_dir = run_dir_for(out_dir or job.output_dir, job.name, run_id)
        collector = Collector(run_dir, write_csv=job.write_csv, flush_rows=flush_rows)
        manifest = Manifest(run_dir, job, run_id, plan_size=len(plan), limits=limits)
        manifest.write("running", budget=budget.figures())
        # limits wait on the event loop's clock (what anyio.sleep counts in), not on `clock`
        run = _Run(job, run_id, providers, Gates.build(job, limits, anyio.current_time), budget,
                   collector, limits, clock, progress)
        if progress is not None:
            progress.start(len(plan))
        status = "failed"
        try:
            await _pool(run, plan, flush_s)
            status = "failed" if "auth" in run.stop_reason.values() else "completed"
        finally:
            if progress is not None:
                progress.stop()
            with anyio.CancelScope(shield=True):
                totals = await anyio.to_thread.run_sync(_finish_files, collector)
                final = manifest.write(status, budget=budget.figures(), counts=run.counts,
                                       totals=totals, stopped=run.stop_reason)
    rejected = [name for name, why in run.stop_reason.items() if why == "auth"]
    if rejected:
        provider = job.providers[rejected[0]]
        raise ProviderError(
            f"provider {provider.name!r} rejected the API key in {provider.api_key_env} "
            f"(HTTP 401): check that key; the run stopped after the first rejection "
            f"({run.counts[SKIPPED]} requests not sent; rows in {run_dir})")
    return RunOutcome(run_dir, run_id, status, dict(run.counts), final)


async def _pool(run: _Run, plan: Plan, flush_s: float) -> None:
    workers = run.limits.concurrency or 1
    send, receive = anyio.create_memory_object_stream[Request](max_buffer_size=workers)

    async def produce() -> None:
        async with send:
            for request in plan:
                await send.send(request)

    async def work(inbox: anyio.abc.ObjectReceiveStream[Request]) -> None:
        async with inbox:
            async for request in inbox:
                await _handle(run, request)

    async def flush_every() -> None:
        while True:
            await anyio.sleep(flush_s)
            await _flush(run)

    async with anyio.create_task_group() as outer:
        outer.start_soon(flush_every)
        async with anyio.create_task_group() as tg:
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
    df = pq.read_table(final).to_pandas()
    if not len(df):
        return {"requests": 0}
    summary = summarize(df)
    write_summary(collector.run_dir, summary)
    return {
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


def _new_result(run: _Run, request: Request) -> Result:
    return Result(
        run_id=run.run_id, job=run.job.name, request_id=request.request_id, index=request.index,
        model=request.model.label, model_id=request.model.id, provider=request.model.provider,
        prompt_id=request.prompt_id, repeat=request.repeat,
        vars_json=json.dumps(dict(request.vars), sort_keys=True, ensure_ascii=False,
                             default=str),
        stream=bool(request.params.get("stream", True)),
    )


async def _handle(run: _Run, request: Request) -> None:
    result = _new_result(run, request)
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
            finally:
                if attempt is None:  # cancelled mid-request: the cost is unknown, keep it spent
                    _settle(run, reservation, None)
            cost, source = _cost(attempt, price)
            _settle(run, reservation, cost)
        result.attempts = n
        _fold(result, attempt, cost, source, worst)
        if attempt.ok:
            break
        _on_failure(run, model.provider, attempt)
        if attempt.error_type == "rate_limited" and attempt.retry_after_s:
            run.gates.pause(model, attempt.retry_after_s)  # before sleeping: others must see it
        if attempt.error_type not in RETRIABLE or n > retries:
            break
        await anyio.sleep(_backoff_s(n, attempt.retry_after_s))
    result.wall_s = run.clock() - t_ready - (result.queue_s or 0.0)
    result.started_at = started
    result.ended_at = started + timedelta(seconds=result.wall_s or 0.0)
    _record(run, result)
    if run.collector.pending >= run.collector.flush_rows:
        await _flush(run)


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


def _cost(attempt: Attempt, price: Price | None) -> tuple[float | None, str | None]:
    if attempt.cost_usd is not None:
        return attempt.cost_usd, "provider"
    if attempt.http_error:
        return 0.0, "not_billed"  # an HTTP error status: no model ran
    if price is not None and attempt.prompt_tokens is not None \
            and attempt.completion_tokens is not None:
        return price.cost_usd(attempt.prompt_tokens, attempt.completion_tokens), "price_table"
    return None, None


def _fold(result: Result, attempt: Attempt, cost: float | None, source: str | None,
          worst: float | None) -> None:
    """Copy the latest attempt into the row (latency is the final attempt's)."""
    result.status = OK if attempt.ok else ERROR
    result.error_type = attempt.error_type
    result.error_message = attempt.error_message
    result.http_status = attempt.http_status
    result.ttft_s = attempt.ttft_s if result.stream else None
    result.latency_s = attempt.latency_s
    result.model_served = attempt.model_served
    result.upstream = attempt.upstream
    result.generation_id = attempt.generation_id
    result.prompt_tokens = attempt.prompt_tokens
    result.completion_tokens = attempt.completion_tokens
    result.reasoning_tokens = attempt.reasoning_tokens
    result.cached_tokens = attempt.cached_tokens
    result.finish_reason = attempt.finish_reason
    result.native_finish_reason = attempt.native_finish_reason
    result.response_text = attempt.text if attempt.text or attempt.ok else None
    # every attempt is paid for: the row carries the sum over attempts
    if cost is not None:
        result.cost_usd = (result.cost_usd or 0.0) + cost
        result.cost_source = source
    if worst is not None and cost is not None:
        result.cost_over_estimate = bool(cost > worst + 1e-12) or bool(result.cost_over_estimate)
    tokens, latency, ttft = attempt.completion_tokens, attempt.latency_s, result.ttft_s
    if attempt.ok and tokens and latency:
        if ttft is not None and latency > ttft:
            result.output_tokens_per_s = tokens / (latency - ttft)
            if tokens > 1:
                result.tpot_s = (latency - ttft) / (tokens - 1)
        elif ttft is None:
            result.output_tokens_per_s = tokens / latency


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
