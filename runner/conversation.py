"""Conversations (`turns:`): a planned `Request` with user turns in, one exchange per turn (each
user turn after the model's previous reply) and the conversation's one row out.

The worker sends each turn through its one retry loop, as its own call: each turn passes the
limits and reserves its own worst case in the budget (its prompt is the conversation so far).
The row is the conversation's: its response is the last reply (checks grade it), its cost and
tokens are summed over the turns, and `turns_json` keeps each turn's timings, tokens, cost,
finish reason and reply. A turn that fails or is refused ends the conversation with an error row
that names the turn; a conversation cut off is not ok, so a resume sends it again from turn 1.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from .content import Reply
from .pricing import MESSAGE_OVERHEAD_TOKENS
from .prompts import Message
from .result import ERROR, INTERRUPTED, OK, Result

if TYPE_CHECKING:
    from .plan import Request


class TurnCall(Protocol):
    """What the conversation reads of the worker's call for one turn."""

    attempts: int
    refusal: tuple[str, str] | None
    worst_usd: float | None


def first_turn(messages: tuple[Message, ...], turns: int) -> tuple[Message, ...]:
    """The messages of a conversation's first exchange: everything before its user turns, and
    the first turn (all of `messages` when `turns` is 0: not a conversation)."""
    return messages[:len(messages) - turns + 1] if turns else messages


async def converse(request: Request, result: Result, first: TurnCall,
                   make_call: Callable[[Request], TurnCall],
                   exchange: Callable[[TurnCall, Result], Awaitable[None]]) -> Request:
    """Send the conversation of `request` turn by turn into `result`; return the request as
    graded (its messages: the whole conversation up to the last user turn).

    `first` is the call of turn 1 (`request` itself); `make_call(turn_request)` makes the call
    of a later turn and `exchange(call, row)` sends a call through the retry loop, folding its
    attempts into `row`. Cut off, `first.attempts` holds every attempt of every turn and the
    row is an error (a resume sends the conversation again)."""
    turns: Sequence[Message] = request.turns
    history = list(request.messages)
    rows: list[Result] = []
    sent = 0                                # attempts of the turns that are over
    pending: TurnCall | None = None         # the turn being sent
    try:
        for k, user in enumerate(turns):
            call = first
            if k:
                history += [Message("assistant", Reply(rows[-1].response_text or "")), user]
                call = make_call(dataclasses.replace(request, messages=tuple(history), turns=()))
            row = _scratch(result)
            row.estimated_cost_usd = call.worst_usd
            pending = call
            await exchange(call, row)
            pending = None
            sent += call.attempts
            if row.attempts or call.refusal is None:
                rows.append(row)
                _fold_turns(result, rows, len(turns))
            if call.refusal is not None:
                if k:  # a later turn refused: an error row that names it
                    _refused(result, rows, k, len(turns), call.refusal)
                return request  # turn 1 refused: the worker skips the row as any other
            if row.status != OK:
                return request
        return dataclasses.replace(request, messages=tuple(history))
    finally:
        first.attempts = sent + (pending.attempts if pending is not None else 0)
        if pending is not None and rows:  # cut off after some turns: not ok, sent again
            result.status, result.error_type = ERROR, INTERRUPTED
            result.error_message = f"turn {len(rows) + 1} of {len(turns)}: cut off by an " \
                "interrupt"


def _scratch(result: Result) -> Result:
    """An empty row for one turn (the worker folds the turn's attempts into it)."""
    return Result(run_id=result.run_id, job=result.job, request_id=result.request_id,
                  index=result.index, model=result.model, model_id=result.model_id,
                  provider=result.provider, prompt_id=result.prompt_id, repeat=result.repeat,
                  vars_json=result.vars_json, stream=result.stream)


def _fold_turns(result: Result, rows: list[Result], n: int) -> None:
    """The conversation's row from its turns so far: the last turn's outcome and reply, the
    sums of attempts, tokens, cost and time, the first turn's queue and time to first token."""
    last = rows[-1]
    for name in ("status", "error_type", "http_status", "model_served", "upstream",
                 "generation_id", "finish_reason", "native_finish_reason", "response_text",
                 "error_message"):
        setattr(result, name, getattr(last, name))
    if last.status != OK:
        result.error_message = f"turn {len(rows)} of {n}: " \
            f"{last.error_message or last.error_type or 'failed'}; the conversation ended there"
    for name in ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens",
                 "cost_usd", "latency_s"):
        values = [getattr(row, name) for row in rows if getattr(row, name) is not None]
        setattr(result, name, sum(values) if values else None)
    result.attempts = sum(row.attempts for row in rows)
    result.cost_source = next((r.cost_source for r in reversed(rows) if r.cost_source), None)
    estimates = [row.estimated_cost_usd for row in rows]
    result.estimated_cost_usd = None if None in estimates else sum(e or 0.0 for e in estimates)
    result.cost_over_estimate = any(bool(row.cost_over_estimate) for row in rows) or None
    result.ttft_s = rows[0].ttft_s
    timed = [r for r in rows if r.status == OK and r.completion_tokens and r.latency_s]
    generating_s = sum((r.latency_s or 0.0) - (r.ttft_s or 0.0) for r in timed)
    tokens = sum(r.completion_tokens or 0 for r in timed)
    result.output_tokens_per_s = tokens / generating_s if timed and generating_s > 0 else None
    result.tpot_s = generating_s / (tokens - len(timed)) \
        if result.stream and timed and tokens > len(timed) else None
    result.turns_json = turns_json(rows)


def _refused(result: Result, rows: list[Result], k: int, n: int,
             refusal: tuple[str, str]) -> None:
    """Turn k+1 was not sent (the budget, a cap, a stopped provider): the row is an error that
    says so, with the turns that were sent and paid for."""
    _fold_turns(result, rows, n)
    error_type, message = refusal
    result.status, result.error_type, result.http_status = ERROR, error_type, None
    result.response_text = None
    result.error_message = (f"turn {k + 1} of {n} {message}; the conversation ended after "
                            f"turn {k}")
    if len(rows) == k:  # the refused turn had no attempt: its record says why
        records = json.loads(result.turns_json or "[]")
        records.append({"turn": k + 1, "status": "skipped", "error_type": error_type})
        result.turns_json = json.dumps(records, ensure_ascii=False)


def turns_json(rows: Sequence[Result]) -> str:
    """The `turns_json` column: one object per turn sent, in order."""
    return json.dumps([{
        "turn": k, "status": row.status, "error_type": row.error_type,
        "attempts": row.attempts, "latency_s": row.latency_s, "ttft_s": row.ttft_s,
        "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
        "cost_usd": row.cost_usd, "estimated_cost_usd": row.estimated_cost_usd,
        "finish_reason": row.finish_reason, "reply": row.response_text,
    } for k, row in enumerate(rows, 1)], ensure_ascii=False)


def turn_weights(messages: Sequence[Message], turns: int) -> tuple[int, ...]:
    """How many times each message of a prompt is sent over its conversation: the messages
    before the turns with every turn, turn j (of T) with turns j..T; all once when `turns`
    is 0."""
    if not turns:
        return (1,) * len(messages)
    head = len(messages) - turns
    return (turns,) * head + tuple(turns - j for j in range(turns))


def replies_sent(turns: int) -> int:
    """How many earlier replies the turns of a conversation send back in all (T(T-1)/2)."""
    return turns * (turns - 1) // 2


def worst_prompt_tokens_extra(turns: int, max_output_tokens: int) -> int:
    """The prompt tokens a conversation's earlier replies add at worst, with the per-message
    overhead of every message sent more than once (as `pricing.estimate_prompt_tokens`
    counts them)."""
    return replies_sent(turns) * (max_output_tokens + MESSAGE_OVERHEAD_TOKENS)
