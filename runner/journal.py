"""The spend journal: each attempt's reservation and settlement in, a durable record of what a
run may have spent out (`spend.journal` in the run directory, read back by `--resume`).

A reservation is on disk (written and fsynced) before its request is sent; its settlement follows
when the attempt ends. A resume counts every settled cost plus every reservation without a
settlement at its reserved amount, so a process killed at any moment (requests in flight, rows
not yet flushed) never lets the next one spend past the budget.

Lines (text, one per event):

    r <session> <serial> <usd>     reserved before sending
    s <session> <serial> <usd>     settled: what the budget counted for it
    c <usd>                        carried: spent before (runs written before the journal, or a
                                   journal compacted when its run ended)
    f <factor> <model>             an overrun raised the model's estimates by this factor

Reservations are written by group commit: they queue up, one writer task appends the queue and
fsyncs once, and every attempt in that batch is released together; settlements wait in memory
for the next write (lost ones count at their reservation: on the side of spent).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from .budget import Reservation
from .errors import ResultsError
from .rundir import JOURNAL, disk_error, write_atomic

# Without anyone waiting for durability, settle/reserve lines are still written in batches of
# this many, so memory stays flat on long runs.
_BATCH_LINES = 512


@dataclass(frozen=True, slots=True)
class Spent:
    """What a journal says a run has spent so far."""

    usd: float
    sessions: int       # how many processes wrote to it (the next one is sessions + 1)
    unsettled: int      # reservations without a settlement (counted at their reserved amount)
    raised: dict[str, float] = field(default_factory=dict)  # model -> its highest raise factor


def read_spent(run_dir: Path) -> Spent | None:
    """The spend recorded in `run_dir`'s journal; None when the run has no journal."""
    path = run_dir / JOURNAL
    try:
        with path.open("rb") as lines:
            return _fold(lines)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read the spend journal ({exc.strerror})") from None


def _fold(lines: Iterable[bytes]) -> Spent:
    """Streamed, line by line: memory grows with the reservations still open, not with the
    run (a settlement follows its reservation in the file: one writer appends both in order).
    A line without its newline was cut by a crash (or a full disk): skipped, as a reservation
    that never reached the disk whole was never sent, and a lost settlement leaves its
    reservation counted in full."""
    spent = 0.0
    open_: dict[tuple[int, int], float] = {}   # reservations not settled (yet)
    sessions = 0
    raised: dict[str, float] = {}
    for line in lines:
        if not line.endswith(b"\n"):
            continue
        fields = line.split()
        try:
            if len(fields) >= 3 and fields[0] == b"f":
                model = line[:-1].split(b" ", 2)[2].decode()
                raised[model] = max(raised.get(model, 1.0), float(fields[1]))
            elif len(fields) == 2 and fields[0] == b"c":
                spent += _usd(fields[1])
            elif len(fields) == 4 and fields[0] in (b"r", b"s"):
                key = (int(fields[1]), int(fields[2]))
                usd = _usd(fields[3])
                sessions = max(sessions, key[0])
                if fields[0] == b"r":
                    open_[key] = usd
                elif open_.pop(key, None) is not None:  # (one without its reservation: none)
                    spent += usd
        except (ValueError, IndexError):   # UnicodeDecodeError included; an odd separator
            continue
    return Spent(spent + sum(open_.values()), sessions, len(open_), raised)


def _usd(text: bytes) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


class Journal:
    """Appends a run's spend events; `write_forever` must run in the run's task group while
    attempts reserve (it is the single writer)."""

    __slots__ = ("path", "session", "_fd", "_lines", "_batch", "_wake", "_error")

    def __init__(self, run_dir: Path, *, session: int = 1, carried_usd: float = 0.0) -> None:
        self.path = run_dir / JOURNAL
        self.session = session
        self._lines: list[str] = []
        self._batch: anyio.Event | None = None   # set when the batch gathering now is durable
        self._wake = anyio.Event()
        self._error: ResultsError | None = None
        try:
            new = not self.path.exists()
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(self._fd).st_size
            whole = _whole_lines(self._fd, size)
            if whole != size:  # a line cut by a crash: drop it, or our first would complete it
                os.ftruncate(self._fd, whole)
            if new and carried_usd > 0:
                os.write(self._fd, f"c {carried_usd!r}\n".encode())
            os.fsync(self._fd)
        except OSError as exc:
            raise disk_error(exc, self.path) from None

    async def reserve(self, reservation: Reservation, *, durable: bool) -> None:
        """Record `reservation`; with `durable`, return once it is on disk (group commit)."""
        if self._error is not None:
            raise self._error
        self._lines.append(f"r {self.session} {reservation.serial} {reservation.usd!r}\n")
        if not durable:
            if len(self._lines) >= _BATCH_LINES:
                self._wake.set()
            return
        batch = self._batch
        if batch is None:
            batch = self._batch = anyio.Event()
            self._wake.set()
        await batch.wait()
        if self._error is not None:
            raise self._error

    def settle(self, reservation: Reservation, counted_usd: float) -> None:
        """Record what the budget counted for `reservation` (written with the next batch)."""
        if not math.isfinite(counted_usd) or counted_usd < 0:
            return  # no settlement: the reservation stays counted in full
        session = reservation.session or self.session  # an adopted one keeps its own
        self._lines.append(f"s {session} {reservation.serial} {counted_usd!r}\n")
        if len(self._lines) >= _BATCH_LINES:
            self._wake.set()

    def raise_estimate(self, model: str, factor: float) -> None:
        """Record that `model`'s estimates are now raised by `factor` (with the next batch: an
        attempt reserving at the new estimate waits for that batch, so the line is on disk
        before that attempt is sent)."""
        name = model.replace("\n", " ").replace("\r", " ")
        self._lines.append(f"f {factor!r} {name}\n")

    async def write_forever(self) -> None:
        """The single writer: each wake-up appends what queued up, fsyncs it when an attempt
        waits on it, and releases the waiting attempts together. Cancel it to stop."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            lines, self._lines = self._lines, []
            batch, self._batch = self._batch, None
            with anyio.CancelScope(shield=True):  # the waiters must hear how their batch went
                try:
                    await anyio.to_thread.run_sync(self._append, lines, batch is not None)
                except ResultsError as exc:
                    self._error = exc
                if batch is not None:
                    batch.set()

    def _append(self, lines: list[str], sync: bool) -> None:
        size = -1
        try:
            if lines:
                size = os.fstat(self._fd).st_size
                data = "".join(lines).encode()
                while data:
                    data = data[os.write(self._fd, data):]
            if sync:
                os.fsync(self._fd)
        except OSError as exc:
            if size >= 0:  # a batch written in part (a full disk): the file keeps whole lines
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, size)
            raise disk_error(exc, self.path) from None

    def close(self) -> None:
        """Write and fsync what is left, then close."""
        lines, self._lines = self._lines, []
        try:
            self._append(lines, True)
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def compact(self) -> None:
        """Rewrite a closed journal as one carried total (the run ended), so a long run's
        journal does not stay large. We hold the run's lock: no settlement of an older
        session can still come."""
        spent = read_spent(self.path.parent)
        if spent is not None:
            write_atomic(self.path, f"c {spent.usd!r}\n".encode())


def _whole_lines(fd: int, size: int) -> int:
    """The length of the file up to and including its last newline."""
    tail = os.pread(fd, min(size, 4096), max(0, size - 4096)) if size else b""
    if not tail or tail.endswith(b"\n"):
        return size
    cut = tail.rfind(b"\n")
    if cut >= 0:
        return size - len(tail) + cut + 1
    return 0 if size <= 4096 else _whole_lines(fd, size - 4096)
