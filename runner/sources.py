"""Job-file sources: a path in, its text or YAML data out, and every YAML or pydantic error out as
`JobFileError` lines of one format: `path: field.path[0].x: message (got value)`.

This is the one place that reads the text of a job or prompt file (a UTF-8 byte-order mark is
dropped, as spreadsheet programs write one) and the one translation of library errors, so an
inline prompt and a prompt-file row report the same mistake the same way.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import JobFileError, JobFileErrors

# aliases may add this many YAML nodes beyond those written out: a few anchors for shared
# params are fine; `&a [*b, *b, ...]` nested a few times (a "billion laughs") is not
MAX_ALIAS_NODES = 100_000
ALIAS_GROWTH = 10   # ...or this many times the nodes written, for big files


def read_text(path: Path) -> str:
    """A file's text as UTF-8, without a leading byte-order mark."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JobFileError(path, "", f"not UTF-8 text (byte {exc.start}): save it as "
                           "UTF-8") from None
    except OSError as exc:
        raise JobFileError(path, "", f"cannot read it ({exc.strerror or exc})") from None


def load_yaml(path: Path, text: str | None = None) -> Any:
    """The data of a YAML file (or of `text`, read from it), aliases bounded."""
    try:
        return yaml.load(read_text(path) if text is None else text, Loader=_BoundedLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise JobFileError(path, "", f"{line}invalid YAML: {problem}") from None
    except RecursionError:
        raise JobFileError(path, "", "invalid YAML: nested too deeply") from None


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose aliases expand beyond MAX_ALIAS_NODES or
    refer to themselves, before anything is built from them."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None:
            _check_expansion(node)
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes of the document as if every alias were written out (iteratively: a
    deep document must not exhaust the stack)."""
    cap = 1 << 62   # counts saturate here instead of growing without bound
    size: dict[int, int] = {}
    open_nodes: set[int] = set()   # on the path from the root: an alias to one is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_nodes.discard(key)
            size[key] = min(cap, 1 + sum(size[id(child)] for child in _children(node)))
            continue
        if key in size:
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise yaml.constructor.ConstructorError(
                    None, None, "an alias refers to a node that contains it (recursive alias)",
                    child.start_mark)
            if id(child) not in size:
                stack.append((child, False))
    # a big file may reuse big anchors; a small one may not grow a hundredfold
    limit = max(MAX_ALIAS_NODES, ALIAS_GROWTH * len(size))
    if size[id(root)] - len(size) > limit:
        raise yaml.constructor.ConstructorError(
            None, None, f"aliases expand to more than {limit:,} extra nodes (an alias "
            "bomb?): write the values out or use fewer aliases", root.start_mark)


# --- pydantic ---------------------------------------------------------------------------------

# pydantic puts the union member it tried into the location: "str", "ModelIn",
# "function-after[_one_source(), PromptIn]", "list[union[...]]"; user keys ("Local") stay
_SCALAR_TAGS = {"str", "int", "float", "bool"}


def _model_tag(part: object, models: Collection[str]) -> bool:
    return isinstance(part, str) and (part in models or part.startswith("function-"))


def _union_tag(part: object, models: Collection[str]) -> bool:
    return isinstance(part, str) and (part in _SCALAR_TAGS or _model_tag(part, models)
                                      or part.startswith(("list[", "dict[")))


def field_path(parts: tuple[int | str, ...], prefix: str = "") -> str:
    """`("models", 1, "params")` as `models[1].params`, after `prefix` (e.g. `row 3`)."""
    out = prefix
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _kept(exc: ValidationError) -> Iterator[tuple[Any, tuple[int | str, ...]]]:
    """The errors worth showing, each with its location without union tags: an error inside a
    mapping given for `str | Model` wins over "not a string" for the same place."""
    from .schema import model_names

    models = model_names()
    errors = exc.errors()
    inside: set[tuple[Any, ...]] = set()   # union sites where a mapping branch has errors
    for err in errors:
        loc = tuple(err["loc"])
        if err["type"] != "model_type":
            inside.update(loc[:k] for k, p in enumerate(loc) if _model_tag(p, models))
        # ...or where a list branch got past its type check (`str | list[str | Part]`)
        inside.update(loc[:k] for k, p in enumerate(loc[:-1])
                      if isinstance(p, str) and p.startswith("list["))
    for err in errors:
        loc = tuple(err["loc"])
        tags = [k for k, p in enumerate(loc) if _union_tag(p, models)]
        if tags and loc[:tags[0]] in inside and not (
                err["type"] != "model_type" and _model_tag(loc[tags[0]], models)):
            continue   # the scalar branch of a union whose mapping branch says more
        if loc and isinstance(loc[-1], str) and not _model_tag(loc[-1], models) \
                and _union_tag(loc[-1], models) and loc[:-1] in inside:
            continue   # a branch's type mismatch where another branch says more
        yield err, tuple(p for p in loc if not _union_tag(p, models))


def locations(exc: ValidationError) -> list[tuple[int | str, ...]]:
    """Where the errors `translate` reports are, as key/index paths into the input."""
    return [loc for _, loc in _kept(exc)]


def translate(path: Path, exc: ValidationError, *, prefix: str = "",
              names: Collection[str] = (), unknown_hint: str = "remove it or check the README",
              ) -> list[JobFileError]:
    """Every error of a failed validation as a JobFileError (one per field); `names` are the
    keys the "did you mean" hint may suggest."""
    out: dict[str, JobFileError] = {}
    for err, loc in _kept(exc):
        where = field_path(loc, prefix)
        if where not in out:
            out[where] = JobFileError(path, where, _problem(err, loc, names, unknown_hint))
    return list(out.values())


def invalid(path: Path, exc: ValidationError, *, prefix: str = "",
            names: Collection[str] = (), unknown_hint: str = "remove it or check the README",
            ) -> JobFileError:
    """`translate` as one exception to raise: the error, or JobFileErrors holding them all."""
    errors = translate(path, exc, prefix=prefix, names=names, unknown_hint=unknown_hint)
    return errors[0] if len(errors) == 1 else JobFileErrors(errors)


def _problem(err: Any, loc: tuple[int | str, ...], names: Collection[str],
             unknown_hint: str) -> str:
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]) if loc else "?", names, n=1)
        return f"unknown key ({f'did you mean {close[0]!r}?' if close else unknown_hint})"
    if err["type"] == "missing":
        return "required field is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    shown = repr(value) if isinstance(value, str | int | float | bool) else ""
    if shown and "got" not in msg:
        msg += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    return msg[:1].lower() + msg[1:]


# --- gathering --------------------------------------------------------------------------------

class Problems:
    """The JobFileErrors of one load, gathered so that `validate` shows all of them at once."""

    __slots__ = ("errors", "_seen")

    def __init__(self) -> None:
        self.errors: list[JobFileError] = []
        self._seen: set[str] = set()

    def add(self, error: JobFileError) -> None:
        for one in error.errors if isinstance(error, JobFileErrors) else (error,):
            line = f"{one.path}: {one.field}: {one.problem}"
            if line not in self._seen:
                self._seen.add(line)
                self.errors.append(one)

    @contextmanager
    def gather(self) -> Iterator[None]:
        """Run a block; a JobFileError it raises is recorded and the load goes on after it."""
        try:
            yield
        except JobFileError as exc:
            self.add(exc)

    def raise_any(self) -> None:
        """Raise what was gathered: one error as itself, several as JobFileErrors."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise JobFileErrors(self.errors)
