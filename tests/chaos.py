"""The chaos driver shared by tests/test_chaos.py (short, in CI) and benchmarks/bench_soak.py
(long): `ChaosSettings` in, a `ChaosOutcome` (rows, kills, the server's bill, leaks, tracebacks,
and the list of broken promises) out.

It starts `runner simulate` with every fault at once and a `--bill`, writes a job whose custom
provider has a fake secret key (`api_key_env`) and a secret header, then runs `runner run` in
subprocesses killed with SIGKILL at random moments and resumed until one ends by itself. Every
process it starts is killed and reaped before it returns, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("sim/fast-mini", "sim/premium-large")  # the first streams, the second does not
PROMPTS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")
MAX_TOKENS = 32


@dataclass(frozen=True, slots=True)
class ChaosSettings:
    seed: int = 20261126
    repeats: int = 5                # requests planned: len(MODELS) x len(PROMPTS) x repeats
    kills: int = 3                  # SIGKILLs before the last run is left to end by itself
    kill_delay_s: tuple[float, float] = (0.0, 1.2)  # a random moment after a run's first send
    fault_rate: float = 0.05        # each of the 17 faults (0.85 of requests meet one)
    budget_fraction: float = 0.4    # of the plan's worst case: the budget binds mid-run
    final_timeout_s: float = 20.0   # the last run must end by itself within this
    gzip_bomb_bytes: int = 16 << 20
    concurrency: int = 8
    tokens_per_s: float = 200.0     # 32 tokens: 0.16 s, so a kill finds requests in flight
    simulator_flags: tuple[str, ...] = ()  # more `runner simulate` flags (e.g. to turn one off)


@dataclass(slots=True)
class ChaosOutcome:
    planned: set[str]
    budget_usd: float
    runs: int = 0
    kills: int = 0
    ended_by_itself: bool = False
    returncode: int | None = None
    status: str | None = None                 # run.json's
    spent_usd: float | None = None            # run.json's budget.spent_usd: what the client counted
    row_ids: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    charges: int = 0                          # requests on the server's bill
    billed_usd: float = 0.0
    redirects_with_credentials: int = 0
    leaks: list[str] = field(default_factory=list)
    tracebacks: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        """Every broken promise, one line each (empty: all kept)."""
        out = []
        if not self.ended_by_itself:
            out.append("the last run did not end by itself in time (a day-long Retry-After? "
                       "an endless stream?)")
        elif self.returncode is None or self.returncode < 0 or self.returncode == 130:
            out.append(f"the last run ended with {self.returncode}")
        if self.status in (None, "running"):
            out.append(f"run.json status is {self.status!r} after the last run")
        ids = set(self.row_ids)
        if len(ids) != len(self.row_ids):
            out.append(f"{len(self.row_ids) - len(ids)} duplicate rows in requests.parquet")
        if ids != self.planned:
            out.append(f"rows != plan: {len(self.planned - ids)} planned requests have no row, "
                       f"{len(ids - self.planned)} rows were not planned")
        if self.billed_usd > self.budget_usd + 1e-12:
            out.append(f"the server billed ${self.billed_usd:.6f} > budget ${self.budget_usd:.6f}")
        if self.spent_usd is not None and self.spent_usd < self.billed_usd - 1e-9:
            out.append(f"the client counted ${self.spent_usd:.6f} spent, the server billed "
                       f"${self.billed_usd:.6f}")
        if self.redirects_with_credentials:
            out.append(f"{self.redirects_with_credentials} redirected requests carried "
                       "credentials to another origin")
        out += [f"secret leaked: {leak}" for leak in self.leaks]
        out += [f"traceback in {where}" for where in self.tracebacks]
        return out


def worst_case_usd(repeats: int) -> float:
    """The plan's worst case at the simulator's list prices (every request at max_tokens)."""
    from runner.simulator import DEFAULT_MODELS
    from runner.simulator.text import count_prompt_tokens
    from runner.simulator.wire import cost_usd

    prices = {m.id: m for m in DEFAULT_MODELS}
    return repeats * sum(
        cost_usd(prices[model], count_prompt_tokens([{"role": "user", "content": p}]),
                 MAX_TOKENS)
        for model in MODELS for p in PROMPTS)  # fmt: skip


def wait_for(predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Poll for a condition another process brings about (not a sleep standing in for it)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Processes:
    """Every process started, killed and reaped at exit: none is ever left behind."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._files: list[IO[bytes]] = []

    def start(self, cmd: list[str], log: Path, env: dict[str, str] | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        err = log.with_suffix(".err").open("wb")
        out = log.with_suffix(".out").open("wb") if stdout is None else None
        self._files += [f for f in (err, out) if f is not None]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=err,
                                stdout=out if out is not None else stdout)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for f in self._files:
            f.close()


@contextlib.contextmanager
def _simulator(procs: Processes, settings: ChaosSettings, work: Path) -> Iterator[str]:
    """`runner simulate` with every fault on; yields its URL; SIGTERM at the end (every request
    still open is cut and billed before it exits)."""
    proc = procs.start(
        [sys.executable, "-m", "runner", "simulate", "--port", "0", "--seed", str(settings.seed),
         "--ttft-s", "0.01", "--tokens-per-s", str(settings.tokens_per_s),
         "--all-faults", str(settings.fault_rate), "--retry-after-s", "0.5",
         "--gzip-bomb-bytes", str(settings.gzip_bomb_bytes),
         "--bill", str(work / "bill.jsonl"), "--request-log", str(work / "arrivals.jsonl"),
         *settings.simulator_flags],
        work / "logs" / "simulator", stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if " at " not in line:
        raise RuntimeError(f"the simulator did not start: {line!r}")
    try:
        yield line.split(" at ")[1].split(",")[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _job(path: Path, url: str, settings: ChaosSettings, header: str, budget_usd: float) -> Path:
    path.write_text(textwrap.dedent(f"""\
        name: chaos
        providers:
          chaos:
            base_url: "{url}"
            openrouter: true
            api_key_env: CHAOS_API_KEY
            headers: {{X-Chaos-Secret: "{header}"}}
        provider: chaos
        models:
          - sim/fast-mini
          - {{id: sim/premium-large, params: {{stream: false}}}}
        prompts: {list(PROMPTS)}
        params: {{max_tokens: {MAX_TOKENS}, stream: true}}
        repeats: {settings.repeats}
        budget_usd: {budget_usd!r}
        limits: {{concurrency: {settings.concurrency}, timeout_s: 2, stall_timeout_s: 0.5,
                  retries: 2, max_retry_wait_s: 2, max_stream_events: 1000,
                  max_response_bytes: 1048576}}
    """))
    return path


def run_chaos(settings: ChaosSettings, work: Path,
              on_run: Callable[[int, str], None] | None = None) -> ChaosOutcome:
    """Run the whole scenario in `work` (results, logs, bill) and check what it left."""
    import runner
    from runner.plan import Plan

    started = time.monotonic()
    rng = random.Random(settings.seed)
    key = f"sk-or-v1-CHAOS{rng.getrandbits(128):032x}"
    header = f"chaos-hdr-{rng.getrandbits(96):024x}"
    secrets = {"the API key": key, "the key's random part": key[-32:],
               "the secret header value": header, "the header's random part": header[-24:]}
    logs, results = work / "logs", work / "results"
    logs.mkdir(parents=True, exist_ok=True)
    results.mkdir(exist_ok=True)
    budget_usd = round(settings.budget_fraction * worst_case_usd(settings.repeats), 8)
    env = {**os.environ, "CHAOS_API_KEY": key, "PYTHONUNBUFFERED": "1"}
    procs = Processes()
    try:
        with _simulator(procs, settings, work) as url:
            path = _job(work / "chaos.yaml", url, settings, header, budget_usd)
            outcome = ChaosOutcome({r.request_id for r in Plan(runner.load_job(path))},
                                   budget_usd)
            for attempt in range(settings.kills + 1):
                args = [str(path), "--out", str(results), "--quiet"]
                sent_before = _lines(work / "arrivals.jsonl")
                proc = procs.start([sys.executable, "-m", "runner", "run", *args,
                                    *(["--resume", "latest"] if attempt else [])],
                                   logs / f"run-{attempt}", env=env)
                outcome.runs += 1
                if attempt < settings.kills:
                    # this process has sent its first request (or has ended)
                    wait_for(lambda p=proc, n=sent_before:  # type: ignore[misc]
                             _lines(work / "arrivals.jsonl") > n or p.poll() is not None,
                             timeout_s=10.0)
                    time.sleep(rng.uniform(*settings.kill_delay_s))  # a random moment, no wait
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                        outcome.kills += 1
                        if on_run is not None:
                            on_run(attempt, "killed")
                        continue
                else:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=settings.final_timeout_s)
                outcome.ended_by_itself = proc.poll() is not None
                outcome.returncode = proc.poll()
                if on_run is not None:
                    on_run(attempt, f"ended by itself ({outcome.returncode})"
                           if outcome.ended_by_itself else "did not end in time")
                break
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        procs.close()
    _inspect(outcome, work, results, secrets)
    outcome.seconds = time.monotonic() - started
    return outcome


def _lines(path: Path) -> int:
    """Lines in a file another process appends to (0 before it exists)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _inspect(outcome: ChaosOutcome, work: Path, results: Path, secrets: dict[str, str]) -> None:
    """Read back what the runs left: rows, run.json, the bill, leaks and tracebacks."""
    import pandas as pd

    from runner.simulator import read_bill, total_usd

    runs = sorted((results / "chaos").glob("*/run.json"))
    if runs:
        run_dir = runs[-1].parent
        with contextlib.suppress(OSError, ValueError):
            manifest = json.loads(runs[-1].read_text())
            outcome.status = manifest.get("status")
            spent = (manifest.get("budget") or {}).get("spent_usd")
            outcome.spent_usd = float(spent) if isinstance(spent, int | float) else None
        if (run_dir / "requests.parquet").is_file():
            df = pd.read_parquet(run_dir / "requests.parquet")
            outcome.row_ids = [str(i) for i in df["request_id"]]
            outcome.statuses = {str(k): int(v) for k, v in df["status"].value_counts().items()}
    bill_path = work / "bill.jsonl"
    charges = read_bill(bill_path) if bill_path.is_file() else []
    outcome.charges = len(charges)
    outcome.billed_usd = total_usd(charges)
    outcome.redirects_with_credentials = sum(
        c["outcome"] == "redirect_target_credentials" for c in charges)
    for file in sorted(p for p in [*results.rglob("*"), *(work / "logs").glob("*")]
                       if p.is_file()):
        where = file.relative_to(work)
        found = {name for text in _texts(file) for name, secret in secrets.items()
                 if secret in text}
        if found:
            outcome.leaks.append(f"{', '.join(sorted(found))} in {where}")
        if file.suffix == ".err" and "Traceback" in file.read_text(errors="replace"):
            outcome.tracebacks.append(str(where))


def _texts(file: Path) -> Iterator[str]:
    """A file's bytes as text, and for a Parquet file every cell too (its pages are compressed,
    so a secret in them would not show in the bytes)."""
    data = file.read_bytes()
    yield data.decode("utf-8", errors="replace")
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        with contextlib.suppress(Exception):  # a part file cut off by SIGKILL: bytes only
            table: Any = pq.read_table(file)
            yield json.dumps(table.to_pylist(), default=str)
