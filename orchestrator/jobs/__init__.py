"""Job files and specs into validated requests, streamed."""
