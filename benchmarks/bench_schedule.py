"""Schedule: does an open-loop load test send at the rate asked, on time? And the same sweep by
the runner and by GuideLLM against one saturating simulator, side by side.

    .venv/bin/python benchmarks/bench_schedule.py [--rate 500] [--seconds 10]
        [--sweep-seconds 4] [--no-guidellm] [--guidellm /tmp/guidellm-venv/bin/guidellm]

Accuracy: the canned server (`canned_server.py`, so that the server is not what is measured)
runs as its own process (core 1); `runner run --quiet` (core 0) sends `load: {mode: constant,
rate_rps: RATE}` for SECONDS. From the rows: each request went out at `scheduled_at` +
`send_lag_s`; achieved rate = (requests - 1) / (last - first send). Targets: achieved within
1% of the rate, send lag p99 under 5 ms at 500 req/s. Then the scheduler alone (no requests),
to tell the machine's timer and load from the request path.

Sweep: `runner simulate --capacity-concurrent 4 --capacity-tokens-per-s 800` (core 1) is
swept by the runner (`mode: sweep`, 4 rates, GuideLLM's spacing: up_to 1.0) and then by
GuideLLM (`--profile kind=sweep,sweep_size=6`), each stage SWEEP_SECONDS long. GuideLLM is
installed into its own venv (`python -m venv /tmp/guidellm-venv && /tmp/guidellm-venv/bin/pip
install guidellm`), never into the project's; without it that half is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import harness
import pandas as pd

sys.path.insert(0, str(harness.ROOT))  # this checkout's runner, not an installed one
RUNNER = [harness.PYTHON, "-m", "runner"]  # run with cwd=ROOT, for the same reason
GUIDELLM = Path("/tmp/guidellm-venv/bin/guidellm")
PROMPTS = ["What is a load test?", "Why does latency grow near saturation?", "What is goodput?",
           "What is the difference between open and closed loop load?"]


def _job(path: Path, port: int, load: str, max_tokens: int, out: Path,
         model: str = "sim/fast-mini") -> Path:
    path.write_text(textwrap.dedent(f"""\
        name: bench-schedule
        provider: local
        providers:
          local: {{base_url: "http://127.0.0.1:{port}/api/v1", openrouter: true}}
        models: [{model}]
        prompts: {json.dumps([f"Answer briefly: {p}" for p in PROMPTS])}
        params: {{max_tokens: {max_tokens}, stream: true}}
        limits: {{retries: 0, timeout_s: 60}}
        output: {{dir: "{out}"}}
    """) + load)
    return path


def _rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(next(out.glob("*/*/requests.parquet")))


def accuracy(rate: float, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, harness.canned_server() as port:
        job = _job(Path(tmp) / "job.yaml", port,
                   f"load: {{mode: constant, rate_rps: {rate}, duration_s: {seconds}, "
                   "max_concurrency: 512}\n", 8, Path(tmp) / "results",
                   model="canned/model")
        subprocess.run(harness.pinned([*RUNNER, "run", str(job), "--quiet"],
                                      harness.CLIENT_CORE),
                       check=True, stdout=subprocess.DEVNULL, cwd=harness.ROOT)
        df = _rows(Path(tmp) / "results")
    # when each request went out: its scheduled time plus its lag
    sent = sorted((df["scheduled_at"] + pd.to_timedelta(df["send_lag_s"], unit="s"))
                  .astype("int64") / 1e9)  # ns since the epoch, as seconds
    achieved = (len(sent) - 1) / (sent[-1] - sent[0])
    lags = [float(v) for v in df["send_lag_s"].dropna()]
    p50, p99 = harness.percentile(lags, 50), harness.percentile(lags, 99)
    # the part of the lag spent by the client's own scheduler, and the part waiting for the
    # cap on requests in flight (a server slower than the rate fills it)
    dispatch = [float(v) for v in (df["send_lag_s"] - df["queue_s"].fillna(0)).dropna()]
    capped = float((df["queue_s"].fillna(0) > 0.001).mean())
    error = abs(achieved - rate) / rate
    print(f"## Schedule accuracy (constant {rate:g} req/s for {seconds:g} s, canned server)\n")
    print(harness.table(
        ["requested req/s", "sent", "achieved req/s", "error", "send lag p50 ms",
         "send lag p99 ms", "send lag max ms", "scheduler lag p99 ms", "waited for cap",
         "rows ok"],
        [[rate, len(sent), achieved, f"{error:.2%}", p50 * 1000, p99 * 1000,
          max(lags) * 1000, harness.percentile(dispatch, 99) * 1000, f"{capped:.0%}",
          int((df["status"] == "ok").sum())]]))
    verdict = "met" if error <= 0.01 and p99 <= 0.005 else "NOT met"
    print(f"\ntarget (within 1%, send lag p99 < 5 ms): {verdict}; {harness.pinning_note()}; "
          f"{harness.machine()}\n", flush=True)


def scheduler_alone(rate: float, seconds: float) -> None:
    """The open-loop scheduler (`load.pace`) with nothing to send, pinned to the client core:
    what the machine's own timer and load allow, before any request work."""
    import os

    import anyio

    from runner.load import pace

    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if before is not None and len(before) > 1:
        os.sched_setaffinity(0, {harness.CLIENT_CORE})
    lags: list[float] = []

    async def fire(k: int, offset: float, lag: float) -> None:
        lags.append(lag)

    n = int(rate * seconds)
    try:
        anyio.run(lambda: pace(((k, k / rate) for k in range(n)), fire,
                               clock=anyio.current_time, stopping=lambda: False))
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)  # the sweep's processes pin themselves
    print(harness.table(["scheduler alone", "req/s", "lag p50 ms", "lag p99 ms", "lag max ms"],
                        [["no requests", rate, harness.percentile(lags, 50) * 1000,
                          harness.percentile(lags, 99) * 1000, max(lags) * 1000]]))
    print(flush=True)


def runner_sweep(port: int, tmp: Path, seconds: float) -> list[dict[str, Any]]:
    from runner.load_report import stage_table

    job = _job(tmp / "sweep.yaml", port,
               f"load: {{mode: sweep, rates: 4, duration_s: {seconds}, max_concurrency: 64}}\n",
               32, tmp / "sweep")
    subprocess.run(harness.pinned([*RUNNER, "run", str(job), "--quiet"], harness.CLIENT_CORE),
                   check=True, stdout=subprocess.DEVNULL, cwd=harness.ROOT)
    table = stage_table(_rows(tmp / "sweep"))
    assert table is not None
    return [{"stage": r["stage"][3:], "rate": r["requested_rps"],
             "done": r["request_throughput_rps"], "ttft": r["ttft_p50_s"],
             "latency": r["latency_p50_s"]} for r in table.to_dict("records")]


def guidellm_sweep(port: int, tmp: Path, seconds: float, exe: Path) -> list[dict[str, Any]]:
    data = tmp / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Answer briefly: {PROMPTS[i % 4]}",
                                        "output_tokens_count": 32}) + "\n"
                            for i in range(400)))
    out = tmp / "guidellm.json"
    subprocess.run(harness.pinned([
        str(exe), "run", "--backend",
        f"kind=openai_http,target=http://127.0.0.1:{port},model=sim/fast-mini,"
        "validate_backend=false,api_key=sim",
        "--profile", "kind=sweep,sweep_size=6,max_concurrency=64",
        "--constraint", f"kind=max_duration,seconds={seconds:g}",
        "--data", f"kind=json_file,path={data}", "--output", f"kind=json,path={out}",
        "--disable-progress"], harness.CLIENT_CORE),
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    report = json.loads(out.read_text())
    rows = []
    for bench in report.get("benchmarks", []):
        strategy = bench.get("config", {}).get("strategy") or bench.get("scheduler", {}).get(
            "strategy") or {}
        metrics = bench.get("metrics", {})
        rows.append({"stage": strategy.get("type_", "?"), "rate": strategy.get("rate"),
                     "done": _mean(metrics, "requests_per_second"),
                     "ttft": _median(metrics, "time_to_first_token_ms", 1000),
                     "latency": _median(metrics, "request_latency", 1)})
    return rows


def _stat(metrics: dict[str, Any], name: str, key: str) -> float | None:
    found = metrics.get(name, {})
    successful = found.get("successful", found) if isinstance(found, dict) else {}
    value = successful.get(key) if isinstance(successful, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _mean(metrics: dict[str, Any], name: str) -> float | None:
    return _stat(metrics, name, "mean")


def _median(metrics: dict[str, Any], name: str, per_s: float) -> float | None:
    value = _stat(metrics, name, "median")
    return value / per_s if value is not None else None


def sweep(seconds: float, use_guidellm: bool, exe: Path) -> None:
    print(f"## Sweep side by side (capacity 4 generations, 800 tok/s; {seconds:g} s stages)\n")
    with tempfile.TemporaryDirectory() as tmp_name, \
            harness.simulator("--capacity-concurrent", "4",
                              "--capacity-tokens-per-s", "800") as port:
        tmp = Path(tmp_name)
        ours = runner_sweep(port, tmp, seconds)
        theirs: list[dict[str, Any]] = []
        note = ""
        if not use_guidellm:
            note = "GuideLLM: skipped (--no-guidellm)"
        elif not exe.exists() and shutil.which(str(exe)) is None:
            note = (f"GuideLLM: not installed at {exe} (python -m venv /tmp/guidellm-venv && "
                    "/tmp/guidellm-venv/bin/pip install guidellm); skipped")
        else:
            try:
                theirs = guidellm_sweep(port, tmp, seconds, exe)
            except (subprocess.CalledProcessError, OSError, ValueError, KeyError) as exc:
                note = f"GuideLLM: failed ({type(exc).__name__}: {exc}); its half is empty"
    rows = []
    for i in range(max(len(ours), len(theirs))):
        a = ours[i] if i < len(ours) else {}
        b = theirs[i] if i < len(theirs) else {}
        rows.append([a.get("stage", "-"), _n(a.get("rate")), _n(a.get("done")),
                     _ms(a.get("ttft")), _ms(a.get("latency")), b.get("stage", "-"),
                     _n(b.get("rate")), _n(b.get("done")), _ms(b.get("ttft")),
                     _ms(b.get("latency"))])
    print(harness.table(["runner stage", "req/s asked", "req/s done", "TTFT p50 ms",
                         "latency p50 ms", "GuideLLM stage", "req/s asked", "req/s done",
                         "TTFT p50 ms", "latency p50 ms"], rows))
    if note:
        print(f"\n{note}")
    print(f"\n{harness.pinning_note()}; {harness.machine()}\n")


def _n(value: Any) -> str:
    return "-" if value is None or value != value else f"{float(value):.3g}"


def _ms(value: Any) -> str:
    return "-" if value is None or value != value else f"{float(value) * 1000:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sweep-seconds", type=float, default=4.0)
    parser.add_argument("--no-guidellm", action="store_true")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--guidellm", type=Path, default=GUIDELLM)
    args = parser.parse_args()
    accuracy(args.rate, args.seconds)
    scheduler_alone(args.rate, args.seconds)
    if not args.no_sweep:
        sweep(args.sweep_seconds, not args.no_guidellm, args.guidellm)


if __name__ == "__main__":
    main()
