"""The collector: batches to part files, concurrent flushes, the final merge, a bad value or a
bad part that costs no other row."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from runner.collect import Collector
from runner.result import COLUMNS, Result
from runner.results import read_results


def _row(i: int, status: str = "ok") -> Result:
    return Result(run_id="r", job="j", request_id=f"id-{i}", index=i, model="m", model_id="m",
                  provider="p", prompt_id="q", repeat=0, vars_json="{}", status=status,
                  prompt_tokens=None if i % 2 else 5)


def test_overlapping_flushes_lose_nothing(tmp_path: Path) -> None:
    collector = Collector(tmp_path / "run")
    batches = [[_row(b * 50 + i).as_row() for i in range(50)] for b in range(40)]
    threads = [threading.Thread(target=collector.write_part, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(collector.part_files()) == 40
    df = pd.read_parquet(collector.finish())
    assert len(df) == 2000 and df["request_id"].is_unique
    assert tuple(df.columns) == COLUMNS
    assert str(df["prompt_tokens"].dtype) == "Int64" and df["prompt_tokens"].isna().sum() == 1000
    assert not list((tmp_path / "run").rglob(".*.tmp"))


def test_resumed_rows_keep_the_last_per_request(tmp_path: Path) -> None:
    collector = Collector(tmp_path / "run")
    collector.write_part([_row(1, "error").as_row(), _row(2).as_row()])
    collector.write_part([_row(1, "ok").as_row()])
    (tmp_path / "run" / "run.json").write_text('{"status": "running"}')  # a run going on
    assert read_results(tmp_path / "run").set_index("request_id")["status"]["id-1"] == "ok"
    df = pd.read_parquet(collector.finish(dedupe=True))
    assert sorted(df["request_id"]) == ["id-1", "id-2"]
    assert df.set_index("request_id").loc["id-1", "status"] == "ok"


def test_one_bad_value_costs_only_its_own_row(tmp_path: Path) -> None:
    collector = Collector(tmp_path / "run")
    bad = _row(2)
    bad.prompt_tokens = [1, 2]  # type: ignore[assignment]  # what an odd `usage` could give
    bad.model_served = {"not": "a string"}  # type: ignore[assignment]
    collector.write_part([_row(1).as_row(), bad.as_row(), _row(3).as_row()])
    df = pd.read_parquet(collector.finish()).set_index("request_id")
    assert list(df.index) == ["id-1", "id-2", "id-3"]
    assert set(df.loc[["id-1", "id-3"], "status"]) == {"ok"}
    assert df.loc["id-2", "status"] == "error" and df.loc["id-2", "error_type"] == "malformed"
    assert "prompt_tokens" in df.loc["id-2", "error_message"]
    assert "model_served" in df.loc["id-2", "error_message"]
    assert df.loc["id-2", "index"] == 2  # the row still says which request it was


@pytest.mark.parametrize("damage", [b"", b"PAR1 garbage", None])
def test_the_final_merge_sets_an_unreadable_part_aside(tmp_path: Path, damage: bytes | None,
                                                       ) -> None:
    collector = Collector(tmp_path / "run")
    collector.write_part([_row(1).as_row(), _row(2).as_row()])
    collector.write_part([_row(3).as_row()])
    first = collector.part_files()[0]
    first.write_bytes(first.read_bytes()[:60] if damage is None else damage)
    # a torn part is what a crash leaves: the process that merges it is a later one (a resume;
    # the process that wrote a part merges it from memory)
    collector = Collector(tmp_path / "run")
    with pytest.warns(UserWarning, match=first.name):
        df = pd.read_parquet(collector.finish(dedupe=damage is None))
    assert df["request_id"].tolist() == ["id-3"]
    assert first.with_name(first.name + ".bad").is_file()  # kept for a look, out of any glob


def test_a_finished_run_holds_each_row_in_one_parquet_file(tmp_path: Path) -> None:
    collector = Collector(tmp_path / "run")
    collector.write_part([_row(1).as_row()])
    collector.add(_row(2))
    collector.finish()
    files = list((tmp_path / "run").rglob("*.parquet"))
    assert sum(len(pd.read_parquet(f)) for f in files) == 2  # a glob counts each row once
    assert not (tmp_path / "run" / "parts").exists()          # no empty folder left behind


def test_rows_are_read_in_plan_order(tmp_path: Path) -> None:
    collector = Collector(tmp_path / "run")
    collector.write_part([_row(5).as_row(), _row(2).as_row()])   # completion order
    collector.write_part([_row(0).as_row(), _row(9).as_row()])
    (tmp_path / "run" / "run.json").write_text('{"status": "running"}')
    assert read_results(tmp_path / "run")["index"].tolist() == [0, 2, 5, 9]
    collector.finish()
    assert read_results(tmp_path / "run")["index"].tolist() == [0, 2, 5, 9]


def test_report_names_an_unreadable_part_in_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from runner.cli import main

    run_dir = tmp_path / "run"
    collector = Collector(run_dir)
    collector.write_part([_row(1).as_row(), _row(2).as_row()])
    (run_dir / "parts" / "part-000002.parquet").write_bytes(b"")  # a crash left it empty
    (run_dir / "run.json").write_text('{"status": "running"}')
    assert main(["report", str(run_dir)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("runner: warning: ")
    assert "part-000002.parquet" in err[0] and "left out" in err[0]


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own nice value is Linux's")
def test_part_files_are_written_by_a_thread_of_lower_priority(tmp_path: Path) -> None:
    """The part writer yields the core to the event loop (a load test's sends stay on time):
    it runs at a higher nice value than the thread that submits, in order, and `close` waits."""
    collector = Collector(tmp_path / "run")
    seen: list[tuple[int, int]] = []

    def note(i: int) -> int:
        seen.append((i, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return i

    futures = [collector.writer.submit(note, i) for i in range(5)]
    collector.writer.submit(collector.write_part, [_row(1).as_row(), _row(2).as_row()])
    collector.writer.close()
    assert [f.result() for f in futures] == [0, 1, 2, 3, 4] == [i for i, _ in seen]
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert all(nice > mine for _, nice in seen) or mine == 19
    assert mine == os.getpriority(os.PRIO_PROCESS, threading.get_native_id())  # not the caller's
    assert len(collector.part_files()) == 1
    assert pd.read_parquet(collector.finish())["request_id"].tolist() == ["id-1", "id-2"]
