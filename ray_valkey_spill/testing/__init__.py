"""Real servers and harnesses for tests, benchmarks and the stress run (never used in production).

``EmbeddedValkey`` and ``EmbeddedValkeyCluster`` start real valkey-server processes;
``SpillHarness`` drives the spill engine without Ray.
"""
