"""The collector: batches to part files, concurrent flushes, the final merge, safe paths."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest

from runner.collect import Collector
from runner.rundir import run_dir_for
from runner.errors import ResultsError
from runner.report import read_results
from runner.result import COLUMNS, Result


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


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "/etc"])
def test_run_dir_stays_under_the_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(ResultsError):
        run_dir_for(tmp_path / "results", name, "run-1")
