"""The run directory: safe paths, run listing, the lock, atomic writes, disk errors in one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from runner.errors import ResultsError
from runner.rundir import (
    RunLock,
    disk_error,
    find_run_dir,
    latest_run,
    new_run_id,
    replacing,
    run_dir_for,
    run_dirs,
    write_atomic,
)


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "/etc"])
def test_run_dir_stays_under_the_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(ResultsError):
        run_dir_for(tmp_path / "results", name, "run-1")


def test_runs_are_listed_oldest_first_and_latest_is_the_newest(tmp_path: Path) -> None:
    job = tmp_path / "results" / "job"
    ids = sorted(new_run_id() for _ in range(3))
    for run_id in reversed(ids):
        (job / run_id).mkdir(parents=True)
        (job / run_id / "run.json").write_text("{}")
    (job / "not-a-run").mkdir()
    assert [p.name for p in run_dirs(job)] == ids
    assert latest_run(job).name == ids[-1]
    assert latest_run(job / ids[0]).name == ids[0]
    assert find_run_dir(tmp_path / "results", "job", "latest").name == ids[-1]
    with pytest.raises(ResultsError, match="no run of job 'other'"):
        find_run_dir(tmp_path / "results", "other", "latest")


def test_a_locked_run_refuses_a_second_holder_naming_the_first(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with RunLock(run_dir), pytest.raises(ResultsError, match=f"pid {os.getpid()}"), \
            RunLock(run_dir):
        pass
    with RunLock(run_dir):  # released at the end: the next process may take it
        pass


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    write_atomic(target, b"old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed half way")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


@pytest.mark.parametrize(("number", "fix"), [
    (errno.ENOSPC, "free some space"), (errno.EROFS, "read-only"),
    (errno.EACCES, "permission denied"), (errno.EFBIG, "ulimit -f"),
    (errno.ENOTDIR, "not a folder"),
])
def test_a_disk_error_is_one_line_with_the_path_and_the_fix(number: int, fix: str) -> None:
    message = str(disk_error(OSError(number, os.strerror(number)), "/results/job/run"))
    assert message.startswith("/results/job/run: cannot write: ") and fix in message
    assert "\n" not in message


def test_a_write_into_a_file_is_one_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ResultsError, match="not a folder"):
        write_atomic(blocker / "run.json", b"{}")
