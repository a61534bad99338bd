"""The cost guard: worst-case estimates in, yes/no to each attempt out (pure; no I/O, no loop).

Every attempt reserves its worst-case cost before it is sent and settles to its actual cost when
it ends; an attempt whose cost is unknown keeps its whole reservation as spent. A reservation that
does not fit in what is left is refused, so the money actually spent can never exceed the budget,
however many attempts are in flight.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reservation:
    usd: float
    serial: int = 0     # this run's number for it: the spend journal pairs reserve and settle


class Budget:
    """A run's budget in USD (None: unlimited, but still counted)."""

    __slots__ = ("budget_usd", "spent_usd", "reserved_usd", "reserved_total_usd", "settled_usd",
                 "refused", "overruns", "_serial")

    def __init__(self, budget_usd: float | None, spent_usd: float = 0.0) -> None:
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd  # a resumed run starts with what it spent before
        self.reserved_usd = 0.0     # held by attempts in flight
        self.reserved_total_usd = 0.0  # every reservation ever made by this process
        self.settled_usd = 0.0      # what the settled ones really cost
        self.refused = 0
        self.overruns = 0           # attempts whose actual cost exceeded their reservation
        self._serial = 0

    def reserve(self, worst_case_usd: float) -> Reservation | None:
        """Hold `worst_case_usd` for one attempt, or None when it would not fit."""
        if self.budget_usd is not None and \
                self.spent_usd + self.reserved_usd + worst_case_usd > self.budget_usd:
            self.refused += 1
            return None
        self.reserved_usd += worst_case_usd
        self.reserved_total_usd += worst_case_usd
        self._serial += 1
        return Reservation(worst_case_usd, self._serial)

    def could_fit(self, worst_case_usd: float) -> bool:
        """Whether the reservation would fit once every in-flight attempt has settled."""
        return self.budget_usd is None or self.spent_usd + worst_case_usd <= self.budget_usd

    def settle(self, reservation: Reservation, actual_usd: float | None) -> None:
        """Release a reservation and count what the attempt really cost."""
        self.reserved_usd = max(0.0, self.reserved_usd - reservation.usd)
        if actual_usd is None:
            actual_usd = reservation.usd
        elif actual_usd > reservation.usd + 1e-12:
            self.overruns += 1
        self.spent_usd += actual_usd
        self.settled_usd += actual_usd

    @property
    def remaining_usd(self) -> float | None:
        if self.budget_usd is None:
            return None
        return max(0.0, self.budget_usd - self.spent_usd - self.reserved_usd)

    def figures(self) -> dict[str, float | int | None]:
        """Budget, spent and utilisation for the manifest and the summary."""
        return {
            "budget_usd": self.budget_usd,
            "spent_usd": round(self.spent_usd, 10),
            "reserved_in_flight_usd": round(self.reserved_usd, 10),
            # how much more the worst-case estimates held than the requests cost
            "reserved_unused_usd": round(max(0.0, self.reserved_total_usd - self.settled_usd
                                             - self.reserved_usd), 10),
            "remaining_usd": self.remaining_usd,
            "utilisation": (self.spent_usd / self.budget_usd) if self.budget_usd else None,
            "refused_reservations": self.refused,
            "cost_overruns": self.overruns,
        }
