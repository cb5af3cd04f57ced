"""ML caches that share the spill backend's Valkey: embeddings, vLLM KV blocks, session state.

Every key these caches write carries a TTL, so a server running ``maxmemory-policy volatile-lru``
evicts cache entries and never a spilled Ray object (which has none). Importing this package
does not import Ray.
"""

from ._base import EvictionPolicyWarning
from ._values import ArrayCodec, CacheValueError, CorruptValueError
from .embedding import EmbeddingCache
from .kv import KVCache, block_hashes
from .session import SessionStore

__all__ = ["ArrayCodec", "CacheValueError", "CorruptValueError", "EmbeddingCache",
           "EvictionPolicyWarning", "KVCache", "SessionStore", "block_hashes"]
