"""A server-sent events decoder (pure): bytes in, ``(event, data)`` pairs out.

It follows the parts of the SSE spec the API uses, the way the SDK's decoder does: lines end
with LF, CRLF or CR; ``data`` lines of one event are joined with LF; comment lines (``:``) and
unknown fields are skipped; an event is dispatched at a blank line, so a last event with no
blank line after it is dropped; an event without an ``event:`` line is dropped (the SDK does
the same). Splitting on blank lines over whole chunks keeps the cost per event low.
"""

from __future__ import annotations


class SSEDecoder:
    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """The events completed by ``chunk``, in order."""
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            # A CR at the very end may be the first half of a CRLF: keep it for the next chunk.
            held = b"\r" if buffer.endswith(b"\r") else b""
            buffer = buffer[: len(buffer) - len(held)].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            blocks = buffer.split(b"\n\n")
            self._buffer = blocks.pop() + held
        else:
            blocks = buffer.split(b"\n\n")
            self._buffer = blocks.pop()
        events = []
        for block in blocks:
            event: str | None = None
            data: list[bytes] = []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                elif line.startswith(b"event:"):
                    event = (line[7:] if line[6:7] == b" " else line[6:]).decode()
            if event is not None and data:
                events.append((event, data[0] if len(data) == 1 else b"\n".join(data)))
        return events
