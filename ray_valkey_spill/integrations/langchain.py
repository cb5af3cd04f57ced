"""LangChain adapters: an embedding store for ``CacheBackedEmbeddings`` and a chat history.

``ValkeyEmbeddingStore`` is a ``BaseStore[str, list[float]]`` over ``EmbeddingCache``: vectors
are stored binary in the declared dtype (never JSON), every key has a TTL, a batch is one MGET
or one pipeline, and each value carries its original text so that ``yield_keys`` returns the
keys LangChain gave (its standard store suite requires it). Pass it to
``CacheBackedEmbeddings(underlying, document_embedding_store=..., query_embedding_store=...)``
(the constructor, not ``from_bytes_store``, which would JSON-encode the vectors); give the
document and query stores different ``role`` values.

``ValkeyChatMessageHistory`` is a ``BaseChatMessageHistory`` over ``SessionStore``: one
``add_messages`` is one MULTI/EXEC sent once (never twice after a timeout), order is kept, the
TTL is refreshed on every write, and it needs no server modules.

The async methods use the caches' valkey.asyncio API, not LangChain's thread-pool fallback.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator, Sequence

try:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict
    from langchain_core.stores import BaseStore
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("ray_valkey_spill.integrations.langchain needs langchain-core: "
                      "pip install 'ray-valkey-spill[langchain]'") from exc

from ..caches import EmbeddingCache, SessionStore
from ..caches.embedding import DEFAULT_TTL_SECONDS
from ..caches.session import DEFAULT_TTL_SECONDS as SESSION_TTL_SECONDS
from ..errors import ConfigError
from ..prefixes import SESSION_PREFIX

__all__ = ["ValkeyChatMessageHistory", "ValkeyEmbeddingStore"]


class ValkeyEmbeddingStore(BaseStore[str, list[float]]):
    """Text -> embedding store for ``CacheBackedEmbeddings``, in the shared Valkey.

    Args:
        client_or_url: a server URL / SpillConfig (shared pools, sync and per event loop) or a
            valkey-py client (then the async methods need ``async_client=``).
        model: the embedding model's name. ``revision``, ``dimension``, ``dtype``, ``role``:
            the rest of the declared schema (see ``EmbeddingCache``); all are part of the key.
        ttl_seconds: lifetime of every entry (1 s .. 1 year).
        **options: other ``EmbeddingCache`` options (prefix, zstd_level, async_client, ...).

    Raises:
        ConfigError: a bad option. BackendUnavailableError: no client for a URL.
    """

    def __init__(self, client_or_url: Any, model: str, *, revision: str | None = None,
                 dimension: int | None = None, dtype: Any = "float32", role: str | None = None,
                 ttl_seconds: int = DEFAULT_TTL_SECONDS, **options: Any):
        self.cache = EmbeddingCache(client_or_url, model, revision=revision, dimension=dimension,
                                    dtype=dtype, role=role, ttl_seconds=ttl_seconds,
                                    keep_texts=True, **options)

    @classmethod
    def from_cache(cls, cache: EmbeddingCache) -> "ValkeyEmbeddingStore":
        """A store over an existing cache, which must keep texts (``keep_texts=True``)."""
        if not cache.keep_texts:
            raise ConfigError("cache.keep_texts", False,
                              "True: a LangChain store must list its original keys")
        store = cls.__new__(cls)
        store.cache = cache
        return store

    def mget(self, keys: Sequence[str]) -> list[list[float] | None]:
        """The vectors of ``keys`` (None for misses): one MGET."""
        return [None if v is None else v.tolist() for v in self.cache.get_many(list(keys))]

    async def amget(self, keys: Sequence[str]) -> list[list[float] | None]:
        """``mget`` on valkey.asyncio."""
        return [None if v is None else v.tolist()
                for v in await self.cache.aget_many(list(keys))]

    def mset(self, key_value_pairs: Sequence[tuple[str, list[float]]]) -> None:
        """Store the vectors: one pipeline of ``SET EX``. Raises CacheValueError (nothing
        stored) when a vector does not fit the schema, with ``.failed`` per index."""
        if key_value_pairs:
            texts, vectors = zip(*key_value_pairs)
            self.cache.put_many(list(texts), list(vectors))

    async def amset(self, key_value_pairs: Sequence[tuple[str, list[float]]]) -> None:
        """``mset`` on valkey.asyncio."""
        if key_value_pairs:
            texts, vectors = zip(*key_value_pairs)
            await self.cache.aput_many(list(texts), list(vectors))

    def mdelete(self, keys: Sequence[str]) -> None:
        """Remove the entries of ``keys`` (missing ones are ignored): one UNLINK."""
        self.cache.delete_many(list(keys))

    async def amdelete(self, keys: Sequence[str]) -> None:
        """``mdelete`` on valkey.asyncio."""
        await self.cache.adelete_many(list(keys))

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        """The original keys (texts) held, optionally only those starting with ``prefix``."""
        yield from self.cache.texts(prefix)

    async def ayield_keys(self, *, prefix: str | None = None) -> AsyncIterator[str]:
        """``yield_keys`` on valkey.asyncio."""
        async for text in self.cache.atexts(prefix):
            yield text


class ValkeyChatMessageHistory(BaseChatMessageHistory):
    """The messages of one conversation, expiring ``ttl_seconds`` after the last write.

    Args:
        session_id: the conversation's id.
        client_or_url: a server URL / SpillConfig or a valkey-py client; or pass ``store``.
        store: an existing ``SessionStore`` (shares its TTL, trimming and prefix).
        ttl_seconds, max_messages, prefix: for a new SessionStore (``max_messages`` keeps the
            most recent ones).

    Raises:
        ConfigError: a bad option, or neither/both of ``client_or_url`` and ``store``.
    """

    def __init__(self, session_id: str, client_or_url: Any = None, *,
                 store: SessionStore | None = None, ttl_seconds: int = SESSION_TTL_SECONDS,
                 max_messages: int = 1000, prefix: str = SESSION_PREFIX):
        if (client_or_url is None) == (store is None):
            raise ConfigError("store", store, "exactly one of client_or_url and store")
        self.session_id = session_id
        self.store = store or SessionStore(client_or_url, ttl_seconds=ttl_seconds,
                                           max_turns=max_messages, prefix=prefix)

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The stored messages, oldest first (one LRANGE; reading does not refresh the TTL)."""
        return messages_from_dict(self.store.last(self.session_id, self.store.max_turns))

    async def aget_messages(self) -> list[BaseMessage]:
        """``messages`` on valkey.asyncio."""
        return messages_from_dict(await self.store.alast(self.session_id, self.store.max_turns))

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append ``messages`` in order: one MULTI/EXEC, sent once; refreshes the TTL."""
        if messages:
            self.store.append(self.session_id, *[message_to_dict(m) for m in messages])

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """``add_messages`` on valkey.asyncio."""
        if messages:
            await self.store.aappend(self.session_id, *[message_to_dict(m) for m in messages])

    def clear(self) -> None:
        """Remove the messages (the session's stored results stay, with a refreshed TTL)."""
        self.store.trim(self.session_id, 0)

    async def aclear(self) -> None:
        """``clear`` on valkey.asyncio."""
        await self.store.atrim(self.session_id, 0)
