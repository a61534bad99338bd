"""Content parts on the simulator's side: a request's message contents in, the first problem with
their parts (for a 400) and the prompt tokens an image costs out.

Images cost what OpenAI's vision models charge: 85 tokens at `detail: low`, else 85 plus 170 per
512 px tile of the image scaled to fit 2048 x 2048 and then to a shortest side of 768 px. The
size is read from a PNG, GIF or JPEG data URL's header; an image whose size is unknown (a remote
URL, another format) counts as four tiles (765 tokens).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from typing import Any

BASE_TOKENS = 85
TILE_TOKENS = 170
UNKNOWN_TILES = 4
_HEADER_CHARS = 64 * 1024   # base64 read for an image's size: a JPEG's frame header comes early


def part_problem(where: str, part: Any) -> str | None:
    """Why a content part is not one an OpenAI-compatible API takes (None: it is)."""
    if not isinstance(part, dict):
        return f"{where}: a content part must be an object"
    kind = part.get("type")
    if kind == "text":
        return None if isinstance(part.get("text"), str) else f"{where}.text: must be a string"
    if kind == "image_url":
        image = part.get("image_url")
        if not isinstance(image, dict):
            return f"{where}.image_url: must be an object with a url"
        url = image.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:image/")):
            return f"{where}.image_url.url: must be an http(s) URL or a data:image/ URL"
        if url.startswith("data:") and ";base64," not in url[:100]:
            return f"{where}.image_url.url: a data URL must be base64"
        if image.get("detail", "auto") not in ("auto", "low", "high"):
            return f"{where}.image_url.detail: must be auto, low or high"
        return None
    return f"{where}.type: must be 'text' or 'image_url' (got {kind!r})"


def content_problem(messages: list[dict[str, Any]]) -> str | None:
    """The first problem with any message's list of content parts."""
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        if not content:
            return f"messages[{i}].content: an empty list of parts"
        for j, part in enumerate(content):
            problem = part_problem(f"messages[{i}].content[{j}]", part)
            if problem is not None:
                return problem
    return None


def image_tokens(part: dict[str, Any]) -> int:
    """Prompt tokens of one image_url part."""
    image = part.get("image_url")
    if not isinstance(image, dict):
        return 0
    if image.get("detail") == "low":
        return BASE_TOKENS
    size = _size(image.get("url"))
    if size is None:
        return BASE_TOKENS + TILE_TOKENS * UNKNOWN_TILES
    fit = min(1.0, 2048 / max(size))
    wide, high = size[0] * fit, size[1] * fit
    fit = min(1.0, 768 / min(wide, high))
    tiles = math.ceil(wide * fit / 512) * math.ceil(high * fit / 512)
    return BASE_TOKENS + TILE_TOKENS * tiles


def _size(url: Any) -> tuple[int, int] | None:
    """Width and height from a data URL's image header, if it is a PNG, GIF or JPEG."""
    if not isinstance(url, str) or not url.startswith("data:"):
        return None
    b64 = url.partition(",")[2][:_HEADER_CHARS]
    try:
        raw = base64.b64decode(b64[: len(b64) // 4 * 4])
    except (binascii.Error, ValueError):
        return None
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) >= 24:
        width, height = struct.unpack(">II", raw[16:24])
    elif raw[:6] in (b"GIF87a", b"GIF89a") and len(raw) >= 10:
        width, height = struct.unpack("<HH", raw[6:10])
    elif raw[:3] == b"\xff\xd8\xff":
        found = _jpeg_size(raw)
        if found is None:
            return None
        width, height = found
    else:
        return None
    return (width, height) if width > 0 and height > 0 else None


def _jpeg_size(raw: bytes) -> tuple[int, int] | None:
    k = 2
    while k + 9 < len(raw):
        if raw[k] != 0xFF:
            return None
        marker = raw[k + 1]
        length = struct.unpack(">H", raw[k + 2:k + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", raw[k + 5:k + 9])
            return width, height
        k += 2 + length
    return None
