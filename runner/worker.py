"""One request's way through the run: a `Request` in, its `Result` row recorded out.

Every call to a model, planned request or judge, goes through one retry loop (`_exchange`):
each attempt passes the limits (`limits.Gates`) and reserves its worst case in the cost guard
(`budget.Budget`) before it is sent, and settles after. Retries with backoff, 429 pauses, retry
hints too long to wait for, providers or models that must stop (401, 402, a daily limit),
requests the budget cannot fit, checks and the LLM judge live here. `engine` runs `handle` in
its worker pool.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from .bad_rows import BAD_INPUT
from .budget import Budget, Reservation, known_cost
from .check_results import outcomes_json
from .checks import Check, Judged, context_for, evaluate
from .client import Attempt, Endpoint
from .collect import Collector
from .config import DEFAULT_MAX_RETRY_WAIT_S, Job, Limits, ModelSpec
from .conversation import converse
from .errors import ResultsError
from .formatting import usd
from .journal import Journal
from .judge import judge_messages, parse_verdict, scale_of
from .judge import response_format as judge_format
from .limits import Gates
from .plan import Request
from .pricing import Price, typical_prompt_tokens, worst_case_usd
from .providers import Providers
from .result import ERROR, INTERRUPTED, OK, SKIPPED, Result
from .rows import attempt_cost, fold, new_result
from .templates import TemplateError

if TYPE_CHECKING:
    from .cache import ResponseCache  # imported where a run turns the cache on (engine)


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
# a retry hint this long is a daily (or similar) limit on the model, not a passing rate limit
MODEL_STOP_HINT_S = 3600.0
# this many hints in a row longer than limits.max_retry_wait_s also stop the model: sending
# more would only collect more of them
LONG_HINTS_TO_STOP = 2


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
    # provider, or "model:<label>" -> why sending to it stopped (an error_type)
    stop_reason: dict[str, str] = field(default_factory=dict)
    stop_message: dict[str, str] = field(default_factory=dict)  # the same key -> the skip's text
    long_hints: dict[str, int] = field(default_factory=dict)  # model -> too-long hints in a row
    budget_changed: anyio.Event = field(default_factory=anyio.Event)
    skip: set[str] = field(default_factory=set)     # request ids a resumed run must not send
    stopping: bool = False                          # a signal came: schedule nothing more
    interrupted: bool = False
    journal: Journal | None = None                  # reservations made durable before sending
    model_limits: dict[str, Limits] = field(default_factory=dict)  # label -> merged, once
    batched: frozenset[str] = frozenset()   # providers whose requests go as batches (batch.py)
    cache: ResponseCache | None = None      # the response cache, when it is on (cache.py)
    load: dict[str, Any] | None = None              # a load test's facts for run.json
    save_facts: Callable[[], object] | None = None  # writes run.json now (a stage's end)


@dataclass(slots=True)
class Call:
    """One question to a model (a planned request, or a judge asked about one) and what its
    attempts have come to so far."""

    request: Request
    price: Price | None
    worst_usd: float | None     # from the plan's prices; None: unbounded or no price
    limits: Limits
    tokens: int                 # what the tokens-per-minute limits charge an attempt
    t_ready: float              # run.clock() when it was ready to go
    attempts: int = 0
    queue_s: float | None = None    # until the limits first let it through
    started: datetime = field(default_factory=lambda: datetime.now(UTC))  # ...and then
    refusal: tuple[str, str] | None = None  # (error_type, message) when it was not sent


async def flush(run: RunState) -> None:
    """Write the finished rows as a part file. Shielded: a row taken is a row written, even when
    the pool is cancelled (the end of the run, a second Ctrl-C) while it is on its way."""
    rows = run.collector.take()
    if rows:
        with anyio.CancelScope(shield=True):
            try:
                await run.collector.writer.run(run.collector.write_part, rows)
            except ResultsError:
                run.collector.put_back(rows)  # the end of the run tries them once more
                raise


async def handle(run: RunState, request: Request,
                 stamp: Callable[[Result], None] | None = None) -> None:
    """Send one request (with retries), grade it, and record its row; never raises for a
    failed request. Cut off by cancellation, it still records the row of what was sent.
    `stamp(result)` fills a load test's columns just before the row is recorded."""
    result = new_result(run.run_id, run.job.name, request, run.providers.redactor)
    t_ready = run.clock()
    if request.input_error is not None:  # its dataset row cannot make it (plan.py): not sent
        result.status, result.error_type = ERROR, BAD_INPUT
        result.error_message = run.providers.redactor(request.input_error)
        checks = run.job.checks.for_prompt(request.prompt_id)
        if checks:  # not graded: the data, not the model, is at fault
            await _grade(run, request, result, checks)
        if stamp is not None:
            stamp(result)
        _close_row(run, result, t_ready, datetime.now(UTC))
        if run.collector.pending >= run.collector.flush_rows:  # (also where a long run of
            await flush(run)                                  # such rows yields to the loop)
        return
    call = _call_for(run, request, t_ready)
    result.estimated_cost_usd = call.worst_usd
    try:
        endpoint = run.providers.endpoints[request.model.provider]
        if request.turns:  # a conversation: one exchange per user turn (conversation.py);
            # never cached (the cache keeps single exchanges)
            request = await converse(request, result, call, functools.partial(_turn_call, run),
                                     functools.partial(_send_turn, run))
        elif not isinstance(endpoint, Endpoint) or run.cache is None \
                or not await run.cache.answer(endpoint, request, result):
            # (the stored provider's answers are rows of a file: never cached)
            await _exchange(run, call, functools.partial(_fold_attempt, result))
            if run.cache is not None and isinstance(endpoint, Endpoint):
                await run.cache.keep(endpoint, request, result)
        if call.refusal is not None:
            _skip(result, *call.refusal)
        checks = run.job.checks.for_prompt(request.prompt_id)
        if checks:
            await _grade(run, request, result, checks)
    except anyio.get_cancelled_exc_class():
        if call.attempts:  # something was sent, maybe paid for: the row must say so
            result.attempts, result.queue_s = call.attempts, call.queue_s
            if result.status != OK:  # a resume sends it again
                result.status, result.error_type = ERROR, INTERRUPTED
                result.error_message = "cut off by an interrupt"
            if stamp is not None:
                stamp(result)
            _close_row(run, result, t_ready, call.started)
        raise
    result.queue_s = call.queue_s
    if stamp is not None:
        stamp(result)
    _close_row(run, result, t_ready, call.started)
    if run.collector.pending >= run.collector.flush_rows:
        await flush(run)


def _turn_call(run: RunState, request: Request) -> Call:
    """The call of a conversation's later turn: its own limits pass and budget reservation."""
    return _call_for(run, request, run.clock())


async def _send_turn(run: RunState, call: Call, row: Result) -> None:
    """One turn of a conversation through the one retry loop, folded into its own row."""
    await _exchange(run, call, functools.partial(_fold_attempt, row))


def _limits_of(run: RunState, model: ModelSpec) -> Limits:
    """The model's limits over its provider's over the run's, merged once per model (every
    request of a run asks: it showed in profiles)."""
    limits = run.model_limits.get(model.label)
    if limits is None:
        limits = model.limits.over(run.job.providers[model.provider].limits).over(run.limits)
        run.model_limits[model.label] = limits
    return limits


def _call_for(run: RunState, request: Request, t_ready: float) -> Call:
    model = request.model
    price = run.providers.prices.get((model.provider, model.id))
    return Call(
        request, price, worst_case_usd(request, price) if price is not None else None,
        limits=_limits_of(run, model),
        tokens=typical_prompt_tokens(request.messages)
        + int(request.params.get("max_tokens") or 0),
        t_ready=t_ready)


async def _exchange(run: RunState, call: Call,
                    on_attempt: Callable[[Call, Attempt, float | None, str | None, float | None],
                                         None]) -> Attempt | None:
    """The one retry loop, for requests and judges alike: pass the limits, reserve the worst
    case, send, settle, and back off, until an attempt succeeds, fails for good or is refused
    (`call.refusal`). `on_attempt(call, attempt, cost, cost_source, estimate)` sees every
    attempt; the last one is returned. Nothing waits after the last attempt."""
    model = call.request.model
    endpoint = run.providers.endpoints[model.provider]
    retries = call.limits.retries or 0
    attempt: Attempt | None = None
    for n in range(1, retries + 2):
        if _refused(run, call):
            break
        async with run.gates.slot(model, call.tokens):
            if call.queue_s is None:
                call.queue_s = run.clock() - call.t_ready
                call.started = datetime.now(UTC)
            if _refused(run, call):
                break
            reservation, estimate = await _reserve_estimate(run, call)
            if reservation is None:
                call.refusal = _budget_refusal(run, estimate)
                break
            try:
                attempt = await endpoint.send(call.request, **_send_limits(call.limits))
            except anyio.get_cancelled_exc_class():
                _settle(run, reservation, None)  # unknown cost: its reservation stays spent
                call.attempts = n
                raise
            cost, source = attempt_cost(attempt, call.price)
            if known_cost(cost) is None:  # a negative or odd bill is no bill we can count
                cost, source = None, None
            _settle(run, reservation, cost)
            # an overrun raises the model's estimate here, with no checkpoint since the bill
            # came: no other request can reserve on the old estimate in between
            if call.worst_usd is not None and \
                    run.budget.learn(model.label, call.worst_usd, estimate, cost) and \
                    run.journal is not None:  # a resume after kill -9 must know it too
                run.journal.raise_estimate(model.label, run.budget.factor(model.label))
        call.attempts = n
        wait_s = _wait_before_retry(run, call, attempt, n)
        on_attempt(call, attempt, cost, source, estimate if call.worst_usd is not None else None)
        if attempt.ok or wait_s is None:
            break
        await anyio.sleep(wait_s)
    return attempt


async def _reserve_estimate(run: RunState, call: Call) -> tuple[Reservation | None, float]:
    """Reserve the call's worst case as corrected by overruns so far; returns the reservation
    (None: it does not fit) and the estimate it was made for."""
    label = call.request.model.label
    while True:
        estimate = run.budget.estimate(label, call.worst_usd or 0.0)
        reservation = await _reserve(run, estimate)
        if reservation is None or run.budget.estimate(label, call.worst_usd or 0.0) <= estimate:
            return reservation, estimate
        # an overrun raised this model's estimate while we waited for room: nothing was sent,
        # so give the stale reservation back at no cost and reserve the corrected one
        _settle(run, reservation, 0.0)


def _wait_before_retry(run: RunState, call: Call, attempt: Attempt, n: int) -> float | None:
    """Seconds to wait before the next attempt, or None when the call ends with this one.

    A retry hint longer than `limits.max_retry_wait_s` is not waited for (and pauses nobody):
    the request ends with the hint in its message. Such hints on a model twice in a row, or one
    of `MODEL_STOP_HINT_S` or more (a daily limit), stop sending to that model for the rest of
    the run; the other models go on."""
    model = call.request.model
    if attempt.ok:
        run.long_hints.pop(model.label, None)
        return None
    _on_failure(run, model.provider, attempt)
    hint_s = attempt.retry_after_s
    cap_s = call.limits.max_retry_wait_s
    if cap_s is None:
        cap_s = DEFAULT_MAX_RETRY_WAIT_S
    if hint_s is not None and hint_s > cap_s:
        told = (f"the server asked to wait {hint_s:.0f} s, more than limits.max_retry_wait_s = "
                f"{cap_s:g} s")
        attempt.error_message = f"{attempt.error_message or 'error'} ({told}: not retried)"
        run.long_hints[model.label] = run.long_hints.get(model.label, 0) + 1
        if hint_s >= MODEL_STOP_HINT_S or run.long_hints[model.label] >= LONG_HINTS_TO_STOP:
            key = f"model:{model.label}"
            run.stop_reason.setdefault(key, "rate_limited")
            run.stop_message.setdefault(key, f"not sent: {told} before sending to model "
                                        f"{model.label!r} again, so the run stopped sending "
                                        "to it (resume the run later to send the rest)")
        return None
    if attempt.error_type == "rate_limited" and hint_s:
        run.gates.pause(model, hint_s)  # before anyone sleeps: every worker must see it
    if attempt.error_type not in RETRIABLE or n > (call.limits.retries or 0):
        return None
    return _backoff_s(n, hint_s)


def _fold_attempt(result: Result, call: Call, attempt: Attempt, cost: float | None,
                  source: str | None, estimate: float | None) -> None:
    result.attempts = call.attempts
    if estimate is not None:
        result.estimated_cost_usd = estimate
    fold(result, attempt, cost, source, estimate)


async def _grade(run: RunState, request: Request, result: Result,
                 checks: tuple[Check, ...]) -> None:
    """Fill `passed`, `score`, `check_failures` and `checks_json` from the prompt's checks."""
    context = context_for(request, run.job.checks)
    graded: dict[Check, Judged] = {}
    if result.status == OK:
        for check in checks:
            if check.kind == "llm_judge":
                graded[check] = await _judge(run, request, result, check, context)
    row = result.as_row()
    grade = functools.partial(evaluate, checks, result.response_text, row, graded=graded,
                              context=context)
    if any(check.kind == "python" or check.transform is not None for check in checks):
        verdict = await anyio.to_thread.run_sync(grade)  # user code: keep it off the loop
    else:
        verdict = grade()
    result.passed, result.score, result.check_failures = \
        verdict.passed, verdict.score, verdict.failures
    result.checks_json = outcomes_json(verdict.outcomes)


async def _judge(run: RunState, request: Request, result: Result, check: Check,
                 context: dict[str, Any]) -> Judged:
    """Ask the check's judge model for a score, through the same retry loop, limits and budget;
    its cost and tokens go on the judged row and its check. A judge that could not be asked or
    answered leaves the check not graded (score None)."""
    spec = run.job.judges[(check.arg.model, check.arg.provider)]
    if check.uses_target and "target" not in context:
        return Judged(None, "the row has no target to judge against")
    try:
        messages = judge_messages(check.arg, context, request.messages,
                                  result.response_text or "")
    except TemplateError as exc:
        return Judged(None, f"the judge's prompt cannot be made for this row: {exc}")
    scale = scale_of(check.arg)
    asked = Request(index=request.index, request_id=request.request_id, model=spec,
                    prompt_id=request.prompt_id, repeat=request.repeat, vars=request.vars,
                    messages=messages,
                    params={**spec.params, "response_format": judge_format(scale)})
    bill = {"cost": 0.0, "prompt": 0, "completion": 0}

    def charge(call: Call, attempt: Attempt, cost: float | None, source: str | None,
               estimate: float | None) -> None:
        bill["cost"] += cost or 0.0
        bill["prompt"] += attempt.prompt_tokens or 0
        bill["completion"] += attempt.completion_tokens or 0
        result.judge_cost_usd = (result.judge_cost_usd or 0.0) + (cost or 0.0)
        result.judge_prompt_tokens = (result.judge_prompt_tokens or 0) + \
            (attempt.prompt_tokens or 0)
        result.judge_completion_tokens = (result.judge_completion_tokens or 0) + \
            (attempt.completion_tokens or 0)

    call = _call_for(run, asked, run.clock())
    attempt = await _exchange(run, call, charge)
    sent = call.attempts > 0
    paid = (bill["cost"] if sent else None, int(bill["prompt"]) if sent else None,
            int(bill["completion"]) if sent else None)
    if attempt is None or not attempt.ok:
        why = call.refusal[1] if call.refusal is not None else \
            f"the judge failed: {attempt.error_type if attempt else 'not sent'}"
        return Judged(None, why, *paid)
    score, reason = parse_verdict(attempt.text, scale)
    if score is None:
        return Judged(None, f"the judge's answer could not be read as {scale}", *paid)
    return Judged(score, reason, *paid)


def _close_row(run: RunState, result: Result, t_ready: float, started: datetime) -> None:
    result.wall_s = None if result.cache_hit else \
        run.clock() - t_ready - (result.queue_s or 0.0)
    result.started_at = started
    result.ended_at = started + timedelta(seconds=result.wall_s or 0.0)
    _record(run, result)


def _refused(run: RunState, call: Call) -> bool:
    """Whether the call must not be sent now; the reason goes to `call.refusal`."""
    call.refusal = _refusal(run, call)
    return call.refusal is not None


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


def _refusal(run: RunState, call: Call) -> tuple[str, str] | None:
    """Why a call must not be sent now (error_type, message), or None to go ahead."""
    model = call.request.model
    stopped = run.stop_reason.get(model.provider)
    if stopped is not None:
        return stopped, (f"not sent: provider {model.provider!r} stopped the run's sending "
                         f"({stopped})")
    key = f"model:{model.label}"
    if key in run.stop_reason:
        return run.stop_reason[key], run.stop_message.get(key, f"not sent: model "
                                                          f"{model.label!r} stopped")
    # the worst case as corrected by this model's overruns so far
    estimate = run.budget.estimate(model.label, call.worst_usd or 0.0)
    cap = run.job.max_cost_per_request_usd
    if cap is not None and call.worst_usd is not None and estimate > cap:
        return "cost_cap", (f"worst-case cost {usd(estimate)} exceeds max_cost_per_request_usd "
                            f"{usd(cap)} (lower max_tokens or raise the cap)")
    if not run.budget.could_fit(estimate):  # spending never goes down: it never will
        return _budget_refusal(run, estimate)
    return None


def _budget_refusal(run: RunState, estimate: float) -> tuple[str, str]:
    left = max(0.0, (run.budget.budget_usd or 0.0) - run.budget.spent_usd)
    return "budget", (f"not sent: its worst case ({usd(estimate)}) does not fit in what is left "
                      f"of budget_usd ({usd(left)}); requests that fit are still sent")


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


@functools.lru_cache(maxsize=64)  # a run has a few merged Limits; each attempt asks
def _send_limits(limits: Limits) -> dict[str, Any]:
    """The time and size bounds of one attempt (engine fills every default into run.limits);
    passed as `**` keywords, never changed."""
    bounds = {"max_response_bytes": limits.max_response_bytes,
              "max_error_bytes": limits.max_error_bytes,
              "max_stream_events": limits.max_stream_events}
    return {"timeout_s": limits.timeout_s or 0, "stall_timeout_s": limits.stall_timeout_s or 0,
            **{name: value for name, value in bounds.items() if value is not None}}


def _backoff_s(attempt_no: int, hint_s: float | None) -> float:
    """Exponential backoff with full jitter, never shorter than the server's hint."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt_no - 1))
    return max(random.uniform(0, ceiling), hint_s or 0.0)


def _record(run: RunState, result: Result) -> None:
    run.counts[result.status] = run.counts.get(result.status, 0) + 1
    run.collector.add(result)
    if run.progress is not None:
        run.progress.advance(result, run.budget.spent_usd)
