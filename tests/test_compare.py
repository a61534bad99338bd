"""Comparisons: thresholds parse or name the flag; relative/absolute regression rules; a real run
made slower, dearer and flakier is flagged on exactly those metrics; `runner compare` exits 1 on
a regression and 0 without one; the defaults are the documented ones."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import runner
from runner.cli import main
from runner.compare import (
    Thresholds,
    compare,
    defaults_text,
    flips,
    parse_thresholds,
    regressions,
)

from .conftest import ROOT
from .runs import bench_job, write_and_run


@pytest.mark.parametrize(("text", "expected"), [
    ("", Thresholds()),
    ("latency=0.5", Thresholds(latency=0.5)),
    (" cost = 10% , pass_rate=0.02 ", Thresholds(cost=0.1, pass_rate=0.02)),
    ("ttft=off,error_rate=none", Thresholds(ttft=None, error_rate=None)),
    ("latency=0", Thresholds(latency=0.0)),
])
def test_parse_thresholds(text: str, expected: Thresholds) -> None:
    assert parse_thresholds(text) == expected


@pytest.mark.parametrize(("text", "says"), [
    ("latncy=0.2", "'latncy=0.2': expected METRIC=LIMIT"),
    ("latency", "expected METRIC=LIMIT"),
    ("cost=-1", "cost: limit must be a number >= 0"),
    ("cost=cheap", "cost: limit must be a number >= 0"),
    ("cost=nan", "cost: limit must be"),
])
def test_bad_thresholds_name_the_flag(text: str, says: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError) as info:   # pure: the caller names the flag
        parse_thresholds(text)
    assert says in str(info.value)
    assert main(["compare", str(tmp_path), str(tmp_path), "--max-regression", text]) == 2
    err = capsys.readouterr().err
    assert err.startswith("runner: error: --max-regression: ") and says in err


def _rows(model: str, latency_s: list[float], cost_usd: float = 0.001,
          errors: int = 0, passed: list[bool] | None = None) -> pd.DataFrame:
    """Rows with just the columns `summarize` reads (for the pure threshold rules)."""
    n = len(latency_s)
    status = ["ok"] * n + ["error"] * errors
    return pd.DataFrame({
        "model": pd.Categorical([model] * (n + errors)), "status": status,
        "latency_s": latency_s + [math.nan] * errors, "ttft_s": latency_s + [math.nan] * errors,
        "tpot_s": math.nan, "output_tokens_per_s": math.nan, "prompt_tokens": 1,
        "completion_tokens": 1, "cost_usd": [cost_usd] * n + [0.0] * errors,
        "passed": pd.array((passed or [True] * n) + [False] * errors, dtype="boolean"),
    })


# metric, baseline rows, current rows, regressed under default thresholds
RULES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("latency_p50_s", {"latency_s": [1.0] * 4}, {"latency_s": [1.19] * 4}, False),
    ("latency_p50_s", {"latency_s": [1.0] * 4}, {"latency_s": [1.21] * 4}, True),
    ("latency_p50_s", {"latency_s": [1.0] * 4}, {"latency_s": [0.5] * 4}, False),  # faster
    ("cost_per_request_usd", {"latency_s": [1.0]}, {"latency_s": [1.0], "cost_usd": 0.00111},
     True),
    ("cost_per_request_usd", {"latency_s": [1.0], "cost_usd": 0.0},
     {"latency_s": [1.0], "cost_usd": 0.0001}, True),                       # free -> paid
    ("cost_per_request_usd", {"latency_s": [1.0]}, {"latency_s": [1.0], "cost_usd": 0.00105},
     False),
    ("error_rate", {"latency_s": [1.0] * 20}, {"latency_s": [1.0] * 19, "errors": 1}, False),
    ("error_rate", {"latency_s": [1.0] * 20}, {"latency_s": [1.0] * 18, "errors": 2}, True),
    ("pass_rate", {"latency_s": [1.0] * 20}, {"latency_s": [1.0] * 20,
                                               "passed": [True] * 19 + [False]}, False),
    ("pass_rate", {"latency_s": [1.0] * 20}, {"latency_s": [1.0] * 20,
                                               "passed": [True] * 18 + [False] * 2}, True),
]


@pytest.mark.parametrize(("metric", "a", "b", "regressed"), RULES)
def test_regression_rules(metric: str, a: dict[str, Any], b: dict[str, Any],
                          regressed: bool) -> None:
    table = compare(_rows("m", **a), _rows("m", **b))
    row = table[table["metric"] == metric].iloc[0]
    assert bool(row["regressed"]) is regressed
    assert any(line.startswith(f"m: {metric} ") for line in regressions(table)) is regressed


def test_a_model_on_one_side_only_is_not_flagged() -> None:
    table = compare(_rows("old", [1.0]), _rows("new", [9.0]))
    assert set(table["model"]) == {"old", "new"} and not table["regressed"].any()
    assert table.loc[table["model"] == "new", "baseline"].isna().all()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A baseline run and a run where balanced is slower and flakier and premium dearer."""
    root = tmp_path_factory.mktemp("compare")
    baseline = write_and_run(root / "a", bench_job(max_latency_s=0.2), root / "results")
    current = write_and_run(root / "b", bench_job(ttft_s=0.3, error_rate=0.6,
                                                  premium_usd_per_mtok=60, max_latency_s=0.2),
                            root / "results")
    return baseline, current


def test_real_runs_flag_what_got_worse(two_runs: tuple[Path, Path]) -> None:
    baseline, current = (runner.read_results(p) for p in two_runs)
    table = compare(baseline, current, Thresholds(latency=0.5, ttft=0.5))
    flagged = {(r["model"], r["metric"]) for r in table[table["regressed"]].to_dict("records")}
    assert {("sim/balanced", "latency_p50_s"), ("sim/balanced", "ttft_p50_s"),
            ("sim/balanced", "error_rate"), ("sim/balanced", "pass_rate"),
            ("<b>premium</b> & co", "cost_per_request_usd")} <= flagged
    steady = {(m, metric) for m in ("sim/fast-mini", "<b>premium</b> & co")
              for metric in ("error_rate", "pass_rate")} | {
        ("sim/fast-mini", "cost_per_request_usd")}
    assert not steady & flagged
    premium = table[(table["model"] == "<b>premium</b> & co")
                    & (table["metric"] == "cost_per_request_usd")].iloc[0]
    assert premium["current"] > 3 * premium["baseline"]
    reasons = regressions(table)
    assert any(r.startswith("sim/balanced: error_rate 0.0% -> ") and "limit +5.0 points" in r
               for r in reasons)
    assert any(r.startswith("<b>premium</b> & co: cost_per_request_usd $") and "limit +10%" in r
               for r in reasons)


def test_cli_compare_exits_1_on_a_regression(two_runs: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(two_runs[0]), str(two_runs[1]),
                 "--max-regression", "latency=50%"]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED" in out and "regression(s):" in out
    assert "sim/balanced: error_rate" in out and "<b>premium</b> & co" in out
    # a job directory alone: its latest run against the one before
    job_dir = tmp_path / "bench"
    shutil.copytree(two_runs[0], job_dir / "20200101T000000Z-aaaa")
    shutil.copytree(two_runs[1], job_dir / "20200101T000001Z-bbbb")
    assert main(["compare", str(job_dir)]) == 1
    assert "bench/20200101T000001Z-bbbb against baseline bench/20200101T000000Z-aaaa" \
        in capsys.readouterr().out.replace("\n", " ").replace("  ", " ")


def test_cli_compare_exits_0_without_a_regression(two_runs: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # the same run against itself, and a worse run with every limit switched off
    assert main(["compare", str(two_runs[0]), str(two_runs[0])]) == 0
    assert "no regressions" in capsys.readouterr().out
    assert main(["compare", str(two_runs[0]), str(two_runs[1]), "--max-regression",
                 "latency=off,ttft=off,cost=off,error_rate=off,pass_rate=off"]) == 0
    assert "no regressions" in capsys.readouterr().out


def test_ttft_is_not_checked_unless_asked_for() -> None:
    base = _rows("m", [1.0] * 4)
    slow_start = base.assign(ttft_s=3.0)     # TTFT tripled, latency the same
    assert regressions(compare(base, slow_start)) == []
    assert regressions(compare(base, slow_start, parse_thresholds("latency=0.5"))) == []
    flagged = regressions(compare(base, slow_start, parse_thresholds("ttft=0.5")))
    assert [line.split(" (")[0] for line in flagged] == ["m: ttft_p50_s 1.000s -> 3.000s"]
    assert "(+200.0%, limit +50%)" in flagged[0]


def test_the_defaults_are_documented(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert defaults_text() == ("latency=0.2,cost=0.1,error_rate=0.05,pass_rate=0.05 "
                               "(ttft, flips off)")
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "`latency=0.2,cost=0.1,error_rate=0.05,pass_rate=0.05`" in readme
    assert "TTFT is not checked unless" in readme
    assert "`flips` is off unless you name it" in readme
    monkeypatch.setenv("COLUMNS", "200")     # help text on one line: no wrapped token
    for command in ("run", "compare"):
        assert main([command, "--help"]) == 0
        assert defaults_text() in " ".join(capsys.readouterr().out.split()), command


def test_cli_compare_bad_input_exits_2(two_runs: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(two_runs[0]), str(two_runs[1]), "--max-regression",
                 "speed=1"]) == 2
    assert "--max-regression: 'speed=1'" in capsys.readouterr().err
    assert main(["compare", str(two_runs[0])]) == 2
    assert "holds 1 run(s)" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope"), str(two_runs[1])]) == 2
    assert "nope: no such results folder" in capsys.readouterr().err


# --- issue 12: which prompts flipped -----------------------------------------------------------

def _graded(model: str, lines: dict[tuple[str, str], list[bool | None]]) -> pd.DataFrame:
    """Rows of one model: (prompt id, vars json) -> the passed of each repeat."""
    records = [{"model": model, "prompt_id": p, "vars_json": v, "status": "ok",
                "passed": passed, "check_failures": None if passed is not False
                else f"{p} is wrong", "latency_s": 1.0, "ttft_s": 1.0, "tpot_s": math.nan,
                "output_tokens_per_s": math.nan, "prompt_tokens": 1, "completion_tokens": 1,
                "cost_usd": 0.001}
               for (p, v), repeats in lines.items() for passed in repeats]
    df = pd.DataFrame(records)
    df["model"] = df["model"].astype("category")
    df["passed"] = df["passed"].astype("boolean")
    return df


def test_flips_list_prompt_rows_whose_pass_fail_changed() -> None:
    before = _graded("m", {("a", "{}"): [True, True], ("b", '{"x": 1}'): [True],
                           ("b", '{"x": 2}'): [False], ("c", "{}"): [None],
                           ("d", "{}"): [True]})
    after = _graded("m", {("a", "{}"): [True, False],            # one repeat failed: fails
                          ("b", '{"x": 1}'): [True], ("b", '{"x": 2}'): [True],   # fixed
                          ("c", "{}"): [False],                  # was not graded: no flip
                          ("d", "{}"): [None]})                  # not graded now: no flip
    table = flips(before, after)
    assert table[["prompt_id", "vars_json", "baseline", "current", "change"]].values.tolist() \
        == [["a", "{}", "pass", "fail", "regressed"], ["b", '{"x": 2}', "fail", "pass", "fixed"]]
    assert table.iloc[0]["check_failures"] == "a is wrong"
    # the limit: off by default, flips=0 makes one flip a regression
    assert regressions(compare(before, after, Thresholds(pass_rate=None))) == []
    found = regressions(compare(before, after, Thresholds(pass_rate=None, flips=0)))
    assert found == ["m: 1 prompt x row line(s) flipped from pass to fail (limit 0)"]
    assert regressions(compare(before, after, Thresholds(pass_rate=None, flips=1))) == []
    assert parse_thresholds("flips=0").flips == 0


def test_cli_compare_lists_flips_and_gates_on_them(two_runs: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    table = flips(*(runner.read_results(p) for p in two_runs))
    worse = table[table["change"] == "regressed"]
    assert len(worse) and set(worse["model"]) == {"sim/balanced"}   # slower and flakier
    off = "latency=off,ttft=off,cost=off,error_rate=off,pass_rate=off"
    assert main(["compare", str(two_runs[0]), str(two_runs[1]), "--max-regression", off]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{len(worse)} prompt x row line(s) went from pass to fail" in out
    assert main(["compare", str(two_runs[0]), str(two_runs[1]), "--max-regression",
                 off + ",flips=0"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"sim/balanced: {len(worse)} prompt x row line(s) flipped from pass to fail" in out
