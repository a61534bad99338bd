"""The durable record of a run's provider batches: `batches.jsonl` in the run directory, one
fsynced line per event (`intent` before a batch is submitted, `submitted` with its id, `done`
once its rows are on disk), read back by a resume and by `runner batches cancel`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..rundir import BATCHES, disk_error


@dataclass(slots=True)
class Entry:
    """One batch as `batches.jsonl` tells it."""

    key: str
    provider: str
    request_ids: list[str]
    usd: float
    serial: int
    session: int
    at: float                       # when it was submitted (unix)
    batch_id: str | None = None
    done: bool = False


class BatchStore:
    """`batches.jsonl` in the run directory: lines appended and fsynced one by one."""

    __slots__ = ("path",)

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / BATCHES

    def read(self) -> dict[str, Entry]:
        """Every batch of the run by key (a line cut by a crash is skipped)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise disk_error(exc, self.path) from None
        entries: dict[str, Entry] = {}
        for line in data.split(b"\n")[:-1]:
            try:
                item = orjson.loads(line)
                key = item["key"]
                if item["event"] == "intent":
                    entries[key] = Entry(key, str(item["provider"]),
                                         [str(i) for i in item["request_ids"]],
                                         float(item["usd"]), int(item["serial"]),
                                         int(item["session"]), float(item["at"]))
                elif item["event"] == "submitted" and key in entries:
                    entries[key].batch_id = str(item["batch_id"])
                elif item["event"] == "done" and key in entries:
                    entries[key].done = True
            except (orjson.JSONDecodeError, LookupError, TypeError, ValueError):
                continue
        return entries

    def append(self, **item: Any) -> None:
        """Write one line and fsync it before returning."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, orjson.dumps(item) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise disk_error(exc, self.path) from None



def batch_summary(run_dir: Path) -> list[dict[str, Any]]:
    """The run's batches for run.json: id, provider, requests, and whether they ended."""
    return [{"batch_id": e.batch_id, "provider": e.provider, "requests": len(e.request_ids),
             "done": e.done} for e in BatchStore(run_dir).read().values()]


def open_batch_providers(run_dir: Path) -> set[str]:
    """The providers of the run's batches without a `done` line: a resume follows them in batch
    mode even without `--batch` (else their requests would be sent again, and paid twice)."""
    return {e.provider for e in BatchStore(run_dir).read().values() if not e.done}
