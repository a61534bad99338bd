"""Imports point one way: each `runner/*.py` parsed with `ast`, its imports (lazy ones too)
checked against the layers of the house style (cli -> engine -> client; the pure stages never
import the I/O ones, nor raise the command-line's errors)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "runner"

# the stages that print, parse argv or lay out a report
PRESENTATION = {"cli", "console", "report_console", "html_report", "charts", "junit",
                "quality_gate", "compare", "catalogue_listing", "report_grid"}
# the run and its results: they talk to providers, write and read results, never present them
RUN = ("engine", "worker", "client", "providers", "collect", "catalogue", "journal", "results",
       "rundir", "resume", "manifest", "check_results")
# pure: values in, values out; no network, no files, no event loop
PURE = ("plan", "pricing", "budget", "templates", "result", "offers", "formatting", "graders",
        "judge", "grading", "transforms")
IO = {"client", "engine", "worker", "collect", "catalogue", "providers", "rundir", "journal",
      "manifest", "resume", "results", "estimate", "simulator", "aiohttp", "anyio", "openai",
      "socket", "subprocess", "urllib.request", "httpx", *PRESENTATION}


def imports(module: str) -> set[str]:
    """The modules `runner/<module>.py` imports anywhere in its body, runner's by their name
    inside the package (`runner.x.y` -> `x`), others by their full dotted name."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y / from . import x
                names = [base] if base else [alias.name for alias in node.names]
            else:
                names = [base]
        else:
            continue
        for name in names:
            if (isinstance(node, ast.ImportFrom) and node.level) or name.startswith("runner."):
                found.add(name.removeprefix("runner.").split(".")[0])
            else:
                parts = name.split(".")
                found.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return found


_OURS = {p.stem for p in PACKAGE.glob("*.py")} | {"simulator"}


def test_every_named_module_exists() -> None:
    """The lists below name real modules: a rename that forgets them fails here."""
    assert set(RUN) | set(PURE) | (IO & {p.stem for p in PACKAGE.glob("*.py")}) <= _OURS
    assert PRESENTATION <= _OURS


@pytest.mark.parametrize("module", RUN)
def test_the_run_does_not_import_the_presentation(module: str) -> None:
    assert not imports(module) & PRESENTATION


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module: str) -> None:
    assert not imports(module) & IO


def test_worker_takes_no_constants_from_resume() -> None:
    """What a row means (statuses, error types) lives in `result`, which both use."""
    assert "resume" not in imports("worker")


@pytest.mark.parametrize("module", [*PURE, "compare", "results"])
def test_pure_modules_raise_no_command_line_errors(module: str) -> None:
    """ConfigError is the command line's and the environment's; a pure function raises
    ValueError or JobFileError and the caller says which flag or file was wrong."""
    source = (PACKAGE / f"{module}.py").read_text(encoding="utf-8")
    assert "ConfigError" not in source
