"""The wire: SSE decoding, accumulation of events into messages, failure classification, model facts (pure)."""
