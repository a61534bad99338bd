"""Batch mode's driver: the planned requests of batched providers in, their rows out.

Never paying twice comes first. Before a batch is submitted its worst case (at the batch price)
is reserved through the run's one budget (`worker._reserve`) and an `intent` line naming its
requests is fsynced to `batches.jsonl`; the batch id follows in a `submitted` line as soon as
the provider gives it, before anything else happens. A later `--resume` (after Ctrl-C, kill -9 or
a lost machine) re-attaches to every batch without a `done` line, takes over its reservation
(`Budget.adopt`), and never submits its requests again; an intent whose batch id was lost (a
kill between the provider's answer and our fsync) is found again by the metadata every batch
carries. Rows are flushed before the `done` line, and the reservation settles (to the sum of the
rows' costs) after it.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio

from ..budget import Reservation, known_cost
from ..client import Endpoint
from ..config import DEFAULT_MAX_RESPONSE_BYTES, Job, Provider, no_batch_api
from ..errors import ConfigError, ProviderError
from ..formatting import usd
from ..plan import Request
from ..pricing import DOCUMENTED_BATCH_DISCOUNTS, batch_price, worst_case_usd
from ..responses import Attempt
from ..result import Result
from ..rows import attempt_cost, fold, new_result
from ..stored import STORED
from ..worker import RunState, _budget_refusal, _grade, _record, _reserve, _settle, _skip, flush
from .api import CALL_TIMEOUT_S, STATUSES, call_json, create, find_lost, safe_id
from .files import Chunk, Read, chunks, input_line, read_output
from .store import BatchStore

log = logging.getLogger("runner")

# OpenAI's documented limits of one input file (other providers': batch_options)
DEFAULT_MAX_REQUESTS = 50_000
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
DEFAULT_POLL_S = 5.0
DEFAULT_POLL_MAX_S = 60.0
DEFAULT_MAX_WAIT_S = 25 * 3600.0      # the 24 h completion window, and some slack
OUTPUT_BYTES_PER_REQUEST = 256 * 1024  # an output file may hold this much per request...
OUTPUT_MAX_BYTES = 1 << 30             # ...up to this
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# why a request of a batch that ended this way has no answer line
UNANSWERED = {"completed": "batch_missing", "failed": "batch_failed", "expired": "batch_expired",
              "cancelled": "batch_cancelled"}


def batched_providers(job: Job, batch_all: bool = False) -> set[str]:
    """The providers whose requests go through their batch API (`--batch`: every one the job's
    models use); one line naming the provider when one has no batch API."""
    stored = sorted(m.label for m in job.models if m.batch and m.provider == STORED)
    if stored:
        raise ConfigError(f"batch: {stored[0]} is answered by the stored provider (a dataset "
                          "field, no API): drop its batch: true")
    names = {m.provider for m in job.models if (m.batch or batch_all) and m.provider != STORED}
    for name in sorted(names):
        if no_batch_api(job.providers[name]):
            raise ConfigError(f"--batch: provider {name!r} is OpenRouter, which has no batch "
                              "API: run without --batch, or send those models to a provider "
                              "that has one")
    streamed = sorted({m.label for m in job.models if m.provider in names
                       and m.params.get("stream") is True})
    if streamed:
        log.warning("batch mode: stream: true is ignored for %s (a batch answers whole: "
                    "ttft_s and latency_s are null, batch_wall_s says how long it took)",
                    ", ".join(streamed))
    return names


def _api(run: RunState, provider: str) -> Endpoint:
    """The batched provider's endpoint (the stored provider is never batched)."""
    endpoint = run.providers.endpoints[provider]
    assert isinstance(endpoint, Endpoint), provider
    return endpoint


def discount(provider: Provider) -> float:
    """The provider's batch discount: the job's, else the documented one, else none."""
    if provider.batch_options.discount is not None:
        return provider.batch_options.discount
    if provider.simulated:
        return 0.5
    host = (provider.base_url or "").split("://", 1)[-1].split("/", 1)[0]
    return DOCUMENTED_BATCH_DISCOUNTS.get(host, 0.0)


# -- the driver ---------------------------------------------------------------------------------

@dataclass(slots=True)
class Flight:
    """A batch this process follows."""

    key: str
    provider: str
    requests: list[Request]
    estimates: dict[str, float]
    reservation: Reservation | None
    at: float
    batch_id: str | None = None
    status: str = "submitting"
    completed: int = 0


@dataclass(slots=True)
class Board:
    """What the progress line shows about the run's batches."""

    flights: dict[str, Flight] = field(default_factory=dict)

    def line(self) -> str:
        done = sum(1 for f in self.flights.values() if f.status in TERMINAL)
        answered = sum(f.completed for f in self.flights.values())
        total = sum(len(f.requests) for f in self.flights.values())
        return (f"batches: {len(self.flights) - done} in flight, {done} ended; "
                f"{answered}/{total} requests answered")


async def drive(run: RunState, plan: Iterable[Request], providers: set[str]) -> None:
    """Send the batched providers' requests of `plan` (those not done before) as batches,
    re-attaching to those a killed or interrupted process left in flight, and record a row
    for each request once its batch ends. Returns early, leaving batches in flight for a
    resume, once the run is stopping."""
    store = BatchStore(run.collector.run_dir)
    board = Board()
    entries = await anyio.to_thread.run_sync(store.read)
    session = run.journal.session if run.journal is not None else 1
    by_id = {r.request_id: r for r in plan if r.model.provider in providers and not r.turns
             and r.input_error is None}  # (a bad_input row is recorded by the chat workers)
    claimed: set[str] = set()
    async with anyio.create_task_group() as tg:
        for entry in entries.values():
            if entry.done or entry.provider not in providers:
                continue
            endpoint = _api(run, entry.provider)
            if entry.batch_id is None:
                entry.batch_id, certain = await find_lost(endpoint, run.run_id, entry)
                if entry.batch_id is None:  # never created: its requests are sent again below
                    if certain and entry.session != session:  # ...and it cost nothing
                        _settle(run, run.budget.adopt(entry.usd, entry.serial, entry.session),
                                0.0)
                        await anyio.to_thread.run_sync(functools.partial(
                            store.append, event="done", key=entry.key, status="never created"))
                    continue
                await anyio.to_thread.run_sync(functools.partial(
                    store.append, event="submitted", key=entry.key, batch_id=entry.batch_id))
            requests = [by_id[i] for i in entry.request_ids if i in by_id]
            claimed.update(entry.request_ids)
            reservation = run.budget.adopt(entry.usd, entry.serial, entry.session) \
                if entry.session != session else None
            flight = Flight(entry.key, entry.provider, requests,
                            _estimates(run, requests), reservation, entry.at, entry.batch_id,
                            status="re-attached")
            board.flights[flight.key] = flight
            tg.start_soon(_follow, run, store, board, flight)
        todo = [r for r in by_id.values()
                if r.request_id not in run.skip and r.request_id not in claimed]
        for name in sorted(providers):
            if run.stopping:
                break
            await _submit_all(run, store, board, tg, run.job.providers[name],
                              [r for r in todo if r.model.provider == name])
        _show(run, board)


def _estimates(run: RunState, requests: list[Request]) -> dict[str, float]:
    """Each request's worst case at the batch price, as corrected by overruns so far (0 when
    unknown: without a budget nothing depends on it)."""
    out: dict[str, float] = {}
    for request in requests:
        model = request.model
        price = run.providers.prices.get((model.provider, model.id))
        worst = worst_case_usd(request, batch_price(price, discount(
            run.job.providers[model.provider]))) if price is not None else None
        out[request.request_id] = run.budget.estimate(model.label, worst or 0.0)
    return out


async def _submit_all(run: RunState, store: BatchStore, board: Board, tg: Any,
                      provider: Provider, requests: list[Request]) -> None:
    """Split the provider's requests into batches and submit them one by one."""
    options = provider.batch_options
    estimates = _estimates(run, requests)
    cap = run.job.max_cost_per_request_usd
    sendable: list[Request] = []
    for request in requests:
        if cap is not None and estimates[request.request_id] > cap:
            _skip_row(run, request, "cost_cap", f"worst-case cost "
                      f"{usd(estimates[request.request_id])} exceeds max_cost_per_request_usd "
                      f"{usd(cap)} (lower max_tokens or raise the cap)")
        else:
            sendable.append(request)
    parts, too_large = chunks(provider, sendable,
                              max_requests=options.max_requests or DEFAULT_MAX_REQUESTS,
                              max_bytes=options.max_bytes or DEFAULT_MAX_BYTES)
    for request in too_large:
        _skip_row(run, request, "payload_too_large", "its batch line is larger than "
                  "batch_options.max_bytes: raise it or shorten the prompt")
    for chunk in parts:
        if run.stopping:
            return  # not submitted: a resume sends them
        fitted, total = _fit(run, provider, chunk, estimates)
        if fitted is None:
            continue
        chunk = fitted
        reservation = await _reserve(run, total)
        if reservation is None:
            for request in chunk.requests:
                _skip_row(run, request, *_budget_refusal(run, estimates[request.request_id]))
            continue
        flight = Flight(chunk.key, provider.name, list(chunk.requests),
                        {r.request_id: estimates[r.request_id] for r in chunk.requests},
                        reservation, time.time())
        board.flights[flight.key] = flight
        session = run.journal.session if run.journal is not None else 1
        await anyio.to_thread.run_sync(functools.partial(
            store.append, event="intent", key=chunk.key, provider=provider.name,
            request_ids=[r.request_id for r in chunk.requests], usd=total,
            serial=reservation.serial, session=session, at=flight.at))
        try:
            flight.batch_id = await create(_api(run, provider.name), run.run_id,
                                            chunk)
        except ProviderError as exc:
            # maybe created, maybe not: the intent stays open (a resume looks for it by its
            # metadata) and its worst case stays spent; the rows say what happened
            flight.status = "failed"
            _settle(run, reservation, None)
            for request in chunk.requests:
                _error_row(run, request, flight, "batch_submit", str(exc))
            await flush(run)
            continue
        await anyio.to_thread.run_sync(functools.partial(
            store.append, event="submitted", key=chunk.key, batch_id=flight.batch_id))
        flight.status = "validating"
        _show(run, board)
        tg.start_soon(_follow, run, store, board, flight)


def _fit(run: RunState, provider: Provider, chunk: Chunk, estimates: dict[str, float]
         ) -> tuple[Chunk | None, float]:
    """The chunk cut to what the budget can ever fit (the rest become skipped rows), and its
    worst case."""
    total = 0.0
    kept: list[Request] = []
    for request in chunk.requests:
        estimate = estimates[request.request_id]
        if run.budget.could_fit(total + estimate):
            kept.append(request)
            total += estimate
        else:
            _skip_row(run, request, *_budget_refusal(run, estimate))
    if not kept:
        return None, 0.0
    if len(kept) == len(chunk.requests):
        return chunk, total
    data = b"".join(input_line(provider, r) for r in kept)
    return Chunk(f"{chunk.key}-{len(kept)}", tuple(kept), data), total


async def _follow(run: RunState, store: BatchStore, board: Board, flight: Flight) -> None:
    """Poll the batch until it ends, then record its rows, mark it done and settle."""
    endpoint = _api(run, flight.provider)
    options = run.job.providers[flight.provider].batch_options
    wait_s = options.poll_s or DEFAULT_POLL_S
    max_wait_s = options.max_wait_s or DEFAULT_MAX_WAIT_S
    assert flight.batch_id is not None
    obj: dict[str, Any] = {}
    while True:
        if run.stopping:
            return  # left in flight: a resume re-attaches
        try:
            obj = await call_json(endpoint, "GET", f"batches/{flight.batch_id}")
        except ProviderError as exc:
            log.warning("batch %s: %s (asking again)", flight.batch_id, exc)
            obj = {}
        status = obj.get("status")
        if status in STATUSES:
            flight.status = str(status)
            counts = obj.get("request_counts")
            done = counts.get("completed") if type(counts) is dict else None
            if type(done) is int and 0 <= done <= len(flight.requests):
                flight.completed = done
            _show(run, board)
        if flight.status in TERMINAL:
            break
        if time.time() - flight.at > max_wait_s:
            log.warning("batch %s: not ended after %g s (batch_options.max_wait_s): "
                        "cancelling it", flight.batch_id, max_wait_s)
            try:
                await call_json(endpoint, "POST", f"batches/{flight.batch_id}/cancel", json_body={})
            except ProviderError as exc:
                log.warning("batch %s: %s", flight.batch_id, exc)
            flight.status = "cancelled"
            break
        await anyio.sleep(wait_s)
        wait_s = min(wait_s * 1.5, options.poll_max_s or DEFAULT_POLL_MAX_S)
    read = await _outputs(run, endpoint, flight, obj)
    await _record_rows(run, store, flight, read)
    _show(run, board)


async def _outputs(run: RunState, endpoint: Endpoint, flight: Flight,
                   obj: dict[str, Any]) -> Read:
    """The batch's output and error files, read (bounded) into one attempt per request."""
    read = Read({}, [])
    ids = {r.request_id for r in flight.requests}
    max_bytes = min(OUTPUT_MAX_BYTES, OUTPUT_BYTES_PER_REQUEST * len(ids) + (1 << 20))
    for key in ("output_file_id", "error_file_id"):
        file_id = safe_id(obj.get(key))
        if not file_id:
            continue
        try:
            status, raw = await endpoint.call("GET", f"files/{file_id}/content",
                                              max_bytes=max_bytes, timeout_s=CALL_TIMEOUT_S * 5)
        except ProviderError as exc:
            read.warnings.append(f"{key}: {exc}")
            continue
        if status != 200:
            read.warnings.append(f"{key}: HTTP {status}")
            continue
        read_output(raw, ids, max_line_bytes=run.limits.max_response_bytes
                    or DEFAULT_MAX_RESPONSE_BYTES, into=read)
    for warning in read.warnings:
        log.warning("batch %s: %s", flight.batch_id, endpoint.redact.clip(warning, 500))
    if read.ignored > len(read.warnings):
        log.warning("batch %s: %d more odd lines ignored", flight.batch_id,
                    read.ignored - len(read.warnings))
    for attempt in read.attempts.values():
        endpoint.seal(attempt)
    return read


async def _record_rows(run: RunState, store: BatchStore, flight: Flight, read: Read) -> None:
    """One row per request of the batch; flushed, then the `done` line, then the settlement."""
    price_of = run.providers.prices
    ended = time.time()
    total = 0.0
    for request in flight.requests:
        attempt = read.attempts.get(request.request_id)
        if attempt is None:
            kind = UNANSWERED.get(flight.status, "batch_missing")
            attempt = Attempt(http_error=True).fail(
                kind, f"no answer line for it in batch {flight.batch_id} ({flight.status})")
        model = request.model
        price = price_of.get((model.provider, model.id))
        bprice = batch_price(price, discount(run.job.providers[model.provider])) \
            if price is not None else None
        cost, source = attempt_cost(attempt, bprice)
        if known_cost(cost) is None:
            cost, source = None, None
        estimate = flight.estimates.get(request.request_id, 0.0)
        total += cost if cost is not None else estimate
        if request.request_id in run.skip:
            continue  # its row was written before a kill cut this batch's `done` line
        result = new_result(run.run_id, run.job.name, request)
        result.stream = False
        result.estimated_cost_usd = estimate
        result.attempts = 1
        fold(result, attempt, cost, source, estimate)
        result.batch_id = flight.batch_id
        result.batch_wall_s = max(0.0, ended - flight.at)
        result.started_at = datetime.fromtimestamp(flight.at, UTC)
        result.ended_at = datetime.fromtimestamp(ended, UTC)
        checks = run.job.checks.for_prompt(request.prompt_id)
        if checks:
            await _grade(run, request, result, checks)
        _record(run, result)
    await flush(run)
    await anyio.to_thread.run_sync(functools.partial(
        store.append, event="done", key=flight.key, status=flight.status))
    if flight.reservation is not None:
        _settle(run, flight.reservation, total if math.isfinite(total) else None)


def _skip_row(run: RunState, request: Request, error_type: str, message: str) -> None:
    result = new_result(run.run_id, run.job.name, request)
    result.stream = False
    _skip(result, error_type, message)
    _record(run, result)


def _error_row(run: RunState, request: Request, flight: Flight, error_type: str,
               message: str) -> None:
    result: Result = new_result(run.run_id, run.job.name, request)
    result.stream = False
    result.error_type, result.error_message = error_type, message
    result.batch_id = flight.batch_id
    _record(run, result)


def _show(run: RunState, board: Board) -> None:
    """Tell the progress display about the batches (when it can show them)."""
    show = getattr(run.progress, "batches", None)
    if show is not None and board.flights:
        show(board.line())


