"""Running a job on a Ray cluster: a `Job` and a cluster address in, the same run directory as a
local run out (its workers' rows under `shards/`, merged into requests.parquet at the end).

The driver (this process) splits the plan into chunks of indices and hands them to one async
actor per node (or `workers`); each runs the local worker pool (`worker.handle`: limits,
retries, the cost guard, checks) on the chunks it is given, writing its rows to its own shard
folder of the run directory (a filesystem every node shares). One ledger actor
(`ledger.Ledger`) owns the job's budget, rates and 429 pauses, grants them in leases, and
journals the money leases in the run's spend.journal: a lease is a reservation there, so a lost
worker's lease counts as spent and a resume reads the journal like a local run's. A worker lost
mid-chunk has the indices it wrote no row for sent by the others. With a filesystem URL as the
output (`remote`), the workers push their part files there and the driver, working in a local
copy of the run, pulls them, merges and publishes the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .budget import Reservation
from .collect import Collector
from .config import Job, Limits, ModelSpec
from .errors import ConfigError, ResultsError
from .ledger import LEASE_HORIZON_S, LeasedBudget, Ledger, rate_keys
from .remote import Remote, child, is_url, publish_run, pull_run
from .rundir import RUN_JSON, SHARDS

if TYPE_CHECKING:
    from .engine import RunOutcome

INSTALL_HINT = "pip install 'runner[ray]'"
KEEPER_TICK_S = 0.1         # a worker reports its spending and tidies its lease this often
CHUNKS_PER_WORKER = 2       # in each worker's hands at once, so it never waits for the next


def require_ray() -> Any:
    """The `ray` module, or a one-line ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _runner_file() -> str:
    import runner

    return str(Path(runner.__file__).resolve())


def _runtime_env() -> dict[str, Any]:
    """Workers import this very `runner` (a source checkout or an installed one)."""
    import runner

    return {"env_vars": {"PYTHONPATH": str(Path(runner.__file__).resolve().parents[1])}}


def job_rates(job: Job, limits: Limits) -> dict[str, float]:
    """Every rate of the job, per minute, keyed as the ledger keys them."""
    rates: dict[str, float] = {}

    def put(scope: str, lim: Limits) -> None:
        if lim.rpm is not None:
            rates[f"rpm:{scope}"] = lim.rpm
        if lim.tpm is not None:
            rates[f"tpm:{scope}"] = lim.tpm

    put("job", limits)
    for name, provider in job.providers.items():
        put(f"provider:{name}", provider.limits)
    for model in (*job.models, *job.judges.values()):
        put(f"model:{model.label}", model.limits)
    return rates


# -- the ledger actor ---------------------------------------------------------------------------

class LedgerActor:
    """`Ledger` in an actor, its money leases in the run's spend journal."""

    def __init__(self, run_dir: str, budget_usd: float | None, spent_usd: float,
                 rates: dict[str, float], session: int) -> None:
        from .journal import Journal

        self.ledger = Ledger(budget_usd, spent_usd, rates)
        self.journal = Journal(Path(run_dir), session=session, carried_usd=spent_usd)
        self.leases: dict[str, Reservation] = {}
        self.serial = 0
        self.workers: dict[str, Any] = {}
        self.writer: asyncio.Task[None] | None = None
        self.calls = 0

    def register(self, name: str, handle: Any) -> None:
        self.workers[name] = handle

    async def grant(self, worker: str, spent_usd: float, release_usd: float,
                    want_usd: float) -> tuple[float, float, int]:
        """(granted, the job's spending, how many other workers wait for money)."""
        self.calls += 1
        granted = self.ledger.grant(worker, spent_usd, release_usd, want_usd)
        await self._record(worker, spent_usd)
        others = len(self.ledger.waiting - {worker})
        return granted, self.ledger.spent_usd, others

    async def _record(self, worker: str, counted_usd: float) -> None:
        """The worker's lease as it is now: a new reservation (on disk before the grant is
        answered), then the old one settled with what was spent of it."""
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self.journal.write_forever())
        old = self.leases.pop(worker, None)
        held = self.ledger.held.get(worker, 0.0)
        if held > 0:
            self.serial += 1
            self.leases[worker] = lease = Reservation(held, self.serial)
            await self.journal.reserve(lease, durable=self.ledger.budget_usd is not None)
        if old is None and counted_usd > 0:  # spent without a lease (no budget): say so
            self.serial += 1
            old = Reservation(counted_usd, self.serial)
            await self.journal.reserve(old, durable=False)
        if old is not None:
            self.journal.settle(old, max(0.0, counted_usd))

    def lost(self, worker: str) -> float:
        held = self.ledger.lost(worker)
        old = self.leases.pop(worker, None)
        if old is not None:
            self.journal.settle(old, old.usd)
        self.workers.pop(worker, None)
        return held

    def permits(self, wants: dict[str, float]) -> tuple[dict[str, float], float]:
        self.calls += 1
        return self.ledger.permits(wants)

    def give_back(self, unused: dict[str, float]) -> None:
        self.ledger.give_back(unused)

    def pause(self, provider: str, seconds: float) -> None:
        """A 429's pause, for every worker (and no permits for that provider meanwhile)."""
        self.ledger.pause(provider, seconds)
        for handle in self.workers.values():
            handle.pause.remote(provider, seconds)

    async def close(self, compact: bool) -> dict[str, Any]:
        """Write the journal's last lines; the budget figures for run.json."""
        if self.writer is not None:
            self.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.writer
        await anyio.to_thread.run_sync(self.journal.close)
        if compact:
            with contextlib.suppress(ResultsError):
                await anyio.to_thread.run_sync(self.journal.compact)
        return {**self.ledger.figures(), "ledger_calls": self.calls}


# -- a worker actor -----------------------------------------------------------------------------

@dataclass(slots=True)
class _Chunk:
    left: int
    done: anyio.Event


class _Chunks:
    """The pool's progress (`worker.Progress`): a row recorded ends its request's part of the
    chunk it came in."""

    def __init__(self) -> None:
        self.of: dict[int, _Chunk] = {}

    def start(self, total: int) -> None:
        pass

    def advance(self, result: Any, spent_usd: float) -> None:
        chunk = self.of.pop(result.index, None)
        if chunk is not None:
            chunk.left -= 1
            if chunk.left == 0:
                chunk.done.set()

    def stop(self) -> None:
        pass


class _SharedGates:
    """The ledger's rates and pauses as a worker's `limits.SharedGates`: permits taken from a
    local stock, refilled from the ledger in leases sized to what was used since last time."""

    def __init__(self, ledger: Any, keys: set[str]) -> None:
        self.ledger = ledger
        self.keys = keys
        self.have: dict[str, float] = dict.fromkeys(keys, 0.0)
        self.used: dict[str, float] = dict.fromkeys(keys, 0.0)
        self.rated_models: dict[str, bool] = {}
        self.lock = anyio.Lock()

    def rated(self, model: ModelSpec) -> bool:
        found = self.rated_models.get(model.label)
        if found is None:  # asked for every request: worked out once per model
            found = self.rated_models[model.label] = any(
                f"{kind}:{scope}" in self.keys for scope in
                rate_keys(model.provider, model.label) for kind in ("rpm", "tpm"))
        return found

    async def acquire(self, model: ModelSpec, tokens: int) -> None:
        wants: dict[str, float] = {}
        for scope in rate_keys(model.provider, model.label):
            for kind, amount in (("rpm", 1.0), ("tpm", float(tokens))):
                if f"{kind}:{scope}" in self.keys:
                    wants[f"{kind}:{scope}"] = amount
        if not wants:
            return
        if any(self.have[k] < a for k, a in wants.items()):
            async with self.lock:
                while short := {k: a - self.have[k] for k, a in wants.items()
                                if self.have[k] < a}:
                    ask = {k: max(s, self.used[k]) for k, s in short.items()}
                    for k in ask:
                        self.used[k] = 0.0
                    granted, wait_s = await self.ledger.permits.remote(ask)
                    for k, g in granted.items():
                        self.have[k] += g
                    if any(self.have[k] < a for k, a in wants.items()):
                        await anyio.sleep(max(wait_s, 0.001))
        for k, a in wants.items():
            self.have[k] -= a
            self.used[k] += a

    def pause(self, model: ModelSpec, seconds: float) -> None:
        self.ledger.pause.remote(model.provider, seconds)


class _WorkerCollector(Collector):
    """A worker's collector: it counts the rows taken for writing until their part file is
    written (and pushed to the run's URL, when the output is one)."""

    __slots__ = ("remote", "writing", "written", "push_lock", "pushed")

    def __init__(self, folder: Path, remote: Remote | None, **kwargs: Any) -> None:
        super().__init__(folder, **kwargs)
        self.remote = remote
        self.writing = 0
        self.written = threading.Condition()
        self.push_lock = threading.Lock()
        self.pushed: set[str] = set()

    def take(self) -> list[dict[str, Any]]:
        rows = super().take()
        if rows:
            with self.written:
                self.writing += 1
        return rows

    def write_part(self, rows: list[dict[str, Any]]) -> None:
        try:
            super().write_part(rows)
            if self.remote is not None:
                self._push()
        finally:
            if rows:
                with self.written:
                    self.writing -= 1
                    self.written.notify_all()

    def _push(self) -> None:
        """Every part file not pushed yet (two writes may end in either order)."""
        from .rundir import part_files

        assert self.remote is not None
        with self.push_lock:
            new = [p for p in part_files(self.run_dir) if p.name not in self.pushed]
            self.remote.push(self.run_dir, [p.relative_to(self.run_dir).as_posix()
                                            for p in new])
            self.pushed.update(p.name for p in new)

    def wait_written(self) -> None:
        """Return once no rows taken are still being written (run in a thread)."""
        with self.written:
            while self.writing:
                self.written.wait()


class WorkerActor:
    """One process of a Ray run: the worker pool over the chunks the driver hands it."""

    def __init__(self, name: str, job_path: str, run_id: str, folder: str, limits: Limits,
                 budget_usd: float | None, known_spent_usd: float, rate_keys: list[str],
                 ledger: Any, refresh_prices: bool, flush_rows: int, flush_s: float,
                 remote: str | None = None) -> None:
        self.name, self.job_path, self.run_id = name, job_path, run_id
        # output to a URL: rows are written here first, then each part file is pushed there
        self.remote = Remote(remote) if remote is not None else None
        self.folder = Path(tempfile.mkdtemp(prefix="runner-worker-")) if remote else Path(folder)
        self.limits = limits
        self.ledger = ledger
        self.keys = set(rate_keys)
        self.refresh_prices = refresh_prices
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.budget = LeasedBudget(budget_usd, known_spent_usd)
        self.queue: deque[int] = deque()
        self.chunks = _Chunks()
        self.closing = False
        self.stack = AsyncExitStack()
        self.task: asyncio.Task[None] | None = None

    def where(self) -> str:
        """Which `runner` this worker imported (the driver checks it is its own)."""
        return _runner_file()

    async def start(self) -> None:
        from .config import load_job
        from .health import Health
        from .limits import Gates
        from .plan import Plan
        from .providers import open_providers
        from .shards import scale_job
        from .worker import RunState

        job = load_job(self.job_path)
        self.plan = Plan(job)               # request ids from the job as written
        local = scale_job(job, None)        # its rates are the ledger's
        await self.stack.__aenter__()
        providers = await open_providers(
            self.stack, local, connections=self.limits.concurrency or 1,
            refresh_prices=self.refresh_prices,
            need_prices=self.budget.budget_usd is not None
            or job.max_cost_per_request_usd is not None)
        gates = Gates.build(local, self.limits, anyio.current_time)
        gates.shared = _SharedGates(self.ledger, self.keys)
        self.more = anyio.Event()
        self.short = anyio.Event()
        self.budget.on_short = self.short.set
        self.collector = collector = _WorkerCollector(
            self.folder, self.remote, write_csv=False, flush_rows=self.flush_rows,
            var_kinds=self.plan.var_kinds())
        self.run = RunState(local, self.run_id, providers, gates, self.budget, collector,
                            self.limits, time.perf_counter, self.chunks)
        self.health = Health()
        self.pool = anyio.CancelScope()
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def stop(self, grace_s: float) -> None:
        """First Ctrl-C on the driver: send nothing more; in-flight requests get `grace_s`."""
        self.run.stopping = self.run.interrupted = True
        self.pool.deadline = anyio.current_time() + grace_s
        self._wake()

    def cancel(self) -> None:
        """Second Ctrl-C: cut in-flight requests now (their rows still say what was sent)."""
        self.run.stopping = True
        self.pool.cancel()
        self._wake()

    def pause(self, provider: str, seconds: float) -> None:
        self.run.gates.providers[provider].pause.pause_for(seconds)

    async def run_chunk(self, indices: list[int]) -> int:
        """Send the requests of `indices`; return once each has its row on disk (or the run
        stopped); returns how many have no row."""
        chunk = _Chunk(len(indices), anyio.Event())
        for i in indices:
            self.chunks.of[i] = chunk
        self.queue.extend(indices)
        self._wake()
        if indices and not self.run.stopping:
            await chunk.done.wait()
        await self._flush()
        return chunk.left

    async def _flush(self) -> None:
        """Write the finished rows as a part file, and wait for the writes already under way
        (a request's own flush may hold the chunk's last row): the chunk is then on disk (or at
        the URL), so a worker lost later never takes a row the driver counts as done."""
        from .worker import flush

        await flush(self.run)
        await anyio.to_thread.run_sync(self.collector.wait_written)

    def _wake(self) -> None:
        event, self.more = self.more, anyio.Event()
        event.set()
        if self.run.stopping:  # stopped: the chunks waiting for rows are over
            for chunk in list(self.chunks.of.values()):
                chunk.done.set()

    async def _serve(self) -> None:
        from .worker import flush

        async def work() -> None:
            from .worker import handle

            while not self.run.stopping:
                if not self.queue:
                    if self.closing:
                        return
                    await self.more.wait()
                    continue
                await handle(self.run, self.plan[self.queue.popleft()])

        async def flush_every() -> None:
            while True:
                await anyio.sleep(self.flush_s)
                await flush(self.run)

        async with anyio.create_task_group() as outer:
            outer.start_soon(flush_every)
            outer.start_soon(self.health.watch)
            outer.start_soon(self._keeper)
            with self.pool:
                async with anyio.create_task_group() as tg:
                    for _ in range(self.limits.concurrency or 1):
                        tg.start_soon(work)
            outer.cancel_scope.cancel()

    async def _keeper(self) -> None:
        """Keeps this worker's money lease: more when a reservation does not fit (sized to
        what it reserved lately), the surplus back when others wait, spending reported."""
        budget = self.budget
        mark, then = budget.reserved_total_usd, time.monotonic()
        others = 0
        while True:
            with anyio.move_on_after(KEEPER_TICK_S):
                await self.short.wait()
            self.short = anyio.Event()
            budget.on_short = self.short.set
            now = time.monotonic()
            rate = (budget.reserved_total_usd - mark) / max(now - then, 1e-3)
            mark, then = budget.reserved_total_usd, now
            need = budget.wanted_usd
            budget.wanted_usd = 0.0
            want = release = 0.0
            if budget.budget_usd is not None:
                if need > 0:
                    want = max(need, rate * LEASE_HORIZON_S)
                elif budget.unused_usd > 0 and (others or
                                                budget.unused_usd > 2 * rate * LEASE_HORIZON_S):
                    release = budget.unused_usd if others else \
                        budget.unused_usd - rate * LEASE_HORIZON_S
            if not (want or release or budget.spent_usd > budget.reported_usd):
                continue
            await self._ask(want, release)
            granted, others = self.last
            if need > 0 and granted < need and budget.unused_usd < need:
                # not enough left for us: give back what we hold so a worker that can use it
                # gets it, and try again a little later
                await self._ask(0.0, budget.unused_usd)
                await anyio.sleep(random.uniform(0.01, 0.05))

    async def _ask(self, want: float, release: float) -> None:
        budget = self.budget
        budget.granted_usd -= release
        granted, spent, others = await self.ledger.grant.remote(
            self.name, budget.report(), release, want)
        budget.granted_usd += granted
        budget.known_spent_usd = spent
        self.last = (granted, others)
        self.run.budget_changed.set()  # waiting reservations look again (and may give up)
        self.run.budget_changed = anyio.Event()

    async def finish(self) -> dict[str, Any]:
        """Stop the pool, hand the lease and permits back, write the final row file."""
        self.closing = True
        self._wake()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self._flush()
        budget = self.budget
        await self.ledger.grant.remote(self.name, budget.report(), budget.unused_usd, 0.0)
        shared = self.run.gates.shared
        if isinstance(shared, _SharedGates):
            self.ledger.give_back.remote({k: v for k, v in shared.have.items() if v > 0})
        if self.remote is None:
            await anyio.to_thread.run_sync(self.run.collector.finish)
        else:  # its parts are pushed: the driver merges them
            shutil.rmtree(self.folder, ignore_errors=True)
        await self.stack.aclose()
        return {"counts": dict(self.run.counts), "stopped": dict(self.run.stop_reason),
                "budget": budget.figures()}


# -- the driver ---------------------------------------------------------------------------------

async def run_on_ray(job: Job, *, address: str | None, workers: int | None,
                     out_dir: Path | str | None, concurrency: int | None, rpm: float | None,
                     budget_usd: float | None, refresh_prices: bool,
                     resume: str | Path | None, retry_errors: bool, force: bool,
                     handle_signals: bool, grace_s: float,
                     on_stopping: Callable[[float], None] | None, flush_rows: int,
                     flush_s: float, chunk_size: int | None = None) -> RunOutcome:
    """`engine.run_job` on a Ray cluster (see the module's docstring); returns a RunOutcome."""
    from .engine import RunOutcome, key_rejected, run_limits  # noqa: F811
    from .journal import read_spent
    from .manifest import Manifest
    from .plan import Plan
    from .result import SKIPPED
    from .resume import load_previous, plan_summary
    from .rundir import RunLock, find_run_dir, new_run_id, run_dir_for, scan, shard_dir
    from .shards import merge

    runner_file = _runner_file()
    ray = require_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    if not ray.is_initialized():
        ray.init(address=address or None, runtime_env=_runtime_env(), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    plan = Plan(job)
    limits = run_limits(job, concurrency, rpm)
    # output to a URL: the driver works in a local copy of the run (its journal, the merge)
    # and publishes it; the workers push their parts there themselves
    url = out_dir if isinstance(out_dir, str) and is_url(out_dir) else \
        job.output_url if out_dir is None else None
    if resume is not None and is_url(str(resume)):
        url = url or str(resume)
    remote_run: Remote | None = None
    root = Path(tempfile.mkdtemp(prefix="runner-ray-")) if url else \
        Path(out_dir or job.output_dir)
    budget_usd = budget_usd if budget_usd is not None else job.budget_usd
    with ExitStack() as locks:
        previous = None
        if resume is not None:
            if url:
                copy, run_url = await anyio.to_thread.run_sync(
                    pull_run, url, job.name, str(resume), root)
                remote_run, resume = Remote(run_url), copy
            run_dir = find_run_dir(root, job.name, str(resume))
            locks.enter_context(RunLock(run_dir))
            previous = load_previous(run_dir, job, force=force)
            run_id = str(previous.manifest["run_id"])
        else:
            run_id = new_run_id()
            run_dir = run_dir_for(root, job.name, run_id)
            locks.enter_context(RunLock(run_dir))
            if url:
                remote_run = Remote(child(url, job.name, run_id))
        skip = previous.skip(retry_errors) if previous is not None else set()
        todo = [i for i in range(len(plan)) if not skip or plan[i].request_id not in skip]
        spent = read_spent(run_dir)
        spent_usd = spent.usd if spent is not None else \
            (previous.spent_usd if previous is not None else 0.0)
        session = (spent.sessions if spent is not None else 0) + 1
        manifest = Manifest(run_dir, job, run_id, plan_size=len(plan), limits=limits,
                            plan=plan_summary(job), previous=previous)
        rates = job_rates(job, limits)
        # its journal is the driver's local copy when the output is a URL: on the driver's node
        here = {"scheduling_strategy": NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False)} if remote_run else {}
        ledger = ray.remote(LedgerActor).options(num_cpus=0, runtime_env=_runtime_env(),
                                                 **here).remote(
            str(run_dir), budget_usd, spent_usd, rates, session)
        spawned_handles: list[Any] = [ledger]

        def kill_all() -> None:  # however the run ends, no actor outlives it
            for handle in spawned_handles:
                with contextlib.suppress(Exception):
                    ray.kill(handle)

        locks.callback(kill_all)
        count = workers or max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
        per_worker = max(1, math.ceil((limits.concurrency or 1) / count))
        worker_limits = Limits(concurrency=per_worker).over(limits)
        # a chunk of about one worker's in-flight requests: two in its hands keep its pool
        # full, and the plan is spread evenly (a big last chunk would leave one worker alone)
        size = chunk_size or max(1, min(per_worker, math.ceil(len(todo) / (2 * count))))
        chunks: deque[list[int]] = deque(todo[k:k + size] for k in range(0, len(todo), size))
        spawned = 0

        async def spawn() -> tuple[str, Any]:
            nonlocal spawned
            name = f"s{session:03d}-w{spawned}"
            spawned += 1
            handle = ray.remote(WorkerActor).options(
                name=f"runner-{run_id}-{name}", num_cpus=0, runtime_env=_runtime_env(),
                scheduling_strategy="SPREAD", max_concurrency=10_000).remote(
                name, str(job.path), run_id, str(shard_dir(run_dir, name)), worker_limits,
                budget_usd, spent_usd, sorted(rates), ledger, refresh_prices, flush_rows,
                flush_s, remote_run.child(SHARDS, name).url if remote_run else None)
            spawned_handles.append(handle)
            await ledger.register.remote(name, handle)
            imported = await handle.where.remote()
            if imported != runner_file:
                raise ConfigError(f"--ray: the workers import runner from {imported}, not "
                                  f"{runner_file}: install the same runner on every node")
            try:
                await handle.start.remote()
            except ray.exceptions.RayTaskError as exc:  # a missing key, a bad endpoint
                raise _unwrap(exc) from None
            return name, handle

        live: dict[str, Any] = dict([await spawn() for _ in range(count)])
        manifest.write("running", shards="ray")
        if remote_run is not None:  # the run is listed there from now on
            await anyio.to_thread.run_sync(remote_run.push, run_dir, [RUN_JSON])
        lost: list[str] = []
        state = {"stopping": False}

        def undone(name: str, indices: list[int]) -> list[int]:
            """The indices a lost worker wrote no row for."""
            if remote_run is not None:
                remote_run.child(SHARDS, name).pull(shard_dir(run_dir, name))
            done: set[str] = set()
            for _, table in scan(shard_dir(run_dir, name), ["request_id"]):
                if table is not None:
                    done.update(table.column("request_id").to_pylist())
            return [i for i in indices if plan[i].request_id not in done]

        async def feed(name: str, handle: Any) -> None:
            while chunks and not state["stopping"] and name in live:
                chunk = chunks.popleft()
                try:
                    await handle.run_chunk.remote(chunk)
                except ray.exceptions.RayActorError:
                    chunks.appendleft(await anyio.to_thread.run_sync(undone, name, chunk))
                    if live.pop(name, None) is not None:
                        lost.append(name)
                        await ledger.lost.remote(name)
                    if not live:  # nobody left to send them: a new worker
                        new_name, new = await spawn()
                        live[new_name] = new
                    # to a worker whose feeders may have ended already (the queue looked empty)
                    other, handle = next(iter(live.items()))
                    for _ in range(CHUNKS_PER_WORKER):
                        tg.start_soon(feed, other, handle)
                    return
                except ray.exceptions.RayTaskError as exc:  # a full disk: one line
                    raise _unwrap(exc) from None

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    if state["stopping"]:
                        for handle in list(live.values()):
                            handle.cancel.remote()
                        continue
                    state["stopping"] = True
                    for handle in list(live.values()):
                        handle.stop.remote(grace_s)
                    if on_stopping is not None:
                        on_stopping(grace_s)

        async with anyio.create_task_group() as watcher:
            if handle_signals:
                watcher.start_soon(watch_signals)
            async with anyio.create_task_group() as tg:
                for name, handle in list(live.items()):
                    for _ in range(CHUNKS_PER_WORKER):
                        tg.start_soon(feed, name, handle)
            counts: dict[str, int] = {}
            stopped: dict[str, str] = {}
            local: list[dict[str, Any]] = []
            for name, handle in list(live.items()):
                try:
                    ended = await handle.finish.remote()
                except ray.exceptions.RayActorError:
                    await ledger.lost.remote(name)
                    lost.append(name)
                    continue
                stopped.update(ended["stopped"])
                local.append(ended["budget"])
            status = "interrupted" if state["stopping"] else \
                "failed" if "auth" in stopped.values() else "completed"
            figures = {**await ledger.close.remote(status == "completed"),
                       **_local_figures(local)}
            kill_all()
            if remote_run is not None:  # the workers' parts, here to be merged
                await anyio.to_thread.run_sync(remote_run.child(SHARDS).pull,
                                               run_dir / SHARDS)
            merged = await anyio.to_thread.run_sync(
                lambda: merge(run_dir, write_csv=job.write_csv, lock=False))
            counts = dict(merged.get("counts") or {})
            final = manifest.write(status, budget=figures, counts=counts,
                                   totals=merged.get("totals") or {}, stopped=stopped,
                                   shards="ray", workers=count, lost_workers=lost)
            if remote_run is not None:
                await anyio.to_thread.run_sync(publish_run, run_dir, remote_run)
            watcher.cancel_scope.cancel()
    where = remote_run.url if remote_run is not None else None
    rejected = key_rejected(job, stopped, counts.get(SKIPPED, 0), where or run_dir)
    if rejected is not None:  # as a local run: the one line, exit 2
        raise rejected
    return RunOutcome(run_dir, run_id, status, counts, final, url=where)


def _unwrap(exc: BaseException) -> BaseException:
    """The runner's own error inside a Ray task's (its message is the one line to show)."""
    from .errors import RunnerError

    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, RunnerError) else exc


def _local_figures(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """What the workers' own cost guards saw (overruns, unused worst cases), summed."""
    raised: dict[str, Any] = {}
    for one in figures:
        for model, factor in (one.get("raised_estimates") or {}).items():
            before = raised.get(model)
            raised[model] = factor if before is None or factor is None else max(before, factor)
    return {"reserved_unused_usd": round(sum(f.get("reserved_unused_usd") or 0.0
                                             for f in figures), 10),
            "refused_reservations": sum(f.get("refused_reservations") or 0 for f in figures),
            "cost_overruns": sum(f.get("cost_overruns") or 0 for f in figures),
            "raised_estimates": raised}
