"""Files given directly to ``orchestrator run`` other than a spec, a JSONL file or a text file.

- A table (``.csv``, ``.tsv``, ``.parquet``) runs as the table a user means: its ``prompt``
  column is each row's prompt; ``custom_id``, ``system`` and any Messages field (``model``,
  ``max_tokens``, ``temperature``, ...) are optional columns, typed as a spec's ``param_columns``
  are (an empty cell keeps the default); other columns are the row's data, joined back to its
  result by the CSV export. A table without a ``prompt`` column, or with a column named almost
  like a field (``max_token``), is refused with the spec that would run it.
- What cannot be a job is refused, saying what to do: a JSON array, a spreadsheet, a compressed
  file, standard input (``-``), a folder holding job files beside its prompt files.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from orchestrator.errors import JobFileError, Problem
from orchestrator.jobs.tables import FORMATS, READERS, Columns, Table, template_of
from orchestrator.models import MESSAGE_PARAMS

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
PROMPT_COLUMN, ID_COLUMN = "prompt", "custom_id"
ROW_FIELDS = sorted(MESSAGE_PARAMS - {"messages"})
SPREADSHEETS = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".tgz", ".7z")
# What a folder of prompt files may hold beside them that is a job of its own, not a prompt (a .json
# is as often a folder's metadata: it is left out as any other file is).
JOB_FILES = (".jsonl", ".ndjson", ".toml", *TABLE_SUFFIXES, *SPREADSHEETS)
STDIN = "-"


def _refused(path: Path, message: str) -> JobFileError:
    return JobFileError([Problem(str(path), None, message)])


def refusal(path: Path) -> JobFileError | None:
    """Why ``path`` (given as the job) cannot run as it is, or None."""
    suffix = path.suffix.lower()
    if str(path) == STDIN:
        return _refused(
            path,
            "standard input is not read: a job is a file, so that it can be resumed. Save the input first "
            "(... > prompts.jsonl) and run that file",
        )
    if suffix == ".json":
        return _refused(
            path,
            'a .json file: orchestrator reads JSONL, one JSON object a line ({"prompt": ...} or the Batches '
            "shape). Convert an array with: jq -c '.[]' " + f"{path} > {path.with_suffix('.jsonl')}",
        )
    if suffix in SPREADSHEETS:
        return _refused(
            path,
            "a spreadsheet: save it as CSV (UTF-8) and run the .csv: a 'prompt' column, and optionally "
            "custom_id, system and request fields (model, max_tokens, ...) as columns",
        )
    if suffix in COMPRESSED:
        return _refused(path, f"a compressed file ({suffix}): decompress it first and run what it holds")
    return None


def folder_refusal(folder: Path, prompts: list[Path]) -> JobFileError | None:
    """A folder runs its .txt and .md files as a prompt each: refused if it holds job files beside
    them (they would be left out unsaid), or nothing to run at all."""
    others = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in JOB_FILES)
    named = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
    instead = "run that file itself (orchestrator run FILE), or name everything in a .toml spec (inputs, [[tables]])"
    if prompts and others:
        return _refused(
            folder,
            f"a folder runs its .txt and .md files as one prompt each, and this one also holds {named}: {instead}",
        )
    if prompts:
        return None
    message = "empty: no .txt or .md file in this folder"
    if others:
        message += f" (it holds {named}: {instead})"
    elif any(p.is_dir() for p in folder.iterdir()):
        message += f' (its subfolders are not read: write a spec with inputs = ["{folder.name}/**/*.txt"])'
    return _refused(folder, message)


def _columns(path: Path, kind: str) -> list[str]:
    """The table's column names (its header, its schema); JobFileError for a table that cannot be read."""
    for item in READERS[kind](path):
        if isinstance(item, Columns):
            return item.names
        if isinstance(item, Problem):
            raise JobFileError([item])
        break
    return []


def _spec_example(path: Path, columns: list[str]) -> str:
    example = columns[0] if columns else "text"
    return (
        f"a table given directly needs a '{PROMPT_COLUMN}' column (this one has: {', '.join(columns) or 'none'}); "
        f"a file of one prompt per line is a .txt. To build prompts from other columns, write a spec (job.toml):\n"
        f'    [[tables]]\n    path = "{path.name}"\n'
        f'    [template]\n    prompt = "... {{{example}}} ..."\n'
        "and run: orchestrator run job.toml"
    )


def direct_table(path: Path) -> Table:
    """A table file given as the job, as a spec's ``[[tables]]`` entry would read it."""
    kind = FORMATS[path.suffix.lower()]
    columns = _columns(path, kind)
    if PROMPT_COLUMN not in columns:
        raise _refused(path, _spec_example(path, columns))
    fields = [name for name in columns if name in ROW_FIELDS]
    for name in columns:
        if name in (PROMPT_COLUMN, ID_COLUMN) or name in fields:
            continue
        close = difflib.get_close_matches(name, [PROMPT_COLUMN, ID_COLUMN, *ROW_FIELDS], n=1, cutoff=0.8)
        if close:
            raise _refused(
                path,
                f"column {name!r} is not a request field: did you mean {close[0]!r}? (columns other than "
                f"{PROMPT_COLUMN}, {ID_COLUMN} and request fields are kept as the row's data)",
            )
    template = template_of({"prompt": "{" + PROMPT_COLUMN + "}"})
    assert not isinstance(template, list)
    return Table(path, kind, template, ID_COLUMN if ID_COLUMN in columns else None, tuple(fields))
