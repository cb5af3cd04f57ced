"""LlamaIndex adapter: a ``BaseEmbedding`` that caches another one's vectors in the shared Valkey.

LlamaIndex's own ``embeddings_cache=`` hook calls its key-value store once per text (one round
trip each, and its Redis store keeps a whole collection in one hash with no TTL). This wrapper
overrides the batch methods instead: a batch of N texts costs one MGET, ONE call of the wrapped
model's batch method with only the distinct misses (which the model may still split by its own
``embed_batch_size``, its API's limit), and one pipeline of ``SET EX``. Queries and documents
are cached under different roles (many models embed them differently).

    embed_model = ValkeyCachedEmbedding(HuggingFaceEmbedding(...), "valkey://host:6379/0",
                                        dimension=384, ttl_seconds=7 * 24 * 3600)
    Settings.embed_model = embed_model

The async methods use the cache's valkey.asyncio API and the wrapped model's async methods.
"""

from __future__ import annotations

from typing import Any, List

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
    from pydantic import PrivateAttr
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("ray_valkey_spill.integrations.llamaindex needs llama-index-core: "
                      "pip install 'ray-valkey-spill[llamaindex]'") from exc

from ..caches import EmbeddingCache
from ..caches.embedding import DEFAULT_TTL_SECONDS

__all__ = ["ValkeyCachedEmbedding"]

# LlamaIndex's upper bound for embed_batch_size: each batch is one MGET and one embed call.
MAX_EMBED_BATCH_SIZE = 2048


class ValkeyCachedEmbedding(BaseEmbedding):
    """``embed_model`` with its vectors cached in Valkey (binary, declared dtype, TTL'd).

    Args:
        embed_model: the LlamaIndex embedding model to cache; its ``model_name`` names the cache.
        client_or_url: a server URL / SpillConfig (shared pools) or a valkey-py client (then
            pass ``async_client=`` for the async methods).
        dimension, revision, dtype: the declared schema (see ``EmbeddingCache``); set the
            dimension so that a wrong-width vector is refused instead of cached.
        ttl_seconds: lifetime of every entry (1 s .. 1 year).
        embed_batch_size: texts per batch (one MGET + at most one embed call each).
        **options: other ``EmbeddingCache`` options (prefix, zstd_level, async_client, ...).

    Raises:
        ConfigError: a bad option. BackendUnavailableError: no client for a URL.
    """

    _inner: BaseEmbedding = PrivateAttr()
    _documents: EmbeddingCache = PrivateAttr()
    _queries: EmbeddingCache = PrivateAttr()

    def __init__(self, embed_model: BaseEmbedding, client_or_url: Any, *,
                 dimension: int | None = None, revision: str | None = None,
                 dtype: Any = "float32", ttl_seconds: int = DEFAULT_TTL_SECONDS,
                 embed_batch_size: int = MAX_EMBED_BATCH_SIZE, **options: Any):
        super().__init__(model_name=embed_model.model_name, embed_batch_size=embed_batch_size)
        schema = dict(revision=revision, dimension=dimension, dtype=dtype,
                      ttl_seconds=ttl_seconds, **options)
        self._inner = embed_model
        self._documents = EmbeddingCache(client_or_url, embed_model.model_name, role="document",
                                         **schema)
        self._queries = EmbeddingCache(client_or_url, embed_model.model_name, role="query",
                                       **schema)

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serialises this embedding under."""
        return "ValkeyCachedEmbedding"

    @property
    def document_cache(self) -> EmbeddingCache:
        """The cache of text (document) embeddings."""
        return self._documents

    @property
    def query_cache(self) -> EmbeddingCache:
        """The cache of query embeddings."""
        return self._queries

    def _get_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        vectors = self._documents.get_or_compute(texts, self._inner.get_text_embedding_batch)
        return [v.tolist() for v in vectors]

    async def _aget_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        vectors = await self._documents.aget_or_compute(
            texts, self._inner.aget_text_embedding_batch)
        return [v.tolist() for v in vectors]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._aget_text_embeddings([text]))[0]

    def _get_query_embedding(self, query: str) -> Embedding:
        vectors = self._queries.get_or_compute(
            [query], lambda missing: [self._inner.get_query_embedding(missing[0])])
        return vectors[0].tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        async def embed(missing: list) -> list:
            return [await self._inner.aget_query_embedding(missing[0])]

        return (await self._queries.aget_or_compute([query], embed))[0].tolist()
