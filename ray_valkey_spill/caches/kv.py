"""KVCache: attention KV blocks of token prefixes, in the shared Valkey under ``vllm:kv:``.

A sequence is cut into fixed-size token blocks; only full blocks are cached. Block ``i`` is keyed
by a chained prefix hash ``h_i = sha256(h_{i-1} || tokens_i [|| extra keys on block 0])``
starting from a fixed ``NONE_HASH``, so a block's key names the whole prefix before it, and two
processes (or machines) compute the same key. Python's ``hash()`` is salted per process and is
never used. The extra keys (model, LoRA id, cache salt, block size, the declared KV layout and
tensor-parallel rank, user extras) go into the first block and therefore, through the chain,
into every key.

This hash is this package's own, NOT vLLM's: vLLM hashes a pickle or CBOR serialisation of
``(parent, token ids, extra keys)`` from a ``NONE_HASH`` seeded by ``PYTHONHASHSEED``, and its
extra-key rules change between releases. ``KVCache`` therefore does not share blocks with vLLM
or LMCache; vLLM's KV offload reaches this Valkey through the LMCache plug-in
(``ray_valkey_spill.integrations.lmcache``), which keys chunks by LMCache's own keys.

The KV layout (``block_shape``, ``dtype``, ``tp_rank`` of ``tp_size``) is part of the key, so
blocks of another layout, dtype or rank never collide; declared, it is also enforced: ``put``
of a block of another shape or dtype is a ``CacheValueError`` and a stored value of another
layout is a (counted) miss.

One value per block holds all layers (LMCache's lesson: two keys per chunk get orphaned by
eviction and double the round trips). Blocks of ~1-4 MB are the sweet spot for throughput.
``lookup`` answers "how many leading tokens are cached" in ONE round trip (a pipeline of EXISTS
over every full block, counting hits up to the first miss); ``get`` fetches them with one MGET.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from typing import Any, Sequence

import numpy as np

from ._base import (DEFAULT_STATS_FLUSH_SECONDS, Counters, KeyedArrayCache, backend_errors, leading_hits,
                    check_cache_prefix, check_ttl, is_cluster, key_part, max_value_bytes,
                    resolve_client, warn_if_allkeys_policy)
from ._values import (_FIXED, FLAG_ZSTD, MAGIC, ArrayCodec, CacheValueError, CorruptValueError,
                      _dtype_from_tag, _dtype_tag, as_numpy)
from ..errors import ConfigError
from ..prefixes import KV_PREFIX, STATS_SUFFIX

logger = logging.getLogger("ray_valkey_spill")

DEFAULT_PREFIX = KV_PREFIX
DEFAULT_TTL_SECONDS = 3600
DEFAULT_BLOCK_SIZE_TOKENS = 16
# The chain's root. Any fixed value works; it is versioned so a format change changes all keys
# (v2: the KV layout and tensor-parallel rank joined the extra keys).
NONE_HASH = hashlib.sha256(b"ray-valkey-spill/kv-block-hash/v2").digest()


def _token_bytes(tokens: Any) -> np.ndarray:
    array = as_numpy(tokens) if not isinstance(tokens, (list, tuple)) else np.asarray(tokens)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise CacheValueError(f"tokens must be a 1-D sequence of integer ids, got shape "
                              f"{array.shape} dtype {array.dtype}")
    # Fixed width and byte order: the hash must not depend on the caller's int type or CPU.
    return array.astype("<i8", copy=False)


def extra_keys_bytes(model: str, lora_id: str | None, cache_salt: str | None,
                     block_size_tokens: int, extra_keys: Sequence[str] = (),
                     layout: "KVLayout | None" = None) -> bytes:
    """The canonical bytes of the extra keys mixed into the first block's hash."""
    layout = layout or KVLayout()
    fields = [model, lora_id, cache_salt, block_size_tokens, list(extra_keys),
              [None if layout.block_shape is None else list(layout.block_shape), layout.dtype,
               layout.tp_rank, layout.tp_size]]
    text = json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
    return len(text).to_bytes(4, "little") + text.encode("ascii")


class KVLayout:
    """The KV layout of one cache's blocks: shape and dtype of one block (``None``: not
    declared, any block is accepted) and the tensor-parallel rank that produced it.

    Raises ConfigError for a bad shape, an unknown dtype or a rank outside ``0..tp_size-1``.
    """

    __slots__ = ("block_shape", "dtype", "tp_rank", "tp_size", "_headers")

    def __init__(self, block_shape: Sequence[int] | None = None, dtype: str | None = None,
                 tp_rank: int = 0, tp_size: int = 1):
        if block_shape is not None:
            if isinstance(block_shape, (str, bytes)) or not 1 <= len(block_shape) <= 32 or any(
                    isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in block_shape):
                raise ConfigError("block_shape", block_shape,
                                  "None or a tuple of 1 to 32 positive integers, e.g. "
                                  "(layers, 2, block tokens, kv heads, head dim)")
            block_shape = tuple(block_shape)
        if dtype is not None:
            dtype = _canonical_dtype(dtype)
        for field, value, lo in (("tp_size", tp_size, 1), ("tp_rank", tp_rank, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(field, value, f"an integer >= {lo}")
        if tp_rank >= tp_size:
            raise ConfigError("tp_rank", tp_rank, f"0 to tp_size - 1 ({tp_size - 1})")
        self.block_shape = block_shape
        self.dtype = dtype
        self.tp_rank = tp_rank
        self.tp_size = tp_size
        # A stored block fits when its value starts with one of these array headers.
        self._headers = None
        if block_shape is not None and dtype is not None:
            tag = dtype.encode()
            dims = struct.pack(f"<{len(block_shape)}Q", *block_shape)
            self._headers = tuple(_FIXED.pack(MAGIC, flags, len(tag), len(block_shape)) + tag
                                  + dims for flags in (0, FLAG_ZSTD))

    def check_block(self, index: int, array: np.ndarray) -> None:
        """Raise CacheValueError if ``array`` is not a block of this layout."""
        shape_ok = self.block_shape is None or tuple(array.shape) == self.block_shape
        dtype_ok = self.dtype is None or _dtype_tag(array).decode() == self.dtype
        if not (shape_ok and dtype_ok):
            raise CacheValueError(
                f"block {index} has shape {tuple(array.shape)} dtype "
                f"{_dtype_tag(array).decode()}; this cache holds blocks of shape "
                f"{self.block_shape or 'any'} dtype {self.dtype or 'any'} (tensor-parallel rank "
                f"{self.tp_rank} of {self.tp_size})")

    def fits(self, value: bytes | memoryview) -> bool:
        """Whether a stored value's header describes a block of this layout (cheap prefix
        test when both shape and dtype are declared; else True, left to decoding)."""
        if self._headers is None:
            return True
        n = len(self._headers[0])
        return bytes(value[:n]) in self._headers


def _canonical_dtype(name: Any) -> str:
    """The codec's tag for a dtype name ('bfloat16', '<f2', 'float16' -> '<f2', ...)."""
    if isinstance(name, str) and name == "bfloat16":
        return name
    try:
        dtype = _dtype_from_tag(name.encode()) if isinstance(name, str) else np.dtype(name)
        return _dtype_tag(np.empty(0, dtype)).decode()
    except (CorruptValueError, CacheValueError, TypeError, ValueError, AttributeError,
            ImportError):
        raise ConfigError("dtype", name, "None or a numeric dtype name such as 'bfloat16', "
                          "'float16', 'float32' or 'float8_e4m3fn'") from None


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
        lora_id, cache_salt, extra_keys: further hash inputs.
        block_shape, dtype: the layout of one block, e.g. ``(layers, 2, block_size_tokens,
            kv_heads, head_dim)`` and ``"bfloat16"``; part of every key, and enforced on put
            and get when declared (None: not declared, any block is accepted).
        tp_rank, tp_size: the tensor-parallel rank whose KV shard this cache holds.
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
                 block_shape: Sequence[int] | None = None, dtype: str | None = None,
                 tp_rank: int = 0, tp_size: int = 1,
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
        self.layout = KVLayout(block_shape, dtype, tp_rank, tp_size)
        self._extra = extra_keys_bytes(model, lora_id, cache_salt, block_size_tokens,
                                       tuple(extra_keys), self.layout)
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
            CacheValueError: a block is not a numeric array, or not of the declared layout.
            BackendUnavailableError: the server cannot be reached.
        """
        if not isinstance(blocks, (list, tuple)):
            given, blocks = blocks, as_numpy(blocks)
            if blocks.ndim == 0:  # None, a number, a string: nothing with a block axis
                raise CacheValueError(
                    f"blocks: got {type(given).__name__} {repr(given)[:40]}; allowed: a list or tuple of "
                    "arrays/tensors (one per block), or one array/tensor whose first axis is "
                    "the block")
        keys = self.block_keys(tokens)
        if len(blocks) > len(keys):
            raise ConfigError("blocks", f"{len(blocks)} blocks",
                              f"at most one per full {self.block_size_tokens}-token block "
                              f"({len(keys)})")
        keys = keys[:len(blocks)]
        arrays = [as_numpy(b) for b in blocks]
        for i, array in enumerate(arrays):
            self.layout.check_block(i, array)
        payloads = [self.codec.encode(a) for a in arrays]
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
        leading = leading_hits(replies)
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
            if not self.layout.fits(raw):
                self.counters.add(corrupt=1)
                logger.warning("KV cache: block at %s is not of the declared layout: a miss", key)
                break
            try:
                out.append(self.codec.decode(raw))
            except CorruptValueError as exc:
                self.counters.add(corrupt=1)
                logger.warning("KV cache: undecodable block at %s counted as a miss: %s", key, exc)
                break
        self.counters.metrics.bytes_read(nbytes)
        return out
