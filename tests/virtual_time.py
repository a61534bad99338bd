"""An asyncio event loop on a virtual clock: sleeps take no real time.

When the loop has nothing ready it would block in `select(timeout)`; here `select` returns at
once and moves the clock forward by `timeout` (by a microsecond when the loop is busy). Only for
tests without real I/O waits.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any


class _Selector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        # every loop iteration takes a microsecond, as real ones do: code that re-checks the
        # clock in a tight loop (float rounding in a limiter) still sees time move
        self.now += timeout if not ready and timeout else 1e-6
        return ready  # type: ignore[no-any-return]


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _Selector()
        super().__init__(selector=self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_virtual(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
