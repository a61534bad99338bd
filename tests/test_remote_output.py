"""Output to a filesystem URL (`runner.remote`): URLs that may be stored, a run's files copied to
and from an S3 server on loopback and read back as one dataset, and the one-line refusals (a
local run given a URL, a URL holding a key). The Ray runs writing to S3 are in test_ray.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import runner
from runner.cli import main
from runner.errors import ResultsError
from runner.remote import Remote, check_url, child, is_url, publish_run

from .s3 import FAKE_AWS, s3_prefix

JOB = """
name: remote
provider: simulated
simulator:
  models:
    - {{id: sim/fast-mini, ttft_s: 0, tokens_per_s: 0}}
models: [sim/fast-mini]
vars: {{n: [1, 2, 3]}}
prompts:
  - {{id: a, text: "Count to {{{{ n }}}}"}}
params: {{max_tokens: 8}}
repeats: 2
{extra}
"""


@pytest.fixture
def s3_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)
    with s3_prefix() as url:
        yield url


@pytest.mark.parametrize(("text", "url"), [
    ("s3://bucket/prefix", True), ("gs://b/p", True), ("hdfs://nn:8020/p", True),
    ("results", False), ("/tmp/results", False), ("file:///tmp/results", False),
    ("C:/results", False),
])
def test_what_is_a_url(text: str, url: bool) -> None:
    assert is_url(text) is url


@pytest.mark.parametrize(("url", "says"), [
    ("s3://KEYID:SECRETX@bucket/p", "user:key@"),
    ("s3://bucket/p?endpoint_override=h:1&secret_key=SECRETX", "secret_key="),
    ("s3://bucket/p?session_token=SECRETX", "session_token="),
    ("s3://", "names no bucket"),
])
def test_a_url_that_cannot_be_stored_is_refused(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        check_url(url)
    assert "SECRETX" not in str(caught.value)


def test_child_keeps_the_query() -> None:
    assert child("s3://b/p?endpoint_override=h:9&scheme=http", "job", "run") == \
        "s3://b/p/job/run?endpoint_override=h:9&scheme=http"
    assert child("s3://b/p/", "job") == "s3://b/p/job"


def test_a_published_run_reads_back_from_s3(write_job: Callable[..., Path], results_dir: Path,
                                            s3_url: str, tmp_path: Path) -> None:
    outcome = runner.run(write_job(JOB.format(extra="")), out_dir=results_dir)
    run_url = child(s3_url, "remote", outcome.run_id)
    publish_run(outcome.run_dir, Remote(run_url))
    local = runner.read_results(outcome.run_dir)
    remote = runner.read_results(run_url)
    assert len(remote) == 6
    assert remote.astype(str).values.tolist() == local.astype(str).values.tolist()
    assert len(runner.read_results(child(s3_url, "remote"))) == 6   # the job's folder
    assert Remote(child(s3_url, "remote")).folders() == [outcome.run_id]
    names = {p.name for p in Remote(run_url).pull(tmp_path / "copy")}
    assert {"run.json", "requests.parquet", "summary.csv"} <= names and ".lock" not in names
    with pytest.raises(ResultsError, match="no such results folder"):
        runner.read_results(child(s3_url, "nothing-here"))


def test_a_local_run_refuses_a_url_output(write_job: Callable[..., Path], results_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write_job(JOB.format(extra='output: {dir: "s3://bucket/prefix"}'))
    assert main(["validate", str(path)]) == 0   # valid: a Ray run writes there
    capsys.readouterr()
    code = main(["run", str(path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--ray" in err and "s3://bucket/prefix" in err
    assert len(err.strip().splitlines()) == 1
    assert not list(Path.cwd().glob("s3*"))   # no folder named after the URL
    plain = write_job(JOB.format(extra=""))
    assert main(["run", str(plain), "--quiet", "--out", "s3://bucket/prefix"]) == 2
    err = capsys.readouterr().err
    assert "only a Ray run" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(runner.errors.ConfigError, match="only a Ray run"):
        runner.run(plain, out_dir="s3://bucket/prefix")
    assert runner.run(plain, out_dir=str(results_dir)).status == "completed"  # text: a folder


@pytest.mark.parametrize("url", ["s3://AKIAX:SECRETX@bucket/prefix",
                                 "s3://bucket/prefix?secret_key=SECRETX&access_key=AKIAX"])
def test_a_url_holding_a_key_is_refused(write_job: Callable[..., Path], url: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_job(JOB.format(extra=f'output: {{dir: "{url}"}}'))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "output.dir" in err and "environment" in err and "SECRETX" not in err
    assert main(["run", str(write_job(JOB.format(extra=""))), "--ray", "--out", url]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "environment" in err and "SECRETX" not in err
