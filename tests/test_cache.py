"""The response cache over real HTTP: the quickstart run twice with --cache sends nothing the
second time, cached rows never mix their timings with measured ones, repeats stay samples, no
key lands in the cache file, the gates refuse a cached run, and `runner cache info|clear`."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import runner
from runner.cache import ResponseCache
from runner.cli import main
from runner.simulator import DEFAULT_MODELS, Faults, Simulator

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-or-v1-TESTSECRET0123456789abcdef0123456789"


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "response-cache"
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[tuple[Simulator, Path]]:
    log = tmp_path / "requests.jsonl"
    fast = [dataclasses.replace(m, ttft_s=0.0, tokens_per_s=0.0, jitter_s=0.0)
            for m in DEFAULT_MODELS]
    with Simulator(fast, request_log=log) as sim:
        yield sim, log


def _sent(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _quickstart(tmp_path: Path, url: str) -> Path:
    """jobs/quickstart.yaml as shipped, its simulator replaced by one the test can watch."""
    folder = tmp_path / "job"
    shutil.copytree(ROOT / "jobs", folder)
    path = folder / "quickstart.yaml"
    text = path.read_text()
    assert "provider: simulated " in text
    path.write_text(text.replace(
        "provider: simulated ",
        f"providers:\n  sim: {{base_url: \"{url}\", openrouter: true}}\nprovider: sim ", 1))
    return path


def test_a_second_quickstart_with_cache_sends_no_request_and_says_so(
        tmp_path: Path, simulator: tuple[Simulator, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    sim, log = simulator
    path = _quickstart(tmp_path, sim.base_url)
    out = tmp_path / "results"
    assert main(["run", str(path), "--cache", "--quiet", "--out", str(out)]) == 0
    first_sent = _sent(log)
    first_out = capsys.readouterr().out
    assert first_sent > 0 and "cache: 0 of" in first_out
    billed = sim.billed_usd()
    assert main(["run", str(path), "--cache", "--quiet", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert _sent(log) == first_sent and sim.billed_usd() == billed  # nothing went out
    assert f"cache: {first_sent} of {first_sent} requests answered" in said
    assert "no request was sent" in said
    first, second = (runner.read_results(run) for run in sorted((out / "quickstart").iterdir()))
    assert not first["cache_hit"].any() and second["cache_hit"].all()
    assert (second["cost_usd"] == 0).all() and second["cost_source"].eq("cache").all()
    # the original timings in their own columns; the measured ones empty
    for column in ("latency_s", "ttft_s", "tpot_s", "output_tokens_per_s", "wall_s"):
        assert second[column].isna().all(), column
    merged = first.merge(second, on="request_id", suffixes=("", "_2"))
    assert (merged["cached_latency_s_2"] == merged["latency_s"]).all()
    assert (merged["cached_ttft_s_2"] == merged["ttft_s"]).all()
    assert (merged["cached_cost_usd_2"] == merged["cost_usd"]).all()
    assert (merged["response_text_2"] == merged["response_text"]).all()


def test_the_shipped_quickstart_is_answered_from_the_cache_the_second_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As shipped (its simulator embedded, on a new port each run)."""
    out = tmp_path / "results"
    argv = ["run", str(ROOT / "jobs" / "quickstart.yaml"), "--cache", "--quiet", "--out",
            str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    assert "no request was sent" in capsys.readouterr().out
    second = runner.read_results(sorted((out / "quickstart").iterdir())[-1])
    assert second["cache_hit"].all() and second["latency_s"].isna().all()


def test_the_cache_is_off_unless_asked(tmp_path: Path, simulator: tuple[Simulator, Path],
                                       _cache_dir: Path) -> None:
    sim, log = simulator
    path = _quickstart(tmp_path, sim.base_url)
    for _ in range(2):
        df = runner.run(path, out_dir=tmp_path / "results").rows
        assert df["cache_hit"].isna().all()
    assert _sent(log) == 2 * len(df)
    assert not _cache_dir.exists()


def test_repeats_are_never_answered_by_each_other(write_job: Callable[..., Path],
                                                  tmp_path: Path,
                                                  simulator: tuple[Simulator, Path]) -> None:
    sim, log = simulator
    path = write_job(f"""
        name: rep
        providers: {{sim: {{base_url: "{sim.base_url}", openrouter: true}}}}
        provider: sim
        models: [sim/fast-mini]
        prompts: [same question]
        params: {{max_tokens: 8, seed: 1, temperature: 0}}
        repeats: 5
        cache: true
    """)
    df = runner.run(path, out_dir=tmp_path / "results").rows
    assert _sent(log) == 5 and not df["cache_hit"].any()  # five samples, five requests
    df = runner.run(path, out_dir=tmp_path / "results").rows
    assert _sent(log) == 5 and df["cache_hit"].all()      # repeat k answered by repeat k


def test_no_key_or_credential_header_lands_in_the_cache(
        write_job: Callable[..., Path], tmp_path: Path, _cache_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CACHE_KEY", SECRET)
    echoing = [dataclasses.replace(m, ttft_s=0.0, tokens_per_s=0.0,
                                   faults=Faults(echo_text_rate=1.0)) for m in DEFAULT_MODELS]
    with Simulator(echoing) as sim:
        path = write_job(f"""
            name: keys
            providers:
              sim: {{base_url: "{sim.base_url}", openrouter: true, api_key_env: FAKE_CACHE_KEY,
                     headers: {{X-Api-Token: "{SECRET}-header"}}}}
            provider: sim
            models: [sim/fast-mini]
            prompts: [a, b, c]
            params: {{max_tokens: 8}}
            cache: true
        """)
        df = runner.run(path, out_dir=tmp_path / "results").rows
    assert df["status"].eq("ok").all()
    assert df["response_text"].str.contains("TESTSECRET").sum() == 0
    files = list(_cache_dir.iterdir())
    assert files
    for file in files:
        assert b"TESTSECRET" not in file.read_bytes(), file


def test_gates_refuse_a_run_answered_from_the_cache_unless_allowed(
        tmp_path: Path, simulator: tuple[Simulator, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    sim, _ = simulator
    path = _quickstart(tmp_path, sim.base_url)
    out = tmp_path / "results"
    argv = ["run", str(path), "--cache", "--quiet", "--out", str(out), "--baseline", "previous"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "answered from the response cache" in err and "--allow-cache" in err
    assert main([*argv, "--allow-cache"]) == 0


def test_cache_info_and_clear(tmp_path: Path, simulator: tuple[Simulator, Path],
                              capsys: pytest.CaptureFixture[str]) -> None:
    sim, log = simulator
    path = _quickstart(tmp_path, sim.base_url)
    df = runner.run(path, out_dir=tmp_path / "results", cache=True).rows
    assert main(["cache", "info"]) == 0
    assert f"{len(df)} answers" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert f"{len(df)} answers removed" in capsys.readouterr().out
    sent = _sent(log)
    runner.run(path, out_dir=tmp_path / "results", cache=True)
    assert _sent(log) == 2 * sent  # cleared: asked again


def test_the_store_stays_under_its_bound_dropping_the_least_recently_used(
        tmp_path: Path) -> None:
    store = ResponseCache(tmp_path / "c.sqlite3", max_bytes=20_000)
    store.put("keep", {"text": "x" * 100})
    for i in range(400):
        store.get("keep")  # used all along: the last to go
        store.put(f"k{i}", {"text": "y" * 100})
    info = store.info()
    assert info["bytes"] <= 20_000 + 64 * 200  # checked every CHECK_EVERY puts
    assert store.get("keep") is not None and store.get("k0") is None
    store.close()


def test_two_connections_share_one_store(tmp_path: Path) -> None:
    one = ResponseCache(tmp_path / "c.sqlite3")
    two = ResponseCache(tmp_path / "c.sqlite3")
    one.put("k", {"text": "from one"})
    assert two.get("k") == {"text": "from one"}
    assert two.info()["answers"] == 1
    one.close()
    two.close()
