"""Benchmarks: ``python -m parley.bench {protocol} [--json]`` prints one JSON object."""
