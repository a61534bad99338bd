"""A thread-safe record log: frozen dataclass records in, a list kept in memory and an optional
JSON-lines file (one line per record, flushed at once, so it survives the reader being killed) out.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import IO, Generic, TypeVar

import orjson

T = TypeVar("T")


class RecordLog(Generic[T]):
    """Records appended from the server thread, read from any thread."""

    __slots__ = ("_file", "_items", "_lock")

    def __init__(self, path: Path | None = None) -> None:
        self._items: list[T] = []
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = path.open("ab") if path is not None else None

    def append(self, record: T) -> None:
        """Keep one record (and write its JSON line, if there is a file)."""
        with self._lock:
            self._items.append(record)
            if self._file is not None:
                self._file.write(orjson.dumps(record) + b"\n")
                self._file.flush()

    def snapshot(self) -> list[T]:
        """A copy of every record so far."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        """Forget the records kept in memory (the file keeps its lines)."""
        with self._lock:
            self._items.clear()

    def close(self) -> None:
        """Close the file, if any; later records are kept in memory only."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
