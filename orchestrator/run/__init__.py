"""Streaming mode: the engine, one request's attempts, recovery, limits, the store writer, progress."""
