"""A worker thread at a lower CPU priority, for bulk work (writing part files) that must not take
the client's core away from the event loop.

On one busy core, a part flush (rows to JSON to Arrow to Parquet, ~20 ms of CPU for 500 rows) in
an ordinary thread competes with the event loop as an equal: an open-loop load test at 500 req/s
then sent up to 30-40 ms late around every flush (`benchmarks/bench_schedule.py`; without
flushes the send lag p99 was 2 ms). At a higher nice value the OS runs the loop first whenever
it is ready, and the writer takes the time the loop leaves. anyio's worker threads are shared
(the spend journal's fsyncs, which a send waits for, run on them), so they must keep their
priority: hence a thread of our own. No library sets a thread's priority; `os.setpriority` on a
thread id does, on Linux only (elsewhere a nice value is the whole process's, so elsewhere this
is an ordinary thread).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

# nice +10: a CFS weight ~1/10 of the loop's. It yields the core at once, gets every idle moment,
# and on a core the loop keeps 100% busy (a closed loop at full speed) still gets ~10%: enough to
# write ~2,500 rows a second, so rows never pile up in memory. (At +19 a load test's send lag
# p99 was ~1 ms lower, but such a writer gets ~1.5% and falls behind a full-speed loop.)
NICE = 10


def _lower_priority() -> None:
    if sys.platform == "linux":
        with contextlib.suppress(OSError):  # (a container may forbid it: then it is ordinary)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE))


class Background:
    """One lower-priority thread, started on first use; jobs run one at a time, in order."""

    __slots__ = ("_name", "_pool", "_lock")

    def __init__(self, name: str) -> None:
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix=self._name,
                                                initializer=_lower_priority)
            return self._pool.submit(fn, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the thread, awaited without blocking the event loop (an anyio worker
        thread waits for the result: waiting costs no CPU, so its priority does not matter)."""
        return await anyio.to_thread.run_sync(self.submit(fn, *args).result)

    def close(self) -> None:
        """Wait for the jobs submitted, then let the thread go (a later submit starts another)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
