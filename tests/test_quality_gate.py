"""Nightly gates on `runner run`: exit 1 with reasons when a threshold breaks, 0 when it holds,
2 for bad input; over real runs against the simulator."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from runner.cli import main

JOB = """
name: gated
provider: simulated
simulator:
  models:
    - {{id: sim/fast-mini, ttft_s: {ttft}, tokens_per_s: 0}}
models: [sim/fast-mini]
prompts:
  - {{id: anything, text: "Say something", expected: {{regex: "\\\\w+"}}}}
  - {{id: never, text: "Say nothing", expected: {{contains: "zebra-unicorn"}}}}
params: {{max_tokens: 16}}
repeats: 2
"""


def _run(path: Path, out: Path, *flags: str) -> int:
    return main(["run", str(path), "--out", str(out), "--quiet", *flags])


def test_fail_under_breaks_and_holds(write_job, results_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    path = write_job(JOB.format(ttft=0))
    assert _run(path, results_dir, "--fail-under", "0.9") == 1
    err = capsys.readouterr().err
    assert "pass rate 50.0% is under --fail-under 90.0%" in err
    assert _run(path, results_dir, "--fail-under", "0.5") == 0


def test_regression_against_the_previous_run(write_job, results_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    path = write_job(JOB.format(ttft=0.1))
    assert _run(path, results_dir, "--baseline", "previous") == 0
    assert "no previous run" in capsys.readouterr().out
    # the same model again: within a generous latency margin (this machine is noisy)
    assert _run(path, results_dir, "--baseline", "previous",
                "--max-regression", "latency=1,ttft=1") == 0
    path.write_text(JOB.format(ttft=0.5))                           # the model got 5x slower
    code = _run(path, results_dir, "--baseline", "previous", "--max-regression", "latency=1")
    err = capsys.readouterr().err
    assert code == 1 and "latency_p50_s" in err
    assert _run(path, results_dir, "--baseline", "previous",
                "--max-regression", "latency=off,ttft=off") == 0


def test_junit_xml_is_valid(write_job, results_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    junit = tmp_path / "junit.xml"
    assert _run(write_job(JOB.format(ttft=0)), results_dir, "--junit", str(junit)) == 0
    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    assert {(c.get("classname"), c.get("name")) for c in cases} == {
        ("sim/fast-mini", "anything"), ("sim/fast-mini", "never")}
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {"never"}


def test_bad_gate_flags_are_bad_input(write_job, results_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    no_checks = write_job("""
        name: plain
        provider: simulated
        models: [sim/fast-mini]
        prompts: [hi]
    """, name="plain.yaml")
    assert _run(no_checks, results_dir, "--fail-under", "0.9") == 2
    assert "no checks" in capsys.readouterr().err
    assert _run(no_checks, results_dir, "--max-regression", "latency=0.1") == 2
    assert _run(no_checks, results_dir, "--fail-under", "1.5") == 2
    assert _run(no_checks, results_dir, "--baseline", "previous",
                "--max-regression", "latency=fast") == 2
    assert not (results_dir / "plain").exists()  # nothing ran


def test_no_ttft_threshold_unless_set(write_job, results_dir, capsys) -> None:  # type: ignore[no-untyped-def]
    """The nightly gate checks what the user set and the documented defaults, nothing more:
    TTFT got 50x worse, but nobody asked for a TTFT limit and latency is switched off."""
    path = write_job(JOB.format(ttft=0.01))
    assert _run(path, results_dir, "--baseline", "previous") == 0
    path.write_text(JOB.format(ttft=0.5))
    assert _run(path, results_dir, "--baseline", "previous",
                "--max-regression", "latency=off") == 0
    assert "ttft" not in capsys.readouterr().err
    assert _run(path, results_dir, "--baseline", "previous",
                "--max-regression", "latency=off,ttft=1") == 0      # same TTFT as the last run
    path.write_text(JOB.format(ttft=1.5))                           # 3x the last run's TTFT
    code = _run(path, results_dir, "--baseline", "previous", "--max-regression",
                "latency=off,ttft=1")
    assert code == 1 and "ttft_p50_s" in capsys.readouterr().err
