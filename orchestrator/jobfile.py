"""Read job files into requests, as a stream: nothing holds a whole input in memory.

A job is any of:
- ``.jsonl`` lines in the Message Batches request shape ``{"custom_id": ..., "params": {...}}``,
  or simple lines ``{"prompt": ..., "custom_id"?: ..., <any Messages param>?: ...}``;
- a text file (any other extension), one prompt per non-blank line;
- a directory of ``.txt`` / ``.md`` files, one prompt per file;
- a ``.toml`` job spec naming its inputs (paths, or globs whose matches are one prompt per
  file), defaults for every request, run settings and where results go.

Missing ``custom_id``s get stable ones: ``<file stem>-<line>``, or the file stem for a
prompt file. Duplicates across the whole job are found by the store while loading.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import JobFileError, Problem
from orchestrator.models import MESSAGE_PARAMS

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
PROMPT_SUFFIXES = (".txt", ".md")
SIMPLE_FIELDS = (MESSAGE_PARAMS - {"messages"}) | {"prompt", "custom_id"}
SPEC_KEYS = frozenset({"name", "inputs", "results", "defaults", "run", "limits"})
RUN_KEYS = frozenset(
    {
        "concurrency",
        "max_attempts",
        "retry_max_seconds",
        "checkpoint_interval",
        "read_timeout",
        "backoff_base",
        "backoff_cap",
        "recover",
        "headroom",
    }
)
LIMIT_KEYS = frozenset({"rpm", "itpm", "otpm"})
DEFAULT_MODEL = "claude-haiku-4-5"
DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class Loaded:
    """One valid request read from an input, with where it came from."""

    custom_id: str
    params: dict[str, Any]
    path: str
    line: int | None


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # "jsonl", "lines", "file"


@dataclass
class JobSpec:
    """What to run: inputs, request defaults, run settings, where results go."""

    name: str
    sources: list[Source]
    defaults: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    results: Path | None = None

    def fingerprint(self) -> str:
        """A hash of every input byte and the defaults: a changed job has another fingerprint."""
        digest = hashlib.sha256(json.dumps(self.defaults, sort_keys=True).encode())
        for source in self.sources:
            digest.update(f"\0{source.kind}\0{source.path.name}\0".encode())
            with source.path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()


def _stem_id(path: Path) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", path.stem)[:48] or "input"


def _sources_of(path: Path, *, as_glob: bool = False) -> list[Source]:
    if as_glob:
        return [Source(Path(p), "file") for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
    if path.is_dir():
        return [Source(p, "file") for p in sorted(path.iterdir()) if p.suffix in PROMPT_SUFFIXES and p.is_file()]
    return [Source(path, "jsonl" if path.suffix == ".jsonl" else "lines")]


def load_spec(path: Path, cli_defaults: dict[str, Any]) -> JobSpec:
    """The job a path stands for; ``cli_defaults`` (from options) override a spec's defaults."""
    if not path.exists():
        raise JobFileError([Problem(str(path), None, "no such file or directory")])
    if path.suffix != ".toml":
        defaults = {"model": DEFAULT_MODEL, "max_tokens": DEFAULT_MAX_TOKENS, **cli_defaults}
        return JobSpec(name=_stem_id(path), sources=_sources_of(path), defaults=defaults)
    try:
        spec = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise JobFileError([Problem(str(path), None, f"not valid TOML: {exc}")]) from None
    problems = [
        Problem(str(path), None, f"unknown key {key!r} (known: {', '.join(sorted(SPEC_KEYS))})")
        for key in spec
        if key not in SPEC_KEYS
    ]
    inputs = spec.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        problems.append(Problem(str(path), None, "'inputs' must be a non-empty list of paths or globs"))
        inputs = []
    defaults = spec.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append(Problem(str(path), None, "[defaults] must be a table"))
        defaults = {}
    for key in defaults:
        if key not in MESSAGE_PARAMS - {"messages"}:
            problems.append(Problem(str(path), None, f"[defaults] has unknown request field {key!r}"))
    run = spec.get("run", {})
    for key in run:
        if key not in RUN_KEYS:
            problems.append(
                Problem(str(path), None, f"[run] has unknown key {key!r} (known: {', '.join(sorted(RUN_KEYS))})")
            )
    limits = spec.get("limits", {})
    for key, value in limits.items():
        table = value if isinstance(value, dict) else {key: value}
        for name, number in table.items():
            if name not in LIMIT_KEYS or not isinstance(number, int | float) or number <= 0:
                problems.append(
                    Problem(
                        str(path),
                        None,
                        f"[limits] {key}: use rpm, itpm, otpm (positive numbers), "
                        "for every model or in a table per model",
                    )
                )
    sources: list[Source] = []
    for entry in inputs:
        target = path.parent / entry
        is_glob = any(ch in entry for ch in "*?[")
        found = _sources_of(target, as_glob=is_glob)
        if not found or (not is_glob and not target.exists()):
            problems.append(Problem(str(path), None, f"input {entry!r} matches no file"))
        sources.extend(found)
    if problems:
        raise JobFileError(problems)
    results = spec.get("results")
    return JobSpec(
        name=str(spec.get("name") or _stem_id(path)),
        sources=sources,
        defaults={"model": DEFAULT_MODEL, "max_tokens": DEFAULT_MAX_TOKENS, **defaults, **cli_defaults},
        run=dict(run),
        limits=dict(limits),
        results=None if results is None else path.parent / results,
    )


def _check_params(params: dict[str, Any]) -> str | None:
    """Why these params cannot be sent, or None."""
    for key in params:
        if key not in MESSAGE_PARAMS:
            return f"unknown request field {key!r}"
    if not isinstance(params.get("model"), str) or not params["model"]:
        return "'model' must be a non-empty string"
    max_tokens = params.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "'max_tokens' must be an integer >= 1"
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    return None


def _check_id(custom_id: Any) -> str | None:
    if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
        return f"invalid custom_id {custom_id!r}: it must match ^[a-zA-Z0-9_-]{{1,64}}$"
    return None


def _from_json_line(obj: Any, defaults: dict[str, Any], generated_id: str) -> tuple[str, dict[str, Any]] | str:
    """(custom_id, params) of one JSONL line, or why it is invalid."""
    if not isinstance(obj, dict):
        return "a line must be a JSON object"
    custom_id = obj.get("custom_id", generated_id)
    if "params" in obj:
        extra = set(obj) - {"custom_id", "params"}
        if extra:
            return f"unknown field {sorted(extra)[0]!r} (a Batches line has only custom_id and params)"
        if not isinstance(obj["params"], dict):
            return "'params' must be an object"
        params = {**defaults, **obj["params"]}
    elif "prompt" in obj:
        unknown = set(obj) - SIMPLE_FIELDS
        if unknown:
            return f"unknown field {sorted(unknown)[0]!r}"
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            return "'prompt' must be a non-empty string"
        overrides = {k: v for k, v in obj.items() if k not in ("prompt", "custom_id")}
        params = {**defaults, **overrides, "messages": [{"role": "user", "content": prompt}]}
    else:
        return "missing prompt: a line needs 'prompt' (or 'params' in the Batches shape)"
    problem = _check_id(custom_id) or _check_params(params)
    return problem if problem else (custom_id, params)


def read_requests(spec: JobSpec) -> Iterator[Loaded | Problem]:
    """Every request of the job in input order, or a Problem where a line is bad."""
    defaults = spec.defaults
    for source in spec.sources:
        name = str(source.path)
        stem = _stem_id(source.path)
        if source.kind == "file":
            try:
                prompt = source.path.read_text()
            except UnicodeDecodeError:
                yield Problem(name, None, "not UTF-8 text")
                continue
            if not prompt.strip():
                yield Problem(name, None, "empty prompt file")
                continue
            params = {**defaults, "messages": [{"role": "user", "content": prompt}]}
            yield Loaded(stem, params, name, None)
            continue
        with source.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode()
                except UnicodeDecodeError:
                    yield Problem(name, number, "not UTF-8 text")
                    continue
                if not line.strip():
                    continue
                generated = f"{stem}-{number}"
                if source.kind == "lines":
                    params = {**defaults, "messages": [{"role": "user", "content": line.rstrip("\r\n")}]}
                    yield Loaded(generated, params, name, number)
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    yield Problem(name, number, f"malformed JSON: {exc}")
                    continue
                parsed = _from_json_line(obj, defaults, generated)
                if isinstance(parsed, str):
                    yield Problem(name, number, parsed)
                else:
                    yield Loaded(parsed[0], parsed[1], name, number)
