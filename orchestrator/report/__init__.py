"""Usage, cost, latency and throughput from job stores; text, JSON, CSV, HTML; dry runs; exports."""
