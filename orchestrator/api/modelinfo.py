"""Facts about model ids (pure): version, family, whether assistant prefill is accepted."""

from __future__ import annotations

import re

_VERSION = re.compile(r"^claude-(?:(\d+)(?:-(\d))?-[a-z]+|[a-z]+-(\d+)(?:-(\d{1,2}))?)(?:-|$)")
_DATED = re.compile(r"-\d{8}$")


def model_version(model: str) -> tuple[int, int] | None:
    """(major, minor) of a model id such as ``claude-sonnet-4-5-20250929`` or ``claude-3-7-sonnet``."""
    match = _VERSION.match(model)
    if match is None:
        return None
    major = match.group(1) or match.group(3)
    minor = match.group(2) or match.group(4) or "0"
    return int(major), int(minor)


def accepts_prefill(model: str) -> bool:
    """Models before 4.6 accept an assistant prefill; 4.6 and later (and the 5.x family) reject it."""
    version = model_version(model)
    return version is not None and version < (4, 6)


def family(model: str) -> str:
    """The model id without its date: ``claude-haiku-4-5-20251001`` -> ``claude-haiku-4-5``."""
    return _DATED.sub("", model)
