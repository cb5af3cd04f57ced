"""Command-line tools and benchmarks of ray-valkey-spill."""
