"""Prompt files: a `.jsonl`, `.csv` or `.yaml` path in, validated `PromptIn` rows out.

Each row is a prompt: the keys of an inline prompt (`id`, `text` or `messages`, `system`,
`expected`, `metadata`); any other key or column becomes one of the prompt's `vars`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import JobFileError
from .schema import PromptIn

_FIELDS = {"id", "text", "messages", "system", "expected", "metadata"}


def read_prompt_file(path: Path, field: str) -> list[PromptIn]:
    """All prompts of one file; errors name the file, the row and the column."""
    if not path.is_file():
        raise JobFileError(path, "", f"no such prompt file (named in {field}; paths are "
                           "relative to the job file)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = _jsonl(path)
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as fh:
                rows = [{k: v for k, v in row.items() if v not in (None, "")}
                        for row in csv.DictReader(fh)]
        elif suffix in {".yaml", ".yml"}:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(loaded, list):
                raise JobFileError(path, "", "must be a YAML list of prompts")
            rows = loaded
        else:
            raise JobFileError(path, "", "prompt files must end in .jsonl, .csv or .yaml")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise JobFileError(path, "", f"{line}invalid YAML") from None
    except UnicodeDecodeError:
        raise JobFileError(path, "", "not UTF-8 text") from None
    return [_row(path, n, row) for n, row in enumerate(rows, 1)]


def _jsonl(path: Path) -> list[Any]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise JobFileError(path, f"line {n}", f"invalid JSON: {exc.msg}") from None
    return rows


def _row(path: Path, n: int, row: Any) -> PromptIn:
    if not isinstance(row, dict):
        raise JobFileError(path, f"row {n}", "each row must be an object/mapping")
    known = {k: v for k, v in row.items() if k in _FIELDS}
    variables = {str(k): v for k, v in row.items() if k not in _FIELDS}
    if "id" in known:
        known["id"] = str(known["id"])
    try:
        return PromptIn.model_validate({**known, "vars": variables})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise JobFileError(path, f"row {n}" + (f".{loc}" if loc else ""), msg) from None
