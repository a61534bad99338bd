"""The cost guard: worst-case estimates in, yes/no to each attempt out (pure; no I/O, no loop).

Every attempt reserves its worst-case cost before it is sent and settles to its actual cost when
it ends; an attempt whose cost is unknown (or not a usable number: negative, NaN, infinite, not a
number at all) keeps its whole reservation as spent, so what a server reports can never lower
the spending. A reservation that does not fit in what is left is refused, so the money spent
cannot exceed the budget however many attempts are in flight, as long as no bill exceeds its
worst case. When one does (an overrun), that model's later estimates are raised by the observed
ratio, and `figures()` says so and whether the budget was exceeded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

EPSILON_USD = 1e-12  # float noise, not money


@dataclass(frozen=True, slots=True)
class Reservation:
    usd: float
    serial: int = 0     # this run's number for it: the spend journal pairs reserve and settle
    session: int = 0    # the process that made it, when not this one (`Budget.adopt`)


def known_cost(value: object) -> float | None:
    """A reported cost we can count, or None (unknown) when it is not a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    cost = float(value)
    return cost if math.isfinite(cost) and cost >= 0 else None


class Budget:
    """A run's budget in USD (None: unlimited, but still counted)."""

    __slots__ = ("budget_usd", "spent_usd", "reserved_usd", "reserved_total_usd", "settled_usd",
                 "refused", "overruns", "_serial", "_factor", "_floor_usd")

    def __init__(self, budget_usd: float | None, spent_usd: float = 0.0,
                 raised_estimates: Mapping[str, float | None] | None = None) -> None:
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd  # a resumed run starts with what it spent before
        self.reserved_usd = 0.0     # held by attempts in flight
        self.reserved_total_usd = 0.0  # every reservation ever made by this process
        self.settled_usd = 0.0      # what the settled ones really cost
        self.refused = 0
        self.overruns = 0           # attempts whose actual cost exceeded their estimate
        self._serial = 0
        # model -> worst cases are multiplied by this (a resumed run passes the factors its
        # run.json kept as `raised_estimates`, so it does not pay for the lesson twice)
        # an infinite factor (a bill near 1e308; "inf" in run.json) stays: that model never
        # fits again
        self._factor: dict[str, float] = {
            model: number for model, factor in (raised_estimates or {}).items()
            if (number := parse_factor(factor)) is not None and number > 1}
        self._floor_usd: dict[str, float] = {}  # model -> at least this (a model priced free)

    def reserve(self, worst_case_usd: float) -> Reservation | None:
        """Hold `worst_case_usd` for one attempt, or None when it would not fit."""
        if not self._has_room(worst_case_usd):
            self.refused += 1
            return None
        self.reserved_usd += worst_case_usd
        self.reserved_total_usd += worst_case_usd
        self._serial += 1
        return Reservation(worst_case_usd, self._serial)

    def adopt(self, usd: float, serial: int, session: int) -> Reservation:
        """Take over an unsettled reservation an earlier process of the run made (a batch it
        submitted): counted as spent when this one started, it is held as in flight again, so
        settling it counts what the batch really cost."""
        self.spent_usd = max(0.0, self.spent_usd - usd)
        self.reserved_usd += usd
        self.reserved_total_usd += usd
        return Reservation(usd, serial, session)

    def _has_room(self, worst_case_usd: float) -> bool:
        """Whether a reservation fits now (a lease-backed budget asks its lease: `ledger`)."""
        return self.budget_usd is None or \
            self.spent_usd + self.reserved_usd + worst_case_usd <= self.budget_usd

    def could_fit(self, worst_case_usd: float) -> bool:
        """Whether the reservation would fit once every in-flight attempt has settled.

        Spending never goes down, so a reservation that could not fit now never will."""
        return self.budget_usd is None or self.spent_usd + worst_case_usd <= self.budget_usd

    def settle(self, reservation: Reservation, actual_usd: float | None) -> None:
        """Release a reservation and count what the attempt really cost."""
        self.reserved_usd = max(0.0, self.reserved_usd - reservation.usd)
        actual = known_cost(actual_usd)
        if actual is None:
            actual = reservation.usd
        self.spent_usd += actual
        self.settled_usd += actual

    def estimate(self, model: str, worst_case_usd: float) -> float:
        """`worst_case_usd` of a request to `model`, raised by what its overruns showed."""
        raised = worst_case_usd * self._factor.get(model, 1.0)
        return max(raised, self._floor_usd.get(model, 0.0))

    def factor(self, model: str) -> float:
        """What `model`'s worst cases are multiplied by (1: no overrun seen)."""
        return self._factor.get(model, 1.0)

    def learn(self, model: str, worst_case_usd: float, reserved_usd: float,
              actual_usd: float | None) -> bool:
        """Count an overrun (a bill above what was reserved) and raise the model's estimates by
        the ratio it showed to `worst_case_usd` (the uncorrected estimate); True if it was one."""
        actual = known_cost(actual_usd)
        if actual is None or actual <= reserved_usd + EPSILON_USD:
            return False
        self.overruns += 1
        if worst_case_usd > 0:
            ratio = actual / worst_case_usd
            self._factor[model] = max(self._factor.get(model, 1.0), ratio)
        else:  # priced free but billed: no ratio to learn, but never expect less again
            self._floor_usd[model] = max(self._floor_usd.get(model, 0.0), actual)
        return True

    @property
    def remaining_usd(self) -> float | None:
        if self.budget_usd is None:
            return None
        return max(0.0, self.budget_usd - self.spent_usd - self.reserved_usd)

    @property
    def exceeded(self) -> bool:
        """Whether more was spent than the budget (only an overrun can do that)."""
        return self.budget_usd is not None and self.spent_usd > self.budget_usd + EPSILON_USD

    def figures(self) -> dict[str, object]:
        """Budget, spent and utilisation for the manifest and the summary."""
        raised: dict[str, float | None] = {m: f for m, f in self._factor.items()}
        raised.update({m: None for m in self._floor_usd if m not in raised})
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
            # model -> the factor its worst cases were raised by (None: it was priced free)
            "raised_estimates": raised,
            "exceeded": self.exceeded,
            "overspent_usd": round(max(0.0, self.spent_usd - self.budget_usd), 10)
            if self.budget_usd is not None else 0.0,
        }


def parse_factor(value: object) -> float | None:
    """A raise factor as run.json keeps it (a number, or "inf"), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return None if number != number else number


def covers(budget_usd: float | None, worst_usd: float | None) -> bool | None:
    """Whether a budget covers a worst case (None: no budget, or the worst case is unknown)."""
    if budget_usd is None or worst_usd is None:
        return None
    return worst_usd <= budget_usd
