"""Command-line tools and benchmarks (each runnable as ``python -m ray_valkey_spill.tools.NAME``)."""
