"""What a job is: a job file or a ``.toml`` spec, resolved into its sources, defaults and settings.

A job is any of:
- ``.jsonl`` (or ``.ndjson``) lines in the Message Batches request shape ``{"custom_id": ..., "params": {...}}``,
  or simple lines ``{"prompt": ..., "custom_id"?: ..., <any Messages param>?: ...}``;
- a table (``.csv``, ``.tsv``, ``.parquet``) with a ``prompt`` column (see ``direct.py``);
- a text file (any other extension), one prompt per non-blank line;
- a directory of ``.txt`` / ``.md`` files, one prompt per file;
- a ``.toml`` job spec naming its inputs (paths, or globs whose matches are one prompt per
  file) and tables (``[[tables]]`` rows through a ``[template]``, see ``tables.py``), defaults
  for every request, an ``[output] schema`` every reply must fit (``output.py``), run settings
  and where results go.

Missing ``custom_id``s get stable ones: ``<file stem>-<line>``, or the file stem for a
prompt file. Duplicates across the whole job are found by the store while loading.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.api.modelinfo import limit_problem
from orchestrator.errors import JobFileError, Problem, UserError
from orchestrator.jobs.direct import TABLE_SUFFIXES, direct_table, folder_refusal, refusal
from orchestrator.jobs.output import read_schema, schema_text_problems, with_format
from orchestrator.jobs.params import value_problem
from orchestrator.jobs.tables import Table, table_of, template_of
from orchestrator.models import MESSAGE_PARAMS
from orchestrator.settings import flag_of, limit_problems, run_problems

PROMPT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
SPEC_KEYS = frozenset({"name", "inputs", "tables", "template", "results", "defaults", "run", "limits", "output"})
DEFAULT_MODEL = "claude-haiku-4-5"
DEFAULT_MAX_TOKENS = 1024
SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # "jsonl", "lines", "file", "table"
    table: Table | None = None  # for a table: its format, template and columns


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
            if source.table is not None:
                digest.update(source.table.describe().encode())
            with source.path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()


def stem_id(path: Path) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", path.stem)[:48] or "input"


def _sources_of(path: Path, *, as_glob: bool = False) -> list[Source]:
    if as_glob:
        return [Source(Path(p), "file") for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
    if path.is_dir():
        return [Source(p, "file") for p in sorted(path.iterdir()) if p.suffix in PROMPT_SUFFIXES and p.is_file()]
    return [Source(path, "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "lines")]


def _tables(spec: dict[str, Any], base: Path) -> tuple[list[Table], list[str]]:
    """A spec's ``[[tables]]`` through its ``[template]``, or what is wrong with them."""
    entries, template = spec.get("tables"), spec.get("template")
    if entries is None:
        return [], [] if template is None else ["[template] is set but no [[tables]] use it"]
    if not isinstance(entries, list) or not entries:
        return [], ["'tables' must be a list of [[tables]] entries"]
    if template is None:
        return [], ["[[tables]] need a [template] with a prompt"]
    parsed = template_of(template)
    if isinstance(parsed, list):
        return [], parsed
    tables, problems = [], []
    for entry in entries:
        table = table_of(entry, base, parsed)
        if isinstance(table, list):
            problems += table
        else:
            tables.append(table)
    return tables, problems


def _is_database(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER


def _line_of(text: str, headers: tuple[str, ...], key: str) -> int | None:
    """The line where ``key`` is set in a table of a spec's text (as its header names it), if found."""
    current = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[] ")
        elif current in headers and re.match(rf"['\"]?{re.escape(key)}['\"]?\s*=", stripped):
            return number
    return None


def _check_defaults(
    defaults: dict[str, Any], cli_defaults: dict[str, Any], spec: Path | None, text: str, named: Callable[[str], str]
) -> None:
    """What the model's limits refuse in the request defaults (``modelinfo.limit_problem``), named by
    the option (as ``named`` writes it) or the spec's line that set it: every line that does not set
    its own would be refused."""
    refused = limit_problem(defaults)
    if refused is None:
        return
    field, message = refused
    for name in (field, "model"):
        if name in cli_defaults:
            raise UserError(f"{named(name)}: {message}. Nothing was sent.")
    assert spec is not None  # the built-in defaults are within every model's limits
    line = _line_of(text, ("defaults",), field) or _line_of(text, ("defaults",), "model")
    raise JobFileError([Problem(str(spec), line, f"[defaults] {message}")])


def _output_schema(spec: dict[str, Any], path: Path, text: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    """A spec's ``[output] schema``: a JSON file relative to the spec, or an inline table; checked."""
    output = spec.get("output")
    if output is None:
        return None, []
    if not isinstance(output, dict) or set(output) - {"schema"} or "schema" not in output:
        return None, [Problem(str(path), None, '[output] takes one key: schema = "schema.json" (or a table)')]
    schema = output["schema"]
    line = _line_of(text, ("output",), "schema")
    if isinstance(schema, str):
        try:
            return read_schema(path.parent / schema, str(path.parent / schema)), []
        except JobFileError as exc:
            return None, [Problem(str(path), line, f"[output] schema {p.path}: {p.message}") for p in exc.problems]
    problems = schema_text_problems(schema, "[output] schema")
    return (None if problems else schema), [Problem(str(path), line, message) for message in problems]


def _defaults(
    spec_defaults: dict[str, Any], cli_defaults: dict[str, Any], schema: dict[str, Any] | None
) -> dict[str, Any]:
    """The requests' defaults: ours, the spec's, its output schema, then the command line's
    (an ``output_config`` from the command line adds to the spec's instead of replacing it)."""
    defaults = {"model": DEFAULT_MODEL, "max_tokens": DEFAULT_MAX_TOKENS, **spec_defaults}
    if schema is not None:
        defaults = with_format(defaults, schema)
    cli = dict(cli_defaults)
    if isinstance(cli.get("output_config"), dict) and isinstance(defaults.get("output_config"), dict):
        cli["output_config"] = {**defaults["output_config"], **cli["output_config"]}
    return {**defaults, **cli}


def load_spec(path: Path, cli_defaults: dict[str, Any], named: Callable[[str], str] = flag_of) -> JobSpec:
    """The job a path stands for; ``cli_defaults`` (from options, named as ``named`` writes them)
    override a spec's defaults."""
    refused = refusal(path)
    if refused is not None:
        raise refused
    if not path.exists():
        raise JobFileError([Problem(str(path), None, "no such file or directory")])
    if path.is_file() and _is_database(path):
        message = f"a job database, not a job file: continue its job with: orchestrator resume {path}"
        raise JobFileError([Problem(str(path), None, message)])
    if path.suffix != ".toml":
        defaults = _defaults({}, cli_defaults, None)
        _check_defaults(defaults, cli_defaults, None, "", named)
        if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
            table = direct_table(path)
            return JobSpec(name=stem_id(path), sources=[Source(path, "table", table)], defaults=defaults)
        found = _sources_of(path)
        if path.is_dir() and (refused := folder_refusal(path, [source.path for source in found])) is not None:
            raise refused
        return JobSpec(name=stem_id(path), sources=found, defaults=defaults)
    try:
        text = path.read_text(encoding="utf-8-sig")
        spec = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise JobFileError([Problem(str(path), None, f"not valid TOML: {exc}")]) from None
    problems = [
        Problem(str(path), None, f"unknown key {key!r} (known: {', '.join(sorted(SPEC_KEYS))})")
        for key in spec
        if key not in SPEC_KEYS
    ]
    inputs = spec.get("inputs", [] if "tables" in spec else None)
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs) or not (inputs or "tables" in spec):
        problems.append(Problem(str(path), None, "'inputs' must be a non-empty list of paths or globs"))
        inputs = []
    tables, table_problems = _tables(spec, path.parent)
    problems += [Problem(str(path), None, message) for message in table_problems]
    defaults = spec.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append(Problem(str(path), None, "[defaults] must be a table"))
        defaults = {}
    for key, value in defaults.items():
        if key not in MESSAGE_PARAMS - {"messages"}:
            problems.append(Problem(str(path), None, f"[defaults] has unknown request field {key!r}"))
        elif (problem := value_problem(key, value)) is not None:
            problems.append(Problem(str(path), _line_of(text, ("defaults",), key), f"[defaults] {key} {problem}"))
    schema, schema_problems = _output_schema(spec, path, text)
    problems += schema_problems
    run = spec.get("run", {})
    limits = spec.get("limits", {})
    if not isinstance(run, dict) or not isinstance(limits, dict):
        problems.append(Problem(str(path), None, "[run] and [limits] must be tables"))
        run, limits = {}, {}
    for key, value in run.items():
        problems += [Problem(str(path), _line_of(text, ("run",), key), m) for m in run_problems({key: value})]
    for key, value in limits.items():
        if not isinstance(value, dict):
            line = _line_of(text, ("limits",), key)
            problems += [Problem(str(path), line, m) for m in limit_problems({key: value})]
            continue
        headers = (f'limits."{key}"', f"limits.'{key}'", f"limits.{key}")
        for name, number in value.items():
            line = _line_of(text, headers, name)
            problems += [Problem(str(path), line, m) for m in limit_problems({key: {name: number}})]
    sources: list[Source] = []
    for entry in inputs:
        target = path.parent / entry
        is_glob = any(ch in entry for ch in "*?[")
        if not is_glob and target.is_file() and target.suffix.lower() in TABLE_SUFFIXES:
            try:  # a table named as an input runs as the table given directly does
                sources.append(Source(target, "table", direct_table(target)))
            except JobFileError as exc:
                problems += exc.problems
            continue
        found = _sources_of(target, as_glob=is_glob)
        if not found or (not is_glob and not target.exists()):
            problems.append(Problem(str(path), None, f"input {entry!r} matches no file"))
        sources.extend(found)
    sources += [Source(table.path, "table", table) for table in tables]
    if problems:
        raise JobFileError(problems)
    results = spec.get("results")
    merged = _defaults(defaults, cli_defaults, schema)
    _check_defaults(merged, cli_defaults, path, text, named)
    return JobSpec(
        name=str(spec.get("name") or stem_id(path)),
        sources=sources,
        defaults=merged,
        run=dict(run),
        limits=dict(limits),
        results=None if results is None else path.parent / results,
    )
