"""The README stays true: its annotated job file validates, and its commands name real flags."""

from __future__ import annotations

import re
from pathlib import Path

from runner.cli import build_parser
from runner.config import load_job
from runner.plan import Plan

README = Path(__file__).resolve().parents[1] / "README.md"


def test_annotated_job_file_is_valid(tmp_path: Path) -> None:
    text = README.read_text()
    section = text[text.index("## A job file, annotated"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    (tmp_path / "prompts").mkdir()
    qa = tmp_path / "prompts" / "qa.jsonl"
    qa.write_text('{"id": "qa1", "text": "Why is the sky blue?"}\n')
    job = load_job(_write(tmp_path / "job.yaml", block.group(1)))
    assert [m.label for m in job.models] == ["sim/fast-mini", "premium"]
    assert len(Plan(job)) > 0


def test_readme_run_flags_exist() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    known = {cmd: {opt for action in p._actions for opt in action.option_strings}
             for cmd, p in sub.choices.items()}  # type: ignore[attr-defined]
    for cmd, flags in re.findall(r"runner (run|plan|report|compare|models|simulate) ([^\n`]*)",
                                 README.read_text()):
        for flag in re.findall(r"(--[a-z-]+)", flags):
            assert flag in known[cmd], f"README: runner {cmd} {flag} does not exist"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
