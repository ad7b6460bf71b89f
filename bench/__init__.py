"""Benchmarks of the lab report intake service. `python -m bench.run` is the end-to-end harness."""
