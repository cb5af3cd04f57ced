"""EmbeddingCache: text -> vector, namespaced by a declared schema, stored under ``emb:``.

Key: ``<prefix><model>:<revision>:<role>:<dtype>x<dimension>:<sha256(text) hex>`` (see
``_schema``): a new model, revision, role, dimension or dtype never reads another's vectors.
Value: one numpy array in the compact binary form of ``_values`` (never JSON), optionally
followed by its text (``keep_texts``) so the cache can list what it holds. Every key is written
with ``SET ... EX``: a cache key must always carry a TTL so that a ``volatile-*`` server evicts
it, not a spilled object.

Batch operations are the primary API: ``get_many`` is one MGET, ``put_many`` one pipeline of
``SET EX``; ``get_or_compute`` adds one call of the embedding function with only the misses.
Each has an ``a``-prefixed coroutine twin on valkey.asyncio with the same round trips; the sync
and async methods share every step but the I/O itself.

On Valkey Cluster (sync or async) a batch costs one round trip per node holding any of its
keys: valkey-py groups the per-slot MGETs, SETs or UNLINKs into one pipeline per node, and the
nodes' round trips overlap (the sync client writes to every node before reading any reply, the
async one runs the nodes concurrently).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

import numpy as np

from ._base import (DEFAULT_STATS_FLUSH_SECONDS, Counters, KeyedArrayCache, amget, async_client,
                    async_source, backend_errors, check_cache_prefix, check_ttl, is_cluster,
                    max_value_bytes, resolve_client, warn_if_allkeys_policy)
from ._schema import EmbeddingSchema
from ._values import ArrayCodec, CorruptValueError
from ..errors import BackendUnavailableError, CacheValueError, ConfigError
from ..prefixes import EMBEDDING_PREFIX, STATS_SUFFIX

logger = logging.getLogger("ray_valkey_spill")

DEFAULT_PREFIX = EMBEDDING_PREFIX
DEFAULT_TTL_SECONDS = 7 * 24 * 3600
# Keys fetched per MGET while listing texts.
LIST_BATCH = 1000

Text = str | bytes
# A kept text's first byte says whether it was str (UTF-8) or bytes.
_LABEL_STR, _LABEL_BYTES = b"s", b"b"


def text_digest(text: Text) -> str:
    """Hex SHA-256 of the input (UTF-8 for str). Raises ConfigError for other types."""
    if isinstance(text, str):
        data = text.encode("utf-8", "surrogatepass")
    elif isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
    else:
        raise ConfigError("text", type(text).__name__, "str or bytes")
    return hashlib.sha256(data).hexdigest()


def _label_of(text: Text) -> bytes:
    if isinstance(text, str):
        return _LABEL_STR + text.encode("utf-8", "surrogatepass")
    return _LABEL_BYTES + bytes(text)


def _text_of(label: bytes) -> Text:
    if label[:1] == _LABEL_STR:
        return label[1:].decode("utf-8", "surrogatepass")
    if label[:1] == _LABEL_BYTES:
        return label[1:]
    raise CorruptValueError(f"unknown text tag {label[:1]!r}")


class _ItemNames:
    """``names[i]`` is "vector i (text '...')", built only when an error message needs it."""

    def __init__(self, what: str, texts: Sequence[Text]):
        self.what, self.texts = what, texts

    def __getitem__(self, i: int) -> str:
        return f"{self.what} {i} (text {_short(self.texts[i])})"


def _short(text: Text) -> str:
    return repr(text if len(text) <= 40 else text[:37] + ("..." if isinstance(text, str) else b"..."))


class EmbeddingCache(KeyedArrayCache):
    """Embedding vectors of one declared model schema, in the shared Valkey.

    Args:
        client_or_url: a server URL / SpillConfig (the process's shared pool from ``connect``,
            and one asyncio pool per event loop for the ``a*`` methods) or a valkey-py client.
        model: the embedding model's name; vectors are only ever read back for this model.
        revision: the model's revision (part of the key; None: undeclared).
        dimension: every vector's length (part of the key; None: any length).
        dtype: the stored element type (part of the key): float32 (default), float16,
            bfloat16, float64, int8 or uint8; inputs are cast to it (see ``EmbeddingSchema``).
        role: what is embedded, e.g. "query" or "document" (part of the key; None: undeclared).
        ttl_seconds: lifetime of every entry (required to be 1 s .. 1 year).
        prefix: key prefix; must not overlap ``ray:``, ``vllm:kv:`` or ``session:``.
        zstd_level: None (default: raw bytes) or a zstd level for the payload.
        stats_flush_seconds: publish hit/miss counters to ``<prefix>_stats`` at most this
            often (piggy-backed on a pipeline already being sent); None keeps them per process.
        keep_texts: store each text beside its vector (costs its length in bytes) so that
            ``texts()`` can list them.
        async_client: a valkey.asyncio client (``Valkey`` or ``cluster.ValkeyCluster``) for the
            ``a*`` methods when ``client_or_url`` is a sync client (with a URL or SpillConfig
            they get the event loop's shared pool).

    Raises:
        ConfigError: a bad prefix, schema field, TTL or option.
        BackendUnavailableError: a URL was given and no client can be set up.
    """

    def __init__(self, client_or_url: Any, model: str, *, revision: str | None = None,
                 dimension: int | None = None, dtype: Any = "float32", role: str | None = None,
                 ttl_seconds: int = DEFAULT_TTL_SECONDS, prefix: str = DEFAULT_PREFIX,
                 zstd_level: int | None = None,
                 stats_flush_seconds: float | None = DEFAULT_STATS_FLUSH_SECONDS,
                 keep_texts: bool = False, async_client: Any = None):
        self.prefix = check_cache_prefix("emb", prefix)
        self.schema = EmbeddingSchema(model, revision, dimension, dtype, role)
        self.model = model
        self.ttl_seconds = check_ttl("ttl_seconds", ttl_seconds)
        if not isinstance(keep_texts, bool):
            raise ConfigError("keep_texts", keep_texts, "True or False")
        self.keep_texts = keep_texts
        self._key_head = self.schema.key_head(self.prefix)
        self.codec = ArrayCodec(zstd_level)
        self.counters = Counters(self.prefix + STATS_SUFFIX, stats_flush_seconds, cache="emb")
        self._async_source = async_source(client_or_url, async_client)
        self.client = resolve_client(client_or_url)
        self._cluster = is_cluster(self.client)
        self.maxmemory_policy = warn_if_allkeys_policy(self.client)
        max_value_bytes(self.client)  # read once now, not in the first batch's round trip

    # -- keys -------------------------------------------------------------------------------
    def key(self, text: Text) -> str:
        """The Valkey key of ``text`` for this schema."""
        return self._key_head + text_digest(text)

    def keys(self, texts: Sequence[Text]) -> list[str]:
        """The Valkey keys of ``texts``, in order."""
        head = self._key_head
        return [head + text_digest(t) for t in texts]

    def _aclient(self):
        return async_client(self._async_source, "EmbeddingCache")

    # -- reads ------------------------------------------------------------------------------
    def get(self, text: Text) -> np.ndarray | None:
        """The cached vector of ``text``, or None. See ``get_many``."""
        return self.get_many([text])[0]

    def get_many(self, texts: Sequence[Text]) -> list[np.ndarray | None]:
        """Vectors for ``texts`` in order, None for each miss, in ONE round trip (one MGET; on a
        cluster one round trip per node holding any of the keys).

        Arrays are read-only views of the reply (``.copy()`` to modify). A value that does not
        decode, or does not fit the schema, counts as a miss (and in ``corrupt``), never raises.

        Raises:
            BackendUnavailableError: the server cannot be reached (callers may treat as misses).
        """
        if not texts:
            return []
        keys = self.keys(texts)
        with backend_errors(f"get_many({len(keys)} keys under {self._key_head})"):
            if self._cluster:
                values = self.client.mget_nonatomic(keys)
                pipe = self._counters_pipe(self.client)
                if pipe is not None:
                    pipe.execute()
            else:
                pipe = self._counters_pipe(self.client)
                if pipe is None:
                    values = self.client.mget(keys)
                else:
                    # Counters ride along in the same round trip; MGET's reply comes last.
                    values = pipe.mget(keys).execute()[-1]
        return self._decode_all(keys, values)

    async def aget(self, text: Text) -> np.ndarray | None:
        """``get`` as a coroutine."""
        return (await self.aget_many([text]))[0]

    async def aget_many(self, texts: Sequence[Text]) -> list[np.ndarray | None]:
        """``get_many`` as a coroutine on valkey.asyncio: the same single MGET round trip (on a
        cluster, one per node holding any of the keys, the nodes' sent concurrently)."""
        if not texts:
            return []
        keys = self.keys(texts)
        client = self._aclient()
        with backend_errors(f"aget_many({len(keys)} keys under {self._key_head})"):
            if is_cluster(client):
                values = await client.mget_nonatomic(keys)
                pipe = self._counters_pipe(client)
                if pipe is not None:
                    await pipe.execute()
            else:
                pipe = self._counters_pipe(client)
                if pipe is None:
                    values = await client.mget(keys)
                else:
                    values = (await pipe.mget(keys).execute())[-1]
        return self._decode_all(keys, values)

    def _counters_pipe(self, client: Any) -> Any:
        """A pipeline holding the counters' publication when due, else None (no extra trip)."""
        if not self.counters.due():
            return None
        pipe = client.pipeline(transaction=False)
        return pipe if self.counters.publish_into(pipe) else None

    def _decode_all(self, keys: list[str], values: list[Any]) -> list[np.ndarray | None]:
        decode, fits = self.codec.decode, self.schema.fits
        out: list[np.ndarray | None] = []
        hits = corrupt = 0
        for key, raw in zip(keys, values):
            if raw is None:
                out.append(None)
                continue
            try:
                array = decode(raw)
                if not fits(array):
                    raise CorruptValueError(f"a {array.dtype} array of shape {array.shape} does "
                                            f"not fit the schema ({self.schema.dtype.name} x "
                                            f"{self.schema.dimension or 'any'})")
                out.append(array)
                hits += 1
            except CorruptValueError as exc:
                corrupt += 1
                out.append(None)
                logger.warning("embedding cache: value at %s counted as a miss: %s", key, exc)
        self.counters.add(hits=hits, misses=len(keys) - hits, corrupt=corrupt)
        self.counters.metrics.bytes_read(sum(len(raw) for raw in values if raw is not None))
        return out

    # -- writes -----------------------------------------------------------------------------
    def put(self, text: Text, vector: Any) -> bool:
        """Store one vector. See ``put_many``."""
        return self.put_many([text], [vector]) == 1

    def put_many(self, texts: Sequence[Text], vectors: Sequence[Any] | np.ndarray) -> int:
        """Store ``vectors[i]`` for ``texts[i]`` with ``SET key value EX ttl`` in ONE pipeline.

        ``vectors`` may be a 2-D array (one row per text) or a sequence of 1-D arrays, tensors
        or lists, each cast to the schema's dtype. Every item is checked before anything is
        sent. Returns how many were stored: a write the server refuses because it is full (OOM
        under ``noeviction``) is dropped and counted in ``dropped_puts``, never raised.

        Raises:
            ConfigError: lengths differ.
            CacheValueError: items that do not fit the schema or are larger than the server
                accepts; ``.failed`` maps each such index to the reason; nothing was sent.
            BackendUnavailableError: the server cannot be reached.
        """
        keys, payloads, names = self._prepare(texts, vectors)
        return self._write(keys, payloads, names)

    async def aput(self, text: Text, vector: Any) -> bool:
        """``put`` as a coroutine."""
        return await self.aput_many([text], [vector]) == 1

    async def aput_many(self, texts: Sequence[Text], vectors: Sequence[Any] | np.ndarray) -> int:
        """``put_many`` as a coroutine on valkey.asyncio: the same single pipeline (on a
        cluster, one per node holding any of the keys, the nodes' sent concurrently)."""
        keys, payloads, names = self._prepare(texts, vectors)
        return await self._awrite(self._aclient(), keys, payloads, names)

    def _prepare(self, texts: Sequence[Text], vectors: Sequence[Any] | np.ndarray,
                 what: str = "vector") -> tuple[list[str], list[bytes], "_ItemNames"]:
        """Keys, encoded payloads and item names, or CacheValueError listing every misfit."""
        if len(texts) != len(vectors):
            raise ConfigError("vectors", f"{len(vectors)} vectors",
                              f"one per text ({len(texts)} texts)")
        coerce, encode, keep = self.schema.coerce, self.codec.encode, self.keep_texts
        names = _ItemNames(what, texts)
        batch = self.schema.coerce_rows(vectors)
        if batch is not None:  # every row fits: encode them all at once
            labels = [_label_of(t) for t in texts] if keep else None
            return self.keys(texts), self.codec.encode_rows(batch, labels), names
        payloads: list[bytes] = []
        failed: dict[int, str] = {}
        for i, (text, vector) in enumerate(zip(texts, vectors)):
            try:
                array = coerce(vector, names[i])
                payloads.append(encode(array, _label_of(text) if keep else None))
            except CacheValueError as exc:
                failed[i] = str(exc)
        if failed:
            first = next(iter(failed.values()))
            raise CacheValueError(f"{len(failed)} of {len(texts)} items do not fit the cache "
                                  f"of model {self.model!r} (nothing was stored); first: {first}",
                                  failed)
        return self.keys(texts), payloads, names

    # -- get or compute ---------------------------------------------------------------------
    def get_or_compute(self, texts: Sequence[Text],
                       embed_fn: Callable[[list[Text]], Any]) -> list[np.ndarray]:
        """Vectors for every text: cached ones, plus ``embed_fn(misses)`` called ONCE with only the
        distinct missing texts (in first-seen order); the computed vectors are then stored. N
        texts cost one MGET, one ``embed_fn`` call and one pipeline of SETs.

        An unreachable server degrades to computing everything (logged), never to an error.

        Raises:
            ConfigError: ``embed_fn`` returned a different number of vectors.
            CacheValueError: computed vectors that do not fit the schema (``.failed``).
            Whatever ``embed_fn`` raises.
        """
        try:
            found = self.get_many(texts)
        except BackendUnavailableError as exc:
            logger.warning("embedding cache unavailable, computing all %d: %s", len(texts), exc)
            found = [None] * len(texts)
        missing = _missing(texts, found)
        if not missing:
            return found  # type: ignore[return-value]
        todo = list(missing)
        keys, payloads, names, arrays = self._computed(todo, embed_fn(todo))
        try:
            self._write(keys, payloads, names)
        except BackendUnavailableError as exc:
            logger.warning("embedding cache unavailable, %d vectors not stored: %s", len(todo), exc)
        return _fill(found, missing, arrays)

    async def aget_or_compute(self, texts: Sequence[Text], embed_fn: Callable[[list[Text]], Any]
                              ) -> list[np.ndarray]:
        """``get_or_compute`` as a coroutine; ``embed_fn`` may be sync or return an awaitable."""
        try:
            found = await self.aget_many(texts)
        except BackendUnavailableError as exc:
            logger.warning("embedding cache unavailable, computing all %d: %s", len(texts), exc)
            found = [None] * len(texts)
        missing = _missing(texts, found)
        if not missing:
            return found  # type: ignore[return-value]
        todo = list(missing)
        computed = embed_fn(todo)
        if inspect.isawaitable(computed):
            computed = await computed
        keys, payloads, names, arrays = self._computed(todo, computed)
        try:
            await self._awrite(self._aclient(), keys, payloads, names)
        except BackendUnavailableError as exc:
            logger.warning("embedding cache unavailable, %d vectors not stored: %s", len(todo), exc)
        return _fill(found, missing, arrays)

    def _computed(self, todo: list[Text], computed: Any):
        if len(computed) != len(todo):
            raise ConfigError("embed_fn result", f"{len(computed)} vectors",
                              f"one per text passed ({len(todo)})")
        keys, payloads, names = self._prepare(todo, computed, what="embed_fn result")
        # The caller gets what was stored, decoded: exactly what a later hit returns.
        arrays = [self.codec.decode(p) for p in payloads]
        return keys, payloads, names, arrays

    # -- deletes and listing ----------------------------------------------------------------
    def delete_many(self, texts: Sequence[Text]) -> int:
        """Remove the entries of ``texts`` (one UNLINK; on a cluster one UNLINK per key, in
        pipelines of 1,000, each one round trip per node). Returns how many existed."""
        if not texts:
            return 0
        with backend_errors(f"delete_many({len(texts)} keys under {self._key_head})"):
            if self._cluster:
                from ..keyspace import unlink_keys

                return unlink_keys(self.client, self.keys(texts))
            return int(self.client.unlink(*self.keys(texts)))

    async def adelete_many(self, texts: Sequence[Text]) -> int:
        """``delete_many`` as a coroutine (on a cluster one UNLINK per slot, grouped into one
        pipeline per node, the nodes' sent concurrently)."""
        if not texts:
            return 0
        client = self._aclient()
        with backend_errors(f"adelete_many({len(texts)} keys under {self._key_head})"):
            return int(await client.unlink(*self.keys(texts)))

    def texts(self, prefix: Text | None = None) -> Iterator[Text]:
        """The texts this cache holds (those starting with ``prefix``), in no particular order:
        SCAN of the schema's keys, one MGET per page. Needs ``keep_texts=True``.

        Raises:
            ConfigError: the cache does not keep texts.
            BackendUnavailableError: the server cannot be reached.
        """
        self._check_keeps_texts()
        batch: list[bytes] = []
        with backend_errors(f"texts() under {self._key_head}"):
            for key in self.client.scan_iter(match=self._key_head + "*", count=LIST_BATCH):
                batch.append(key)
                if len(batch) == LIST_BATCH:
                    yield from self._matching(batch, self._mget(batch), prefix)
                    batch = []
            if batch:
                yield from self._matching(batch, self._mget(batch), prefix)

    async def atexts(self, prefix: Text | None = None) -> AsyncIterator[Text]:
        """``texts`` as an async generator on valkey.asyncio (on a cluster, SCAN of every
        primary and one pipeline of MGETs per node and page)."""
        self._check_keeps_texts()
        client = self._aclient()
        batch: list[bytes] = []
        with backend_errors(f"atexts() under {self._key_head}"):
            async for key in client.scan_iter(match=self._key_head + "*", count=LIST_BATCH):
                batch.append(key)
                if len(batch) == LIST_BATCH:
                    for text in self._matching(batch, await amget(client, batch), prefix):
                        yield text
                    batch = []
            if batch:
                for text in self._matching(batch, await amget(client, batch), prefix):
                    yield text

    def _check_keeps_texts(self) -> None:
        if not self.keep_texts:
            raise ConfigError("keep_texts", False, "True to list the texts of a cache (each "
                              "value then carries its text)")

    def _mget(self, keys: list[bytes]) -> list[Any]:
        return self.client.mget_nonatomic(keys) if self._cluster else self.client.mget(keys)

    def _matching(self, keys: list[bytes], values: list[Any], prefix: Text | None
                  ) -> Iterator[Text]:
        for key, raw in zip(keys, values):
            if raw is None:
                continue  # expired between SCAN and MGET
            try:
                array, label = self.codec.decode_labelled(raw)
                if label is None or not self.schema.fits(array):
                    continue  # written without its text, or not ours to return
                text = _text_of(label)
            except (CorruptValueError, UnicodeDecodeError) as exc:
                logger.warning("embedding cache: value at %r skipped while listing: %s", key, exc)
                continue
            if prefix is None or text[:len(prefix)] == prefix:
                yield text


def _missing(texts: Sequence[Text], found: list[Any]) -> dict[Text, list[int]]:
    """Distinct missing texts (first-seen order) -> the positions they fill."""
    missing: dict[Text, list[int]] = {}
    for i, (text, vec) in enumerate(zip(texts, found)):
        if vec is None:
            missing.setdefault(text, []).append(i)
    return missing


def _fill(found: list[Any], missing: dict[Text, list[int]], arrays: list[np.ndarray]) -> list:
    for positions, vec in zip(missing.values(), arrays):
        for i in positions:
            found[i] = vec
    return found
