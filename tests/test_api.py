"""The public surface: what `import runner` promises to a user and to a type checker."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import runner


def test_public_api_is_what_all_says() -> None:
    assert sorted(runner.__all__) == sorted(
        ["load_job", "run_job", "run", "read_results", "summarize", "read_checks",
         "__version__"])
    for name in runner.__all__:
        assert getattr(runner, name) is not None, name


def test_version_comes_from_the_package_metadata() -> None:
    assert runner.__version__ == version("runner")
    from runner.cli import main

    assert main(["--version"]) == 0


def test_the_package_ships_type_information() -> None:
    assert (Path(runner.__file__).parent / "py.typed").is_file()
