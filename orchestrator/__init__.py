"""orchestrator: a concurrent, resumable batch streaming runner for the Anthropic Messages API."""

__all__: list[str] = []
