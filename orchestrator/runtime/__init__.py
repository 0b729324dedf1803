"""What the streaming (``run/``) and batch (``batch/``) modes share, below both: a run's summary,
its progress view (the only module that draws progress), signals, backoff, the collector, the
cache plan."""
