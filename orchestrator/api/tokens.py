"""A request's input tokens estimated before it is sent (pure): the limiter's down payment on ITPM
and the dry run's estimate, where the server's count_tokens is not asked."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def estimate_input_tokens(params: Mapping[str, Any]) -> int:
    """A quick, deliberately generous estimate: one token per 3.5 characters of the prompt."""
    size = len(json.dumps(params.get("messages", []))) + len(json.dumps(params.get("system", "")))
    return math.ceil(size / 3.5) + 8
