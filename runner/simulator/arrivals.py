"""The request log: one `Arrival` per chat completion request in, a `RecordLog` of them (and an
optional JSON-lines file, flushed per line) out.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.simulator.records import RecordLog


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


ArrivalLog = RecordLog[Arrival]
