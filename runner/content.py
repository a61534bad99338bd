"""Message content parts: a job file's `content: [...]` list in, frozen `Parts` (text parts that
are templates, image parts resolved at load) out; and the forms they take on the wire, in result
files and in cost estimates.

A local image (a path relative to the job file) is read once at load, checked (it must exist, be
at most `MAX_IMAGE_BYTES`, and be a PNG, JPEG, GIF or WebP by its first bytes) and kept as a
base64 data URL, the form OpenAI-compatible APIs take; an `http(s)://` or `data:` URL is sent as
written. A source can be a template over the vars (`image: "{{ picture }}"`): the image of every
job var value is checked at load (it exists, its size, its first bytes) and read when the plan
renders a request (the last few read are kept). A dataset row's image is checked when the plan
renders its row: one that cannot be sent makes that row a `bad_input` row, not a stopped run
(the load refuses only a source no row's image fits). What a result file or a printout records
of an image is its source, size and SHA-256, never the base64.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import schema
from .errors import JobFileError
from .templates import (
    PYTHON_ERRORS,
    Template,
    TemplateError,
    TemplateSyntaxError,
    check_template,
    parse,
)

MAX_IMAGE_BYTES = 20 * 1024 * 1024   # OpenAI's own limit for one image
# What one image may add to a prompt, in tokens. Providers count images by their pixels, not
# their bytes, and the dearest known way (gpt-4o-mini's, 2,833 + 5,667 per 512 px tile, at most
# 8 tiles) stays under this, so a budget reserved with it is never too small.
IMAGE_WORST_TOKENS = 50_000
IMAGE_TYPICAL_TOKENS = 800           # for tokens-per-minute pacing: a typical detailed image
_MEDIA_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
                (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))
_DATA_URL = re.compile(r"data:(image/[a-z0-9.+-]+);base64,([A-Za-z0-9+/=\s]*)", re.I)
_TEMPLATE_MARKS = ("{{", "{%", "{#")
MAX_IMAGES_CHECKED = 10_000          # values of one var whose images are checked at load
# What rendering one row's values can raise: Jinja's own errors, an image that cannot be loaded
# (JobFileError), and what a template's expression raises on a value of the wrong kind
# (`{{ n + 1 }}` with n a string, a division by zero, a missing key or index).
ROW_ERRORS: tuple[type[Exception], ...] = (TemplateError, JobFileError, *PYTHON_ERRORS)


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str                     # a template until the plan renders it
    template: Template | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class ImagePart:
    source: str                   # as written: a path, a URL, or a shortened data URL
    url: str = field(repr=False)  # what is sent: the URL, or the data URL of the file
    media_type: str | None = None
    size_bytes: int | None = None  # of the image itself (None: a remote URL)
    sha256: str | None = None
    detail: str | None = None
    # a source that is a template over the vars: rendered, then loaded, by the plan
    template: Template | None = field(default=None, compare=False, repr=False)
    origin: tuple[Path, str] | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"[image {self.source}" + (f" sha256:{self.sha256[:16]}" if self.sha256
                                          else "") + "]"


ContentPart = TextPart | ImagePart


class Parts(tuple[ContentPart, ...]):
    """The parts of one message's content; `str()` gives a readable text form (images as
    `[image <source>]`), which is also what a judge or a request id sees of them."""

    __slots__ = ()

    def __str__(self) -> str:
        return "\n".join(str(part) for part in self)


Content = str | Parts


class Reply(str):
    """A model's earlier reply, sent back in a conversation: at worst it is as many prompt
    tokens as the reply could have had output tokens, which is how `runner plan` counts it too
    (see `pricing.estimate_prompt_tokens`)."""

    __slots__ = ()


def build_parts(path: Path, where: str, parts: Sequence[str | schema.PartIn],
                role: str) -> Parts:
    """The parts of a job file's `content:` list; images are read and checked now."""
    out: list[ContentPart] = []
    for n, part in enumerate(parts):
        at = f"{where}[{n}]"
        if isinstance(part, str):
            out.append(_text(path, at, part))
        elif part.text is not None:
            out.append(_text(path, f"{at}.text", part.text))
        else:
            if role != "user":
                raise JobFileError(path, at, f"an image can only be in a user message (this "
                                   f"one is {role!r})")
            source = part.image if part.image is not None else \
                part.image_url.url if part.image_url is not None else ""
            detail = part.detail or (part.image_url.detail if part.image_url else None)
            field_name = f"{at}.image" if part.image is not None else f"{at}.image_url.url"
            if any(mark in source for mark in _TEMPLATE_MARKS):  # loaded once rendered
                template = _text(path, field_name, source).template
                out.append(ImagePart(source, "", detail=detail, template=template,
                                     origin=(path, field_name)))
            else:
                out.append(load_image(path, field_name, source, detail))
    return Parts(out)


def _text(path: Path, where: str, text: str) -> TextPart:
    try:
        return TextPart(text, parse(text))
    except TemplateSyntaxError as exc:  # worded as check_template words it
        raise JobFileError(path, where, f"template error on line {exc.lineno}: "
                           f"{exc.message}") from None


def load_image(path: Path, where: str, source: str, detail: str | None = None) -> ImagePart:
    """An image part of a job file: a URL as written, or a local file (relative to the job
    file) read into a data URL; a missing, too big or unknown file is a JobFileError."""
    if not source.strip():
        raise JobFileError(path, where, "an empty image source: give a path or a URL")
    if source.startswith(("http://", "https://")):
        return ImagePart(source, source, detail=detail)
    if source[:5].lower() == "data:":
        match = _DATA_URL.fullmatch(source)
        raw = _b64(match.group(2)) if match else None
        if match is None or raw is None:
            raise JobFileError(path, where, "not a base64 image data URL "
                               "(data:image/png;base64,...)")
        _check_size(path, where, len(raw))
        return ImagePart(f"data:{match.group(1)} ({len(raw)} bytes)", source,
                         match.group(1).lower(), len(raw), hashlib.sha256(raw).hexdigest(),
                         detail)
    file = _image_file(path, where, source)
    raw = _read(path, where, file)
    _check_size(path, where, len(raw))
    media_type = sniff_media_type(raw)
    if media_type is None:
        raise JobFileError(path, where, f"{str(file)!r} is not a PNG, JPEG, GIF or WebP image")
    url = f"data:{media_type};base64,{base64.b64encode(raw).decode('ascii')}"
    return ImagePart(source, url, media_type, len(raw), hashlib.sha256(raw).hexdigest(),
                     detail)


def check_image(path: Path, where: str, source: str) -> None:
    """What `load_image` would refuse, refused without reading a whole local file."""
    if source.strip() and source[:5].lower() != "data:" \
            and not source.startswith(("http://", "https://")):
        _image_file(path, where, source)
    else:
        load_image(path, where, source)


def _image_file(path: Path, where: str, source: str) -> Path:
    """The local image file a source names, checked by its size and its first bytes."""
    file = (path.parent / source) if not Path(source).is_absolute() else Path(source)
    if not file.is_file():
        raise JobFileError(path, where, f"no such image file {str(file)!r} (paths are "
                           "relative to the job file)")
    _check_size(path, where, file.stat().st_size)
    if sniff_media_type(_read(path, where, file, 16)) is None:
        raise JobFileError(path, where, f"{str(file)!r} is not a PNG, JPEG, GIF or WebP image")
    return file


def _read(path: Path, where: str, file: Path, size: int = -1) -> bytes:
    try:
        with file.open("rb") as f:
            return f.read(size)
    except OSError as exc:
        raise JobFileError(path, where, f"cannot read {str(file)!r} "
                           f"({exc.strerror or exc})") from None


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except ValueError:
        return None


def _check_size(path: Path, where: str, size: int) -> None:
    if size > MAX_IMAGE_BYTES:
        raise JobFileError(path, where, f"image of {size:,} bytes, more than the "
                           f"{MAX_IMAGE_BYTES:,} an image may have (make it smaller)")


def sniff_media_type(raw: bytes) -> str | None:
    """The media type of an image from its first bytes (None: not one we send)."""
    for magic, media_type in _MEDIA_TYPES:
        if raw.startswith(magic):
            return media_type
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return None


def content_template(path: Path, where: str, content: Content, available: Mapping[str, Any],
                     seen: dict[str, Template] | None = None, rows: bool = False) -> Template:
    """The template a prompt keeps for a message: its own for plain text; for parts, one over
    their text parts joined (each part checked: it reads only defined vars), so that the vars
    they use and a load-time render of their Jinja logic come out as for plain text."""
    if isinstance(content, str):
        return check_template(path, where, content, available, seen, rows)
    texts = [(n, p.text) for n, p in enumerate(content) if isinstance(p, TextPart)]
    for n, text in texts:
        check_template(path, f"{where}[{n}]", text, available, seen, rows)
    for part in content:
        if isinstance(part, ImagePart) and part.template is not None:
            template = check_template(path, (part.origin or (path, where))[1], part.source,
                                      available, seen, rows)
            if not rows:  # a dataset prompt's are checked row by row (`check_row_images`)
                _check_images(part, template, available)
    sources = [p.source for p in content if isinstance(p, ImagePart) and p.template]
    return check_template(path, where, "\n".join([text for _, text in texts] + sources),
                          available, seen, rows)


def _check_images(part: ImagePart, template: Template, available: Mapping[str, Any]) -> None:
    """Check the image of every value of the vars a templated source reads (each var's values
    in turn, the others at their first), so that a missing one stops the load, not the run."""
    lists = {name: available[name] if isinstance(available[name], list | tuple)
             else [available[name]] for name in template.names}
    first = {name: values[0] for name, values in lists.items() if values}
    for name, values in lists.items():
        for value in values[:MAX_IMAGES_CHECKED]:
            variables = {**first, name: value}
            path, where = part.origin or (Path(), "image")
            try:
                check_image(path, where, template.render(variables))
            except TemplateError as exc:
                raise JobFileError(path, where, f"template cannot be rendered with "
                                   f"{variables}: {exc}") from None


def templated_images(contents: Sequence[Content]) -> list[ImagePart]:
    """The image parts whose source is a template, in these message contents."""
    return [part for content in contents if not isinstance(content, str) for part in content
            if isinstance(part, ImagePart) and part.template is not None]


def check_row_images(parts: Sequence[ImagePart], variables: Mapping[str, Any]) -> None:
    """Check the images these templated parts name for one row's vars (not read: see
    `check_image`); a JobFileError on the part's field when one cannot be sent."""
    for part in parts:
        path, where = part.origin or (Path(), "image")
        try:
            _render_image(part, variables, check=True)
        except JobFileError:
            raise
        except ROW_ERRORS as exc:  # the source's template tripped on the row's values
            raise JobFileError(path, where, f"template cannot be rendered: {exc}") from None


def _render_image(part: ImagePart, variables: Mapping[str, Any], check: bool) -> ImagePart:
    """The image a templated source names for these vars, loaded (and kept, a few at once);
    with `check`, only checked (`check_image`: its size and first bytes) and not loaded."""
    assert part.template is not None and part.origin is not None
    path, where = part.origin
    source = part.template.render(variables)
    if check:
        check_image(path, where, source)
        return part
    return _load_cached(path, where, source, part.detail)


@functools.lru_cache(maxsize=8)   # a dataset's rows often share an image; memory stays bounded
def _load_cached(path: Path, where: str, source: str, detail: str | None) -> ImagePart:
    return load_image(path, where, source, detail)


def render_content(content: Content, template: Template, variables: Mapping[str, Any],
                   check: bool = False) -> Content:
    """A message's content as sent: the template rendered, or each text part rendered (images
    are as loaded; with `check`, a templated image is checked but not read, see
    `_render_image`). Raises one of `ROW_ERRORS` when the values cannot make it."""
    if isinstance(content, str):
        return template.render(variables)
    return Parts(TextPart((p.template or parse(p.text)).render(variables))
                 if isinstance(p, TextPart) else _render_image(p, variables, check)
                 if p.template is not None else p for p in content)


def wire(content: Content) -> str | list[dict[str, Any]]:
    """The `content` of a chat message in a request body (OpenAI's shape)."""
    if isinstance(content, str):
        return content
    out: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            out.append({"type": "text", "text": part.text})
        else:
            image: dict[str, Any] = {"url": part.url}
            if part.detail is not None:
                image["detail"] = part.detail
            out.append({"type": "image_url", "image_url": image})
    return out


def recorded(content: Content) -> str | list[dict[str, Any]]:
    """The `content` as a result file or a printout keeps it: images by source, media type,
    size and SHA-256, never their base64."""
    if isinstance(content, str):
        return content
    out: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            out.append({"type": "text", "text": part.text})
        else:
            image = {"type": "image", "source": part.source, "media_type": part.media_type,
                     "size_bytes": part.size_bytes, "sha256": part.sha256,
                     "detail": part.detail}
            out.append({k: v for k, v in image.items() if v is not None})
    return out


def recorded_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Messages as a result file or a printout keeps them (`recorded` contents)."""
    return [{"role": m.role, "content": recorded(m.content)} for m in messages]


def text_bytes(content: Content) -> int:
    """UTF-8 bytes of the content's text (the parts' texts for parts)."""
    if isinstance(content, str):
        return len(content.encode("utf-8"))
    return sum(len(p.text.encode("utf-8")) for p in content if isinstance(p, TextPart))


def image_count(content: Content) -> int:
    """How many images the content holds."""
    return 0 if isinstance(content, str) else sum(isinstance(p, ImagePart) for p in content)


def images_only(content: Content) -> Content:
    """The content without its text: what is left of its cost when the text is counted apart."""
    return "" if isinstance(content, str) else Parts(p for p in content
                                                     if isinstance(p, ImagePart))
