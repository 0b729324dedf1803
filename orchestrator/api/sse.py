"""A server-sent events decoder (pure): bytes in, ``(event, data)`` pairs out.

It decodes what the SDK's decoder (``anthropic._streaming.SSEDecoder``) decodes, and yields
what the SDK's stream goes on to read: lines end with LF, CRLF or CR; ``data`` lines of one
event are joined with LF; comment lines (``:``) and unknown fields are skipped; an event is
dispatched at a blank line, so a last event with no blank line after it is dropped, at the end
of the body too (the SDK's decoder does not flush it either); an event without a name is
dropped. An event name that is not UTF-8 raises ``MalformedStream`` (the SDK fails on it)
once the events before it are handed over: from the next ``feed``, or from ``finish`` at the
end of the body. The data is left to the caller to decode. Splitting on blank lines over whole
chunks keeps the cost per event low.
"""

from __future__ import annotations

from orchestrator.errors import MalformedStream


class SSEDecoder:
    __slots__ = ("_buffer", "_failed")

    def __init__(self) -> None:
        self._buffer = b""
        self._failed: MalformedStream | None = None

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """The events completed by ``chunk``, in order."""
        self.finish()
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
        try:
            for block in blocks:
                event = ""
                data: list[bytes] = []
                for line in block.split(b"\n"):
                    if line.startswith(b"data:"):
                        data.append(line[6:] if line[5:6] == b" " else line[5:])
                    elif line.startswith(b"event:"):
                        event = (line[7:] if line[6:7] == b" " else line[6:]).decode()
                    elif line == b"data":  # a field without a colon has an empty value
                        data.append(b"")
                    elif line == b"event":
                        event = ""
                if event:
                    events.append((event, data[0] if len(data) == 1 else b"\n".join(data)))
        except UnicodeDecodeError as exc:
            self._failed = MalformedStream(f"an event name that is not UTF-8 ({exc})")
            if not events:
                raise self._failed from None
        return events

    def finish(self) -> None:
        """At the end of the body: raise the failure still to report, if any."""
        if self._failed is not None:
            raise self._failed
