"""Variants of issue 9's defects found by an adversarial audit, each a behaviour a user would
notice: a row file of the wrong shape, a run.json of the wrong shape, ..."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.collect import Collector
from runner.result import Result
from runner.rundir import UnreadableRowsWarning

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("manifest", [
    "[1, 2]", '"text"', '{"job": "shapes"}', '{"job": "shapes", "run_id": 5, "plan": []}',
    '{"job": "shapes", "run_id": "r", "plan": {"models": ["x"]}}'])
def test_a_run_json_of_another_shape_is_one_line_exit_2(write_job: Callable[..., Path],
                                                        tmp_path: Path, manifest: str) -> None:
    job = write_job("""
        name: shapes
        provider: simulated
        models: [sim/fast-mini]
        prompts: ["hi"]
    """)
    run_dir = tmp_path / "results" / "shapes" / "20260101T000000.000Z-abcd"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(manifest)
    done = subprocess.run([sys.executable, "-m", "runner", "run", str(job), "--out",
                           str(tmp_path / "results"), "--resume", str(run_dir), "--force",
                           "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "run.json" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "n", "model",
                                   "messages", "stream"])
def test_extra_body_cannot_change_what_the_budget_prices(write_job: Callable[..., Path],
                                                         field: str) -> None:
    """extra_body is merged last into the request: a `max_tokens` (or `n`, or another `model`)
    there would be billed while the budget reserved for the params' worst case."""
    job = write_job(f"""
        name: extra
        provider: simulated
        models:
          - id: sim/fast-mini
            extra_body: {{{field}: 4000}}
        prompts: ["hi"]
        params: {{max_tokens: 8}}
        budget_usd: 0.01
    """)
    done = subprocess.run([sys.executable, "-m", "runner", "validate", str(job)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"models[0].extra_body.{field}" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("name", "content", "expect"), [
    # a long document to summarise is a prompt too: no CSV field limit of 128 KiB
    ("long.csv", "id,text\nbig," + "x" * 200_000 + "\n", None),
    ("nested.jsonl", '{"id": "n", "text": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
     "nested.jsonl: line 1"),
    ("nested.json", "[" * 100_000 + "]" * 100_000, "nested.json: "),
    ("bad.csv", 'id,text\n"a,b\n', None),
])
def test_a_hostile_prompt_file_is_one_line_not_a_traceback(
        write_job: Callable[..., Path], name: str, content: str, expect: str | None) -> None:
    job = write_job(f"""
        name: files
        provider: simulated
        models: [sim/fast-mini]
        prompts:
          - file: {name}
        params: {{max_tokens: 8}}
    """, **{name: content})
    done = subprocess.run([sys.executable, "-m", "runner", "validate", str(job)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    if expect is None:
        assert done.returncode in (0, 2) and len(done.stderr.strip().splitlines()) <= 1
    else:
        assert done.returncode == 2 and expect in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
