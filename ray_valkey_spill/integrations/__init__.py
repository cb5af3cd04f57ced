"""Adapters that plug the shared Valkey into ML frameworks, each behind an optional extra.

``lmcache`` (vLLM KV offload through LMCache: ``pip install 'ray-valkey-spill[lmcache]'``),
``langchain`` (embedding store, chat history) and ``llamaindex`` (batched embedding wrapper).
Nothing here is imported by ``import ray_valkey_spill``; each sub-module imports its framework.
"""
