"""Variants of issue 9's defects found by an adversarial audit, each a behaviour a user would
notice: a row file of the wrong shape, ..."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.collect import Collector
from runner.result import Result
from runner.rundir import UnreadableRowsWarning


def _row(i: int) -> Result:
    return Result(run_id="r", job="j", request_id=f"id-{i}", index=i, model="m", model_id="m",
                  provider="p", prompt_id="q", repeat=0, vars_json="{}", status="ok")


def test_a_part_of_the_wrong_types_is_set_aside_not_merged(tmp_path: Path) -> None:
    """A valid parquet file whose columns have the wrong types (request ids as numbers) is no
    row file of this run: merged, it would add rows for requests that were never planned."""
    collector = Collector(tmp_path / "run")
    collector.write_part([_row(1).as_row(), _row(2).as_row()])
    good = collector.part_files()[0]
    table = pq.read_table(good)
    odd = table.set_column(table.schema.get_field_index("request_id"), "request_id",
                           pa.array([7, 8]))
    pq.write_table(odd, good.with_name("part-000009.parquet"))
    with pytest.warns(UnreadableRowsWarning, match="part-000009"):
        df = pd.read_parquet(collector.finish(dedupe=True))
    assert sorted(df["request_id"]) == ["id-1", "id-2"]
