"""The spend journal: what a resume counts as spent, group commit, lines cut by a crash."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from runner.budget import Reservation
from runner.journal import Journal, read_spent
from runner.resume import Previous


def _lines(path: Path, text: str) -> None:
    (path / "spend.journal").write_text(text)


def test_unsettled_reservations_count_at_their_reserved_amount(tmp_path: Path) -> None:
    _lines(tmp_path, "c 0.5\nr 1 1 0.25\ns 1 1 0.125\nr 1 2 0.25\nr 2 1 1.0\ns 2 1 0.0\n")
    spent = read_spent(tmp_path)
    assert spent is not None
    assert spent.usd == 0.5 + 0.125 + 0.25 + 0.0
    assert (spent.sessions, spent.unsettled) == (2, 1)


def test_no_journal_is_none_and_a_cut_line_is_skipped(tmp_path: Path) -> None:
    assert read_spent(tmp_path) is None
    # the second reservation never reached the disk whole (so it was never sent), and what is
    # there of it reads as a number 100000 times too large: "1.0" of "1.05e-05"
    _lines(tmp_path, "r 1 1 0.25\nr 1 2 1.0")
    spent = read_spent(tmp_path)
    assert spent is not None and spent.usd == 0.25
    _lines(tmp_path, "r 1 1 0.25\ns 1 1 -5\nr 1 2 nan\nr 1 3 0.1\ns 1\nf\t2.0\tm\n")
    spent = read_spent(tmp_path)
    assert spent is not None and spent.usd == 0.25 + 0.1  # a negative settle never credits


async def test_reservations_are_durable_in_batches_and_resume_sees_them(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    done = 0

    async def attempt(n: int) -> None:
        nonlocal done
        await journal.reserve(Reservation(0.01, n), durable=True)
        done += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.write_forever)
        async with anyio.create_task_group() as attempts:
            for n in range(1, 101):
                attempts.start_soon(attempt, n)
        tg.cancel_scope.cancel()
    assert done == 100
    text = (tmp_path / "spend.journal").read_text()
    assert text.count("\nr 1 ") + text.startswith("r 1 ") == 100  # on disk before the release
    spent = read_spent(tmp_path)  # a kill now: every unsettled reservation counts
    assert spent is not None and abs(spent.usd - 1.0) < 1e-9 and spent.unsettled == 100
    journal.settle(Reservation(0.01, 1), 0.004)
    journal.close()
    spent = read_spent(tmp_path)
    assert spent is not None and abs(spent.usd - 0.994) < 1e-9


async def test_a_new_session_after_a_cut_line_starts_on_its_own_line(tmp_path: Path) -> None:
    _lines(tmp_path, "r 1 1 0.25\ns 1 1 0.2")  # cut by a kill mid-settlement
    journal = Journal(tmp_path, session=2)
    await journal.reserve(Reservation(0.5, 1), durable=False)
    journal.settle(Reservation(0.5, 1), 0.125)
    journal.close()
    spent = read_spent(tmp_path)  # the cut settlement is dropped, not completed by our lines
    assert spent is not None and spent.usd == 0.25 + 0.125
    journal.compact()
    assert (tmp_path / "spend.journal").read_text() == "c 0.375\n"


async def test_a_raised_estimate_outlives_a_kill(tmp_path: Path) -> None:
    """An overrun's lesson is in the journal with the next batch, so a resume after kill -9
    (run.json written at the start only) still reserves at the raised estimate."""
    journal = Journal(tmp_path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.write_forever)
        journal.raise_estimate("judge m 1", 10.0)
        journal.raise_estimate("judge m 1", 4.0)    # never lowered
        journal.raise_estimate("other", float("inf"))
        await journal.reserve(Reservation(0.25, 1), durable=True)
        tg.cancel_scope.cancel()
    spent = read_spent(tmp_path)     # no close(): as a killed process leaves it
    assert spent is not None and spent.raised == {"judge m 1": 10.0, "other": float("inf")}


def test_a_resume_takes_the_highest_factor_of_run_json_and_journal(tmp_path: Path) -> None:
    previous = Previous(tmp_path, {"budget": {"raised_estimates": {"a": 2.0, "b": None,
                                                                   "d": 9.0}}},
                        journal_raised={"a": 5.0, "c": 3.0, "d": 4.0})
    assert previous.raised_estimates == {"a": 5.0, "b": None, "c": 3.0, "d": 9.0}


def test_reading_a_long_journal_holds_only_the_open_reservations(tmp_path: Path) -> None:
    """The end of a 200,000-request run compacts its journal: reading it must not hold a line
    or an entry per request (memory would grow with the run), only the open reservations."""
    import tracemalloc

    n = 200_000
    with (tmp_path / "spend.journal").open("w") as f:
        for k in range(1, n + 1):
            f.write(f"r 1 {k} 0.002\ns 1 {k} 0.001\n")
        f.write("r 1 0 0.5\nf 2.0 sim/fast-mini\n")   # one left open; a raised estimate
    tracemalloc.start()
    try:
        spent = read_spent(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert spent is not None
    assert spent.usd == pytest.approx(n * 0.001 + 0.5) and spent.unsettled == 1
    assert spent.raised == {"sim/fast-mini": 2.0}
    assert peak < 1_000_000, peak   # the file is 4.6 MB; a dict of 200k entries is ~20 MB
