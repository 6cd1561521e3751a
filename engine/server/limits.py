"""Bounds on what a client can make the server parse or say back.

- JSON bodies: nested at most `MAX_JSON_DEPTH` levels (checked on the raw bytes before parsing: the
  parser, and everything that walks the parsed value afterwards, recurses per level), and strict JSON
  (`NaN`/`Infinity` are not JSON; a stored one breaks browsers' JSON.parse of the history).
- Error answers: echoed values are cut (`bounded`), so an answer is never much larger than its message
  whatever the request held (a 10 MB class_type must not come back several times over).
"""

from __future__ import annotations

import json
import re
from typing import Any

# ComfyUI's API and UI workflows nest about 10 levels (a UI workflow inside extra_data included);
# 100 leaves room and stays far below Python's recursion limit for every later walk of the value.
MAX_JSON_DEPTH = 100
MAX_ECHO_CHARS = 500  # one echoed string in an error answer

# A JSON string (escapes included): its brackets are not structure. UTF-8 continuation bytes are never
# '"' or '\\', so this works on the raw bytes. Possessive quantifiers and the optional closing quote keep
# it linear on hostile text (an unterminated string is consumed to the end, never rescanned).
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_CHUNK = 1 << 22


class JsonBodyError(ValueError):
    """The body is not acceptable JSON; the message says why."""


def too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the arrays/objects of a JSON text nest deeper than `limit` (exact for valid JSON; an
    invalid text gets some answer, and the parser refuses it anyway)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False  # cannot nest deeper than it has openers
    import numpy as np

    carry = 0
    for start in range(0, len(brackets), _CHUNK):  # chunked: bounded memory for a 100 MB body
        chunk = np.frombuffer(
            brackets, dtype=np.uint8, count=min(_CHUNK, len(brackets) - start), offset=start
        )
        steps = np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1).astype(np.int32)
        depth = np.cumsum(steps, dtype=np.int64) + carry
        if int(depth.max()) > limit:
            return True
        carry = int(depth[-1])
    return False


def _refuse_constant(name: str) -> Any:
    raise JsonBodyError(f"{name} is not a JSON value (use a finite number or null)")


def loads_json(raw: bytes | str) -> Any:
    """Parse a request's JSON: nesting bounded, strict about NaN/Infinity; JsonBodyError otherwise."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if too_deep(data):
        raise JsonBodyError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except JsonBodyError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise JsonBodyError(cut_text(str(exc))) from None


def cut_text(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def bounded(value: Any, depth: int = 0) -> Any:
    """A copy of a JSON value for an error answer with every string (keys too) cut to a bounded length
    and very deep nesting replaced by a marker. Lists and objects keep all their entries: the shape is
    the client's contract and their number is bounded by the request's own size."""
    if isinstance(value, str):
        return cut_text(value)
    if depth >= 32:
        return "..."
    if isinstance(value, dict):
        return {cut_text(str(k)): bounded(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bounded(v, depth + 1) for v in value]
    return value
