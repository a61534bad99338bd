"""Load tests end to end: real HTTP to the embedded simulator (with a capacity, so that it
saturates), the rows a load run writes, its resume, the CLI and the reports."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import pandas as pd
import pytest

import runner
from runner.cli import main
from runner.html_report import render_html
from runner.load_report import stage_table
from runner.load_stats import knee
from runner.simulator import DEFAULT_MODELS, Capacity, Simulator
from tests.runs import runner_process, wait_for
from tests.test_config import write_case

# a server of 2 generations at once, each 0.1 s (tokens instant): it completes 20 requests a
# second at most; beyond that requests queue and their TTFT grows
CAPACITY_RPS = 20.0
SERVER = """
name: lt
provider: simulated
simulator:
  capacity: {concurrent: 2}
  models:
    - {id: sim/fast-mini, ttft_s: 0.1, tokens_per_s: 0, jitter_s: 0}
models: [sim/fast-mini]
prompts: [one, two, three]
params: {max_tokens: 8, stream: true}
limits: {retries: 0}
"""


def _run(tmp_path: Path, load: str, extra: str = "", **kwargs: object) -> runner.RunOutcome:
    path = write_case(tmp_path, SERVER + extra + load, {})
    return runner.run(path, out_dir=tmp_path / "out", **kwargs)


def test_a_sweep_finds_the_knee_of_the_servers_capacity(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "load: {mode: sweep, rates: 3, up_to: 1.5, duration_s: 2, "
                   "warmup_s: 0.4, max_concurrency: 32}\n")
    table = stage_table(outcome.rows)
    assert table is not None
    assert list(table["stage"].str[3:])[:2] == ["synchronous", "throughput"]
    assert len(table) == 5
    # the throughput stage found the server's capacity, and the synchronous one a request's time
    throughput = float(table.loc[1, "request_throughput_rps"])
    assert 0.6 * CAPACITY_RPS < throughput <= 1.05 * CAPACITY_RPS
    assert float(table.loc[0, "request_throughput_rps"]) < 0.6 * CAPACITY_RPS
    where, text = knee(table.to_dict("records"))
    assert where is not None and "saturated from" in text, text
    kept = float(table.loc[where, "requested_rps"])
    over = table[table["requested_rps"] > kept]
    # the knee sits below the capacity; the first rate over it queues (TTFT grows)
    assert kept <= 1.05 * CAPACITY_RPS and len(over)
    first_over = over.sort_values("requested_rps").iloc[0]
    assert first_over["ttft_p50_s"] > 2 * float(table.loc[0, "ttft_p50_s"])
    facts = outcome.manifest["load"]
    assert len(facts["sweeps"]["0"]) == 3 and [s["stage"] for s in facts["stages"]] == \
        list(table["stage"])


def test_open_loop_rows_say_their_stage_schedule_and_lag(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "load: {mode: constant, rate_rps: 25, requests: 20, "
                   "warmup_s: 0.2, max_concurrency: 64}\n")
    df = outcome.rows
    assert len(df) == 20 and df["request_id"].is_unique  # a plan of 3 cycled: 20 rows
    assert set(df["stage"].astype(str)) == {"00 constant 25/s"}
    assert (df["requested_rps"] == 25).all()
    assert set(df["load_phase"].astype(str)) == {"warmup", "measure"}
    assert (df["send_lag_s"] >= 0).all() and df["scheduled_at"].notna().all()
    # the schedule: 40 ms apart, whatever the server's 0.1 s (and its queue) took
    gaps = df.sort_values("scheduled_at")["scheduled_at"].diff().dropna().dt.total_seconds()
    assert gaps.round(6).eq(0.04).all()
    assert df["itl_p50_s"].notna().all()  # streamed: its chunks' gaps
    assert df["itl_max_s"].ge(df["itl_p50_s"]).all()
    assert outcome.manifest["load"]["stages"][0]["sent"] == 20
    # the shorter GIL switch interval of a load test (`load.SWITCH_INTERVAL_S`) ends with it
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_resumed_load_run_sends_only_the_slots_not_done(tmp_path: Path) -> None:
    faults = ("simulator:\n  models:\n    - {id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0, "
              "faults: {error_rate: 0.4}}\n")
    text = SERVER.replace(SERVER[SERVER.index("simulator:"):SERVER.index("models: [")],
                          faults)
    path = write_case(tmp_path, text + "load: {mode: poisson, rate_rps: 200, requests: 30}\n",
                      {})
    first = runner.run(path, out_dir=tmp_path / "out")
    errored = set(first.rows.loc[first.rows["status"] == "error", "request_id"])
    assert errored and len(errored) < 30
    again = runner.run(path, out_dir=tmp_path / "out", resume="latest", retry_errors=True)
    df = again.rows
    assert again.run_dir == first.run_dir and len(df) == 30 and df["request_id"].is_unique
    assert again.manifest["load"]["stages"][0]["sent"] == len(errored)  # only those again
    ok_before = first.rows.set_index("request_id")["status"].eq("ok")
    assert df.set_index("request_id").loc[ok_before[ok_before].index, "status"].eq("ok").all()


def _run_json(out: Path) -> dict[str, object]:
    """The run's run.json as it is now (empty while there is none, or while it is replaced)."""
    try:
        return dict(json.loads(next(out.glob("*/*/run.json")).read_text()))
    except (StopIteration, FileNotFoundError, json.JSONDecodeError):
        return {}


def test_a_sweep_killed_after_measuring_reuses_its_rates_on_resume(tmp_path: Path) -> None:
    path = write_case(tmp_path, SERVER + "load: {mode: sweep, rates: 2, duration_s: 1, "
                      "max_concurrency: 8}\n", {})
    out = tmp_path / "out"
    proc = runner_process("run", str(path), "--out", str(out), "--quiet")

    def measured() -> bool:
        load = _run_json(out).get("load")
        return isinstance(load, dict) and "0" in (load.get("sweeps") or {})
    wait_for(lambda: measured() or proc.poll() is not None)
    proc.kill()  # SIGKILL: in the sweep's rate stages, after synchronous and throughput
    proc.communicate()
    before = _run_json(out)["load"]
    assert isinstance(before, dict) and proc.returncode == -9, "the run ended before the kill"
    rates, done = before["sweeps"]["0"], before["done"]
    assert set(done) == {"00 synchronous", "01 throughput"} and len(rates) == 2
    again = runner.run(path, out_dir=out, resume="latest")
    facts = again.manifest["load"]
    assert facts["sweeps"]["0"] == rates  # not measured again...
    df = again.rows
    assert df["request_id"].is_unique and set(df["status"]) == {"ok"}
    for name in done:  # ...and no slot sent past those it took before the kill
        slots = df.loc[df["stage"].astype(str) == name, "request_id"].str.split("-").str[1]
        assert sorted(slots.astype(int)) == list(range(done[name]["slots"])), name
    assert [s["stage"] for s in facts["stages"]][2:] == \
        [f"0{2 + i} constant {rate:.3g}/s" for i, rate in enumerate(rates)]


def test_a_budget_refusal_stops_the_load_test(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "load: {mode: sweep, duration_s: 2}\n", budget_usd=1e-9)
    facts = outcome.manifest["load"]
    assert facts["stopped_by"].startswith("budget")
    assert len(outcome.rows) == 1  # not a flood of refused rows for the stage's 2 s


def test_cli_load_flags_table_and_report(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write_case(tmp_path, SERVER, {})
    code = main(["run", str(path), "--quiet", "--out", str(tmp_path / "out"), "--load",
                 "constant", "--rate", "10", "--requests", "8", "--goodput", "ttft=5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "load stages" in out and "00 constant 10/s" in out and "knee at 10" in out
    run_dir = next((tmp_path / "out" / "lt").iterdir())
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["load"]["goodput"]["ttft_s"] == 5
    assert main(["report", str(run_dir), "--goodput", "latency=0.0001"]) == 0
    out, _ = capsys.readouterr()
    assert "00 constant 10/s" in out
    html = render_html(pd.read_parquet(run_dir / "requests.parquet"))
    assert "Load stages" in html and "Latency against throughput" in html


@pytest.mark.parametrize(("argv", "words"), [
    (["--rate", "5"], "--rate: "),
    (["--load", "constant"], "needs a rate"),
    (["--load", "constant", "--rate", "5", "--requests", "3", "--goodput", "speed=1"],
     "--goodput"),
])
def test_cli_load_flags_refuse_with_a_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           argv: list[str], words: str) -> None:
    path = write_case(tmp_path, SERVER, {})
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_plain_run_has_no_load_section(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "")
    assert "load" not in outcome.manifest and stage_table(outcome.rows) is None
    assert "Load stages" not in render_html(outcome.rows)


async def test_beyond_capacity_requests_queue_for_a_generation_slot() -> None:
    """Capacity 1: of two requests sent together, the second's first token comes only after
    the first answer has ended."""
    model = [m for m in DEFAULT_MODELS if m.id == "sim/fast-mini"][0]
    with Simulator([model], capacity=Capacity(1)) as sim:
        async with aiohttp.ClientSession() as session:
            async def ask() -> tuple[float, float]:
                loop = asyncio.get_running_loop()
                async with session.post(sim.base_url + "/chat/completions", json={
                        "model": model.id, "stream": True, "max_tokens": 8,
                        "messages": [{"role": "user", "content": "hi"}]},
                        headers={"Authorization": "Bearer sim"}) as resp:
                    first = None
                    async for line in resp.content:
                        if first is None and b'"content"' in line:
                            first = loop.time()
                    assert first is not None
                    return first, loop.time()

            (first_a, end_a), (first_b, end_b) = await asyncio.gather(ask(), ask())
    earlier_end, later_first = min((end_a, first_b), (end_b, first_a))
    assert later_first >= earlier_end - 0.005  # read order: allow the loop's own step


def test_the_cap_on_requests_in_flight_makes_them_late_not_slow(tmp_path: Path) -> None:
    """With max_concurrency 1, requests due every 10 ms wait for the one before (0.1 s each):
    the wait is send lag, not latency, and the stage says it did not keep its schedule."""
    outcome = _run(tmp_path, "load: {mode: constant, rate_rps: 100, requests: 5, "
                   "max_concurrency: 1}\n")
    df = outcome.rows.sort_values("scheduled_at")
    stage = outcome.manifest["load"]["stages"][0]
    assert stage["capped"] >= 3 and stage["schedule_kept"] is False
    assert df["send_lag_s"].iloc[-1] > df["latency_s"].max()  # waited for 4 answers
    assert df["send_lag_s"].is_monotonic_increasing
