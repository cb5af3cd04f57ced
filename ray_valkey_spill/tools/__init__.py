"""Operator tools of the ``ray-valkey-spill`` command (gc, doctor, stats): what runs against a
production server. They use the library and ``cli/``, never ``lab/``; no tool imports another."""
