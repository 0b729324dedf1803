"""Where a run sends its requests: the built-in simulator or an endpoint's base URL (pure)."""

from __future__ import annotations

import os

from orchestrator.errors import UserError

SIMULATOR = "simulator"  # the endpoint of a job run against the built-in simulator
DEFAULT_BASE_URL = "https://api.anthropic.com"


def endpoint_of(simulated: bool, base_url: str | None) -> str:
    """SIMULATOR, or the base URL as the SDK resolves it."""
    if simulated:
        return SIMULATOR
    return (base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def has_key() -> bool:
    return bool(os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN"))


def check_key(simulated: bool) -> None:
    if not simulated and not has_key():
        raise UserError("no API key: set ANTHROPIC_API_KEY, or run against the built-in simulator with --simulate")
