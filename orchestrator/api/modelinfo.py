"""Facts about model ids (pure): version, family, whether assistant prefill is accepted, the cacheable
minimum, and the limits of each model the API serves (``MODELS``): the one table the runner checks
requests against before sending and the simulator refuses by, as the API does."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


# -- the models the API serves, and their limits -------------------------------------------------


@dataclass(frozen=True)
class ModelLimits:
    """What the API refuses for one model: a longer prompt, a larger ``max_tokens``, sampling fields."""

    context_window: int  # tokens of input at most (the prompt: system, messages, tools)
    max_output: int  # the largest max_tokens it accepts
    # "one": temperature or top_p, not both (Claude 4.5 and later); "none": temperature, top_p and top_k
    # are refused ("deprecated for this model": Opus 4.7 and 4.8 think adaptively, without sampling fields).
    sampling: str = "one"


# The models overview (late 2026): context window and max output of each model the API serves. A
# model id not here gets the API's 404 from the simulator; the runner warns about it before sending.
MODELS: dict[str, ModelLimits] = {
    "claude-fable-5": ModelLimits(1_000_000, 128_000),
    "claude-mythos-5": ModelLimits(1_000_000, 128_000),
    "claude-opus-5": ModelLimits(1_000_000, 128_000),
    "claude-sonnet-5": ModelLimits(1_000_000, 128_000),
    "claude-opus-4-8": ModelLimits(1_000_000, 128_000, sampling="none"),
    "claude-opus-4-7": ModelLimits(1_000_000, 128_000, sampling="none"),
    "claude-opus-4-6": ModelLimits(1_000_000, 128_000),
    "claude-sonnet-4-6": ModelLimits(1_000_000, 128_000),
    "claude-opus-4-5": ModelLimits(200_000, 64_000),
    "claude-sonnet-4-5": ModelLimits(200_000, 64_000),
    "claude-haiku-4-5": ModelLimits(200_000, 64_000),
}
# The dated snapshot ids the API serves beside their aliases (4.6 and later have no dated ids).
SNAPSHOTS = frozenset({"claude-opus-4-5-20251101", "claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"})
SAMPLING_FIELDS = ("temperature", "top_p", "top_k")


def model_limits(model: str) -> ModelLimits | None:
    """The limits of a model id the API serves (an alias or a dated snapshot), or None if unknown."""
    if model in MODELS:
        return MODELS[model]
    return MODELS[family(model)] if model in SNAPSHOTS else None


def limit_problem(params: Mapping[str, Any]) -> tuple[str, str] | None:
    """(the field, why the API would refuse it) for the request fields a job sets, by what the
    model's limits say (nothing for a model not in ``MODELS``), or None."""
    model = params.get("model")
    limits = model_limits(model) if isinstance(model, str) else None
    if limits is None:
        return None
    max_tokens = params.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens > limits.max_output:
        return "max_tokens", (
            f"max_tokens {max_tokens:,} is more than {model} can write: at most {limits.max_output:,} output tokens"
        )
    given = [name for name in SAMPLING_FIELDS if params.get(name) is not None]
    if limits.sampling == "none" and given:
        return given[0], f"{model} takes no {given[0]} (the API refuses temperature, top_p and top_k for it): drop it"
    if limits.sampling == "one" and "temperature" in given and "top_p" in given:
        return "top_p", f"{model} takes temperature or top_p, not both: drop one of them"
    return None
