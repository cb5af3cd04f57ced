"""Adapters that plug the shared Valkey into ML frameworks (optional extras, imported on demand).

Nothing here is imported by ``import ray_valkey_spill``; each sub-module needs its framework
(``lmcache``: ``pip install 'ray-valkey-spill[lmcache]'``).
"""
