"""The cost guard, without an event loop: reserve before, settle after, never overspend."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.budget import Budget


def test_reserve_settle_and_figures() -> None:
    budget = Budget(1.0)
    a = budget.reserve(0.6)
    assert a is not None and budget.reserve(0.5) is None      # 0.6 held + 0.5 > 1.0
    assert budget.could_fit(0.5)                               # ...but it will once a settles
    budget.settle(a, 0.2)
    b = budget.reserve(0.5)
    assert b is not None
    budget.settle(b, None)                                     # unknown cost: counts in full
    figures = budget.figures()
    assert figures["spent_usd"] == pytest.approx(0.7)
    assert figures["utilisation"] == pytest.approx(0.7)
    assert figures["reserved_unused_usd"] == pytest.approx(0.4)
    assert figures["refused_reservations"] == 1 and figures["cost_overruns"] == 0


def test_no_budget_counts_but_never_refuses() -> None:
    budget = Budget(None)
    for _ in range(100):
        reservation = budget.reserve(10.0)
        assert reservation is not None
        budget.settle(reservation, 1.0)
    assert budget.spent_usd == pytest.approx(100.0) and budget.figures()["utilisation"] is None


@given(budget_usd=st.floats(0.001, 10), ops=st.lists(
    st.tuples(st.floats(0, 2), st.floats(0, 1), st.booleans(), st.integers(0, 20)),
    min_size=1, max_size=200))
def test_spent_never_exceeds_budget(budget_usd: float,
                                    ops: list[tuple[float, float, bool, int]]) -> None:
    """Any interleaving of reservations and settlements, costs at most their worst case."""
    budget = Budget(budget_usd)
    in_flight: list[tuple[object, float]] = []
    for worst, fraction, known, settle_index in ops:
        reservation = budget.reserve(worst)
        if reservation is not None:
            in_flight.append((reservation, worst))
        if in_flight and settle_index % 3 == 0:  # settle one in flight, in any order
            held, held_worst = in_flight.pop(settle_index % len(in_flight))
            budget.settle(held, held_worst * fraction if known else None)  # type: ignore[arg-type]
        assert budget.spent_usd + budget.reserved_usd <= budget_usd + 1e-9
    for held, held_worst in in_flight:
        budget.settle(held, held_worst)  # type: ignore[arg-type]
    assert budget.spent_usd <= budget_usd + 1e-9
