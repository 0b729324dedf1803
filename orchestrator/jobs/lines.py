"""The lines of an input file, read as a stream: UTF-8 (a BOM on the first line stripped), blank
lines skipped, an undecodable line a ``Problem`` naming its file and line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import Problem


def text_lines(path: Path) -> Iterator[tuple[int, str] | Problem]:
    """(line number, text) of each non-blank line, or a Problem where a line is not UTF-8."""
    name = str(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                yield Problem(name, number, "not UTF-8 text")
                continue
            if line and not line.isspace():
                yield number, line
