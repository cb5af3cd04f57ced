"""Lab tooling of the ``ray-valkey-spill`` command: the stress test, benchmarks and scenarios,
measured side by side with Ray's filesystem spilling. Never needed on a production cluster.

Lab tools use the library, ``cli/`` and the shared modules here (``workload``, ``multinode``,
``rawclient``, ``throttle``, ``deployed_server``); no lab tool imports another.
"""
