"""The ``ray-valkey-spill`` command: operator tools (gc, doctor, stats) and lab tools (stress, bench).

Tools depend on the library and on the shared modules here (``cli_options``, ``tables``,
``workload``); no tool imports another tool.
"""
