"""Cacheable prefixes of a request, and the breakpoints placed on them (pure).

The API caches a prompt in the order tools, system blocks, message blocks; each block's end is a
boundary where an entry can be written (at a ``cache_control`` breakpoint) and read. Here each
boundary gets a key (a digest of the prompt up to it, model included, ``cache_control`` markers
left out, a string ``system`` or ``content`` the same as its one text block) and an estimate of
its tokens. ``Planner`` counts the boundaries a whole job shares; ``place`` adds breakpoints to
the body sent where the plan says, never more than the API's 4 with the user's own, never moving
the user's, with a TTL the API accepts beside theirs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.api.modelinfo import minimum_cacheable

MAX_BREAKPOINTS = 4
MAX_BOUNDARIES = 64  # boundaries of a request looked at (a long conversation's later ones are its own)
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
# The most bytes ``place`` adds to a request's JSON: four markers, each perhaps on a string made a block.
PLACEMENT_BYTES = MAX_BREAKPOINTS * (len(', "cache_control": {"type": "ephemeral", "ttl": "1h"}') + 32)
CHARS_PER_TOKEN = 3.5  # a generous estimate: a prefix is taken as long enough a little early
_UNMARKABLE = frozenset({"thinking", "redacted_thinking"})  # blocks that cannot carry cache_control


@dataclass(frozen=True, slots=True)
class Boundary:
    """The end of one block of the prompt."""

    key: int  # the prompt up to and including this block (model included)
    tokens: int  # estimated tokens of that prefix
    place: tuple[str, int, int]  # ("tools", i, -1), ("system", i, -1) or ("messages", i, block)
    ttl: str | None  # the user's breakpoint here ("5m" or "1h"), if any
    markable: bool = True


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A breakpoint of the body sent, on a prefix long enough to be cached."""

    key: int
    tokens: int
    ttl: float  # seconds


def _ttl(block: Any) -> str | None:
    control = block.get("cache_control") if isinstance(block, dict) else None
    return str(control.get("ttl", "5m")) if isinstance(control, dict) else None


def _blocks(params: Mapping[str, Any]) -> Iterator[tuple[tuple[str, int, int], Any]]:
    """(place, block) of every block, in cache order."""
    for number, tool in enumerate(params.get("tools") or []):
        yield ("tools", number, -1), tool
    system = params.get("system")
    for number, block in enumerate([{"type": "text", "text": system}] if isinstance(system, str) else system or []):
        yield ("system", number, -1), block
    for index, message in enumerate(params.get("messages") or []):
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for number, block in enumerate(blocks):
            yield ("messages", index, number), block


@functools.lru_cache(maxsize=256)
def _text_digest(text: str) -> bytes:
    """A text's digest; the job's shared texts are met again and again (the lookup compares them
    at C speed instead of hashing them anew)."""
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _identity(place: tuple[str, int, int], block: Any, params: Mapping[str, Any]) -> tuple[bytes, int]:
    """What identifies a block for the cache (its content, without its ``cache_control``), and its size."""
    part, index, number = place
    head = f"{params['messages'][index].get('role')}:".encode() if part == "messages" and number == 0 else b""
    if isinstance(block, dict) and block.get("type") == "text" and set(block) <= {"type", "text", "cache_control"}:
        text = str(block["text"])
        return head + b"t" + _text_digest(text), len(text)
    bare = {key: value for key, value in block.items() if key != "cache_control"} if isinstance(block, dict) else block
    dumped = json.dumps(bare, sort_keys=True)
    return head + part.encode() + _text_digest(dumped), len(dumped)


def _markable(block: Any) -> bool:
    kind = block.get("type") if isinstance(block, dict) else None
    return kind not in _UNMARKABLE and not (kind == "text" and not block.get("text"))


def boundaries(params: Mapping[str, Any]) -> list[Boundary]:
    """The request's block boundaries in cache order (the first ``MAX_BOUNDARIES``)."""
    digest = hashlib.blake2b(str(params.get("model")).encode(), digest_size=8)
    found: list[Boundary] = []
    size = 0
    complete = True
    for place, block in _blocks(params):
        if len(found) == MAX_BOUNDARIES:
            complete = False
            break
        identity, length = _identity(place, block, params)
        digest.update(bytes([len(identity)]) + identity)
        size += length + 8
        key = int.from_bytes(digest.digest(), "big")
        found.append(Boundary(key, math.ceil(size / CHARS_PER_TOKEN), place, _ttl(block), _markable(block)))
    automatic = _ttl(params)
    if automatic is not None and complete and found and found[-1].ttl is None:  # the API's automatic breakpoint
        last = found[-1]
        found[-1] = Boundary(last.key, last.tokens, last.place, automatic, last.markable)
    return found


def user_breakpoints(params: Mapping[str, Any]) -> int:
    """The breakpoint slots the user's own markers take (a top-level ``cache_control`` takes one)."""
    return sum(1 for _, block in _blocks(params) if _ttl(block) is not None) + (_ttl(params) is not None)


class Planner:
    """Counts, over a whole job in its order, how many requests reach each boundary long enough to
    be cached, and where in the job it is first and last used."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.seen = 0

    def add(self, params: Mapping[str, Any]) -> None:
        minimum = minimum_cacheable(str(params.get("model")))
        for boundary in boundaries(params):
            if boundary.tokens >= minimum:
                self.counts[boundary.key] += 1
                self.first.setdefault(boundary.key, self.seen)
                self.last[boundary.key] = self.seen
        self.seen += 1

    def plan(self, ttl: str = "5m", requests_per_second: float | None = None) -> CachePlan:
        """The plan: ``ttl`` for every prefix; or, given the job's pace, 1h for a prefix whose uses
        are on average more than 5 minutes apart (its 5-minute entry would expire between them)."""
        shared = {key: count for key, count in self.counts.items() if count >= 2}
        long: set[int] = set()
        if requests_per_second and ttl == "5m":
            for key, count in shared.items():
                gap = (self.last[key] - self.first[key]) / (count - 1) / requests_per_second
                if gap > TTL_SECONDS["5m"]:
                    long.add(key)
        return CachePlan(shared, ttl, frozenset(long))


@dataclass(frozen=True)
class CachePlan:
    """The boundaries worth a breakpoint (shared by two requests or more: how many) and their TTL
    (``ttl``, or 1h for those in ``long``)."""

    shared: Mapping[int, int]
    ttl: str = "5m"
    long: frozenset[int] = frozenset()

    def ttl_of(self, key: int) -> str:
        return "1h" if key in self.long else self.ttl


def _choose(found: list[Boundary], plan: CachePlan, free: int) -> list[Boundary]:
    """The planned boundaries to mark: the deepest shared one, then shallower ones where more
    requests share the prefix (a branch of the job's prefixes), within ``free`` slots."""
    chosen: list[Boundary] = []
    last_count = 0
    for boundary in reversed(found):
        if len(chosen) == free:
            break
        count = plan.shared.get(boundary.key, 0)
        if boundary.ttl is not None:  # the user's: their breakpoint covers what is shared up to it
            last_count = max(last_count, count)
            continue
        if count > last_count and boundary.markable:
            chosen.append(boundary)
            last_count = count
    return chosen


def _ttls(found: list[Boundary], chosen: list[Boundary], plan: CachePlan) -> dict[tuple[str, int, int], str]:
    """The TTL of each chosen boundary, as the API allows it beside the others (no 1h breakpoint
    after a 5m one): 1h where the plan says or where a 1h one follows, 5m after any 5m one."""
    ours = {boundary.place: plan.ttl_of(boundary.key) for boundary in chosen}
    long_after = False
    for boundary in reversed(found):
        if boundary.place in ours and long_after:
            ours[boundary.place] = "1h"
        long_after = long_after or (ours.get(boundary.place) or boundary.ttl) == "1h"
    short_before = False
    for boundary in found:
        if boundary.place in ours and short_before:
            ours[boundary.place] = "5m"
        short_before = short_before or (ours.get(boundary.place) or boundary.ttl) == "5m"
    return ours


def _marked(params: Mapping[str, Any], marks: dict[tuple[str, int, int], str]) -> dict[str, Any]:
    """A copy of ``params`` with ``cache_control`` on the blocks at ``marks`` (the others shared)."""
    body = dict(params)

    def mark(block: Any, ttl: str) -> dict[str, Any]:
        control = {"type": "ephemeral"} if ttl == "5m" else {"type": "ephemeral", "ttl": ttl}
        return {**block, "cache_control": control}

    tools = [(index, ttl) for (part, index, _), ttl in marks.items() if part == "tools"]
    if tools:
        body["tools"] = list(body["tools"])
        for index, ttl in tools:
            body["tools"][index] = mark(body["tools"][index], ttl)
    system = [(index, ttl) for (part, index, _), ttl in marks.items() if part == "system"]
    if system:
        given = body["system"]
        body["system"] = [{"type": "text", "text": given}] if isinstance(given, str) else list(given)
        for index, ttl in system:
            body["system"][index] = mark(body["system"][index], ttl)
    messages = [(index, number, ttl) for (part, index, number), ttl in marks.items() if part == "messages"]
    if messages:
        body["messages"] = list(body["messages"])
        for index, number, ttl in messages:
            message = dict(body["messages"][index])
            content = message["content"]
            message["content"] = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
            message["content"][number] = mark(message["content"][number], ttl)
            body["messages"][index] = message
    return body


def place(params: Mapping[str, Any], plan: CachePlan | None) -> tuple[dict[str, Any], list[Breakpoint]]:
    """The body to send (``params`` with the plan's breakpoints added; ``params`` is not changed)
    and its breakpoints on prefixes long enough to be cached, shallowest first."""
    found = boundaries(params)
    marks: dict[tuple[str, int, int], str] = {}
    if plan is not None:
        free = MAX_BREAKPOINTS - user_breakpoints(params)
        if free > 0:
            marks = _ttls(found, _choose(found, plan, free), plan)
    body = _marked(params, marks) if marks else dict(params)
    minimum = minimum_cacheable(str(params.get("model")))
    points = [
        Breakpoint(b.key, b.tokens, TTL_SECONDS.get(marks.get(b.place) or b.ttl or "5m", 300.0))
        for b in found
        if (b.ttl is not None or b.place in marks) and b.tokens >= minimum
    ]
    return body, points
