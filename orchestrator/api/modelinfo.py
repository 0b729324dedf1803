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

    As the prompt-caching docs list them: 512 for the Fable and Mythos models (5, 5.1, 5.2), Opus 5
    and the 5.5 models (Opus, Sonnet, Haiku); 1,024 for Opus 4.8, Sonnet 5, Sonnet 4.x and Opus
    4.0-4.1; 2,048 for Opus 4.7 and Haiku 3.x; 4,096 for Opus 4.5-4.6 and Haiku 4.5.
    """
    name = family(model)
    version = model_version(name) or (0, 0)
    if any(kind in name for kind in ("fable", "mythos")) or version >= (5, 5) or ("opus" in name and version >= (5, 0)):
        return 512
    if "haiku" in name:
        return 4096 if version >= (4, 5) else 2048
    if "opus" in name and (4, 5) <= version < (4, 7):
        return 4096
    if "opus" in name and version == (4, 7):
        return 2048
    return 1024


# -- the models the API serves, and their limits -------------------------------------------------


THINKING_TYPES = ("enabled", "disabled", "adaptive", "between_tools")  # the thinking.type values the API knows
ABOVE_HIGH = ("xhigh", "max")  # the effort levels above high
SAMPLING_FIELDS = ("temperature", "top_p", "top_k")
SAMPLING_DEFAULTS = {"temperature": 1, "top_p": 0.99}  # what "default" models take (top_k has no default)


@dataclass(frozen=True)
class ModelLimits:
    """What the API refuses for one model: a longer prompt, a larger ``max_tokens``, sampling fields,
    thinking types, forced tool use."""

    context_window: int  # tokens of input at most (the prompt: system, messages, tools)
    max_output: int  # the largest max_tokens it accepts
    # "one": temperature or top_p, not both (Claude 4.5 and later); "none": temperature, top_p and top_k
    # are refused ("deprecated for this model": Opus 4.7 and 4.8 think adaptively, without sampling fields);
    # "default": each only at its default (temperature 1, top_p 0.99, no top_k), and not both.
    sampling: str = "one"
    # The thinking.type values it takes (the thinking-troubleshooting table); the others of THINKING_TYPES
    # get a 400: "enabled" (a budget) on 4.7 and later, "disabled" where thinking is always on.
    thinking: tuple[str, ...] = ("enabled", "disabled", "adaptive")
    # The type that turns up-front thinking off where it is taken only at effort high or below.
    thinking_off: str | None = None
    forced_tools: bool = True  # whether it takes tool_choice "any" and "tool" (forced tool use)


# The 5.1 and 5.2 Fable and Mythos models and Opus 5.5: thinking always on, no forced tool use.
ALWAYS_THINKING = ModelLimits(1_000_000, 128_000, sampling="default", thinking=("adaptive",), forced_tools=False)
# The models overview (late 2026): context window and max output of each model the API serves. A
# model id not here gets the API's 404 from the simulator; the runner warns about it before sending.
MODELS: dict[str, ModelLimits] = {
    "claude-fable-5-2": ALWAYS_THINKING,
    "claude-mythos-5-2": ALWAYS_THINKING,
    "claude-fable-5-1": ALWAYS_THINKING,
    "claude-mythos-5-1": ALWAYS_THINKING,
    "claude-opus-5-5": ALWAYS_THINKING,
    "claude-sonnet-5-5": ModelLimits(
        1_000_000,
        128_000,
        sampling="default",
        thinking=("adaptive", "between_tools"),
        thinking_off="between_tools",
        forced_tools=False,
    ),
    "claude-haiku-5-5": ModelLimits(
        1_000_000, 128_000, sampling="default", thinking=("adaptive", "disabled"), thinking_off="disabled"
    ),
    "claude-fable-5": ModelLimits(1_000_000, 128_000, thinking=("adaptive",)),
    "claude-mythos-5": ModelLimits(1_000_000, 128_000, thinking=("adaptive",)),
    "claude-opus-5": ModelLimits(1_000_000, 128_000, thinking=("adaptive", "disabled"), thinking_off="disabled"),
    "claude-sonnet-5": ModelLimits(1_000_000, 128_000, thinking=("adaptive", "disabled")),
    "claude-opus-4-8": ModelLimits(1_000_000, 128_000, sampling="none", thinking=("adaptive", "disabled")),
    "claude-opus-4-7": ModelLimits(1_000_000, 128_000, sampling="none", thinking=("adaptive", "disabled")),
    "claude-opus-4-6": ModelLimits(1_000_000, 128_000),
    "claude-sonnet-4-6": ModelLimits(1_000_000, 128_000),
    "claude-opus-4-5": ModelLimits(200_000, 64_000, thinking=("enabled", "disabled")),
    "claude-sonnet-4-5": ModelLimits(200_000, 64_000, thinking=("enabled", "disabled")),
    "claude-haiku-4-5": ModelLimits(200_000, 64_000, thinking=("enabled", "disabled")),
}
# The dated snapshot ids the API serves beside their aliases (4.6 and later have no dated ids).
SNAPSHOTS = frozenset({"claude-opus-4-5-20251101", "claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"})


def model_limits(model: str) -> ModelLimits | None:
    """The limits of a model id the API serves (an alias or a dated snapshot), or None if unknown."""
    if model in MODELS:
        return MODELS[model]
    return MODELS[family(model)] if model in SNAPSHOTS else None


def refused_sampling(limits: ModelLimits, params: Mapping[str, Any]) -> tuple[str, bool] | None:
    """(the sampling field the model refuses in ``params``, whether for being given beside
    ``temperature``: top_p with it), or None."""
    given = [name for name in SAMPLING_FIELDS if params.get(name) is not None]
    if limits.sampling == "none" and given:
        return given[0], False
    off_default = [name for name in given if params[name] != SAMPLING_DEFAULTS.get(name)]
    if limits.sampling == "default" and off_default:
        return off_default[0], False
    if "temperature" in given and "top_p" in given:
        return "top_p", True
    return None


@dataclass(frozen=True)
class ThinkingRefused:
    """Why the model refuses a request's ``thinking``: a type it does not take, or one it takes
    only at effort high or below (``effort``: the level asked for), or with no other field (``field``)."""

    kind: str  # the thinking.type refused
    effort: str | None = None
    field: str | None = None


def refused_thinking(limits: ModelLimits, params: Mapping[str, Any]) -> ThinkingRefused | None:
    """What the model refuses in the ``thinking`` of ``params`` (a type the API does not know is
    not this function's: the simulator answers it with the API's tag error), or None."""
    thinking = params.get("thinking")
    if not isinstance(thinking, Mapping) or thinking.get("type") not in THINKING_TYPES:
        return None
    kind = str(thinking["type"])
    if kind not in limits.thinking:
        return ThinkingRefused(kind)
    if kind == "between_tools" and (extra := [name for name in thinking if name != "type"]):
        return ThinkingRefused(kind, field=extra[0])
    config = params.get("output_config")
    effort = config.get("effort") if isinstance(config, Mapping) else None
    if kind == limits.thinking_off and effort in ABOVE_HIGH:
        return ThinkingRefused(kind, effort=effort)
    return None


def forces_tool(params: Mapping[str, Any]) -> bool:
    """Whether ``tool_choice`` forces tool use (``any`` or ``tool``)."""
    choice = params.get("tool_choice")
    return isinstance(choice, Mapping) and choice.get("type") in ("any", "tool")


def limit_problem(params: Mapping[str, Any]) -> tuple[str, str] | None:
    """(the field, why the API would refuse it) for the request fields a job sets, by what the
    model's limits say (nothing for a model not in ``MODELS``), or None."""
    model = params.get("model")
    if not isinstance(model, str) or (limits := model_limits(model)) is None:
        return None
    max_tokens = params.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens > limits.max_output:
        return "max_tokens", (
            f"max_tokens {max_tokens:,} is more than {model} can write: at most {limits.max_output:,} output tokens"
        )
    sampling = refused_sampling(limits, params)
    if sampling is not None:
        return sampling[0], _sampling_problem(model, limits, *sampling)
    if not limits.forced_tools and forces_tool(params):
        return "tool_choice", (
            f"{model} takes no forced tool use (the API refuses tool_choice any and tool for it): "
            "use auto and say in the prompt when to use the tool"
        )
    thinking = refused_thinking(limits, params)
    if thinking is not None:
        return "thinking", _thinking_problem(model, limits, thinking)
    return None


def _sampling_problem(model: str, limits: ModelLimits, name: str, together: bool) -> str:
    if together:
        return f"{model} takes temperature or top_p, not both: drop one of them"
    if limits.sampling == "none":
        return f"{model} takes no {name} (the API refuses temperature, top_p and top_k for it): drop it"
    if name == "top_k":
        return f"{model} takes no top_k (the API refuses any value for it): drop it"
    return f"{model} takes {name} only at its default, {SAMPLING_DEFAULTS[name]} (the API refuses any other): drop it"


def _thinking_problem(model: str, limits: ModelLimits, refused: ThinkingRefused) -> str:
    if refused.field is not None:
        return f"{model} takes thinking type {refused.kind} with no other field: drop thinking.{refused.field}"
    if refused.effort is not None:
        return f"{model} takes thinking type {refused.kind} only at effort high or below, not {refused.effort}"
    return f"{model} takes no thinking type {refused.kind} (it takes {' or '.join(limits.thinking)})"
