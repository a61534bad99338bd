"""The ledger of a scaled-out run (pure): leases never let spent + outstanding pass the budget, a
lost worker's lease counts as spent, rate permits come from one bucket, a pause withholds them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from runner.ledger import LeasedBudget, Ledger


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


_OPS = st.lists(st.tuples(st.sampled_from(["grant", "settle", "lost"]),
                          st.sampled_from(["a", "b", "c"]),
                          st.floats(0, 0.5), st.floats(0, 0.5), st.floats(0, 1)),
                max_size=60)


@given(_OPS)
def test_spent_plus_leases_never_pass_the_budget(ops: list[tuple[str, str, float, float,
                                                                 float]]) -> None:
    ledger = Ledger(1.0)
    for op, worker, spent_frac, release_frac, want in ops:
        held = ledger.held.get(worker, 0.0)
        # a worker spends at most what it holds (an overrun is the budget's own case)
        spent, release = held * spent_frac, held * (1 - spent_frac) * release_frac
        if op == "grant":
            ledger.grant(worker, spent, release, want)
        elif op == "settle":
            ledger.settle(worker, spent, release)
        else:
            ledger.lost(worker)
        assert ledger.spent_usd + ledger.outstanding_usd <= 1.0 + 1e-9


def test_a_lost_workers_lease_counts_as_spent() -> None:
    ledger = Ledger(1.0)
    assert ledger.grant("a", 0.0, 0.0, 0.6) == 0.6
    assert ledger.grant("b", 0.0, 0.0, 0.6) == 0.4   # only what is left
    assert ledger.waiting == {"b"}
    ledger.lost("a")
    assert ledger.spent_usd == 0.6 and ledger.figures()["lost_leases_usd"] == 0.6
    assert ledger.grant("b", 0.1, 0.3, 1.0) == 0.3   # b gave back 0.3, spent 0.1: 0.3 free
    assert ledger.spent_usd + ledger.outstanding_usd == 1.0
    assert not ledger.could_fit(0.31)


def test_permits_come_from_one_bucket_and_a_pause_withholds_them() -> None:
    clock = FakeClock()
    ledger = Ledger(None, rates={"rpm:job": 600, "rpm:provider:p": 60}, clock=clock)
    granted, wait_s = ledger.permits({"rpm:job": 64})
    assert granted == {"rpm:job": 10} and wait_s > 0   # one second's worth: 10
    assert ledger.permits({"rpm:job": 5})[0] == {"rpm:job": 0}
    clock.now = 0.5
    assert ledger.permits({"rpm:job": 64})[0] == {"rpm:job": 5}
    ledger.pause("p", 2.0)
    granted, wait_s = ledger.permits({"rpm:provider:p": 1, "rpm:job": 1, "tpm:none": 7})
    assert granted["rpm:provider:p"] == 0 and wait_s == 2.0
    assert granted["tpm:none"] == 7   # no such rate: nothing to hold back
    clock.now = 3.0
    assert ledger.permits({"rpm:provider:p": 1})[0] == {"rpm:provider:p": 1}


def test_leased_budget_reserves_inside_its_lease_and_asks_for_more() -> None:
    shorts: list[float] = []
    budget = LeasedBudget(1.0, known_spent_usd=0.0)
    budget.on_short = lambda: shorts.append(budget.wanted_usd)
    assert budget.reserve(0.1) is None and shorts == [0.1]   # no lease yet
    budget.granted_usd = 0.25
    first = budget.reserve(0.2)
    assert first is not None and budget.reserve(0.1) is None
    budget.settle(first, 0.05)
    assert budget.unused_usd == 0.2 and budget.report() == 0.05 and budget.report() == 0.0
    budget.known_spent_usd = 0.95   # the others spent the rest
    assert not budget.could_fit(0.1) and budget.could_fit(0.05)
