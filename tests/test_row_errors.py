"""A dataset row that cannot be made into a request (its values trip the template, its image is
missing) is a `bad_input` error row, never sent, while the other rows run; a problem of every row
is still refused at load; `runner validate` and `runner plan` count the rows they scanned that
would be such rows."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import runner
from runner.cli import main
from runner.simulator import DEFAULT_MODELS, Simulator

ROOT = Path(__file__).resolve().parents[1]
PNG = (ROOT / "jobs" / "examples" / "images" / "red-square.png").read_bytes()
ROWS = 10_600          # more than the 10,000 rows a load test-renders
TRIPS = 10_500         # the row (1-based) whose `meta` lacks the key the template reads
NO_IMAGE = 7           # the row whose image file does not exist


@pytest.fixture
def sim() -> Iterator[Simulator]:
    fast = [dataclasses.replace(m, ttft_s=0.0, tokens_per_s=0.0, jitter_s=0.0)
            for m in DEFAULT_MODELS]
    with Simulator(fast) as server:
        yield server


def _rows(count: int) -> list[dict[str, Any]]:
    rows = [{"id": f"r{n}", "q": f"question {n}", "meta": {"topic": f"t{n % 5}"},
             "img": "pics/a.png"} for n in range(1, count + 1)]
    if count >= TRIPS:
        rows[TRIPS - 1]["meta"] = {}
    rows[NO_IMAGE - 1]["img"] = "pics/missing.png"
    return rows


def _job(tmp_path: Path, url: str, rows: list[dict[str, Any]], *,
         text: str = "{{ q }} about {{ meta.topic }}") -> Path:
    (tmp_path / "pics").mkdir(exist_ok=True)
    (tmp_path / "pics" / "a.png").write_bytes(PNG)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "job.yaml"
    path.write_text(
        f"name: rows\nproviders:\n  sim: {{base_url: \"{url}\", openrouter: true}}\n"
        "provider: sim\nmodels: [sim/fast-mini]\nlimits: {concurrency: 64}\n"
        "params: {max_tokens: 1, stream: false}\nprompts:\n  - id: p\n    messages:\n"
        f"      - role: user\n        content:\n          - {json.dumps(text)}\n"
        "          - image: '{{ img }}'\n    dataset: {path: d.jsonl, id_field: id}\n")
    return path


def test_bad_rows_deep_in_a_big_dataset_are_error_rows_and_the_run_completes(
        tmp_path: Path, sim: Simulator) -> None:
    job = _job(tmp_path, sim.base_url, _rows(ROWS))
    outcome = runner.run(job, out_dir=tmp_path / "out")
    df = outcome.rows.set_index("row_id")
    assert outcome.status == "completed" and len(df) == ROWS
    bad = df[df["status"] != "ok"]
    assert sorted(bad.index) == sorted([f"r{NO_IMAGE}", f"r{TRIPS}"])
    assert set(bad["status"]) == {"error"} and set(bad["error_type"]) == {"bad_input"}
    # nothing was sent for them, so nothing was paid
    assert len(sim.arrivals()) == ROWS - 2
    assert (bad["attempts"].fillna(0) == 0).all() and bad["cost_usd"].fillna(0).sum() == 0
    trips = df.loc[f"r{TRIPS}", "error_message"]
    assert trips.startswith(f"d.jsonl row {TRIPS} (row_id r{TRIPS}): ")
    assert "topic" in trips and "fix" in trips and "\n" not in trips
    missing = df.loc[f"r{NO_IMAGE}", "error_message"]
    assert missing.startswith(f"d.jsonl row {NO_IMAGE} (row_id r{NO_IMAGE}): ")
    assert "content[1].image" in missing and "missing.png" in missing
    # the inputs are still recorded
    assert df.loc[f"r{TRIPS}", "var_q"] == f"question {TRIPS}"
    assert json.loads(df.loc[f"r{NO_IMAGE}", "var_meta"]) == {"topic": f"t{NO_IMAGE % 5}"}
    # a resume does not send them again (fixed data changes the plan: resume --force)
    sim.clear_arrivals()
    again = runner.run(job, out_dir=tmp_path / "out", resume="latest")
    assert again.status == "completed" and len(sim.arrivals()) == 0
    assert len(again.rows) == ROWS
    assert set(again.rows.loc[again.rows["status"] != "ok", "row_id"]) == {
        f"r{NO_IMAGE}", f"r{TRIPS}"}


def test_validate_and_plan_count_the_bad_rows_they_scan(
        tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(30)
    rows[11]["meta"] = {}
    job = _job(tmp_path, sim.base_url, rows)
    told = "2 of 30 rows scanned would be error rows (bad_input: not sent"
    assert main(["validate", str(job)]) == 0
    out = capsys.readouterr().out
    assert told in out
    assert "d.jsonl row 7 (row_id r7)" in out and "d.jsonl row 12 (row_id r12)" in out
    assert main(["plan", str(job)]) == 0
    assert told in capsys.readouterr().out
    assert main(["plan", "--json", str(job)]) == 0
    found = json.loads(capsys.readouterr().out)["bad_input_rows"]
    assert found["scanned"] == 30 and found["rows"] == 2 and len(found["first"]) == 2


def test_a_template_broken_for_every_row_is_still_refused_at_load(
        tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job(tmp_path, sim.base_url, _rows(30), text="{{ q }} {{ meta.nope }}")
    for command in (["validate"], ["plan"], ["run", "--quiet", "--out", str(tmp_path / "o")]):
        assert main([*command, str(job)]) == 2
        err = capsys.readouterr().err
        assert "prompts[0].messages[0].content" in err and "row 1 of d.jsonl" in err
        assert "Traceback" not in err
    # an image source whose template no row's value fits: one line too, not a traceback
    job = _job(tmp_path, sim.base_url, _rows(30), text="{{ q }}")
    job.write_text(job.read_text().replace("image: '{{ img }}'", "image: '{{ meta + 1 }}'"))
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "row 1 of d.jsonl: TypeError: unsupported operand" in err
    assert sim.arrivals() == []


def test_the_first_rows_image_missing_is_an_error_row_every_rows_is_refused(
        tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(10)
    rows[0]["img"] = "pics/gone.png"
    job = _job(tmp_path, sim.base_url, rows)
    df = runner.run(job, out_dir=tmp_path / "out").rows.set_index("row_id")
    assert df.loc["r1", "error_type"] == df.loc["r7", "error_type"] == "bad_input"
    assert "gone.png" in df.loc["r1", "error_message"] and len(sim.arrivals()) == 8
    for row in rows:
        row["img"] = "pictures/" + row["img"]   # a folder no row's image is in
    job = _job(tmp_path, sim.base_url, rows)
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err
    assert "prompts[0].messages[0].content[1].image: no such image file" in err
    assert "(row 1 of d.jsonl)" in err and len(err.splitlines()) == 1


def test_a_value_of_the_wrong_kind_is_an_error_row_not_a_crash(
        tmp_path: Path, sim: Simulator) -> None:
    rows = _rows(12)
    rows[3]["n"] = "four"
    for n, row in enumerate(rows):
        row.setdefault("n", n)
    job = _job(tmp_path, sim.base_url, rows, text="{{ q }} {{ n + 1 }}")
    job.write_text(job.read_text() + "checks:\n  - {icontains: '{{ q }}'}\n")
    outcome = runner.run(job, out_dir=tmp_path / "out")
    df = outcome.rows.set_index("row_id")
    assert outcome.status == "completed"
    assert df.loc["r4", "error_type"] == "bad_input"
    # not graded (the data is at fault, not the model): never counted as a failure
    assert pd.isna(df.loc["r4", "passed"]) and df.drop(["r4", "r7"])["passed"].notna().all()
    checks = pd.read_parquet(outcome.run_dir / "checks.parquet")
    assert checks.loc[checks["request_id"] == df.loc["r4", "request_id"],
                      "reason"].tolist() == ["not sent"]
    assert "d.jsonl row 4 (row_id r4)" in df.loc["r4", "error_message"]
    assert set(df.drop(["r4", f"r{NO_IMAGE}"])["status"]) == {"ok"}
    assert len(sim.arrivals()) == 10


def test_batch_mode_records_a_bad_row_without_putting_it_in_a_batch(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"q": f"q{n}", "meta": {"topic": "t"}} for n in range(6)]
    rows[2]["meta"] = {}
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = tmp_path / "job.yaml"
    job.write_text("name: b\nprovider: simulated\nmodels: [sim/fast-mini]\n"
                   "providers: {simulated: {batch_options: {poll_s: 0.01}}}\n"
                   "params: {max_tokens: 4}\nprompts:\n"
                   "  - {text: '{{ q }} {{ meta.topic }}', dataset: d.jsonl}\n")
    assert main(["run", "--batch", "--quiet", "--out", str(tmp_path / "out"), str(job)]) == 0
    df = runner.read_results(tmp_path / "out" / "b")
    assert len(df) == 6 and df["request_id"].is_unique
    bad = df[df["status"] != "ok"]
    assert bad["error_type"].tolist() == ["bad_input"] and bad["batch_id"].isna().all()
    assert bad["error_message"].iloc[0].startswith("d.jsonl row 3 (row_id 3-")
    assert df.loc[df["status"] == "ok", "batch_id"].notna().all()


def test_a_key_in_a_bad_row_is_written_and_printed_nowhere(
        tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-or-v1-TESTSECRET" + "5a" * 24
    monkeypatch.setenv("ROW_ERRORS_TEST_KEY", secret)
    rows = _rows(8)
    rows[2]["img"] = f"pics/{secret}.png"
    job = _job(tmp_path, sim.base_url, rows)
    job.write_text(job.read_text().replace(
        "openrouter: true}", "openrouter: true, api_key_env: ROW_ERRORS_TEST_KEY}"))
    assert main(["validate", str(job)]) == 0
    assert main(["plan", "--json", str(job)]) == 0
    out = capsys.readouterr().out
    assert "row 3 (row_id r3)" in out and secret not in out
    df = runner.run(job, out_dir=tmp_path / "out").rows
    assert df["error_type"].tolist().count("bad_input") == 2
    for file in (tmp_path / "out").rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file


def test_fixed_rows_are_sent_by_a_resume_with_retry_errors(
        tmp_path: Path, sim: Simulator) -> None:
    rows = _rows(12)
    rows[4]["meta"] = {}
    job = _job(tmp_path, sim.base_url, rows)
    out = tmp_path / "out"
    first = runner.run(job, out_dir=out)
    assert sorted(first.rows.loc[first.rows["status"] != "ok", "row_id"]) == ["r5", "r7"]
    sim.clear_arrivals()
    # retried without a fix: made again from the same row, still nothing sent
    again = runner.run(job, out_dir=out, resume="latest", retry_errors=True)
    assert len(sim.arrivals()) == 0
    assert again.rows["error_type"].tolist().count("bad_input") == 2
    rows[4]["meta"], rows[NO_IMAGE - 1]["img"] = {"topic": "fixed"}, "pics/a.png"
    job = _job(tmp_path, sim.base_url, rows)
    fixed = runner.run(job, out_dir=out, resume="latest", retry_errors=True, force=True)
    assert len(sim.arrivals()) == 2
    assert len(fixed.rows) == 12 and set(fixed.rows["status"]) == {"ok"}


def test_a_load_test_records_a_bad_row_in_its_stage_without_sending_it(
        tmp_path: Path, sim: Simulator) -> None:
    rows = _rows(10)
    job = _job(tmp_path, sim.base_url, rows)
    job.write_text(job.read_text() + "load: {mode: constant, rate_rps: 200, requests: 10}\n")
    df = runner.run(job, out_dir=tmp_path / "out").rows.set_index("row_id")
    assert len(df) == 10 and df.loc["r7", "error_type"] == "bad_input"
    assert str(df.loc["r7", "stage"]) == str(df.loc["r1", "stage"]) != "nan"
    assert len(sim.arrivals()) == 9
