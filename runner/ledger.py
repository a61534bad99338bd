"""The ledger of a job run by many processes: workers' requests for money and rate permits, and
what they spent, in; leases out (pure: no I/O, no event loop; `ray_backend` runs it in one actor
and journals it).

Coordinating every request would cap a cluster at what one actor answers (~240 requests/s
measured); so the ledger grants in batches. Money: a worker holds a lease (`held`), spends it
locally through a `LeasedBudget` (the same cost guard as a local run) and reports what it spent
when it asks for more or gives the rest back. The invariant `spent + sum(held) <= budget` holds
at the ledger (an overrun aside, as in a local run), and a worker lost with a lease has that
lease counted as spent. Rates: one leaky bucket per scope and kind (requests or tokens per
minute), of one second's worth, from which permits are granted in batches. Pauses: a 429 seen
by one worker pauses the provider for all (the ledger also withholds that provider's permits).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from .budget import EPSILON_USD, Budget

# a worker's lease is sized to what it spent (or took) in about this long
LEASE_HORIZON_S = 0.5


class Ledger:
    """The job's budget, rates and pauses, for every worker."""

    __slots__ = ("budget_usd", "spent_usd", "held", "waiting", "lost_usd", "grants",
                 "_rate", "_level", "_stamp", "_clock", "pause_until")

    def __init__(self, budget_usd: float | None, spent_usd: float = 0.0,
                 rates: Mapping[str, float] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd              # a resumed run starts with what it spent
        self.held: dict[str, float] = {}        # worker -> its outstanding lease (USD)
        self.waiting: set[str] = set()          # workers that asked for more than was left
        self.lost_usd = 0.0                     # leases of lost workers, counted as spent
        self.grants = 0
        self._clock = clock
        # key ("rpm:job", "tpm:provider:x", "rpm:model:y") -> per second, bucket level, time
        self._rate = {key: per_minute / 60.0 for key, per_minute in (rates or {}).items()}
        self._level = {key: self._capacity(key) for key in self._rate}
        self._stamp = {key: clock() for key in self._rate}
        self.pause_until: dict[str, float] = {}  # provider -> no permits before this

    # -- money ----------------------------------------------------------------------------------

    @property
    def outstanding_usd(self) -> float:
        return sum(self.held.values())

    def settle(self, worker: str, spent_usd: float, release_usd: float = 0.0) -> None:
        """Count what `worker` spent of its lease since it last said, and take back
        `release_usd` it does not need."""
        held = self.held.get(worker, 0.0)
        self.spent_usd += max(0.0, spent_usd)
        held = max(0.0, held - max(0.0, spent_usd))
        self.held[worker] = max(0.0, held - max(0.0, release_usd))

    def grant(self, worker: str, spent_usd: float, release_usd: float,
              want_usd: float) -> float:
        """Settle, then lease up to `want_usd` more to `worker`; returns what was granted (all
        of it without a budget)."""
        self.settle(worker, spent_usd, release_usd)
        self.grants += 1
        if self.budget_usd is None:
            self.held[worker] = self.held.get(worker, 0.0) + want_usd
            return want_usd
        room = self.budget_usd - self.spent_usd - self.outstanding_usd
        granted = max(0.0, min(want_usd, room))
        self.held[worker] = self.held.get(worker, 0.0) + granted
        if granted + EPSILON_USD < want_usd:
            self.waiting.add(worker)
        else:
            self.waiting.discard(worker)
        return granted

    def lost(self, worker: str) -> float:
        """A worker is gone: its lease may have been spent, so it counts as spent."""
        held = self.held.pop(worker, 0.0)
        self.spent_usd += held
        self.lost_usd += held
        self.waiting.discard(worker)
        return held

    def could_fit(self, usd: float) -> bool:
        """Whether `usd` could still be spent once every lease settled (spending never goes
        down: a no is for good)."""
        return self.budget_usd is None or self.spent_usd + usd <= self.budget_usd + EPSILON_USD

    def figures(self) -> dict[str, object]:
        """The job's budget figures for run.json (as `Budget.figures` names them)."""
        budget = self.budget_usd
        return {
            "budget_usd": budget,
            "spent_usd": round(self.spent_usd, 10),
            "reserved_in_flight_usd": round(self.outstanding_usd, 10),
            "remaining_usd": None if budget is None
            else max(0.0, budget - self.spent_usd - self.outstanding_usd),
            "utilisation": self.spent_usd / budget if budget else None,
            "exceeded": budget is not None and self.spent_usd > budget + EPSILON_USD,
            "overspent_usd": round(max(0.0, self.spent_usd - budget), 10)
            if budget is not None else 0.0,
            "leases_granted": self.grants,
            "lost_leases_usd": round(self.lost_usd, 10),
        }

    # -- rates and pauses -----------------------------------------------------------------------

    def _capacity(self, key: str) -> float:
        return max(1.0, self._rate[key])  # one second's worth, at least one request

    def permits(self, wants: Mapping[str, float]) -> tuple[dict[str, float], float]:
        """Grant up to `wants[key]` permits of each key from its bucket (none for a paused
        provider's keys); returns the grants and how long until more would be there."""
        now = self._clock()
        granted: dict[str, float] = {}
        wait_s = 0.0
        for key, want in wants.items():
            if key not in self._rate:
                granted[key] = want
                continue
            paused = self.pause_until.get(_provider_of(key) or "", 0.0) - now
            if paused > 0:
                granted[key] = 0.0
                wait_s = max(wait_s, paused)
                continue
            level = min(self._capacity(key),
                        self._level[key] + (now - self._stamp[key]) * self._rate[key])
            self._stamp[key] = now
            give = min(want, level)
            self._level[key] = level - give
            granted[key] = give
            if give < want:
                wait_s = max(wait_s, min(want - give, self._capacity(key)) / self._rate[key])
        return granted, wait_s

    def give_back(self, unused: Mapping[str, float]) -> None:
        """Permits a worker will not use (it ended): back in their buckets."""
        for key, amount in unused.items():
            if key in self._rate and amount > 0:
                self._level[key] = min(self._capacity(key), self._level[key] + amount)

    def pause(self, provider: str, seconds: float) -> None:
        self.pause_until[provider] = max(self.pause_until.get(provider, 0.0),
                                         self._clock() + seconds)


def _provider_of(key: str) -> str | None:
    kind, _, rest = key.partition(":")
    scope, _, name = rest.partition(":")
    return name if scope == "provider" else None


def rate_keys(model_provider: str, model_label: str) -> tuple[str, str, str]:
    """The scopes a request to a model passes: the job, its provider, the model."""
    return "job", f"provider:{model_provider}", f"model:{model_label}"


class LeasedBudget(Budget):
    """A worker's cost guard: the local `Budget`, reserving inside the leases the ledger granted
    it (`granted_usd`) instead of the whole budget; `on_short` is called when a reservation does
    not fit the lease, so the worker's keeper asks the ledger for more."""

    __slots__ = ("granted_usd", "reported_usd", "known_spent_usd", "wanted_usd", "on_short")

    def __init__(self, budget_usd: float | None, known_spent_usd: float = 0.0) -> None:
        super().__init__(budget_usd)
        self.granted_usd = 0.0          # leased to this worker, minus what it gave back
        self.reported_usd = 0.0         # of spent_usd, what the ledger knows
        self.known_spent_usd = known_spent_usd  # the whole job's spending, as last heard
        self.wanted_usd = 0.0           # the largest reservation that did not fit the lease
        self.on_short: Callable[[], None] | None = None

    def _has_room(self, worst_case_usd: float) -> bool:
        if self.budget_usd is None or \
                self.spent_usd + self.reserved_usd + worst_case_usd <= \
                self.granted_usd + EPSILON_USD:
            return True
        self.wanted_usd = max(self.wanted_usd, worst_case_usd)
        if self.on_short is not None:
            self.on_short()
        return False

    def could_fit(self, worst_case_usd: float) -> bool:
        return self.budget_usd is None or (
            self.known_spent_usd + self.spent_usd - self.reported_usd + worst_case_usd
            <= self.budget_usd + EPSILON_USD)

    @property
    def unused_usd(self) -> float:
        return max(0.0, self.granted_usd - self.spent_usd - self.reserved_usd)

    def report(self) -> float:
        """What was spent since the ledger last heard (and it hears it now)."""
        delta = self.spent_usd - self.reported_usd
        self.reported_usd = self.spent_usd
        return delta
