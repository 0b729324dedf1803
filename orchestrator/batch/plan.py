"""Splitting requests into message batches under both of the API's limits (pure).

The limits are the number of requests and the size of the create request's body, measured on
the serialized body: ``{"requests":[`` + the requests' JSON joined by commas + ``]}``, each
request ``{"custom_id":...,"params":...}`` with the params as stored (compact JSON). That body
is what ``create_body`` builds and the create sends, byte for byte, so the size is exact and the
requests are never decoded into objects to be encoded again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MAX_BYTES = 256 * 1024 * 1024  # the API's limit on a batch's create request
ENVELOPE = len(b'{"requests":[]}')


def _request(custom_id: str, params_json: str) -> bytes:
    return b'{"custom_id":%s,"params":%s}' % (json.dumps(custom_id).encode(), params_json.encode())


def request_size(custom_id: str, params_json: str) -> int:
    """Bytes of one request in the create body (``params_json``: the params as stored)."""
    return len(b'{"custom_id":,"params":}') + len(json.dumps(custom_id)) + len(params_json.encode())


def create_body(requests: list[tuple[str, str]]) -> bytes:
    """The create request's body for (custom_id, params as stored) pairs."""
    return b'{"requests":[' + b",".join(_request(custom_id, params) for custom_id, params in requests) + b"]}"


@dataclass
class Splitter:
    """Feeds requests one by one; says when one must start a new batch. A request too large for any
    batch gets one of its own (the API then refuses it, and it becomes an errored result)."""

    max_requests: int
    max_bytes: int = MAX_BYTES
    batches: int = 0  # batches started so far
    count: int = 0  # requests in the current batch
    size: int = ENVELOPE  # its body's bytes so far

    def fits(self, size: int) -> bool:
        """Whether a request of ``size`` bytes fits in the current batch."""
        return self.count > 0 and self.count < self.max_requests and self.size + 1 + size <= self.max_bytes

    def add(self, size: int) -> bool:
        """Add a request of ``size`` bytes; True if it starts a new batch (the current one is full)."""
        if self.fits(size):
            self.count += 1
            self.size += 1 + size
            return False
        self.batches += 1
        self.count = 1
        self.size = ENVELOPE + size
        return True
