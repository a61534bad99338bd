"""JUnit XML: valid XML whatever the responses hold; one case per prompt x model; failures,
skips and counts agree with the rows of a real run."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

import runner
from runner.cli import main
from runner.junit import write_junit

from .runs import bench_job, write_and_run

SCRIPT_ID = "<script>alert('x')</script>"
PREMIUM = "<b>premium</b> & co"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run: balanced errs half the time; premium is never sent (over the cost cap)."""
    root = tmp_path_factory.mktemp("junit")
    return write_and_run(root, bench_job(error_rate=0.5, cap_usd=0.0001), root / "results")


@pytest.fixture
def rows(run_dir: Path) -> pd.DataFrame:
    return runner.read_results(run_dir)


def _failed_pairs(df: pd.DataFrame) -> set[tuple[str, str]]:
    sent = df[df["status"] != "skipped"]
    bad = sent[(sent["status"] == "error") | sent["passed"].eq(False).fillna(False)]
    return {(str(m), str(p)) for m, p in zip(bad["model"], bad["prompt_id"], strict=True)}


def test_cases_counts_and_reasons(rows: pd.DataFrame, tmp_path: Path) -> None:
    root = ET.parse(write_junit(rows, tmp_path / "junit.xml")).getroot()
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 3 * 3 == int(suite.get("tests", "")) == int(root.get("tests", ""))
    by_pair = {(c.get("classname"), c.get("name")): c for c in cases}
    models = ("sim/fast-mini", "sim/balanced", PREMIUM)
    assert set(by_pair) == {(m, p) for m in models for p in ("words", SCRIPT_ID, "free")}
    failed = {pair for pair, case in by_pair.items() if case.find("failure") is not None}
    assert failed == _failed_pairs(rows)
    assert int(suite.get("failures", "")) == len(failed)
    skipped = {pair for pair, case in by_pair.items() if case.find("skipped") is not None}
    assert skipped == {(PREMIUM, p) for p in ("words", SCRIPT_ID, "free")}
    assert int(suite.get("skipped", "")) == 3
    assert "cost_cap" in (by_pair[(PREMIUM, "free")].find("skipped").get("message") or "")  # type: ignore[union-attr]
    paris = by_pair[("sim/fast-mini", SCRIPT_ID)].find("failure")
    assert paris is not None and paris.get("type") == "checks"
    assert (paris.get("message") or "").startswith("4 of 4 requests failed: equals 'Paris': got")
    assert (paris.text or "").count("\n") == 3 and "repeat 0: equals 'Paris'" in (paris.text or "")
    errored = rows[(rows["status"] == "error") & (rows["prompt_id"] == "free")]
    if len(errored):  # `free` has no checks: only request errors can fail it
        free = by_pair[("sim/balanced", "free")].find("failure")
        assert free is not None and free.get("type") == "request_error"
        assert "request failed (" in (free.text or "")
    assert by_pair[("sim/fast-mini", "free")].find("failure") is None
    assert float(suite.get("time", "")) == pytest.approx(rows["latency_s"].sum(), abs=0.01)


def test_text_xml_cannot_carry_is_replaced(rows: pd.DataFrame, tmp_path: Path) -> None:
    hostile = rows.copy()
    first = hostile.index[hostile["passed"].eq(False).fillna(False)
                          & (hostile["status"] == "ok")][0]
    hostile.loc[first, "check_failures"] = "bad \x00\x1b[31m]]> </failure> &amp; \x0b\ufffe end"
    path = write_junit(hostile, tmp_path / "junit.xml")
    texts = [f.text or "" for f in ET.parse(path).getroot().iter("failure")]
    assert any("bad \ufffd\ufffd[31m]]> </failure> &amp; \ufffd end" in t for t in texts)


def test_one_suite_per_run(rows: pd.DataFrame, tmp_path: Path) -> None:
    history = pd.concat([rows, rows.assign(run_id="z-later-run")], ignore_index=True)
    root = ET.parse(write_junit(history, tmp_path / "junit.xml")).getroot()
    suites = root.findall("testsuite")
    assert [s.get("name", "").split()[-1] for s in suites] == [rows["run_id"].iloc[0],
                                                               "z-later-run"]
    assert int(root.get("tests", "")) == 18


def test_cli_report_writes_junit(run_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ci" / "junit.xml"
    assert main(["report", str(run_dir), "--junit", str(out)]) == 0
    assert f"junit: {out}" in capsys.readouterr().out
    assert len(ET.parse(out).getroot().findall("testsuite/testcase")) == 9
