"""Plain prompt lines checked a block at a time (pure): C-level passes over a whole block of lines
instead of a Python step per line.

A JSONL line is taken here only when it is shown to be exactly a line the line-by-line reader
accepts as ``{"prompt": ...}`` with perhaps a ``custom_id``: the block is parsed as one JSON
array, then each line is compared with the JSON text of the object parsed for it, as common
writers write it (``json.dumps``, with or without ``ensure_ascii``, with or without spaces). So
a line equal to that text holds that object and nothing else, whatever the rest of the block
holds. Any other line (another spelling, other fields, a bad value, a blank line) is left to the
line-by-line reader, which gives the same request, or the same error, it always did.
"""

from __future__ import annotations

import json
from itertools import compress, repeat
from operator import add, eq, is_, itemgetter, not_
from typing import Any

from orchestrator.jobs.params import CUSTOM_ID
from orchestrator.models import encode_params

# How that encoder writes a string, and how ``ensure_ascii=False`` writers do.
_ascii: Any = json.encoder.encode_basestring_ascii
_utf8: Any = json.encoder.encode_basestring
_MARK = "\x00prompt\x00"

# The fields of a plain prompt line, in their order, and how writers write it ({id} first when the
# id comes first): json.dumps' default spaces, and none.
_FORMATS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("prompt",): ('{"prompt": %s}', '{"prompt":%s}'),
    ("custom_id", "prompt"): ('{"custom_id": "%s", "prompt": %s}', '{"custom_id":"%s","prompt":%s}'),
    ("prompt", "custom_id"): ('{"prompt": %s, "custom_id": "%s"}', '{"prompt":%s,"custom_id":"%s"}'),
}


def params_around(defaults: dict[str, Any]) -> tuple[str, str] | None:
    """(prefix, suffix): the params text of a prompt request with these defaults, before and after
    its prompt; None if they cannot be told apart (a default holding the marker)."""
    text = encode_params({**defaults, "messages": [{"role": "user", "content": _MARK}]})
    parts = text.split(_ascii(_MARK))
    return (parts[0], parts[1]) if len(parts) == 2 else None


def text_items(lines: list[str]) -> list[str]:
    """The item of each line of a text input (one prompt a line); "" for a blank line."""
    items: list[str] = list(map(_ascii, map(str.rstrip, lines, repeat("\r\n"))))
    for i in compress(range(len(lines)), map(not_, map(str.strip, lines))):
        items[i] = ""
    return items


def jsonl_items(lines: list[str]) -> list[str]:
    """The item of each plain prompt line of a JSONL block; "" for a line the line-by-line
    reader must read."""
    items = [""] * len(lines)
    kept = list(compress(range(len(lines)), map(str.strip, lines)))  # blank lines are not JSON
    found = _plain(lines if len(kept) == len(lines) else [lines[i] for i in kept])
    if found is None:
        return items
    if len(kept) == len(lines):
        return found
    for i, item in zip(kept, found, strict=True):
        items[i] = item
    return items


def _plain(lines: list[str]) -> list[str] | None:
    """``jsonl_items`` of non-blank lines; None where no line of them is one."""
    if not lines:
        return None
    joined = ",".join(lines)
    if "\r" in joined:  # CRLF line ends: JSON whitespace, not part of what writers render
        lines = list(map(str.rstrip, lines, repeat("\r")))
        joined = ",".join(lines)
    try:
        objects = json.loads(f"[{joined}]")
    except (ValueError, RecursionError):
        return None
    if len(objects) != len(lines):
        return None
    items = _uniform(lines, objects)
    if items is None:  # lines of several shapes: each on its own
        return list(map(_one, lines, objects))
    for i in compress(range(len(items)), map(not_, items)):
        items[i] = _one(lines[i], objects[i])  # written another way than the first line, or bad
    return items


def _uniform(lines: list[str], objects: list[Any]) -> list[str] | None:
    """The items of a block whose objects all have the fields of the first, in its order, its
    prompt (and id) strings, checked in C-level passes; "" for a line not shown to be one
    (written otherwise than the first line, or a bad value). None for any other block."""
    if set(map(type, objects)) != {dict}:
        return None
    shapes = set(map(tuple, objects))
    keys = next(iter(shapes))
    formats = _FORMATS.get(keys)
    if len(shapes) != 1 or formats is None:
        return None
    prompts = list(map(itemgetter("prompt"), objects))
    ids = list(map(itemgetter("custom_id"), objects)) if "custom_id" in keys else None
    if set(map(type, prompts)) != {str} or (ids is not None and set(map(type, ids)) != {str}):
        return None
    encoded = list(map(_ascii, prompts))
    rendering = _rendering(lines[0], keys, formats, prompts[0], encoded[0], ids[0] if ids else "")
    if rendering is None:
        return [""] * len(lines)
    form, encode = rendering
    written = encoded if encode is _ascii else list(map(encode, prompts))
    if ids is None:
        rendered = map(form.__mod__, written)
    elif keys[0] == "custom_id":
        rendered = map(form.__mod__, zip(ids, written, strict=True))
    else:
        rendered = map(form.__mod__, zip(written, ids, strict=True))
    items: list[str] = encoded if ids is None else list(map(add, ids, encoded))
    bad = set(compress(range(len(lines)), map(not_, map(eq, lines, rendered))))
    if not all(prompts) or any(map(str.isspace, prompts)):
        bad.update(compress(range(len(lines)), map(not_, map(str.strip, prompts))))
    if ids is not None and not all(map(CUSTOM_ID.fullmatch, ids)):
        bad.update(compress(range(len(lines)), map(is_, map(CUSTOM_ID.fullmatch, ids), repeat(None))))
    for i in bad:
        items[i] = ""
    return items


def _one(line: str, obj: Any) -> str:
    """The item of one line holding ``obj``, or "" (what ``_uniform`` checks, for one line)."""
    keys = tuple(obj) if type(obj) is dict else ()
    formats = _FORMATS.get(keys)
    if formats is None:
        return ""
    prompt, custom_id = obj["prompt"], obj.get("custom_id", "")
    if type(prompt) is not str or not prompt.strip() or type(custom_id) is not str:
        return ""
    if "custom_id" in obj and not CUSTOM_ID.fullmatch(custom_id):
        return ""
    encoded = _ascii(prompt)
    return custom_id + encoded if _rendering(line, keys, formats, prompt, encoded, custom_id) else ""


def _rendering(
    line: str, keys: tuple[str, ...], formats: tuple[str, ...], prompt: str, encoded: str, custom_id: str
) -> tuple[str, Any] | None:
    """(format, string encoder) the block's first line is written in, if one of the usual."""
    for form in formats:
        for encode in (_ascii, _utf8):
            written = encoded if encode is _ascii else encode(prompt)
            args = (
                (written,)
                if len(keys) == 1
                else (custom_id, written)
                if keys[0] == "custom_id"
                else (written, custom_id)
            )
            if form % args == line:
                return form, encode
    return None
