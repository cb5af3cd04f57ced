"""Spilling Ray objects to Valkey: the parts that know Ray.

Nothing here is imported by ``import ray_valkey_spill``; the spill plug-in loads these modules
when Ray itself imports its external storage.
"""
