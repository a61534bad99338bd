"""The request log: one `Arrival` per chat completion request in, a thread-safe list (and an
optional JSON-lines file, flushed per line) out.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson


@dataclass(frozen=True, slots=True)
class Arrival:
    """One chat completion request as the simulator saw it, recorded before any fault."""

    t_monotonic: float
    t_unix: float
    model: str
    stream: bool
    status: int  # the status the simulator decided to send; 0 when it sends no response at all
    fault: str | None
    request_id: str | None  # the "X-Runner-Request-Id" request header
    authorization_ok: bool


class ArrivalLog:
    """Arrivals appended from the server thread, read from any thread."""

    __slots__ = ("_file", "_items", "_lock")

    def __init__(self, path: Path | None = None) -> None:
        self._items: list[Arrival] = []
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = path.open("ab") if path is not None else None

    def append(self, arrival: Arrival) -> None:
        """Record one arrival (and write its JSON line, if there is a file)."""
        with self._lock:
            self._items.append(arrival)
            if self._file is not None:
                self._file.write(orjson.dumps(arrival) + b"\n")
                self._file.flush()

    def snapshot(self) -> list[Arrival]:
        """A copy of every arrival so far."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        """Forget the arrivals kept in memory (the file keeps its lines)."""
        with self._lock:
            self._items.clear()

    def close(self) -> None:
        """Close the file, if any; later arrivals are kept in memory only."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
