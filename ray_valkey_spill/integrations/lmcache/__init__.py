"""LMCache remote-storage plug-in: vLLM's KV-cache offload on the shared Valkey (``vllm:kv:``).

LMCache configuration (``LMCACHE_CONFIG_FILE``)::

    chunk_size: 256
    local_cpu: true
    max_local_cpu_size: 5
    remote_storage_plugins: ["rvs"]
    extra_config:
      remote_storage_plugin.rvs.module_path: ray_valkey_spill.integrations.lmcache
      remote_storage_plugin.rvs.class_name: SharedValkeyConnectorAdapter
      remote_storage_plugin.rvs.url: valkey://valkey.ai-ml.svc.cluster.local:6379/0
      remote_storage_plugin.rvs.ttl_seconds: 3600
      remote_storage_plugin.rvs.username: vllmkv
      remote_storage_plugin.rvs.password_env: VALKEY_PASSWORD_VLLMKV

``url`` may also name any node of a Valkey Cluster (``valkey+cluster://host:6379``): batches
then go as one pipeline per node. See docs/lmcache.md for the options, the key layout and the
guarantees. Importing this module
imports nothing heavy: LMCache's loader asks for the adapter class by name, and only that
imports lmcache (and torch). ``import ray_valkey_spill`` never does.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"SharedValkeyConnectorAdapter": ".adapter", "PLUGIN_TYPE": ".adapter",
         "SharedValkeyConnector": ".connector"}


def __getattr__(name: str) -> Any:
    """Import the LMCache-facing classes on first use (``getattr`` by LMCache's loader)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)


__all__ = sorted(_LAZY)
