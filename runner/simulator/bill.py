"""The simulator's own bill: what one request generated while its reply went out in, a `Charge`
(tokens and USD at the model's list price) out; `read_bill` reads a `--bill` file back.

How a request is priced (the rules a client's budget is checked against):
- refused before generation (bad key or body, 402, 429, an injected error, a redirect, a 200 that
  is only an error): free;
- once generation starts: the prompt, the per-request fee and every completion token generated:
  the whole completion when it was sent; a stream cut off (by the client or a fault) for the
  tokens sent until then; a reply that hangs or is dropped before it is sent for the tokens the
  model had generated at its pace (`ttft_s`, `tokens_per_s`) when it was cut;
- never more completion tokens than the request's cap (an upstream bills at most `max_tokens`,
  even when an endless stream goes on);
- the bill is the list price: faults that lie in `usage.cost` (negative, overbilled) lie to the
  client only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from runner.simulator.models import SimModel
from runner.simulator.wire import cost_usd


@dataclass(frozen=True, slots=True)
class Charge:
    """One request on the bill."""

    t_unix: float
    request_id: str | None  # the "X-Runner-Request-Id" request header
    model: str
    stream: bool
    status: int  # as in `Arrival`: 0 when no response was sent
    fault: str | None
    # "free", "complete", "cut" (ended before the whole reply was sent), or for a request that
    # followed a redirect: "redirect_target" / "redirect_target_credentials" (it carried the
    # Authorization header or a header the runner does not send by itself)
    outcome: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class Meter:
    """What one request has generated so far; `charge` prices it (called once it has ended)."""

    __slots__ = ("_clock", "_mode", "_model", "_paced", "_prompt_tokens", "_cap_tokens",
                 "_started_s", "_tokens", "fault", "model_id", "outcome", "status", "stream")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._model: SimModel | None = None
        self._prompt_tokens = 0
        self._cap_tokens: int | None = None
        self._mode = "free"  # -> "paced" | "counted" | "complete"
        self._started_s = 0.0
        self._paced = (0, 0.0)  # (tokens in the whole completion, seconds to the first one)
        self._tokens = 0
        self.model_id, self.stream, self.status = "", False, 0
        self.fault: str | None = None
        self.outcome: str | None = None  # set to name a free request's outcome (redirects)

    def describe(self, model_id: str, stream: bool, status: int, fault: str | None) -> None:
        """What the bill line says about the request (as logged in its `Arrival`)."""
        self.model_id, self.stream, self.status, self.fault = model_id, stream, status, fault

    def order(self, model: SimModel, prompt_tokens: int, cap_tokens: int | None) -> None:
        """The model and token counts a generation would be priced with."""
        self._model, self._prompt_tokens, self._cap_tokens = model, prompt_tokens, cap_tokens

    def pace(self, total_tokens: int, ttft_s: float) -> None:
        """Generation starts now, unseen: tokens accrue at the model's pace until it is sent."""
        self._mode, self._started_s = "paced", self._clock()
        self._paced = (total_tokens, ttft_s)

    def count(self) -> None:
        """Generation starts now and is streamed: `sent` counts what goes out."""
        self._mode = "counted"

    def sent(self, tokens: int) -> None:
        """`tokens` more completion tokens were written to the client."""
        self._tokens += tokens

    def complete(self, tokens: int) -> None:
        """The whole reply, of `tokens` completion tokens, was sent."""
        self._mode, self._tokens = "complete", tokens

    def _generated(self) -> int:
        if self._mode in ("counted", "complete"):
            return self._tokens
        total, ttft_s = self._paced
        elapsed_s = self._clock() - self._started_s
        assert self._model is not None
        if elapsed_s < ttft_s:
            return 0
        if self._model.s_per_token == 0:
            return total
        return min(total, 1 + int((elapsed_s - ttft_s) / self._model.s_per_token))

    def charge(self, t_unix: float, request_id: str | None) -> Charge:
        """The bill line of the request as it stands now."""
        if self._mode == "free" or self._model is None:
            return Charge(t_unix, request_id, self.model_id, self.stream, self.status,
                          self.fault, self.outcome or "free", 0, 0, 0.0)  # fmt: skip
        tokens = max(0, self._generated())
        if self._cap_tokens is not None:
            tokens = min(tokens, self._cap_tokens)
        outcome = "complete" if self._mode == "complete" else "cut"
        return Charge(t_unix, request_id, self.model_id, self.stream, self.status, self.fault,
                      outcome, self._prompt_tokens, tokens,
                      cost_usd(self._model, self._prompt_tokens, tokens))  # fmt: skip


def bill_body(charges: list[Charge]) -> bytes:
    """`GET /_sim/bill`: `{"total_usd", "requests", "charges": [...]}`."""
    return orjson.dumps({"total_usd": total_usd(charges), "requests": len(charges),
                         "charges": charges})  # fmt: skip


def total_usd(charges: list[Charge] | list[dict[str, Any]]) -> float:
    """The sum of the charges' costs."""
    return sum(c["cost_usd"] if isinstance(c, dict) else c.cost_usd for c in charges)


def read_bill(path: Path) -> list[dict[str, Any]]:
    """The charges of a `--bill` JSON-lines file (a last line cut off by a crash is skipped)."""
    charges = []
    for line in path.read_bytes().splitlines():
        try:
            charges.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return charges
