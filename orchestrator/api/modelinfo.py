"""Facts about model ids (pure): version, family, whether assistant prefill is accepted, the cacheable minimum."""

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


def minimum_cacheable(model: str) -> int:
    """The shortest prefix (tokens) the model caches; a breakpoint on a shorter one writes nothing.

    As the prompt-caching docs list them: 512 for Opus 5, Fable 5 and Mythos 5; 1,024 for Opus 4.8,
    Sonnet 5, Sonnet 4.x and Opus 4.0-4.1; 2,048 for Opus 4.7 and Haiku 3.x; 4,096 for Opus 4.5-4.6
    and Haiku 4.5.
    """
    name = family(model)
    version = model_version(name) or (0, 0)
    if any(kind in name for kind in ("fable", "mythos")) or ("opus" in name and version >= (5, 0)):
        return 512
    if "haiku" in name:
        return 4096 if version >= (4, 5) else 2048
    if "opus" in name and (4, 5) <= version < (4, 7):
        return 4096
    if "opus" in name and version == (4, 7):
        return 2048
    return 1024
