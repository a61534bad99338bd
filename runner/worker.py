"""One request's way through the run: a `Request` in, its `Result` row recorded out.

Each attempt passes the limits (`limits.Gates`) and the cost guard (`budget.Budget`) before it
is sent; retries with backoff, 429 pauses, providers that must stop (401, 402), checks and the
LLM judge live here. `engine` runs `handle` in its worker pool.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio

from .budget import Budget, Reservation
from .checks import Check, evaluate
from .client import Attempt
from .collect import Collector
from .config import Job, Limits
from .errors import ResultsError
from .journal import Journal
from .judge import RESPONSE_FORMAT, judge_messages, parse_score
from .limits import Gates
from .plan import Request
from .pricing import typical_prompt_tokens, worst_case_usd
from .result import ERROR, OK, SKIPPED, Result
from .resume import INTERRUPTED
from .rows import attempt_cost, fold, new_result
from .setup import Providers


class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, result: Result, spent_usd: float) -> None: ...
    def stop(self) -> None: ...


RETRIABLE = frozenset({
    "connection", "timeout", "stall", "disconnect", "stream_error", "error_body", "malformed",
    "rate_limited", "server_error", "bad_gateway", "unavailable", "gateway_timeout",
    "upstream_timeout", "overloaded", "client_error",
})
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0


@dataclass(slots=True)
class RunState:
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
    journal: Journal | None = None                  # reservations made durable before sending


async def flush(run: RunState) -> None:
    """Write the finished rows as a part file. Shielded: a row taken is a row written, even when
    the pool is cancelled (the end of the run, a second Ctrl-C) while it is on its way."""
    rows = run.collector.take()
    if rows:
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(run.collector.write_part, rows)
            except ResultsError:
                run.collector.put_back(rows)  # the end of the run tries them once more
                raise


async def handle(run: RunState, request: Request) -> None:
    """Send one request (with retries), grade it, and record its row; never raises for a
    failed request. Cut off by cancellation, it still records the row of what was sent."""
    result = new_result(run.run_id, run.job.name, request)
    t_ready = run.clock()
    try:
        started = await _attempts(run, request, result, t_ready)
        checks = run.job.checks.for_prompt(request.prompt_id)
        if checks:
            await _grade(run, request, result, checks)
    except anyio.get_cancelled_exc_class():
        if result.attempts:  # something was sent, maybe paid for: the row must say so
            if result.status != OK:  # a resume sends it again
                result.status, result.error_type = ERROR, INTERRUPTED
                result.error_message = "cut off by an interrupt"
            _close_row(run, result, t_ready, datetime.now(UTC))
        raise
    _close_row(run, result, t_ready, started)
    if run.collector.pending >= run.collector.flush_rows:
        await flush(run)


async def _attempts(run: RunState, request: Request, result: Result, t_ready: float) -> datetime:
    """Attempts until one succeeds, fails for good, or is refused; returns when it started."""
    started = datetime.now(UTC)
    model = request.model
    endpoint = run.providers.endpoints[model.provider]
    price = run.providers.prices.get((model.provider, model.id))
    limits = model.limits.over(run.job.providers[model.provider].limits).over(run.limits)
    worst = worst_case_usd(request, price) if price is not None else None
    result.estimated_cost_usd = worst
    tokens = typical_prompt_tokens(request.messages) + int(request.params.get("max_tokens") or 0)
    retries = limits.retries or 0
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
                _settle(run, reservation, None)  # unknown cost: its reservation stays spent
                result.attempts = n
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
    return started


async def _grade(run: RunState, request: Request, result: Result,
                 checks: tuple[Check, ...]) -> None:
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


async def _judge(run: RunState, request: Request, result: Result, check: Check) -> float | None:
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
            try:
                attempt = await run.providers.endpoints[spec.provider].send(
                    asked, timeout_s=limits.timeout_s or 0,
                    stall_timeout_s=limits.stall_timeout_s or 0)
            except anyio.get_cancelled_exc_class():
                _settle(run, reservation, None)  # unknown cost: the reservation stays spent
                raise
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


def _close_row(run: RunState, result: Result, t_ready: float, started: datetime) -> None:
    result.wall_s = run.clock() - t_ready - (result.queue_s or 0.0)
    result.started_at = started
    result.ended_at = started + timedelta(seconds=result.wall_s or 0.0)
    _record(run, result)


def _refused(run: RunState, result: Result, provider: str, worst: float | None) -> bool:
    reason = _refusal(run, provider, worst)
    if reason is not None:
        _skip(result, *reason)
    return reason is not None


async def _reserve(run: RunState, worst: float) -> Reservation | None:
    """Reserve `worst` USD (waiting while in-flight reservations might free enough room), and
    return once the reservation is in the spend journal: a kill after the send cannot lose it."""
    while True:
        reservation = run.budget.reserve(worst)
        if reservation is not None or not run.budget.could_fit(worst):
            break
        await run.budget_changed.wait()
    if reservation is not None and run.journal is not None:
        try:
            # Without a budget, nothing a resume decides depends on this line, so the attempt
            # does not wait for the fsync (the line goes out with the next batch); a later
            # `--resume --budget-usd` may then miss at most the attempts of one unwritten batch.
            await run.journal.reserve(reservation, durable=run.budget.budget_usd is not None)
        except BaseException:
            _settle(run, reservation, 0.0)  # not sent (cancelled, or the disk failed)
            raise
    return reservation


def _settle(run: RunState, reservation: Reservation, cost: float | None) -> None:
    before = run.budget.spent_usd
    run.budget.settle(reservation, cost)
    if run.journal is not None:  # what the budget counted, so a resume counts the same
        run.journal.settle(reservation, run.budget.spent_usd - before)
    if run.budget.budget_usd is not None:  # without a budget nobody waits on it
        run.budget_changed.set()
        run.budget_changed = anyio.Event()


def _refusal(run: RunState, provider: str, worst: float | None) -> tuple[str, str] | None:
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


def _on_failure(run: RunState, provider: str, attempt: Attempt) -> None:
    """Failures that stop sending to a provider: a rejected key, no credits left."""
    if attempt.error_type == "auth":
        run.stop_reason.setdefault(provider, "auth")
    elif attempt.error_type == "insufficient_credits":
        run.stop_reason.setdefault(provider, "insufficient_credits")


def _backoff_s(attempt_no: int, hint_s: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the server's hint."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt_no - 1))
    return max(random.uniform(0, ceiling), hint_s or 0.0)


def _record(run: RunState, result: Result) -> None:
    run.counts[result.status] = run.counts.get(result.status, 0) + 1
    run.collector.add(result)
    if run.progress is not None:
        run.progress.advance(result, run.budget.spent_usd)
