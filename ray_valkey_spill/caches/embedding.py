"""EmbeddingCache: text -> vector, namespaced by model, stored in the shared Valkey under ``emb:``.

Key: ``<prefix><model>:<sha256(text) hex>``. The model name is part of the key (escaped so one
model's key range never contains another's), so a new model never reads an old model's vectors.
Value: one numpy array in the compact binary form of ``_values`` (never JSON). Every key is
written with ``SET ... EX``: a cache key must always carry a TTL so that a ``volatile-*`` server
evicts it, not a spilled object.

Batch operations are the primary API: ``get_many`` is one MGET, ``put_many`` one pipeline of
``SET EX``; ``get_or_compute`` adds one call of the embedding function with only the misses.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable, Sequence

import numpy as np

from ._base import (DEFAULT_STATS_FLUSH_SECONDS, Counters, KeyedArrayCache, backend_errors,
                    check_cache_prefix, check_ttl, is_cluster, key_part, resolve_client,
                    warn_if_allkeys_policy)
from ._values import ArrayCodec, CorruptValueError, as_numpy
from ..errors import BackendUnavailableError, ConfigError
from ..prefixes import EMBEDDING_PREFIX, STATS_SUFFIX

logger = logging.getLogger("ray_valkey_spill")

DEFAULT_PREFIX = EMBEDDING_PREFIX
DEFAULT_TTL_SECONDS = 7 * 24 * 3600

Text = str | bytes


def text_digest(text: Text) -> str:
    """Hex SHA-256 of the input (UTF-8 for str). Raises ConfigError for other types."""
    if isinstance(text, str):
        data = text.encode("utf-8", "surrogatepass")
    elif isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
    else:
        raise ConfigError("text", type(text).__name__, "str or bytes")
    return hashlib.sha256(data).hexdigest()


class EmbeddingCache(KeyedArrayCache):
    """Embedding vectors of one model, in the shared Valkey.

    Args:
        client_or_url: a server URL / SpillConfig (the process's shared pool from ``connect``)
            or an existing valkey-py client.
        model: the embedding model's name; vectors are only ever read back for this model.
        ttl_seconds: lifetime of every entry (required to be 1 s .. 1 year).
        prefix: key prefix; must not overlap ``ray:``, ``vllm:kv:`` or ``session:``.
        zstd_level: None (default: raw bytes) or a zstd level for the payload.
        stats_flush_seconds: publish hit/miss counters to ``<prefix>_stats`` at most this
            often (piggy-backed on a pipeline already being sent); None keeps them per process.

    Raises:
        ConfigError: a bad prefix, model, TTL or option.
        BackendUnavailableError: a URL was given and no client can be set up.
    """

    def __init__(self, client_or_url: Any, model: str, *, ttl_seconds: int = DEFAULT_TTL_SECONDS,
                 prefix: str = DEFAULT_PREFIX, zstd_level: int | None = None,
                 stats_flush_seconds: float | None = DEFAULT_STATS_FLUSH_SECONDS):
        self.prefix = check_cache_prefix("emb", prefix)
        self.model = model
        self.ttl_seconds = check_ttl("ttl_seconds", ttl_seconds)
        self._key_head = f"{self.prefix}{key_part('model', model)}:"
        self.codec = ArrayCodec(zstd_level)
        self.counters = Counters(self.prefix + STATS_SUFFIX, stats_flush_seconds, cache="emb")
        self.client = resolve_client(client_or_url)
        self._cluster = is_cluster(self.client)
        self.maxmemory_policy = warn_if_allkeys_policy(self.client)

    # -- keys -------------------------------------------------------------------------------
    def key(self, text: Text) -> str:
        """The Valkey key of ``text`` for this model."""
        return self._key_head + text_digest(text)

    def keys(self, texts: Sequence[Text]) -> list[str]:
        """The Valkey keys of ``texts`` for this model, in order."""
        head = self._key_head
        return [head + text_digest(t) for t in texts]

    # -- reads ------------------------------------------------------------------------------
    def get(self, text: Text) -> np.ndarray | None:
        """The cached vector of ``text``, or None. See ``get_many``."""
        return self.get_many([text])[0]

    def get_many(self, texts: Sequence[Text]) -> list[np.ndarray | None]:
        """Vectors for ``texts`` in order, None for each miss, in ONE round trip (one MGET).

        Arrays are read-only views of the reply (``.copy()`` to modify). A value that does not
        decode counts as a miss (and in ``corrupt``), never raises.

        Raises:
            BackendUnavailableError: the server cannot be reached (callers may treat as misses).
        """
        if not texts:
            return []
        keys = self.keys(texts)
        with backend_errors(f"get_many({len(keys)} keys under {self._key_head})"):
            if self._cluster:
                values = self.client.mget_nonatomic(keys)
                self._publish_alone()
            else:
                pipe = None
                if self.counters.due():
                    pipe = self.client.pipeline(transaction=False)
                    if not self.counters.publish_into(pipe):
                        pipe = None
                if pipe is None:
                    values = self.client.mget(keys)
                else:
                    # Counters ride along in the same round trip; MGET's reply comes last.
                    pipe.mget(keys)
                    values = pipe.execute()[-1]
        return self._decode_all(keys, values)

    def _publish_alone(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        if self.counters.publish_into(pipe):
            pipe.execute()

    def _decode_all(self, keys: list[str], values: list[Any]) -> list[np.ndarray | None]:
        decode = self.codec.decode
        out: list[np.ndarray | None] = []
        hits = corrupt = 0
        for key, raw in zip(keys, values):
            if raw is None:
                out.append(None)
                continue
            try:
                out.append(decode(raw))
                hits += 1
            except CorruptValueError as exc:
                corrupt += 1
                out.append(None)
                logger.warning("embedding cache: undecodable value at %s counted as a miss: %s",
                               key, exc)
        self.counters.add(hits=hits, misses=len(keys) - hits, corrupt=corrupt)
        self.counters.metrics.bytes_read(sum(len(raw) for raw in values if raw is not None))
        return out

    # -- writes -----------------------------------------------------------------------------
    def put(self, text: Text, vector: Any) -> bool:
        """Store one vector. See ``put_many``."""
        return self.put_many([text], [vector]) == 1

    def put_many(self, texts: Sequence[Text], vectors: Sequence[Any] | np.ndarray) -> int:
        """Store ``vectors[i]`` for ``texts[i]`` with ``SET key value EX ttl`` in ONE pipeline.

        ``vectors`` may be a 2-D array (one row per text) or a sequence of arrays/tensors.
        Returns how many were stored: a write the server refuses because it is full (OOM under
        ``noeviction``) is dropped and counted in ``dropped_puts``, never raised.

        Raises:
            ConfigError: lengths differ.
            CacheValueError: a vector is not a numeric array.
            BackendUnavailableError: the server cannot be reached.
        """
        if len(texts) != len(vectors):
            raise ConfigError("vectors", f"{len(vectors)} vectors",
                              f"one per text ({len(texts)} texts)")
        if not texts:
            return 0
        encode = self.codec.encode
        payloads = [encode(v) for v in vectors]
        return self._write(self.keys(texts), payloads)

    def get_or_compute(self, texts: Sequence[Text],
                       embed_fn: Callable[[list[Text]], Any]) -> list[np.ndarray]:
        """Vectors for every text: cached ones, plus ``embed_fn(misses)`` called ONCE with only the
        distinct missing texts (in first-seen order); the computed vectors are then stored.

        An unreachable server degrades to computing everything (logged), never to an error.

        Raises:
            ConfigError: ``embed_fn`` returned a different number of vectors.
            Whatever ``embed_fn`` raises.
        """
        try:
            found = self.get_many(texts)
        except BackendUnavailableError as exc:
            logger.warning("embedding cache unavailable, computing all %d: %s", len(texts), exc)
            found = [None] * len(texts)
        missing: dict[Text, list[int]] = {}
        for i, (text, vec) in enumerate(zip(texts, found)):
            if vec is None:
                missing.setdefault(text, []).append(i)
        if not missing:
            return found  # type: ignore[return-value]
        todo = list(missing)
        computed = embed_fn(todo)
        if len(computed) != len(todo):
            raise ConfigError("embed_fn result", f"{len(computed)} vectors",
                              f"one per text passed ({len(todo)})")
        arrays = [as_numpy(v) for v in computed]
        for text, vec in zip(todo, arrays):
            for i in missing[text]:
                found[i] = vec
        try:
            self.put_many(todo, arrays)
        except BackendUnavailableError as exc:
            logger.warning("embedding cache unavailable, %d vectors not stored: %s", len(todo), exc)
        return found  # type: ignore[return-value]
