"""The benchmark scripts run and print their tables (a smoke run: no timing is asserted here;
timing claims live in the benchmarks' own output)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN_ALL = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"


def test_quick_run_prints_the_throughput_and_startup_tables() -> None:
    out = subprocess.run([sys.executable, str(RUN_ALL), "--quick", "--only", "throughput",
                          "startup"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "## Throughput" in text and "## Start-up" in text
    for row in ("| bare aiohttp, readline", "| runner.run_job", "| openai SDK",
                "| python -c pass", "| runner --help"):
        assert row in text, f"missing table row {row!r} in:\n{text}"


def test_wholeprocess_prints_the_runner_and_bare_times_and_the_first_request() -> None:
    script = RUN_ALL.with_name("bench_wholeprocess.py")
    out = subprocess.run([sys.executable, str(script), "--sizes", "1", "--rounds", "1",
                          "--no-promptfoo"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "## Whole process" in out.stdout and "| 1        |" in out.stdout
    assert "time to first request" in out.stdout and "runner" in out.stdout
