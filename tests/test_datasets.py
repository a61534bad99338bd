"""Datasets crossed with templates: every format gives the same rows, row fields are vars (no
reserved names, values never re-read as templates), the options select rows, big Parquet files
plan without being expanded, the results hold the inputs, and the `stored` provider re-grades
saved outputs. The refusals are in tests/test_config.py's table (ids `dataset-*`, `stored-*`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import runner
from runner.config import load_job
from runner.estimate import prompt_sizes
from runner.plan import Plan
from runner.rundir import REQUESTS
from runner.templates import STATS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "jobs" / "examples"
HOSTILE = "{{#each items}}{{this}}{{/each}} {% raw %} {{ not_a_var }} {# x"
ROWS: list[dict[str, Any]] = [
    {"id": "r1", "text": "first", "messages": "m1", "question": HOSTILE, "answer": "A"},
    {"id": "r2", "text": "second", "messages": "m2", "question": "Plain?", "answer": "B"},
    {"id": "r3", "text": "third", "messages": "m3", "question": "Ünïcode 日本", "answer": "C"},
]


def write_dataset(path: Path, rows: list[dict[str, Any]]) -> Path:
    """`rows` in the format of `path`'s suffix."""
    suffix = path.suffix
    if suffix == ".csv":
        frame = pd.DataFrame(rows)
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".yaml":
        path.write_text(yaml.safe_dump(rows, allow_unicode=True), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def job_file(tmp_path: Path, prompts: str, *, models: str = "[sim/fast-mini, sim/balanced]",
             extra: str = "") -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(f"name: ds\nprovider: simulated\nmodels: {models}\nprompts:\n{prompts}"
                    f"{extra}", encoding="utf-8")
    return path


# --- rows as vars ------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".yaml", ".parquet"])
def test_every_format_crosses_rows_with_templates_and_models(tmp_path: Path,
                                                               suffix: str) -> None:
    write_dataset(tmp_path / f"d{suffix}", ROWS)
    job = load_job(job_file(tmp_path, f"  - id: q\n    text: 'Q: {{{{ question }}}} / "
                            f"{{{{ text }}}}'\n    dataset: {{path: d{suffix}, target: answer}}\n"
                            "  - id: r\n    messages: [{role: user, content: "
                            f"'{{{{ messages }}}}-{{{{ id }}}}'}}]\n    dataset: d{suffix}\n"))
    plan = Plan(job)
    assert len(plan) == 2 * 3 * 2                       # prompts x rows x models
    requests = list(plan)
    first = requests[0]
    # every field is a var under its own name: `text`, `id`, `messages` are not keywords
    assert dict(first.vars) == ROWS[0]
    # a row value is sent as written, never parsed as a template
    assert first.messages[0].content == f"Q: {HOSTILE} / first"
    assert first.target == "A"
    assert [r.messages[0].content for r in requests[6::2]] == ["m1-r1", "m2-r2", "m3-r3"]
    assert [r.target for r in requests[6::2]] == [None, None, None]
    assert len({r.request_id for r in requests}) == len(requests)


def test_literal_prompt_with_templating_off(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d.csv", ROWS)
    job = load_job(job_file(tmp_path, "  - text: 'Keep {{ question }} as written'\n"
                            "    templating: false\n    dataset: d.csv\n",
                            models="[sim/fast-mini]"))
    assert [r.messages[0].content for r in Plan(job)] == ["Keep {{ question }} as written"] * 3


def test_csv_cells_stay_text_and_empty_cells_are_empty(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("n,price,note\n007,3.50,\n1e3,true,\"multi\nline\"\n",
                                    encoding="utf-8")
    job = load_job(job_file(tmp_path, "  - text: '{{ n }}|{{ price }}|{{ note }}'\n"
                            "    dataset: d.csv\n", models="[sim/fast-mini]"))
    assert [r.messages[0].content for r in Plan(job)] == ["007|3.50|", "1e3|true|multi\nline"]


def test_jinja_template_reads_structured_row_values(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d.jsonl", [{"q": "Pick", "choices": ["x", "{{y}}"]},
                                         {"q": "Again", "choices": ["z"]}])
    job = load_job(job_file(tmp_path, "  - text: \"{{ q }}:{% for c in choices %} "
                            "{{ loop.index }}) {{ c }}{% endfor %}\"\n    dataset: d.jsonl\n",
                            models="[sim/fast-mini]"))
    assert [r.messages[0].content for r in Plan(job)] == ["Pick: 1) x 2) {{y}}", "Again: 1) z"]


def test_target_template_rename_and_metadata(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d.jsonl", [{"Question Text": "2+2?", "ans": 4, "lvl": "easy"}])
    job = load_job(job_file(
        tmp_path, "  - text: '{{ question }}'\n    metadata: {suite: s1}\n    dataset:\n"
        "      path: d.jsonl\n      rename: {Question Text: question}\n"
        "      target: 'The answer is {{ ans }}'\n      metadata: [lvl]\n",
        models="[sim/fast-mini]"))
    (request,) = list(Plan(job))
    assert request.messages[0].content == "2+2?"
    assert request.target == "The answer is 4"
    assert dict(request.metadata) == {"suite": "s1", "lvl": "easy"}
    assert dict(request.vars) == {"question": "2+2?", "ans": 4, "lvl": "easy"}


# --- selecting rows ----------------------------------------------------------------------------

BIG = [{"id": f"q{i}", "level": ["easy", "hard", "mid"][i % 3], "n": i} for i in range(60)]


def selected(tmp_path: Path, options: str, suffix: str = ".parquet") -> list[str]:
    write_dataset(tmp_path / f"d{suffix}", BIG)
    job = load_job(job_file(tmp_path, f"  - text: '{{{{ n }}}}'\n    dataset: {{path: "
                            f"d{suffix}, id_field: id{options}}}\n", models="[sim/fast-mini]"))
    return [str(r.row_id) for r in Plan(job)]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_where_equals_and_in_then_limit(tmp_path: Path, suffix: str) -> None:
    assert selected(tmp_path, ", where: {level: hard}, limit: 3", suffix) == ["q1", "q4", "q7"]
    assert selected(tmp_path, ", where: {level: [easy, mid], n: [0, 2, 4, 5]}", suffix) == \
        ["q0", "q2", "q5"]


def test_where_on_a_csv_text_cell_takes_yaml_booleans(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("q,hard\na,true\nb,false\nc,True\n", encoding="utf-8")
    job = load_job(job_file(tmp_path, "  - text: '{{ q }}'\n    dataset: {path: d.csv, "
                            "where: {hard: true}}\n", models="[sim/fast-mini]"))
    assert [r.messages[0].content for r in Plan(job)] == ["a", "c"]


def test_sample_is_seeded_in_file_order_and_a_subset(tmp_path: Path) -> None:
    first = selected(tmp_path, ", sample: 10, seed: 7")
    assert first == selected(tmp_path, ", sample: 10, seed: 7")          # reproducible
    assert first != selected(tmp_path, ", sample: 10, seed: 8")          # the seed matters
    numbers = [int(row_id[1:]) for row_id in first]
    assert len(numbers) == 10 and numbers == sorted(numbers)             # kept in file order
    assert selected(tmp_path, ", sample: 10, seed: 7, limit: 4") == first[:4]


def test_row_ids_without_an_id_field_are_stable_and_unique_for_equal_rows(
        tmp_path: Path) -> None:
    rows = [{"q": "same"}, {"q": "same"}, {"q": "other"}]
    write_dataset(tmp_path / "d.jsonl", rows)
    path = job_file(tmp_path, "  - text: '{{ q }}'\n    dataset: d.jsonl\n")
    ids = [(r.row_id, r.request_id) for r in Plan(load_job(path))]
    assert ids == [(r.row_id, r.request_id) for r in Plan(load_job(path))]  # a resume agrees
    assert len({request_id for _, request_id in ids}) == 6
    assert len({row_id for row_id, _ in ids}) == 3


def test_existing_jobs_keep_their_request_ids() -> None:
    """Ids computed by the code before datasets: an old run of these jobs still resumes."""
    quickstart = Plan(load_job(ROOT / "jobs" / "quickstart.yaml"))
    assert [quickstart[i].request_id for i in (0, 7, 77)] == [
        "d7cbba2531fc3414fe0f", "882a5920215150cf3c21", "89db59c75af296d18be2"]
    nightly = Plan(load_job(ROOT / "jobs" / "nightly.yaml"))
    assert [nightly[i].request_id for i in (0, 29)] == [
        "bcb3836d4521762ba765", "2c862cd08e72ca2719fd"]


# --- prompts files -----------------------------------------------------------------------------

def test_txt_and_chat_json_prompt_files_cross_with_a_dataset(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d.csv", ROWS[:2])
    (tmp_path / "p.txt").write_text("Say {{ text }}\n---\n\nShout {{ text }}!\n---\n",
                                    encoding="utf-8")
    (tmp_path / "chat.json").write_text(json.dumps([
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "{{ id }}"}],
        [{"role": "user", "content": "{{ answer }}"}]]), encoding="utf-8")
    (tmp_path / "one.json").write_text(json.dumps([{"role": "user", "content": "hi"}]),
                                       encoding="utf-8")
    job = load_job(job_file(tmp_path, "  - {prompts_file: p.txt, dataset: d.csv}\n"
                            "  - {prompts_file: chat.json, dataset: d.csv}\n"
                            "  - {prompts_file: one.json}\n", models="[sim/fast-mini]"))
    sent = [[(m.role, m.content) for m in r.messages] for r in Plan(job)]
    assert sent == [
        [("user", "Say first")], [("user", "Say second")],
        [("user", "Shout first!")], [("user", "Shout second!")],
        [("system", "Be brief."), ("user", "r1")], [("system", "Be brief."), ("user", "r2")],
        [("user", "A")], [("user", "B")],
        [("user", "hi")],
    ]


def test_whole_prompt_files_still_work_under_file(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "text": "Hi {{ who }}", "who": "you"}\n',
                                         encoding="utf-8")
    job = load_job(job_file(tmp_path, "  - file: rows.jsonl\n", models="[sim/fast-mini]"))
    assert [r.messages[0].content for r in Plan(job)] == ["Hi you"]


# --- lazy planning -----------------------------------------------------------------------------

def test_a_big_parquet_dataset_plans_without_expanding_rows(tmp_path: Path) -> None:
    rows = 200_000
    table = pa.table({"id": pa.array(range(rows)),
                      "question": pa.array([f"question {i}" for i in range(rows)])})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=20_000)
    job = load_job(job_file(tmp_path, "  - text: 'Q{{ id }}: {{ question }}'\n"
                            "    dataset: big.parquet\n",
                            models="[sim/fast-mini, sim/balanced, sim/premium-large]"))
    before = STATS.renders
    plan = Plan(job)
    sizes = prompt_sizes(plan)
    assert len(plan) == 3 * rows
    assert STATS.renders == before   # plan size and prompt bytes by arithmetic, not renders
    expected = sum(len(f"Q{i}: question {i}".encode()) for i in range(rows))
    overhead = sizes[0].prompt_tokens - expected
    assert 0 < overhead <= 20 * rows
    last = plan[len(plan) - 1]
    assert last.messages[0].content == f"Q{rows - 1}: question {rows - 1}"
    assert last.model.id == "sim/premium-large"
    before = STATS.renders
    assert [plan[i].messages[0].content for i in range(6)] == ["Q0: question 0"] * 3 + \
        ["Q1: question 1"] * 3
    assert STATS.renders == before + 2   # one rendering per row, shared by its models


# --- results hold the inputs -------------------------------------------------------------------

def test_run_records_messages_vars_target_and_metadata(tmp_path: Path) -> None:
    rows = [{"id": "a", "question": HOSTILE, "n": 1, "score": 0.5, "flag": True,
             "tags": ["x", "y"], "answer": "A"},
            {"id": "b", "question": "two", "n": None, "score": 2, "flag": False,
             "tags": [], "answer": "B"}]
    write_dataset(tmp_path / "d.jsonl", rows)
    job = job_file(tmp_path, "  - id: q\n    text: '{{ question }}'\n    metadata: {suite: s}\n"
                   "    dataset: {path: d.jsonl, id_field: id, target: answer, "
                   "metadata: [flag]}\n")
    outcome = runner.run(job, out_dir=tmp_path / "out")
    df = runner.read_results(outcome.run_dir)
    assert len(df) == 4 and set(df["status"]) == {"ok"}
    first = df.iloc[0]
    assert json.loads(first["messages_json"]) == [{"role": "user", "content": HOSTILE}]
    assert first["target"] == "A" and first["row_id"] == "a"
    assert json.loads(first["metadata_json"]) == {"suite": "s", "flag": True}
    # every field, used by the template or not, is a typed column a user can filter on
    assert str(df["var_n"].dtype) == "Int64" and df["var_n"].isna().tolist() == [
        False, False, True, True]
    assert str(df["var_score"].dtype) == "float64"
    assert str(df["var_flag"].dtype) == "boolean"
    assert json.loads(first["var_tags"]) == ["x", "y"]
    assert df.loc[df["var_flag"].astype(bool), "row_id"].tolist() == ["a", "a"]
    assert set(pq.read_schema(outcome.run_dir / REQUESTS).names) >= {
        "var_id", "var_question", "var_answer", "messages_json", "target", "metadata_json"}


def test_results_of_older_runs_still_read(tmp_path: Path) -> None:
    outcome = runner.run(ROOT / "jobs" / "quickstart.yaml", out_dir=tmp_path)
    path = outcome.run_dir / REQUESTS
    table = pq.read_table(path)
    new = {"row_id", "messages_json", "target", "metadata_json"}
    old = table.select([n for n in table.column_names
                        if n not in new and not n.startswith("var_")])
    pq.write_table(old, path)   # what a run before these columns wrote
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = runner.read_results(outcome.run_dir)
    assert len(df) == table.num_rows and df["messages_json"].isna().all()


# --- the examples and the stored provider ------------------------------------------------------

def test_multiple_choice_example_runs_offline(tmp_path: Path) -> None:
    outcome = runner.run(EXAMPLES / "mcq.yaml", out_dir=tmp_path)
    df = outcome.rows
    source = pd.read_csv(EXAMPLES / "mcq.csv", dtype=str)
    assert outcome.status == "completed" and len(df) == 2 * len(source)
    assert set(df["status"]) == {"ok"} and df["passed"].notna().all()
    by_row = df.drop_duplicates("row_id").set_index("row_id")
    assert by_row["target"].to_dict() == dict(zip(source["id"], source["answer"], strict=True))
    assert by_row["var_subject"].to_dict() == dict(zip(source["id"], source["subject"],
                                                       strict=True))
    sent = json.loads(by_row.loc["lit-1", "messages_json"])
    assert '"{{ Hamlet }}"' in sent[-1]["content"]          # sent as written
    assert json.loads(by_row.loc["geo-1", "metadata_json"]) == {"suite": "trivia-v1",
                                                               "subject": "geography"}


def test_regrade_example_grades_stored_outputs_without_a_model(tmp_path: Path) -> None:
    outcome = runner.run(EXAMPLES / "regrade.yaml", out_dir=tmp_path)
    df = outcome.rows.set_index(["model", "row_id"])
    assert outcome.status == "completed"
    assert (df["cost_usd"] == 0).all() and (df["prompt_tokens"] == 0).all()
    assert df.loc[("model_b", "r2"), "response_text"] == "the nile river"
    passed = df["passed"].astype(object).to_dict()
    assert passed == {("model_a", "r1"): True, ("model_b", "r1"): False,
                      ("model_a", "r2"): True, ("model_b", "r2"): True,
                      ("model_a", "r3"): False, ("model_b", "r3"): True,
                      ("model_a", "r4"): True, ("model_b", "r4"): False}
    # a missing stored output is an error row, never a pass
    assert df.loc[("model_b", "r4"), "error_type"] == "no_stored_response"
    assert json.loads(df.loc[("model_a", "r1"), "messages_json"])[0]["content"] == \
        "What is the capital of Australia?"


def test_resume_refuses_a_changed_dataset(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from runner.cli import main

    write_dataset(tmp_path / "d.csv", ROWS)
    job = job_file(tmp_path, "  - id: q\n    text: '{{ question }}'\n    dataset: d.csv\n",
                   models="[sim/fast-mini]")
    out = tmp_path / "out"
    assert main(["run", "--quiet", "--out", str(out), str(job)]) == 0
    write_dataset(tmp_path / "d.csv", ROWS[:2])      # rows removed since the run
    capsys.readouterr()
    assert main(["run", "--quiet", "--out", str(out), "--resume", "latest", str(job)]) == 2
    assert "prompts changed: q" in capsys.readouterr().err


def test_prompt_metadata_and_job_vars_are_recorded_without_a_dataset(tmp_path: Path) -> None:
    job = job_file(tmp_path, "  - id: g\n    text: 'Hi in {{ lang }}'\n"
                   "    vars: {lang: [French, Japanese], n: [1, 2]}\n"
                   "    metadata: {topic: greetings}\n", models="[sim/fast-mini]")
    df = runner.run(job, out_dir=tmp_path / "out").rows
    assert df["var_lang"].tolist() == ["French", "Japanese"]
    assert "var_n" not in df.columns          # a var the template does not use is not sent
    assert df["metadata_json"].map(json.loads).tolist() == [{"topic": "greetings"}] * 2
    assert df["target"].isna().all() and df["row_id"].isna().all()


def test_dataset_benchmark_prints_its_table() -> None:
    import subprocess
    import sys

    script = ROOT / "benchmarks" / "bench_dataset.py"
    out = subprocess.run([sys.executable, str(script), "--sizes", "50", "500", "--walk", "300"],
                         capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "## Datasets" in out.stdout
    assert "| 500 " in out.stdout and "| 1,500 " in out.stdout


def test_values_json_cannot_hold_are_still_sent_and_recorded(tmp_path: Path) -> None:
    huge = 2**70
    (tmp_path / "d.jsonl").write_text(json.dumps({"q": "big", "n": huge, "deep": [huge]}) + "\n",
                                      encoding="utf-8")
    job = job_file(tmp_path, "  - text: '{{ q }} {{ n }}'\n    metadata: {m: " + str(huge)
                   + "}\n    dataset: d.jsonl\n", models="[sim/fast-mini]")
    df = runner.run(job, out_dir=tmp_path / "out").rows
    assert df["status"].tolist() == ["ok"]
    assert df["var_n"].tolist() == [str(huge)] and json.loads(df["var_deep"][0]) == [huge]
    assert json.loads(df["metadata_json"][0]) == {"m": huge}


def test_a_key_nested_in_a_dataset_field_is_written_nowhere(
        write_job: Any, results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key pasted deep inside a row (a list in an object) is redacted from every result file,
    the typed `var_<name>` column included, like the top-level values."""
    from runner.simulator import Simulator

    secret = "sk-or-v1-" + "7e" * 32
    monkeypatch.setenv("DATASET_TEST_KEY", secret)
    row = {"q": "hi", "nested": {"deep": ["pasted " + secret]}, "flat": secret}
    with Simulator() as sim:
        path = write_job(f"""
            name: nested-key
            providers:
              sim: {{base_url: "{sim.base_url}", api_key_env: DATASET_TEST_KEY, openrouter: true}}
            provider: sim
            models: [sim/fast-mini]
            prompts:
              - {{text: "{{{{ q }}}}", dataset: rows.jsonl}}
            params: {{max_tokens: 4}}
            """, **{"rows.jsonl": json.dumps(row) + "\n"})
        outcome = runner.run(path, out_dir=results_dir)
    assert len(outcome.rows) == 1 and "var_nested" in outcome.rows.columns
    for file in results_dir.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file
            if file.suffix == ".parquet":
                assert secret not in pd.read_parquet(file).to_csv(), file
