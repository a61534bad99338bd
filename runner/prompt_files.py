"""Prompts files (`prompts_file:`, or `file:`): a path in, validated `PromptIn` prompts out.

- `.jsonl`, `.json`, `.csv`, `.yaml`: each row is a whole prompt: the keys of an inline prompt
  (`id`, `text` or `messages`, `system`, `expected`, `metadata`); any other key or column
  becomes one of the prompt's `vars`. A row without `text` or `messages` is an error (its file
  is data: `dataset:` sends data rows through a template).
- `.txt`: prompt texts, separated by a line `---`.
- `.json` in chat format: a list of `{role, content}` messages (one prompt), or a list of such
  lists (one prompt each).

Errors name the file and the row (`rows.csv: row 3.messages[0].role: ...`); every bad row is
reported.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .dataset_sources import load_records
from .errors import JobFileError
from .schema import PromptIn, field_names
from .sources import Problems, invalid, read_text

_FIELDS = {"id", "text", "messages", "system", "expected", "metadata"}
SUFFIXES = (".jsonl", ".json", ".csv", ".yaml", ".yml", ".txt")
SEPARATOR = "---"   # a line of its own between the prompts of a .txt file
_DATA_FILE = ("has no text or messages: a prompts file holds whole prompts; to send data rows "
              "through a template, name the file under dataset: beside text: or messages:")


def read_prompt_file(path: Path, field: str,
                     problems: Problems | None = None) -> list[tuple[int, PromptIn]]:
    """All prompts of one file with their row numbers (from 1); errors name the file, the row
    and the column. With `problems`, bad rows are added there and the good ones returned."""
    if not path.is_file():
        raise JobFileError(path, "", f"no such prompt file (named in {field}; paths are "
                           "relative to the job file)")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise JobFileError(path, "", "prompts files must end in .jsonl, .json, .csv, .yaml or "
                           ".txt")
    rows: Any
    if suffix == ".txt":
        rows = _txt(path)
    elif suffix == ".csv":
        rows = _csv(path)
    else:
        rows = load_records(path, suffix)
    if not isinstance(rows, list):
        raise JobFileError(path, "", f"must be a {'JSON' if suffix == '.json' else 'YAML'} "
                           "list of prompts")
    if suffix == ".json" and rows and _chat(rows):
        rows = [{"messages": rows}] if isinstance(rows[0], dict) else \
            [{"messages": item} for item in rows]
    if rows and all(isinstance(r, dict) and "text" not in r and "messages" not in r
                    for r in rows):  # a data file: one line, not one per row
        raise JobFileError(path, "row 1", _DATA_FILE)
    gathered = problems if problems is not None else Problems()
    out = []
    for n, row in enumerate(rows, 1):
        with gathered.gather():
            out.append((n, _row(path, n, row)))
    if problems is None:
        gathered.raise_any()
    return out


def _txt(path: Path) -> list[dict[str, Any]]:
    """Prompt texts between lines `---` (blank lines around a text are not part of it)."""
    texts: list[list[str]] = [[]]
    for line in read_text(path).splitlines():
        if line.strip() == SEPARATOR:
            texts.append([])
        else:
            texts[-1].append(line)
    out = [{"text": "\n".join(lines).strip("\n")} for lines in texts]
    return [row for row in out if row["text"].strip()]


def _chat(rows: list[Any]) -> bool:
    """Whether a JSON list is in chat format: messages, or lists of messages."""
    def message(item: Any) -> bool:
        return isinstance(item, dict) and "role" in item and "content" in item \
            and not ({"text", "messages"} & set(item))

    return all(message(r) for r in rows) or all(
        isinstance(r, list) and r and all(message(m) for m in r) for r in rows)


def _csv(path: Path) -> list[dict[str, Any]]:
    text = read_text(path)
    # a field may be a whole document: no limit below the file's own size (the default is
    # 128 KiB); the limit is process-wide, so it only ever grows
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return [{k: v for k, v in row.items() if v not in (None, "")} for row in reader]
    except csv.Error as exc:
        raise JobFileError(path, f"line {reader.line_num}", f"invalid CSV: {exc}") from None


def _row(path: Path, n: int, row: Any) -> PromptIn:
    if not isinstance(row, dict):
        raise JobFileError(path, f"row {n}", "each row must be an object/mapping")
    if "text" not in row and "messages" not in row:
        raise JobFileError(path, f"row {n}", _DATA_FILE)
    known = {k: v for k, v in row.items() if k in _FIELDS}
    variables = {str(k): v for k, v in row.items() if k not in _FIELDS}
    if "id" in known:
        known["id"] = str(known["id"])
    try:
        return PromptIn.model_validate({**known, "vars": variables})
    except ValidationError as exc:
        raise invalid(path, exc, prefix=f"row {n}", names=field_names()) from None
