"""clinicguard's benchmarks: each scenario's throughput and latency next to a bare FastAPI
endpoint doing the same database work, measured in the same run (``python -m bench``;
see bench/README.md)."""
