"""The lines of an input file, read as a stream a block at a time: UTF-8 (a BOM on the first line
stripped), an undecodable line a ``Problem`` naming its file and line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import Problem

BLOCK_BYTES = 1 << 17  # read at a time (then on to the end of the line): a few thousand lines


def line_blocks(path: Path) -> Iterator[tuple[int, list[str | None]]]:
    """(number of its first line, its lines) of each block of the file: every line, blank ones
    too, without its final "\\n"; None for a line that is not UTF-8."""
    first = 1
    with path.open("rb") as handle:
        while data := handle.read(BLOCK_BYTES):
            if not data.endswith(b"\n"):
                data += handle.readline()
            raw = data.split(b"\n")
            if not raw[-1]:
                raw.pop()  # after the last "\n"
            lines: list[str | None]
            try:
                lines = list(data.decode("utf-8-sig" if first == 1 else "utf-8").split("\n"))
                if len(lines) > len(raw):
                    lines.pop()
            except UnicodeDecodeError:
                lines = [_decoded(line, first == 1 and i == 0) for i, line in enumerate(raw)]
            yield first, lines
            first += len(raw)


def _decoded(raw: bytes, first: bool) -> str | None:
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError:
        return None


def text_lines(path: Path) -> Iterator[tuple[int, str] | Problem]:
    """(line number, text without its "\\n") of each non-blank line, or a Problem where a line is not UTF-8."""
    name = str(path)
    for first, lines in line_blocks(path):
        for number, line in enumerate(lines, start=first):
            if line is None:
                yield Problem(name, number, "not UTF-8 text")
            elif line and not line.isspace():
                yield number, line
