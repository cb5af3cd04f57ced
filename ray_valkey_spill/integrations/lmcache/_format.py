"""Keys and values of LMCache chunks under ``vllm:kv:``: no lmcache or torch import here.

Key: the cache prefix + LMCache's ``CacheEngineKey.to_string()`` percent-escaped (``%``, ``:``,
glob characters, braces, spaces and non-ASCII are escaped), so the mapping is injective, keys
never contain ``:`` after the prefix (they cannot collide with ``KVCache``'s
``<prefix><model>:<hash>`` keys) and never act as SCAN patterns.

Value: a 64-byte header, then the chunk's raw bytes (LMCache's ``MemoryObj.byte_array``)::

    magic     4s   b"RVKV"
    version   u8   1
    fmt       u8   LMCache MemoryFormat value (KV_2LTD, KV_MLA_FMT, ...)
    ndim      u8   1..6
    reserved  u8   0
    dtype     16s  torch dtype name, ASCII, NUL-padded ("bfloat16")
    shape     6 x u32  the chunk's shape (unused dimensions 0)
    length    u64  payload bytes
    checksum  u64  xxh3-64 of (key, header bytes 0..55, payload)

The checksum covers the key, so a value copied under another key is a miss too. All integers
little-endian.
"""

from __future__ import annotations

import struct
import urllib.parse
from dataclasses import dataclass

import xxhash

MAGIC = b"RVKV"
VERSION = 1
MAX_NDIM = 6
HEADER = struct.Struct("<4sBBBB16s6IQQ")
HEADER_BYTES = HEADER.size  # 64
_CHECKED_BYTES = HEADER_BYTES - 8  # everything but the checksum itself
# Characters of LMCache's key string kept as they are; everything else is %XX-escaped.
_SAFE = "@/-_.+=,"


def escape_key(key_string: str) -> str:
    """The key component for one LMCache key string (injective: '%' itself is escaped)."""
    return urllib.parse.quote(key_string, safe=_SAFE)


def unescape_key(component: str) -> str:
    """Inverse of ``escape_key``."""
    return urllib.parse.unquote(component)


@dataclass(frozen=True)
class ChunkLayout:
    """What every chunk of one LMCache engine looks like: memory format, dtype and the shape
    of a full chunk, and which dimension counts tokens (a partial chunk is shorter there)."""

    fmt: int
    dtype: str
    full_shape: tuple[int, ...]
    token_dim: int
    itemsize: int

    @property
    def full_bytes(self) -> int:
        n = self.itemsize
        for d in self.full_shape:
            n *= d
        return n

    @property
    def token_bytes(self) -> int:
        return self.full_bytes // self.full_shape[self.token_dim]

    def shape_of(self, payload_bytes: int) -> tuple[int, ...] | None:
        """The shape of a chunk of ``payload_bytes``, or None if no chunk has that size."""
        if payload_bytes <= 0 or payload_bytes > self.full_bytes \
                or payload_bytes % self.token_bytes:
            return None
        shape = list(self.full_shape)
        shape[self.token_dim] = payload_bytes // self.token_bytes
        return tuple(shape)


def header(key: bytes, layout: ChunkLayout, shape: tuple[int, ...], payload) -> bytes:
    """The 64-byte header of ``payload`` (a buffer) stored under ``key``."""
    padded = tuple(shape) + (0,) * (MAX_NDIM - len(shape))
    view = memoryview(payload).cast("B")
    head = HEADER.pack(MAGIC, VERSION, layout.fmt, len(shape), 0, layout.dtype.encode("ascii"),
                       *padded, view.nbytes, 0)[:_CHECKED_BYTES]
    digest = xxhash.xxh3_64(key)
    digest.update(head)
    digest.update(view)
    return head + digest.intdigest().to_bytes(8, "little")


def check(key: bytes, layout: ChunkLayout, head, payload) -> str | None:
    """None if ``head`` + ``payload`` is a chunk of ``layout`` stored under ``key``, intact;
    otherwise why not (for the log). ``payload`` is the buffer the bytes were received into."""
    if len(head) != HEADER_BYTES:
        return "truncated header"
    magic, version, fmt, ndim, _, dtype, *rest = HEADER.unpack(head)
    dims, length, checksum = rest[:MAX_NDIM], rest[MAX_NDIM], rest[MAX_NDIM + 1]
    if magic != MAGIC or version != VERSION:
        return "not a ray-valkey-spill chunk (magic or version)"
    view = memoryview(payload).cast("B")
    if length != view.nbytes:
        return f"payload is {view.nbytes} bytes, header says {length}"
    expected_shape = layout.shape_of(length)
    if fmt != layout.fmt or dtype.rstrip(b"\0") != layout.dtype.encode("ascii") \
            or ndim != len(layout.full_shape) or tuple(dims[:ndim]) != expected_shape:
        return (f"layout mismatch: stored fmt {fmt} dtype {dtype.rstrip(bytes(1))!r} shape "
                f"{tuple(dims[:ndim])}, expected fmt {layout.fmt} dtype {layout.dtype!r} shape "
                f"{expected_shape}")
    digest = xxhash.xxh3_64(key)
    digest.update(bytes(head[:_CHECKED_BYTES]))
    digest.update(view)
    if digest.intdigest() != checksum:
        return "checksum mismatch"
    return None
