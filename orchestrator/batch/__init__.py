"""Message Batches mode: the job through the Message Batches API, over the same store and report."""
