"""Batch mode over real HTTP: the simulator's batch API (and a lying one written here), a run
killed with batches in flight and resumed without a second submission, the budget at the batch
price, odd output files, `runner batches cancel`, and what is refused."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pandas as pd
import pytest
from aiohttp import web

import runner
from runner.batch.files import read_output
from runner.cli import main
from runner.plan import Plan
from runner.simulator import read_bill

from .runs import runner_process, simulator, wait_for

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-or-v1-TESTSECRET0123456789abcdef0123456789"
# the simulator's list prices of its default models, USD per million tokens
PRICING = """
pricing:
  sim/fast-mini: {usd_per_mtok_prompt: 0.10, usd_per_mtok_completion: 0.40}
  sim/balanced: {usd_per_mtok_prompt: 0.50, usd_per_mtok_completion: 1.50}
"""


def _runner(*args: str) -> subprocess.Popen[str]:
    return runner_process(*args)


def _submissions(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_bytes().split(b"\n")[:-1]:  # the last line may still be written
        out.append(json.loads(line))
    return out


def _batches(log: Path) -> list[dict[str, object]]:
    return [s for s in _submissions(log) if s["kind"] == "batch"]


def _big_job(write_job: Callable[..., Path], url: str, *, repeats: int = 500,
             budget_usd: float = 1.0, delay_options: str = "") -> Path:
    prompts = ", ".join(f"p{i}" for i in range(10))
    return write_job(f"""
        name: big
        providers:
          sim:
            base_url: "{url}"
            openrouter: false
            batch: true
            batch_options: {{max_requests: 2500, poll_s: 0.1, poll_max_s: 0.3,
                             discount: 0.5{delay_options}}}
        provider: sim
        models: [sim/fast-mini, sim/balanced]
        prompts: [{prompts}]
        params: {{max_tokens: 16}}
        repeats: {repeats}
        budget_usd: {budget_usd}
    """ + PRICING.replace("\n", "\n        "))


def test_a_killed_10k_batch_run_resumes_without_a_second_submission(
        write_job: Callable[..., Path], results_dir: Path, tmp_path: Path) -> None:
    batch_log, bill = tmp_path / "submissions.jsonl", tmp_path / "bill.jsonl"
    with simulator("--batch-delay-s", "5", "--batch-log", str(batch_log),
                   "--bill", str(bill)) as url:
        path = _big_job(write_job, url)
        planned = {r.request_id for r in Plan(runner.load_job(path))}
        assert len(planned) == 10_000
        first = _runner("run", str(path), "--out", str(results_dir), "--quiet")
        wait_for(lambda: len(_batches(batch_log)) >= 2 or first.poll() is not None)
        first.kill()  # SIGKILL: two batches (at least) are in flight, nothing answered yet
        first.communicate()
        in_flight = len(_batches(batch_log))
        assert in_flight >= 2 and not read_bill(bill)  # killed before any batch ended
        resumed = _runner("run", str(path), "--out", str(results_dir), "--resume", "--quiet")
        _, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
    batches = _batches(batch_log)
    sent = [cid for b in batches for cid in b["custom_ids"]]  # type: ignore[attr-defined]
    # the simulator's log: every request was submitted in exactly one batch, ever
    assert len(sent) == len(set(sent)) == 10_000 and set(sent) == planned
    assert len(batches) == 4  # 10,000 at 2,500 a file: the resume added only the missing two
    run_dir = next((results_dir / "big").iterdir())
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert len(df) == 10_000 and df["request_id"].is_unique and set(df["request_id"]) == planned
    assert set(df["status"]) == {"ok"}
    assert df["batch_id"].notna().all() and df["batch_id"].nunique() == 4
    assert df["latency_s"].isna().all() and df["ttft_s"].isna().all()  # not measurable
    assert (df["batch_wall_s"] > 0).all()
    charges = read_bill(bill)
    billed = sum(c["cost_usd"] for c in charges)
    manifest = json.loads((run_dir / "run.json").read_text())
    assert len(charges) == 10_000 and billed <= 1.0
    assert sorted(b["batch_id"] for b in manifest["batches"]) == \
        sorted(str(b["id"]) for b in batches)
    assert all(b["done"] for b in manifest["batches"])
    assert df["cost_usd"].sum() == pytest.approx(billed, rel=1e-6)
    # the killed run's batches settle to what they cost; what the budget counts beyond the bill
    # is at most one batch's worst case (reserved by the killed run just before it died, for a
    # batch it never created: without a settlement, it stays counted)
    worst_batch = max(df.groupby("batch_id")["estimated_cost_usd"].sum())
    assert billed * (1 - 1e-9) <= manifest["budget"]["spent_usd"] <= billed + worst_batch


def test_a_batch_taken_over_by_a_resume_settles_at_what_it_cost(
        write_job: Callable[..., Path], results_dir: Path, tmp_path: Path) -> None:
    batch_log, bill = tmp_path / "submissions.jsonl", tmp_path / "bill.jsonl"
    with simulator("--batch-delay-s", "2", "--batch-log", str(batch_log),
                   "--bill", str(bill)) as url:
        path = _big_job(write_job, url, repeats=2)  # 40 requests: one batch
        first = _runner("run", str(path), "--out", str(results_dir), "--quiet")
        job_dir = results_dir / "big"
        wait_for(lambda: any(b"submitted" in p.read_bytes()
                              for p in job_dir.glob("*/batches.jsonl"))
                  or first.poll() is not None)
        first.kill()  # the batch's id is on disk, its reservation unsettled
        first.communicate()
        assert not read_bill(bill)
        resumed = _runner("run", str(path), "--out", str(results_dir), "--resume", "--quiet")
        _, err = resumed.communicate(timeout=60)
        assert resumed.returncode == 0, err
    assert len(_batches(batch_log)) == 1
    run_dir = next(job_dir.iterdir())
    manifest = json.loads((run_dir / "run.json").read_text())
    billed = sum(c["cost_usd"] for c in read_bill(bill))
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert len(df) == 40 and set(df["status"]) == {"ok"}
    # not its worst case, which the killed run's journal holds: what the rows cost
    assert billed < df["estimated_cost_usd"].sum()
    assert manifest["budget"]["spent_usd"] == pytest.approx(billed, rel=1e-9)


def test_the_budget_reserves_whole_batches_at_the_batch_price(
        write_job: Callable[..., Path], results_dir: Path, tmp_path: Path) -> None:
    bill = tmp_path / "bill.jsonl"
    with simulator("--bill", str(bill)) as url:
        path = _big_job(write_job, url, repeats=20, budget_usd=0.002)
        outcome = runner.run(path, out_dir=results_dir)
    df = outcome.rows
    assert len(df) == 400 and df["request_id"].is_unique
    skipped = df[df["status"] == "skipped"]
    assert len(skipped) and set(skipped["error_type"]) == {"budget"}
    assert skipped["batch_id"].isna().all()  # never submitted
    billed = sum(c["cost_usd"] for c in read_bill(bill))
    assert 0 < billed <= 0.002
    assert outcome.manifest["budget"]["spent_usd"] == pytest.approx(billed, rel=1e-6)


def test_plan_prices_batched_models_at_the_batch_price(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`runner plan --batch` (as `run --batch`) shows the worst case a batch run reserves: the
    simulator's batch API takes half the chat price."""
    quickstart = str(Path(__file__).parent.parent / "jobs" / "quickstart.yaml")
    assert main(["plan", quickstart, "--json"]) == 0
    chat = json.loads(capsys.readouterr().out)["worst_case_usd"]
    assert main(["plan", quickstart, "--json", "--batch"]) == 0
    batched = json.loads(capsys.readouterr().out)["worst_case_usd"]
    assert batched.keys() == chat.keys()
    for model, usd in chat.items():
        assert batched[model] == pytest.approx(usd / 2)


def test_expired_batches_and_line_errors_are_error_rows(write_job: Callable[..., Path],
                                                        results_dir: Path) -> None:
    path = write_job("""
        name: odd
        provider: simulated
        providers:
          simulated: {batch: true, batch_options: {poll_s: 0.05}}
        simulator: {batch_expire: true, batch_line_error_rate: 0.3, seed: 3}
        models: [sim/fast-mini]
        prompts: [a, b, c, d, e]
        params: {max_tokens: 16}
        repeats: 8
    """)
    df = runner.run(path, out_dir=results_dir).rows
    assert len(df) == 40 and df["request_id"].is_unique
    kinds = df["error_type"].value_counts(dropna=False).to_dict()
    assert kinds["batch_expired"] == 20  # the half the expired batch never answered
    assert kinds.get("server_error", 0) > 0 and (df["status"] == "ok").sum() > 0
    errors = df[df["status"] == "error"]
    assert (errors["cost_usd"] == 0).all()  # an unanswered or failed line is not billed
    assert (df.loc[df["status"] == "ok", "cost_usd"] > 0).all()


def test_a_lying_batch_api_never_crashes_a_run_nor_leaks_a_key(
        write_job: Callable[..., Path], results_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_BATCH_KEY", SECRET)
    app = web.Application()
    ids: list[str] = []

    async def upload(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        assert isinstance(upload, web.FileField)
        ids.extend(json.loads(line)["custom_id"] for line in upload.file.read().splitlines())
        return web.json_response({"id": 7})  # a number where a string belongs

    async def batches(request: web.Request) -> web.Response:
        return web.json_response({"id": "batch-1", "status": "validating"})

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"id": "batch-1", "status": "completed",
                                  "output_file_id": "out", "error_file_id": ["odd"],
                                  "request_counts": {"completed": -4}})

    async def content(request: web.Request) -> web.Response:
        echo = request.headers["Authorization"]
        answer = {"choices": [{"message": {"content": f"you sent {echo}"},
                               "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
        lines = [
            {"custom_id": ids[0], "response": {"status_code": 200, "body": answer}},
            "not json at all", [1, 2], {"custom_id": "someone-else", "response": {}},
            {"custom_id": ids[1], "response": []},
            {"custom_id": ids[2], "response": {"status_code": 429,
                                               "body": {"error": {"message": f"slow {echo}"}}}},
            {"custom_id": ids[0], "response": {"status_code": 500}},  # a second line for it
        ]
        body = b"\n".join(line.encode() if isinstance(line, str) else orjson.dumps(line)
                          for line in lines)
        return web.Response(body=body)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m/a"}]})

    app.router.add_post("/v1/files", upload)
    app.router.add_post("/v1/batches", batches)
    app.router.add_get("/v1/batches/batch-1", status)
    app.router.add_get("/v1/files/{file_id}/content", content)
    app.router.add_get("/v1/models", models)

    async def serve_and_run() -> runner.RunOutcome:
        from runner.engine import run_job

        app_runner = web.AppRunner(app, access_log=None)
        await app_runner.setup()
        site = web.TCPSite(app_runner, "127.0.0.1", 0)
        await site.start()
        port = app_runner.addresses[0][1]
        try:
            path = write_job(f"""
                name: lies
                providers:
                  liar: {{base_url: "http://127.0.0.1:{port}/v1", openrouter: false,
                          api_key_env: FAKE_BATCH_KEY, batch: true,
                          batch_options: {{poll_s: 0.01}}}}
                provider: liar
                models: [m/a]
                prompts: [a, b, c, d]
                params: {{max_tokens: 8}}
            """)
            return await run_job(runner.load_job(path), out_dir=results_dir)
        finally:
            await app_runner.cleanup()

    import anyio

    outcome = anyio.run(serve_and_run)
    df = outcome.rows.set_index("request_id")
    assert len(df) == 4
    assert df.loc[ids[0], "status"] == "ok" and SECRET not in df.loc[ids[0], "response_text"]
    assert df.loc[ids[1], "error_type"] == "malformed"
    assert df.loc[ids[2], "error_type"] == "rate_limited"
    assert df.loc[ids[3], "error_type"] == "batch_missing"
    for file in outcome.run_dir.rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file


@pytest.mark.parametrize(("lines", "expected", "warned"), [
    ([b"{not json"], {}, 1),
    ([b'"a string"'], {}, 1),
    ([b'{"custom_id": "x", "response": {"status_code": 200, "body": {"choices": []}}}'],
     {"x": "malformed"}, 0),
    ([b'{"custom_id": "x", "error": {"message": "no", "code": "e"}}'], {"x": "batch_error"}, 0),
    ([b'{"custom_id": "x", "response": {"status_code": "200"}}'], {"x": "malformed"}, 0),
    ([b'{"custom_id": "nobody", "response": {}}'], {}, 1),
    ([b'{"custom_id": 5}'], {}, 1),
    ([b'{"custom_id": "x", "response": {"status_code": 200, "body": {"choices": '
      b'[{"message": {"content": "hi"}, "finish_reason": "stop"}]}}}'] * 2, {"x": None}, 1),
])
def test_odd_output_lines_are_error_rows_or_ignored_with_a_warning(
        lines: list[bytes], expected: dict[str, str | None], warned: int) -> None:
    read = read_output(b"\n".join(lines), {"x"}, max_line_bytes=1 << 20)
    assert {k: a.error_type for k, a in read.attempts.items()} == expected
    assert read.ignored == warned == len(read.warnings)


def test_runner_batches_cancel_cancels_what_a_killed_run_left_in_flight(
        write_job: Callable[..., Path], results_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    batch_log = tmp_path / "submissions.jsonl"
    with simulator("--batch-delay-s", "600", "--batch-log", str(batch_log)) as url:
        path = _big_job(write_job, url, repeats=2)
        first = _runner("run", str(path), "--out", str(results_dir), "--quiet")
        wait_for(lambda: len(_batches(batch_log)) >= 1 or first.poll() is not None)
        first.kill()
        first.communicate()
        run_dir = next((results_dir / "big").iterdir())
        assert main(["batches", "cancel", str(run_dir)]) == 0
        out = capsys.readouterr().out
        assert f"{_batches(batch_log)[0]['id']}: cancelled" in out
        # a resume re-attaches to the cancelled batch: error rows, nothing submitted again
        resumed = _runner("run", str(path), "--out", str(results_dir), "--resume", "--quiet")
        _, err = resumed.communicate(timeout=60)
        assert resumed.returncode == 0, err
    assert len(_batches(batch_log)) == 1
    df = pd.read_parquet(run_dir / "requests.parquet")
    assert len(df) == 40 and set(df["error_type"]) == {"batch_cancelled"}


def test_batch_on_openrouter_is_one_line_and_streaming_is_said_to_be_ignored(
        write_job: Callable[..., Path], results_dir: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", SECRET)
    path = write_job("name: t\nmodels: [m/a]\nprompts: [hi]\n")
    assert main(["run", "--batch", "--quiet", "--out", str(results_dir), str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "has no batch API" in err and "--batch" in err
    assert not any(results_dir.iterdir())
    path = write_job("""
        name: s
        provider: simulated
        models: [sim/fast-mini]
        prompts: [hi]
        params: {max_tokens: 8, stream: true}
        providers: {simulated: {batch_options: {poll_s: 0.01}}}
    """)
    assert main(["run", "--batch", "--out", str(results_dir), str(path)]) == 0
    out, err = capsys.readouterr()
    assert "stream: true is ignored for sim/fast-mini" in err
    assert "batches: 0 in flight, 1 ended; 1/1 requests answered" in out  # the progress
    df = runner.read_results(results_dir / "s")
    assert df["batch_id"].notna().all() and df["ttft_s"].isna().all()


def test_input_files_are_split_by_the_providers_limits(write_job: Callable[..., Path]) -> None:
    from runner.batch.files import chunks, input_line

    job = runner.load_job(write_job("""
        name: split
        provider: simulated
        models: [sim/fast-mini]
        prompts: [short, "a much longer prompt {{ n }}"]
        vars: {n: [1, 2, 3]}
        params: {max_tokens: 8}
        repeats: 5
    """))
    requests = list(Plan(job))
    provider = job.providers["simulated"]
    sizes = [len(input_line(provider, r)) for r in requests]
    parts, too_large = chunks(provider, requests, max_requests=4, max_bytes=10**9)
    assert [len(p.requests) for p in parts] == [4, 4, 4, 4, 4]
    parts, too_large = chunks(provider, requests, max_requests=100, max_bytes=3 * max(sizes))
    assert all(len(p.data) <= 3 * max(sizes) for p in parts) and len(parts) >= 7
    assert [r for p in parts for r in p.requests] == requests and not too_large
    for part in parts:  # each file: one JSON line per request, custom_id = request id
        lines = [orjson.loads(line) for line in part.data.splitlines()]
        assert [line["custom_id"] for line in lines] == [r.request_id for r in part.requests]
        assert {line["url"] for line in lines} == {"/v1/chat/completions"}
        assert not any(line["body"]["stream"] for line in lines)
    parts, too_large = chunks(provider, requests, max_requests=100, max_bytes=min(sizes))
    assert too_large and all(len(p.data) <= min(sizes) for p in parts)


def test_a_resume_without_batch_still_follows_the_batches_in_flight(
        write_job: Callable[..., Path], results_dir: Path, tmp_path: Path) -> None:
    batch_log, chat_log = tmp_path / "submissions.jsonl", tmp_path / "chat.jsonl"
    with simulator("--batch-delay-s", "2", "--batch-log", str(batch_log),
                   "--request-log", str(chat_log)) as url:
        path = write_job(f"""
            name: flag
            providers:
              sim: {{base_url: "{url}", openrouter: false,
                     batch_options: {{poll_s: 0.1, discount: 0.5}}}}
            provider: sim
            models: [sim/fast-mini]
            prompts: [a, b]
            params: {{max_tokens: 8}}
            repeats: 5
        """)
        first = _runner("run", str(path), "--batch", "--out", str(results_dir), "--quiet")
        job_dir = results_dir / "flag"
        wait_for(lambda: any(b"submitted" in p.read_bytes()
                              for p in job_dir.glob("*/batches.jsonl"))
                  or first.poll() is not None)
        first.kill()
        first.communicate()
        resumed = _runner("run", str(path), "--out", str(results_dir), "--resume", "--quiet")
        _, err = resumed.communicate(timeout=60)
        assert resumed.returncode == 0, err
    assert len(_batches(batch_log)) == 1
    assert not chat_log.exists() or not chat_log.read_text().strip()  # none sent by chat
    df = pd.read_parquet(next(job_dir.iterdir()) / "requests.parquet")
    assert len(df) == 10 and set(df["status"]) == {"ok"} and df["batch_id"].notna().all()


def test_a_long_output_line_is_its_requests_error_row() -> None:
    line = b'{"custom_id": "x", "response": {"status_code": 200, "body": {"pad": "' + \
        b"y" * 5000 + b'"}}}'
    read = read_output(line, {"x"}, max_line_bytes=1000)
    assert read.attempts["x"].error_type == "too_large"


async def test_an_output_file_past_its_bound_is_one_line_not_a_read(
        canned: Callable[..., object], write_job: Callable[..., Path]) -> None:
    from runner.batch.api import call_json
    from runner.client import Endpoint
    from runner.errors import ProviderError

    url = await canned((200, {}, b"{" + b" " * 4_000_000 + b"}"))  # type: ignore[misc]
    job = runner.load_job(write_job(f"""
        name: t
        providers: {{big: {{base_url: "{url}", openrouter: false}}}}
        provider: big
        models: [m/a]
        prompts: [hi]
    """))
    async with Endpoint(job.providers["big"], url, "EMPTY", connections=1) as endpoint:
        with pytest.raises(ProviderError, match="larger than 1048576 bytes"):
            await call_json(endpoint, "GET", "batches/b-1")
