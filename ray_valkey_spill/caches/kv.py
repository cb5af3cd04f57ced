"""KVCache: attention KV blocks of token prefixes, addressed the way vLLM and LMCache do.

A sequence is cut into fixed-size token blocks; only full blocks are cached. Block ``i`` is keyed
by a chained prefix hash ``h_i = sha256(h_{i-1} || tokens_i [|| extra keys on block 0])``
starting from a fixed ``NONE_HASH``, so a block's key names the whole prefix before it, and two
processes (or machines) compute the same key. Python's ``hash()`` is salted per process and is
never used. The extra keys (model, LoRA id, cache salt, block size, user extras such as the
tensor-parallel rank) go into the first block and therefore, through the chain, into every key.

One value per block holds all layers (LMCache's lesson: two keys per chunk get orphaned by
eviction and double the round trips). Blocks of ~1-4 MB are the sweet spot for throughput.
``lookup`` answers "how many leading tokens are cached" in ONE round trip (a pipeline of EXISTS
over every full block, counting hits up to the first miss); ``get`` fetches them with one MGET.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Sequence

import numpy as np

from ._base import (DEFAULT_STATS_FLUSH_SECONDS, Counters, KeyedArrayCache, backend_errors,
                    check_cache_prefix, check_ttl, is_cluster, key_part, max_value_bytes,
                    resolve_client, warn_if_allkeys_policy)
from ._values import ArrayCodec, CacheValueError, CorruptValueError, as_numpy
from ..errors import ConfigError
from ..prefixes import KV_PREFIX, STATS_SUFFIX

logger = logging.getLogger("ray_valkey_spill")

DEFAULT_PREFIX = KV_PREFIX
DEFAULT_TTL_SECONDS = 3600
DEFAULT_BLOCK_SIZE_TOKENS = 16
# The chain's root. Any fixed value works; it is versioned so a format change changes all keys.
NONE_HASH = hashlib.sha256(b"ray-valkey-spill/kv-block-hash/v1").digest()


def _token_bytes(tokens: Any) -> np.ndarray:
    array = as_numpy(tokens) if not isinstance(tokens, (list, tuple)) else np.asarray(tokens)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise CacheValueError(f"tokens must be a 1-D sequence of integer ids, got shape "
                              f"{array.shape} dtype {array.dtype}")
    # Fixed width and byte order: the hash must not depend on the caller's int type or CPU.
    return array.astype("<i8", copy=False)


def extra_keys_bytes(model: str, lora_id: str | None, cache_salt: str | None,
                     block_size_tokens: int, extra_keys: Sequence[str] = ()) -> bytes:
    """The canonical bytes of the extra keys mixed into the first block's hash."""
    fields = [model, lora_id, cache_salt, block_size_tokens, list(extra_keys)]
    text = json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
    return len(text).to_bytes(4, "little") + text.encode("ascii")


def block_hashes(tokens: Any, block_size_tokens: int, extra: bytes) -> list[bytes]:
    """SHA-256 chained prefix hashes (32 bytes each) of every FULL block of ``tokens``.

    Raises CacheValueError if ``tokens`` is not a 1-D integer sequence.
    """
    ids = _token_bytes(tokens)
    n_blocks = len(ids) // block_size_tokens
    data = ids[:n_blocks * block_size_tokens].tobytes()
    step = block_size_tokens * 8
    parent = NONE_HASH
    out = []
    for i in range(n_blocks):
        h = hashlib.sha256(parent)
        h.update(data[i * step:(i + 1) * step])
        if i == 0:
            h.update(extra)
        parent = h.digest()
        out.append(parent)
    return out


def _get_blocks(client, keys: list[str]) -> list[memoryview | None]:
    """GET every key in one pipeline, each reply received into its own uninitialised buffer:
    no parser buffer and no bytes object in between (MB-sized blocks would be copied twice)."""
    from ..direct_io import get_into

    buffers: dict[int, np.ndarray] = {}

    def destination(i: int, n: int) -> memoryview:
        buffers[i] = np.empty(n, np.uint8)
        return memoryview(buffers[i])

    # A ServerReplyError (WRONGTYPE, NOPERM) passes through: a denial is not a miss.
    lengths = get_into(client, keys, destination)
    return [None if n is None else memoryview(buffers[i]) for i, n in enumerate(lengths)]


class KVCache(KeyedArrayCache):
    """KV blocks of one model (and LoRA / salt / TP rank) in the shared Valkey under ``vllm:kv:``.

    Args:
        client_or_url: a server URL / SpillConfig (shared pool via ``connect``) or a client.
        model: model name; part of every key and of the hash chain.
        block_size_tokens: tokens per block (vLLM's default is 16).
        ttl_seconds: lifetime of every block (default 3600).
        lora_id, cache_salt, extra_keys: further hash inputs (e.g. ``("tp=2", "rank=0")``).
        prefix: key prefix; must not overlap ``ray:``, ``emb:`` or ``session:``.
        zstd_level: None (default; bf16 KV gains <= 1.4x losslessly) or a zstd level.
        stats_flush_seconds: see EmbeddingCache.

    Raises:
        ConfigError: a bad option. BackendUnavailableError: no client for a URL.
    """

    def __init__(self, client_or_url: Any, model: str, *,
                 block_size_tokens: int = DEFAULT_BLOCK_SIZE_TOKENS,
                 ttl_seconds: int = DEFAULT_TTL_SECONDS, lora_id: str | None = None,
                 cache_salt: str | None = None, extra_keys: Sequence[str] = (),
                 prefix: str = DEFAULT_PREFIX, zstd_level: int | None = None,
                 stats_flush_seconds: float | None = DEFAULT_STATS_FLUSH_SECONDS):
        self.prefix = check_cache_prefix("vllm_kv", prefix)
        if isinstance(block_size_tokens, bool) or not isinstance(block_size_tokens, int) \
                or not 1 <= block_size_tokens <= 65536:
            raise ConfigError("block_size_tokens", block_size_tokens, "an integer from 1 to 65536")
        for field, value in (("lora_id", lora_id), ("cache_salt", cache_salt)):
            if value is not None and not isinstance(value, str):
                raise ConfigError(field, value, "a string or None")
        if isinstance(extra_keys, str) or not all(isinstance(k, str) for k in extra_keys):
            raise ConfigError("extra_keys", extra_keys, "a sequence of strings")
        self.model = model
        self.block_size_tokens = block_size_tokens
        self.ttl_seconds = check_ttl("ttl_seconds", ttl_seconds)
        self._key_head = f"{self.prefix}{key_part('model', model)}:"
        self._extra = extra_keys_bytes(model, lora_id, cache_salt, block_size_tokens,
                                       tuple(extra_keys))
        self.codec = ArrayCodec(zstd_level)
        self.counters = Counters(self.prefix + STATS_SUFFIX, stats_flush_seconds,
                                 cache="vllm_kv")
        self.client = resolve_client(client_or_url)
        self._cluster = is_cluster(self.client)
        self.maxmemory_policy = warn_if_allkeys_policy(self.client)
        max_value_bytes(self.client)  # read once now, not in the first batch's round trip

    def block_keys(self, tokens: Any) -> list[str]:
        """Keys of every full block of ``tokens``, in order. Raises CacheValueError."""
        head = self._key_head
        return [head + h.hex() for h in block_hashes(tokens, self.block_size_tokens, self._extra)]

    def put(self, tokens: Any, blocks: Sequence[Any] | Any) -> int:
        """Store ``blocks[i]`` (all layers of block i: an array or tensor) for the first
        ``len(blocks)`` full blocks of ``tokens``, with ``SET EX`` in ONE pipeline.

        ``blocks`` is a sequence of arrays/tensors, or one array/tensor whose first axis is the
        block. Returns how many blocks were stored (writes refused with OOM are dropped).

        Raises:
            ConfigError: more blocks than ``tokens`` has full blocks.
            CacheValueError: a block is not a numeric array.
            BackendUnavailableError: the server cannot be reached.
        """
        if not isinstance(blocks, (list, tuple)):
            blocks = as_numpy(blocks)
        keys = self.block_keys(tokens)
        if len(blocks) > len(keys):
            raise ConfigError("blocks", f"{len(blocks)} blocks",
                              f"at most one per full {self.block_size_tokens}-token block "
                              f"({len(keys)})")
        keys = keys[:len(blocks)]
        payloads = [self.codec.encode(b) for b in blocks]
        return self._write(keys, payloads)

    def lookup(self, tokens: Any) -> int:
        """How many leading tokens are cached: (number of leading cached blocks) x block size,
        found in ONE round trip (a pipeline of EXISTS), stopping at the first missing block.

        Raises:
            CacheValueError: bad tokens. BackendUnavailableError: server unreachable.
        """
        keys = self.block_keys(tokens)
        if not keys:
            return 0
        with backend_errors(f"lookup({len(keys)} blocks under {self._key_head})"):
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.exists(key)
            published = self.counters.publish_into(pipe)
            replies = pipe.execute()
        if published:
            replies = replies[:len(keys)]
        leading = 0
        for present in replies:
            if not present:
                break
            leading += 1
        self.counters.add(hits=leading, misses=len(keys) - leading)
        return leading * self.block_size_tokens

    def get(self, tokens: Any, n_blocks: int | None = None) -> list[np.ndarray]:
        """The leading cached blocks of ``tokens`` (at most ``n_blocks``; default every full
        block) in ONE round trip (pipelined GETs received straight into one buffer per block;
        MGET in cluster mode). The list stops at the first missing or undecodable block, so
        ``len(result) * block_size_tokens`` tokens can be loaded. Arrays are views of the reply.

        Raises:
            ConfigError: a negative n_blocks. CacheValueError: bad tokens.
            BackendUnavailableError: server unreachable.
        """
        keys = self.block_keys(tokens)
        if n_blocks is not None:
            if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 0:
                raise ConfigError("n_blocks", n_blocks, "a non-negative integer or None")
            keys = keys[:n_blocks]
        if not keys:
            return []
        with backend_errors(f"get({len(keys)} blocks under {self._key_head})"):
            values = (self.client.mget_nonatomic(keys) if self._cluster
                      else _get_blocks(self.client, keys))
        out: list[np.ndarray] = []
        nbytes = 0
        for key, raw in zip(keys, values):
            if raw is None:
                break
            nbytes += len(raw)
            try:
                out.append(self.codec.decode(raw))
            except CorruptValueError as exc:
                self.counters.add(corrupt=1)
                logger.warning("KV cache: undecodable block at %s counted as a miss: %s", key, exc)
                break
        self.counters.metrics.bytes_read(nbytes)
        return out
