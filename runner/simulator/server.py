"""Running the simulator: `SimModel`s, a seed and an address in, a listening OpenRouter/OpenAI
compatible HTTP server out, either on the caller's loop (`serve`) or on its own loop in a daemon
thread (`Simulator`, for tests and the quickstart job).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from aiohttp import web

from runner.simulator.account import Account
from runner.simulator.arrivals import Arrival, ArrivalLog
from runner.simulator.batches import BatchService, BatchSettings, Submission
from runner.simulator.bill import Charge, total_usd
from runner.simulator.capacity import Capacity
from runner.simulator.handlers import ChatService
from runner.simulator.models import DEFAULT_MODELS, SimModel
from runner.simulator.records import RecordLog

SHUTDOWN_TIMEOUT_S = 0.2  # in-flight handlers get this long to finish, then they are cancelled
START_TIMEOUT_S = 10.0
_MAX_BODY_BYTES = 64 * 1024 * 1024
_BACKLOG = 1024


async def _listen(service: ChatService, host: str, port: int,
                  batches: BatchService | None = None) -> tuple[web.AppRunner, int]:
    """Start an aiohttp app serving `service` (and the batch routes) on host:port; return its
    runner and bound port."""
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    service.add_routes(app)
    if batches is not None:
        batches.add_routes(app)
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        site = web.SockSite(runner, sock, backlog=_BACKLOG)
        await site.start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    bound_port: int = sock.getsockname()[1]
    return runner, bound_port


async def _close(service: ChatService, runner: web.AppRunner) -> None:
    """Release hanging requests, stop the server, and wait for every leftover task to end."""
    service.close()
    await runner.cleanup()
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


async def serve(
    models: Sequence[SimModel] = DEFAULT_MODELS,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    request_log: Path | None = None,
    on_ready: Callable[[int], None] | None = None,
    account: Account | None = None,
    bill: Path | None = None,
    batches: BatchSettings | None = None,
    batch_log: Path | None = None,
    capacity: Capacity | None = None,
) -> None:
    """Serve on the running loop until cancelled; `on_ready(port)` is called once listening.

    `bill` names a JSON-lines file getting one `Charge` per request as it ends; on cancel,
    hanging and in-flight requests are cut and billed before this returns. `batch_log` gets one
    `Submission` per file upload and batch creation."""
    log = ArrivalLog(request_log)
    charges: RecordLog[Charge] = RecordLog(bill)
    service = ChatService(models, seed, log, account, charges, capacity)
    submissions: RecordLog[Submission] = RecordLog(batch_log)
    batch_service = BatchService({m.id: m for m in models}, seed, charges, batches, submissions)
    try:
        runner, bound_port = await _listen(service, host, port, batch_service)
        try:
            if on_ready is not None:
                on_ready(bound_port)
            await asyncio.Event().wait()
        finally:
            service.close()
            await runner.cleanup()
    finally:
        log.close()
        charges.close()
        submissions.close()


class Simulator:
    """The simulator on its own event loop in a daemon thread; also a context manager."""

    def __init__(
        self,
        models: Sequence[SimModel] = DEFAULT_MODELS,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        request_log: Path | None = None,
        account: Account | None = None,
        bill: Path | None = None,
        batches: BatchSettings | None = None,
        capacity: Capacity | None = None,
    ) -> None:
        self._capacity = capacity  # a server's queue and token budget (None: unlimited)
        self._account = account
        self._batch_settings = batches
        self._batches: BatchService | None = None
        self._bill_path = bill
        self._bill: RecordLog[Charge] = RecordLog()
        self._models = tuple(models)
        if len({m.id for m in self._models}) != len(self._models):
            raise ValueError("Simulator: model ids must be unique")
        self._host = host
        self._requested_port = port
        self._seed = seed
        self._request_log = request_log
        self._log = ArrivalLog()
        self._lock = threading.Lock()
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._service: ChatService | None = None
        self._runner: web.AppRunner | None = None

    def start(self) -> Simulator:
        """Start listening (port 0 picks a free port); return once requests can be served."""
        with self._lock:
            if self._thread is not None:
                return self
            self._log = ArrivalLog(self._request_log)
            self._bill = RecordLog(self._bill_path)
            loop = asyncio.new_event_loop()
            try:
                future = asyncio.run_coroutine_threadsafe(self._boot(), loop)
                thread = threading.Thread(
                    target=loop.run_forever, name="runner-simulator", daemon=True
                )
                thread.start()
                try:
                    future.result(timeout=START_TIMEOUT_S)
                except BaseException:
                    loop.call_soon_threadsafe(loop.stop)
                    thread.join()
                    raise
            except BaseException:
                loop.close()
                self._log.close()
                self._bill.close()
                raise
            self._loop, self._thread = loop, thread
            return self

    async def _boot(self) -> None:
        self._service = ChatService(self._models, self._seed, self._log, self._account,
                                    self._bill, self._capacity)
        self._batches = BatchService({m.id: m for m in self._models}, self._seed, self._bill,
                                     self._batch_settings)
        self._runner, self._port = await _listen(self._service, self._host, self._requested_port,
                                                 self._batches)

    def stop(self) -> None:
        """Stop serving (idempotent): hanging requests are dropped, in-flight ones cut at 0.2 s."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            service, runner = self._service, self._runner
            try:
                if service is not None and runner is not None:
                    closing = asyncio.run_coroutine_threadsafe(_close(service, runner), loop)
                    closing.result(timeout=START_TIMEOUT_S)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                loop.close()
                self._log.close()
                self._bill.close()
                self._loop = self._thread = self._service = self._runner = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the simulator listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("Simulator: not started; call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        """The OpenRouter-dialect base URL, e.g. http://127.0.0.1:PORT/api/v1."""
        return f"http://{self._url_host()}:{self.port}/api/v1"

    @property
    def openai_base_url(self) -> str:
        """The plain-OpenAI-dialect base URL, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://{self._url_host()}:{self.port}/v1"

    def _url_host(self) -> str:
        return f"[{self._host}]" if ":" in self._host else self._host

    def arrivals(self) -> list[Arrival]:
        """A copy of the chat completion requests received so far, in arrival order."""
        return self._log.snapshot()

    def clear_arrivals(self) -> None:
        """Forget the arrivals recorded so far (the request_log file keeps them)."""
        self._log.clear()

    def bill(self) -> list[Charge]:
        """A copy of the charges so far: one per request that has ended (see `bill.py`)."""
        return self._bill.snapshot()

    def submissions(self) -> list[Submission]:
        """A copy of the batch API's file uploads and batch creations so far."""
        return self._batches.submissions.snapshot() if self._batches is not None else []

    def billed_usd(self) -> float:
        """What the requests that have ended cost, at the models' list prices."""
        return total_usd(self._bill.snapshot())
