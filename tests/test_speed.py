"""Whole-process speed, as structure: what a run imports before it sends, and a summary folded
from the rows as they are merged that says what pandas said (summary.csv did not change)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pytest

from runner.collect import Collector, _json_lines, to_table, versions
from runner.result import Result
from runner.rundir import file_schema
from runner.summary import Fold, to_csv

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\n"
                          "print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_the_run_path_imports_neither_pandas_nor_pyarrow_nor_the_sdk() -> None:
    """Everything `runner run` imports before its first request: none of the heavy three."""
    loaded = _modules_after("import runner.cli, runner.engine, runner.config, runner.console, "
                            "runner.quality_gate, runner.providers, runner.worker, runner.client")
    assert not {"pandas", "pyarrow", "openai", "numpy"} & loaded
    # nor the modules of batch mode, the response cache (sqlite3) and load tests: a run that
    # uses one imports it then
    assert not {"runner.batch", "runner.cache", "sqlite3", "runner.load"} & loaded
    assert "jinja2" not in loaded  # imported by the first template with logic (templates.py)


def test_the_command_leaves_its_exit_nothing_to_collect(tmp_path: Path) -> None:
    """The command as a process (`entry`, what the console script and `python -m runner` call):
    the exit code of `main`; the collector's usual settings while requests are in flight (a
    young collection of the start-up's objects stalls the loop for tens of ms); and every
    object frozen once it is done, so that the interpreter's exit does not walk set-up's
    objects again (a third of a 1-request run). See `runner/gc_policy.py`."""
    job = tmp_path / "job.yaml"
    job.write_text("name: j\nprovider: simulated\nmodels: [sim/fast-mini]\nprompts: [hi]\n"
                   f"output: {{dir: {str(tmp_path / 'out')!r}}}\n")
    out = subprocess.run([sys.executable, "-c", f"""
import gc, sys
usual = gc.get_threshold()
sys.argv = ["runner", "run", {str(job)!r}, "--quiet"]
from runner.cli import entry
code = entry()
after_run = (code, gc.get_threshold() == usual, gc.get_freeze_count() > 20_000)
sys.argv = ["runner", "validate", {str(job)!r}]
code = entry()   # no run: the usual settings come back at its end all the same
sys.argv = ["runner", "run", {str(job)!r}, "--quiet"]
again = entry()  # a second command in the process keeps the first one's usual settings
print(*after_run, code, again, gc.get_threshold() == usual)
"""], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.splitlines()[-1].split() == ["0", "True", "True", "0", "0", "True"], \
        out.stderr


def test_the_run_path_reads_no_ca_certificate_before_a_tls_handshake() -> None:
    """Every module `runner run` imports, batch mode's included: no SSL context has parsed the
    system's CA bundle yet (about a seventh of a 1-request run when aiohttp is imported
    directly); each is completed before its first handshake (tests/test_lazy_tls.py)."""
    out = subprocess.run([sys.executable, "-c", """
import gc, ssl
import runner.cli, runner.engine, runner.batch, runner.worker, runner.client
loaded = [c for c in gc.get_objects() if type(c) is ssl.SSLContext
          and c.cert_store_stats()["x509_ca"] > 0]
print(len(loaded))
"""], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["0"]


def test_writing_rows_and_the_summary_does_not_import_pandas(tmp_path: Path) -> None:
    code = f"""
from pathlib import Path
from runner.collect import Collector, write_summary
from runner.result import Result
c = Collector(Path({str(tmp_path / 'run')!r}))
for i in range(3):
    c.add(Result(run_id="r", job="j", request_id=f"id-{{i}}", index=i, model="m",
                 model_id="m", provider="p", prompt_id="q", repeat=0, vars_json="{{}}",
                 status="ok", latency_s=0.1 * i))
c.write_part(c.take())
c.add(Result(run_id="r", job="j", request_id="id-9", index=9, model="m", model_id="m",
             provider="p", prompt_id="q", repeat=0, vars_json="{{}}"))
c.finish()
write_summary(c.run_dir, c.summary.lines())
"""
    loaded = _modules_after(code)
    assert "pandas" not in loaded and "pyarrow.compute" not in loaded
    assert len(pd.read_parquet(tmp_path / "run" / "requests.parquet")) == 4


async def test_the_sdk_client_is_built_on_first_use_with_the_endpoint_settings() -> None:
    from runner.client import Endpoint
    from runner.config import Provider

    provider = Provider("local", "http://127.0.0.1:9/api/v1", "LOCAL_KEY", {"X-Title": "t"},
                        openrouter=False, stream_usage=True)
    async with Endpoint(provider, "http://127.0.0.1:9/api/v1/", "sk-or-v1-TESTSECRET",
                        connections=1) as endpoint:
        assert endpoint._sdk is None
        sdk = endpoint.sdk
        assert endpoint.sdk is sdk
        assert str(sdk.base_url) == endpoint.base_url == "http://127.0.0.1:9/api/v1/"
        assert sdk.api_key == "sk-or-v1-TESTSECRET" and sdk.max_retries == 0
        assert sdk.default_headers["X-Title"] == "t"


def test_file_schema_metadata_is_what_pandas_writes() -> None:
    """The pandas metadata is written out by hand (no pandas import to write rows): it must
    stay what `pa.Schema.from_pandas` makes of the dtypes we want back."""
    mine = json.loads(file_schema().metadata[b"pandas"])

    def dtype(t: pa.DataType) -> str:
        if pa.types.is_integer(t):
            return "Int64"
        if pa.types.is_boolean(t):
            return "boolean"
        if pa.types.is_dictionary(t):
            return "category"
        if pa.types.is_floating(t):
            return "float64"
        if pa.types.is_timestamp(t):
            return "datetime64[us, UTC]"
        return "str"

    empty = pd.DataFrame({f.name: pd.Series([], dtype=dtype(f.type)) for f in file_schema()})
    theirs = json.loads(pa.Schema.from_pandas(empty, preserve_index=False).metadata[b"pandas"])
    assert mine["columns"] == theirs["columns"]
    assert {k: v for k, v in mine.items() if k not in ("creator", "pandas_version")} == \
        {k: v for k, v in theirs.items() if k not in ("creator", "pandas_version")}


def test_versions_match_the_package_metadata() -> None:
    from importlib.metadata import version

    found = versions()
    for name in ("runner", "aiohttp", "pandas", "pyarrow", "openai"):
        assert found[name] == version(name)


def test_rows_through_json_are_the_rows_from_objects() -> None:
    rows = [_result(i, random.Random(i)).as_row() for i in range(50)]
    rows[3]["response_text"] = 'quotes " and \\ and \n and \u2028 and é'
    assert to_table(rows).equals(pa.Table.from_pylist(rows, schema=file_schema()))


def test_rows_become_json_lines_in_one_dump_however_their_text_reads() -> None:
    # the batch is dumped at once and cut where a row begins: a value that spells a row's
    # beginning must not cut it
    rows = [_result(i, random.Random(i)).as_row() for i in range(20)]
    rows[2]["response_text"] = '},{"run_id":"forged"}'
    rows[5]["error_message"] = '}\n{"run_id": 1} },{"run_id":'
    rows[9]["vars_json"] = json.dumps({"run_id": "x", "nested": {"run_id": "y"}})
    lines = _json_lines(rows).split(b"\n")
    assert [orjson.loads(line) for line in lines] == [orjson.loads(orjson.dumps(r)) for r in rows]
    assert _json_lines([]) == b""


def _old_summarize(df: pd.DataFrame) -> pd.DataFrame:
    """`results.summarize` as it was (pandas throughout): the reference for summary.csv."""
    rows = []
    for key, group in df.groupby(["model"], observed=True, sort=True):
        ok = group[group["status"] == "ok"]
        sent = group[group["status"] != "skipped"]
        row: dict[str, object] = {"model": key[0]}
        row.update({
            "n": len(group), "ok": len(ok),
            "errors": int((group["status"] == "error").sum()),
            "skipped": int((group["status"] == "skipped").sum()),
            "error_rate": (float((sent["status"] == "error").mean()) if len(sent)
                           else float("nan")),
            "latency_p50_s": ok["latency_s"].quantile(0.5),
            "latency_p90_s": ok["latency_s"].quantile(0.9),
            "latency_p99_s": ok["latency_s"].quantile(0.99),
            "ttft_p50_s": ok["ttft_s"].quantile(0.5),
            "ttft_p90_s": ok["ttft_s"].quantile(0.9),
            "ttft_p99_s": ok["ttft_s"].quantile(0.99),
            "tpot_p50_s": ok["tpot_s"].quantile(0.5),
            "output_tokens_per_s_p50": ok["output_tokens_per_s"].median(),
            "prompt_tokens": int(group["prompt_tokens"].sum()),
            "completion_tokens": int(group["completion_tokens"].sum()),
            "cost_usd": float(group["cost_usd"].sum()),
            "cost_per_1k_requests_usd": (float(ok["cost_usd"].mean()) * 1000 if len(ok)
                                         else float("nan")),
        })
        if "passed" in group and group["passed"].notna().any():
            graded = group["passed"].dropna().astype(bool)
            row["pass_rate"] = float(graded.mean())
            # issue 12: the 95% Wilson interval of the pass rate, over graded rows
            k, n, z = int(graded.sum()), len(graded), 1.959963984540054
            centre, half = (k + z * z / 2) / (n + z * z), \
                z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
            row["pass_rate_ci_low"] = max(0.0, centre - half)
            row["pass_rate_ci_high"] = min(1.0, centre + half)
            row["graded"] = n
        rows.append(row)
    return pd.DataFrame(rows)


def _result(i: int, rnd: random.Random, graded: bool = False) -> Result:
    status = rnd.choice(["ok", "ok", "ok", "error", "skipped"])
    ok = status == "ok"

    def maybe(value: float) -> float | None:
        return value if ok and rnd.random() > 0.1 else None

    return Result(
        run_id="r", job="j", request_id=f"id-{i}", index=i,
        model=rnd.choice(["zeta/model", "alpha/model", "mid, with comma"]), model_id="m",
        provider="p", prompt_id="q", repeat=0, vars_json="{}", status=status,
        latency_s=maybe(rnd.lognormvariate(-1, 1)), ttft_s=maybe(rnd.random() / 7),
        tpot_s=maybe(rnd.random() / 100), output_tokens_per_s=maybe(rnd.random() * 300),
        prompt_tokens=rnd.randrange(1, 500) if status != "skipped" else None,
        completion_tokens=rnd.randrange(0, 900) if ok else None,
        cost_usd=rnd.random() / 1e3 if status != "skipped" and rnd.random() > 0.05 else None,
        passed=(rnd.random() > 0.3) if graded and ok else None)


@pytest.mark.parametrize("graded", [False, True])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_the_folded_summary_is_the_pandas_summary(tmp_path: Path, n: int, graded: bool) -> None:
    """summary.csv from the fold, byte for byte what pandas wrote before (and run.json's totals
    the same numbers), over several parts in completion order."""
    rnd = random.Random(n)
    collector = Collector(tmp_path / "run")
    for i in range(n):
        collector.add(_result(i, rnd, graded))
        if rnd.random() < 0.02:
            collector.write_part(collector.take())
    final = collector.finish()
    assert collector.summary is not None
    columns = ["model", "status", "latency_s", "ttft_s", "tpot_s", "output_tokens_per_s",
               "prompt_tokens", "completion_tokens", "cost_usd", "passed"]
    import pyarrow.parquet as pq

    df = pq.read_table(final, columns=columns).to_pandas()
    expected = _old_summarize(df)
    assert to_csv(collector.summary.lines()).decode() == expected.to_csv(index=False)
    totals = collector.summary.totals()
    assert totals["cost_usd"] == float(df["cost_usd"].sum())
    assert totals["counts"] == {str(k): int(v) for k, v in df["status"].value_counts().items()}
    assert totals["requests"] == len(df)
    # and `results.summarize` (`runner report`, on rows in plan order) what pandas gave there
    from runner.results import read_results, summarize

    (tmp_path / "run" / "run.json").write_text('{"status": "completed"}')
    rows = read_results(tmp_path / "run")
    assert summarize(rows).to_csv(index=False) == _old_summarize(rows).to_csv(index=False)


def test_a_fold_of_nothing_has_no_lines() -> None:
    fold = Fold()
    assert fold.lines() == [] and fold.totals() == {"requests": 0, "counts": {}}
    assert math.isnan(float("nan"))


def test_the_summary_printed_to_a_pipe_is_plain_text_without_rich(tmp_path: Path) -> None:
    """Piped (a log, CI), the end-of-run table is plain aligned text with the same cells, and
    rich (a fifth of a small run's start-up work) is never imported."""
    (tmp_path / "summary.csv").write_text(
        "model,n,ok,errors,skipped,latency_p50_s,latency_p90_s,ttft_p50_s,"
        "output_tokens_per_s_p50,cost_usd\n"
        "a/model,2,1,1,0,0.25,0.5,0.125,40.0,0.000021\n")
    code = f"""
from pathlib import Path
from types import SimpleNamespace
from runner.console import print_summary
print_summary(SimpleNamespace(run_dir=Path({str(tmp_path)!r}), run_id="r1", status="completed",
                              manifest={{"job": "j", "budget": {{"exceeded": True,
                                         "spent_usd": 2.0, "budget_usd": 1.0,
                                         "overspent_usd": 1.0, "utilisation": 2.0,
                                         "reserved_unused_usd": 0.0}}}}))
"""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\n"
                          "print('rich' in sys.modules)"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.splitlines()
    assert out[0] == "j — run r1 (completed)"
    assert out[1].split() == ["model", "n", "ok", "errors", "skipped", "latency", "p50",
                              "latency", "p90", "ttft", "p50", "tok/s", "p50", "cost"]
    assert out[3].split() == ["a/model", "2", "1", "1", "0", "0.250s", "0.500s", "0.125s", "40",
                              "$0.000021"]
    assert "BUDGET EXCEEDED: spent $2.000000 of $1.000000 (over by $1.000000)" in out
    assert out[-2].startswith("results: ") and out[-1] == "False"


def test_a_plan_unit_is_rendered_once_for_all_its_models_and_repeats(tmp_path: Path) -> None:
    """The requests of one var combination share its rendered messages, the row inputs recorded
    from them and their request body; ids stay what `request_id` makes of each request."""
    from runner.client import build_body
    from runner.config import load_job
    from runner.plan import Plan, request_id
    from runner.redact import Redactor
    from runner.rows import new_result

    path = tmp_path / "job.yaml"
    path.write_text("name: j\nprovider: local\nproviders:\n  local: {base_url: "
                    "'http://127.0.0.1:9/v1'}\nmodels: [a/m, b/m]\n"
                    "prompts: ['Say {{ word }}.']\nvars: {word: [up, down]}\nrepeats: 3\n")
    job = load_job(path)
    plan, redact = Plan(job), Redactor(())
    provider = job.providers["local"]
    requests = list(plan)
    assert len(requests) == 12 and len({r.request_id for r in requests}) == 12
    for r in requests:
        assert r.request_id == request_id(r.model, r.prompt_id, dict(r.vars), r.messages,
                                          r.repeat, r.params)
    unit, other = requests[:6], requests[6:]
    rows = [new_result("run", "j", r, redact) for r in unit]
    assert all(r.messages is unit[0].messages for r in unit)
    assert all(row.messages_json is rows[0].messages_json for row in rows)
    assert rows[0].vars_json == '{"word": "up"}'
    assert new_result("run", "j", other[0], redact).vars_json == '{"word": "down"}'
    bodies = [build_body(provider, r, True) for r in unit]
    assert bodies[0] is bodies[2] and bodies[0] != bodies[1]  # per model, the same bytes
    assert json.loads(bodies[1])["model"] == "b/m"


def test_a_fold_keeps_eight_bytes_a_value(tmp_path: Path) -> None:
    """Exact percentiles keep every value, so a summary's memory grows with the run: 8 bytes a
    number (not a Python float each), and sliced columns with gaps read right."""
    import tracemalloc

    from runner.summary import _array

    rnd = random.Random(5)
    rows = [_result(i, rnd, graded=True).as_row() for i in range(500)]
    table = to_table(rows, schema=file_schema())
    sliced = table.slice(3, 400)
    for name in ("latency_s", "prompt_tokens", "judge_cost_usd"):
        expected = [math.nan if v is None else float(v) for v in sliced.column(name).to_pylist()]
        got = _array(sliced.column(name)).tolist()
        assert [math.isnan(v) for v in got] == [math.isnan(v) for v in expected]
        assert [v for v in got if not math.isnan(v)] == [v for v in expected if not math.isnan(v)]
    fold = Fold()
    fold.add_table(table)  # warm
    tracemalloc.start()
    try:
        for _ in range(40):   # 20,000 more rows
            fold.add_table(table)
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 9 numeric columns x 8 bytes + 3 pointers a row ~ 100 bytes; Python floats were ~300
    assert grown / 20_000 < 150, grown / 20_000
    assert sum(line["n"] for line in fold.lines()) == 20_500
