"""The command lines that jobs stored before their options were stored as JSON (``spec["argv"]``,
up to migration ``0010``), read as the options JSON they stand for (``RunOptions.to_json``'s
shape). Frozen: this is the grammar of that version's ``orchestrator run``, not of today's."""

from __future__ import annotations

from typing import Any

# Options taking a value: the stored name and how its text reads.
_VALUES: dict[str, tuple[str, type]] = {
    "--base-url": ("base_url", str),
    "--db": ("db", str),
    "--results": ("results", str),
    "--prices": ("prices", str),
    "--model": ("model", str),
    "--max-tokens": ("max_tokens", int),
    "--system": ("system", str),
    "--temperature": ("temperature", float),
    "--output-schema": ("output_schema", str),
    "--mode": ("mode", str),
    "--concurrency": ("concurrency", int),
    "--max-attempts": ("max_attempts", int),
    "--retry-max-seconds": ("retry_max_seconds", float),
    "--checkpoint-interval": ("checkpoint_interval", float),
    "--read-timeout": ("read_timeout", float),
    "--backoff-base": ("backoff_base", float),
    "--backoff-cap": ("backoff_cap", float),
    "--recover": ("recover", str),
    "--max-cost": ("max_cost", float),
    "--limit-headroom": ("headroom", float),
    "--cache": ("cache", str),
    "--batch-size": ("batch_size", int),
    "--poll-interval": ("poll_interval", float),
    "--rpm": ("rpm", float),
    "--itpm": ("itpm", float),
    "--otpm": ("otpm", float),
}
_SWITCHES = {"--simulate": "simulate", "--allow-changed": "allow_changed", "--quiet": "quiet", "--batch": "batch"}
# The simulator's options: where each goes in its configuration (SimulatorConfig as JSON).
_SIMULATOR_VALUES = {
    "--seed": (("seed",), int),
    "--speed": (("timing", "speed"), float),
    "--ttft": (("timing", "ttft"), float),
    "--tps": (("timing", "tokens_per_second"), float),
    "--reply-tokens": (("reply",), str),
    "--tokens-per-delta": (("tokens_per_delta",), str),
    "--sim-rpm": (("limits", "rpm"), float),
    "--sim-itpm": (("limits", "itpm"), float),
    "--sim-otpm": (("limits", "otpm"), float),
    "--burst-seconds": (("limits", "burst_seconds"), float),
    "--stall-seconds": (("faults", "stall_seconds"), float),
    "--batch-seconds": (("batches", "seconds"), str),
    "--fault": (("faults",), str),
    "--batch-fault": (("batches",), str),
    "--refusals": (("refusals",), float),
    "--reject-key": (("reject_api_keys",), str),
    "--sim-model": (("extra_models",), str),
}
_SIMULATOR_SWITCHES = {"--spend-cap": ("limits", "spend_cap"), "--no-count-tokens": ("count_tokens_endpoint",)}
WATCH_PORT = 8766  # --watch without a port
_FLAGS = ("--watch", *_VALUES, *_SWITCHES, *_SIMULATOR_VALUES, *_SIMULATOR_SWITCHES, "--dry-run", "--help")


def _flag(text: str) -> str:
    """A long option as written (argparse took unique prefixes), by its full name."""
    if text in _FLAGS:
        return text
    found = [flag for flag in _FLAGS if flag.startswith(text)]
    return found[0] if len(found) == 1 else text


def _range(text: str) -> list[int]:
    low, _, high = text.partition(":")
    return [int(low), int(high or low)]


def options_of(argv: list[str]) -> dict[str, Any]:
    """``["run", JOB, --option, value, ...]`` as the options JSON; unknown options are skipped."""
    stored: dict[str, Any] = {}
    simulator: dict[str, Any] = {}
    words = list(argv[1:] if argv[:1] == ["run"] else argv)
    while words:
        word = words.pop(0)
        if not word.startswith("--"):
            stored.setdefault("job", word)
            continue
        flag, equals, inline = word.partition("=")
        flag = _flag(flag)
        value = inline if equals else None
        if flag == "--watch":  # an optional port
            if value is None and words and words[0].isdigit():
                value = words.pop(0)
            stored["watch"] = int(value) if value is not None else WATCH_PORT
        elif flag in _SWITCHES:
            stored[_SWITCHES[flag]] = True
        elif flag in _SIMULATOR_SWITCHES:
            where = _SIMULATOR_SWITCHES[flag]
            _put(simulator, where, flag != "--no-count-tokens")
        elif flag in _VALUES or flag in _SIMULATOR_VALUES:
            if value is None:
                if not words:
                    break
                value = words.pop(0)
            if flag in _VALUES:
                name, kind = _VALUES[flag]
                stored[name] = kind(value)
            else:
                _simulator_value(simulator, flag, value)
    if stored.pop("batch", False):
        stored["mode"] = "batch"
    if stored.pop("simulate", False):
        stored["simulate"] = simulator
    return stored


def _simulator_value(simulator: dict[str, Any], flag: str, value: str) -> None:
    where, kind = _SIMULATOR_VALUES[flag]
    if flag == "--reply-tokens":
        simulator["reply_min"], simulator["reply_max"] = _range(value)
    elif flag == "--batch-seconds":
        low, sep, high = value.partition(":")
        _put(simulator, where, float(low))
        if sep:
            _put(simulator, ("batches", "seconds_max"), float(high))
    elif flag == "--tokens-per-delta":
        simulator["tokens_per_delta"] = _range(value)
    elif flag in ("--fault", "--batch-fault"):
        kind_name, _, probability = value.partition("=")
        _put(simulator, (*where, kind_name), float(probability))
    elif flag in ("--reject-key", "--sim-model"):
        simulator.setdefault(where[0], []).append(value)
    else:
        _put(simulator, where, kind(value))


def _put(table: dict[str, Any], where: tuple[str, ...], value: Any) -> None:
    for key in where[:-1]:
        table = table.setdefault(key, {})
    table[where[-1]] = value
