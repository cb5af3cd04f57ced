"""Encoding of spilled objects: chunk payloads and the manifest that describes them.

An object is stored as N chunk values plus one manifest value. Chunk values are bare payloads
(raw bytes, or one zstd frame produced as an Arrow buffer, of the bytes as they are or
byte-shuffled) so that a raw chunk is sent straight from plasma memory without a copy. Everything
needed to check them lives in the manifest:
per chunk the codec, the stored length and an xxh3-64 checksum of the ORIGINAL bytes, so a
restore verifies what it wrote into plasma, end to end. The manifest is written last and
carries its own checksum: an object without a valid manifest was never completely spilled.

The transport only moves bytes and memoryviews; it never interprets them.
"""

from __future__ import annotations

import functools
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import xxhash
import zstandard

if TYPE_CHECKING:
    import numpy as np

from ..errors import CorruptObjectError
from .narrow import NARROWINGS, narrow, narrowing_for, stored_len, widen_into

CODEC_RAW = 0
CODEC_ZSTD = 1
# zstd of the chunk byte-shuffled by element width w (all first bytes, then all second bytes,
# ...): codec id 16 + w. Measured on 4 MiB of int64 token ids: same 0.25 ratio as plain zstd,
# but 4.1 GB/s instead of 0.43, because the planes of high bytes are runs of zeros.
SHUFFLE_WIDTHS = (8, 4, 2)
_SHUFFLE_BASE = 16
# Integer narrowing (narrow.py): codec id 32 + its index in NARROWINGS.
_NARROW_BASE = 32
_NARROW_CODECS = {_NARROW_BASE + i: wt for i, wt in enumerate(NARROWINGS)}
_CODEC_NAMES = {CODEC_RAW: "raw", CODEC_ZSTD: "zstd",
                **{_SHUFFLE_BASE + w: f"shuffle{w}+zstd" for w in SHUFFLE_WIDTHS},
                **{c: f"narrow{w}to{t}" for c, (w, t) in _NARROW_CODECS.items()}}

# The probe compresses a few small samples of a chunk; when they do not shrink below this
# ratio, the whole chunk is stored raw (random floats: ~0.94 with zstd, not worth the CPU).
PROBE_SAMPLE_BYTES = 16 * 1024
PROBE_MAX_RATIO = 0.90
# After compressing, keep the result only if it saves at least this fraction.
KEEP_MAX_RATIO = 0.97
# A shuffled variant is chosen only when it saves much more: random floats shuffle to ~0.84,
# not worth a transpose and zstd per byte on a 2-core machine; token ids shuffle to 0.25.
SHUFFLE_MAX_RATIO = 0.80
# Narrowing is chosen unless zstd's probe promises a ratio 1.25x better: it encodes and decodes
# at memory speed, 3x faster than shuffle + zstd (int32 ids below 30 000: 0.50 stored vs
# 0.48 for shuffle + zstd, whose 16 KiB probe samples say ~0.43; narrow.py).
NARROW_SLACK = 1.25

MANIFEST_MAGIC = b"RVSM"
MANIFEST_VERSION = 1
# magic, version, n_chunks, chunk_size, buf_len, owner_len, metadata_len
_MANIFEST_HEAD = struct.Struct("<4sBxxxIIQII")
# codec, stored_len, checksum (xxh3-64 of the original chunk bytes)
_CHUNK_ENTRY = struct.Struct("<BxxxIQ")
_MANIFEST_TAIL = struct.Struct("<Q")  # xxh3-64 of everything before it


def checksum(data) -> int:
    """The xxh3-64 checksum of ``data`` (any buffer), as an int."""
    return xxhash.xxh3_64_intdigest(data)


_local = threading.local()


def scratch(slot: int, nbytes: int) -> memoryview:
    """A per-thread reusable buffer of at least ``nbytes`` (restores decode MBs per chunk;
    allocating and zeroing a fresh bytearray each time cost more than the decompression)."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    buf = buffers.get(slot)
    if buf is None or len(buf) < nbytes:
        buf = buffers[slot] = bytearray(nbytes)
    return memoryview(buf)[:nbytes]


@dataclass(frozen=True)
class ChunkInfo:
    """How one chunk is stored: its codec, its length on the server and the checksum of its
    original bytes."""

    codec: int
    stored_len: int
    checksum: int


@dataclass(frozen=True)
class Manifest:
    """What a restore needs besides the chunks: the chunk size, the object's data length,
    owner address, metadata and one ``ChunkInfo`` per chunk."""

    chunk_size: int
    buf_len: int
    owner_address: bytes
    metadata: bytes
    chunks: tuple[ChunkInfo, ...]

    def raw_len(self, index: int) -> int:
        """Original length of chunk ``index`` (only the last one may be short)."""
        return min(self.chunk_size, self.buf_len - index * self.chunk_size)

    def encode(self) -> bytes:
        """The manifest as bytes, ending with a checksum of everything before it."""
        parts = [_MANIFEST_HEAD.pack(MANIFEST_MAGIC, MANIFEST_VERSION, len(self.chunks),
                                     self.chunk_size, self.buf_len, len(self.owner_address),
                                     len(self.metadata)),
                 self.owner_address, self.metadata]
        parts.extend(_CHUNK_ENTRY.pack(c.codec, c.stored_len, c.checksum) for c in self.chunks)
        body = b"".join(parts)
        return body + _MANIFEST_TAIL.pack(checksum(body))

    @classmethod
    def decode(cls, data: bytes, key: str) -> "Manifest":
        """Parse a manifest; any inconsistency raises CorruptObjectError naming the key."""
        if len(data) < _MANIFEST_HEAD.size + _MANIFEST_TAIL.size:
            raise CorruptObjectError(f"{key}: manifest truncated ({len(data)} bytes)")
        body, (expected,) = data[:-_MANIFEST_TAIL.size], _MANIFEST_TAIL.unpack(
            data[-_MANIFEST_TAIL.size:])
        if checksum(body) != expected:
            raise CorruptObjectError(f"{key}: manifest checksum mismatch")
        magic, version, n_chunks, chunk_size, buf_len, owner_len, meta_len = \
            _MANIFEST_HEAD.unpack_from(body)
        if magic != MANIFEST_MAGIC or version != MANIFEST_VERSION:
            raise CorruptObjectError(f"{key}: not a manifest of format {MANIFEST_VERSION}")
        pos = _MANIFEST_HEAD.size
        if len(body) != pos + owner_len + meta_len + n_chunks * _CHUNK_ENTRY.size:
            raise CorruptObjectError(f"{key}: manifest length does not match its header")
        if chunk_size == 0 or n_chunks != -(-buf_len // chunk_size):
            raise CorruptObjectError(f"{key}: manifest chunk count does not match its size")
        owner = body[pos:pos + owner_len]
        pos += owner_len
        metadata = body[pos:pos + meta_len]
        pos += meta_len
        chunks = []
        for _ in range(n_chunks):
            codec, stored_len, digest = _CHUNK_ENTRY.unpack_from(body, pos)
            if codec not in _CODEC_NAMES:
                raise CorruptObjectError(f"{key}: unknown chunk codec {codec}")
            chunks.append(ChunkInfo(codec, stored_len, digest))
            pos += _CHUNK_ENTRY.size
        manifest = cls(chunk_size, buf_len, bytes(owner), bytes(metadata), tuple(chunks))
        for i, c in enumerate(manifest.chunks):
            if c.codec == CODEC_RAW and c.stored_len != manifest.raw_len(i):
                raise CorruptObjectError(f"{key}: raw chunk {i} has the wrong length")
        return manifest


class ChunkCodec:
    """Compresses chunks (zstd via Arrow) when it pays, and decodes them into a target buffer."""

    def __init__(self, compression: str = "auto", zstd_level: int = 1):
        self.compression = compression
        self._zstd_level = zstd_level

    @functools.cached_property
    def _codec(self):
        # Imported on first compression, not with the module: a restore worker decompresses
        # with zstandard and never needs pyarrow (~20 ms of every IO worker's start-up).
        import pyarrow as pa

        return pa.Codec("zstd", self._zstd_level)

    def _ratio(self, samples) -> float:
        raw = sum(len(s) for s in samples)
        return sum(self._codec.compress(s, asbytes=False).size for s in samples) / raw

    def choose(self, data: memoryview) -> int:
        """Pick the codec from small samples: raw, zstd, or zstd of byte-shuffled data."""
        n = len(data)
        if self.compression == "none" or n == 0:
            return CODEC_RAW
        if n <= 2 * PROBE_SAMPLE_BYTES:
            samples = [data]
        else:  # beginning, middle and end: arrays often have headers or padding at one end
            # Offsets aligned to the widest element: a sample's integers are the chunk's.
            mid, end = (n // 2) & ~7, (n - PROBE_SAMPLE_BYTES) & ~7
            samples = [data[:PROBE_SAMPLE_BYTES], data[mid:mid + PROBE_SAMPLE_BYTES],
                       data[end:end + PROBE_SAMPLE_BYTES]]
        best_codec, best = CODEC_ZSTD, self._ratio(samples)
        middle = samples[len(samples) // 2]
        for width in SHUFFLE_WIDTHS:
            if len(middle) >= 64 * width:
                ratio = self._ratio([shuffle(middle, width)])
                if ratio <= SHUFFLE_MAX_RATIO and ratio < best:
                    best_codec, best = _SHUFFLE_BASE + width, ratio
        narrowing = self._narrowing(samples)
        if narrowing is not None and narrowing[1] <= min(PROBE_MAX_RATIO, best * NARROW_SLACK):
            return narrowing[0]
        if self.compression == "zstd" or best <= PROBE_MAX_RATIO:
            return best_codec
        return CODEC_RAW

    @staticmethod
    def _narrowing(samples) -> tuple[int, float] | None:
        """(codec, ratio) of the narrowest integer narrowing every sample fits, or None."""
        found = None
        for width in dict.fromkeys(w for w, _ in NARROWINGS):  # 8, 4, 2: ties go to the wider
            fits = [narrowing_for(s, width) for s in samples]
            if None in fits:
                continue
            to = max(fits)
            if found is None or to / width < found[1]:
                found = (_NARROW_BASE + NARROWINGS.index((width, to)), to / width)
        return found

    def encode(self, data: memoryview, codec: int | None = None) -> tuple[ChunkInfo, object]:
        """Return the chunk's info and the buffer to store (``data`` itself when raw).
        ``codec``: what ``choose`` said for a chunk like this one (skips the probe); a codec
        that does not shrink this chunk below KEEP_MAX_RATIO still falls back to raw."""
        digest = checksum(data)
        if codec is None:
            codec = self.choose(data)
        if codec in _NARROW_CODECS and self.compression != "none":
            width, to = _NARROW_CODECS[codec]
            fits = narrowing_for(data, width)
            if fits is not None and fits <= to:
                payload = memoryview(narrow(data, width, to)).cast("B")
                return ChunkInfo(codec, len(payload), digest), payload
            codec = _SHUFFLE_BASE + width  # the samples fitted, the whole chunk does not
        if codec != CODEC_RAW and self.compression != "none":
            source = data if codec == CODEC_ZSTD else shuffle(data, codec - _SHUFFLE_BASE)
            packed = self._codec.compress(source, asbytes=False)
            if packed.size <= KEEP_MAX_RATIO * len(data):
                # A ResizableBuffer's memoryview spans its capacity, not its size.
                payload = memoryview(packed.slice(0, packed.size)).cast("B")
                return ChunkInfo(codec, packed.size, digest), payload
        return ChunkInfo(CODEC_RAW, len(data), digest), data

    @staticmethod
    def decode_into(info: ChunkInfo, stored, target: memoryview, key: str) -> None:
        """Write a stored chunk's original bytes into ``target`` (exactly its length) and verify."""
        if stored is None:
            raise CorruptObjectError(f"{key}: chunk missing")
        if len(stored) != info.stored_len:
            raise CorruptObjectError(
                f"{key}: stored chunk is {len(stored)} bytes, manifest says {info.stored_len}")
        if info.codec == CODEC_RAW:
            if len(target) != len(stored):
                raise CorruptObjectError(f"{key}: raw chunk is {len(stored)} bytes, its place "
                                         f"in the object {len(target)}")
            if stored is not target:
                target[:] = stored
        elif info.codec in _NARROW_CODECS:
            width, to = _NARROW_CODECS[info.codec]
            if len(stored) != stored_len(len(target), width, to):
                raise CorruptObjectError(f"{key}: narrowed chunk is {len(stored)} bytes, its "
                                         f"place in the object {len(target)}")
            widen_into(stored, target, width, to)
        else:
            width = info.codec - _SHUFFLE_BASE if info.codec > CODEC_ZSTD else 0
            # Shuffled chunks decompress into scratch first, then unshuffle into place.
            out = scratch(-1, len(target)) if width else target
            _zstd_into(stored, out, key)
            if width:
                unshuffle_into(out, target, width)
        ChunkCodec.verify(info, target, key)

    @staticmethod
    def verify(info: ChunkInfo, original, key: str) -> None:
        """Check restored original bytes against the checksum taken when they were spilled."""
        if checksum(original) != info.checksum:
            raise CorruptObjectError(f"{key}: chunk checksum mismatch")


# numpy is imported where the byte planes are needed, not with the module: only shuffled
# chunks use it, and it costs every IO worker ~35 ms at start-up.
def shuffle(data, width: int) -> np.ndarray:
    """Byte planes of ``data`` seen as width-byte elements; a ragged tail is kept as is."""
    import numpy as np

    src = np.frombuffer(data, np.uint8)
    body = len(src) - len(src) % width
    out = np.empty(len(src), np.uint8)
    planes, elements = out[:body].reshape(width, -1), src[:body].reshape(-1, width)
    # Small little-endian integers (token ids) have zero planes above their largest value's
    # top byte: fill those, copy the rest (int64 token ids: 2.2 -> 4.6 GiB/s; one max() pass
    # costs other data ~10%).
    used = max(1, (int(src[:body].view(f"<u{width}").max()).bit_length() + 7) // 8) if body else 0
    if used < width:
        planes[used:] = 0
        for k in range(used):
            planes[k] = elements[:, k]
    else:
        planes[...] = elements.T
    out[body:] = src[body:]
    return out


def unshuffle_into(shuffled, target: memoryview, width: int) -> None:
    """Undo ``shuffle``: write the byte planes ``shuffled`` back into ``target`` as width-byte
    elements (same length)."""
    import numpy as np

    src = np.frombuffer(shuffled, np.uint8)
    dst = np.frombuffer(target, np.uint8)
    body = len(src) - len(src) % width
    planes, elements = src[:body].reshape(width, -1), dst[:body].reshape(-1, width)
    # Small integers (token ids) leave whole planes zero: clear the target and copy only the
    # others (2x faster for int64 token ids). The sample rules most planes out cheaply.
    zero = [not planes[k][:4096].any() and not planes[k].any() for k in range(width)]
    if any(zero):
        dst[:body] = 0
        for k in range(width):
            if not zero[k]:
                elements[:, k] = planes[k]
    elif width < 8:
        # Plane by plane (contiguous reads, strided writes): measured 2.2x (width 4) and 4.6x
        # (width 2) faster than numpy's transposed copy, which stays ahead for width 8.
        for k in range(width):
            elements[:, k] = planes[k]
    else:
        elements[...] = planes.T
    dst[body:] = src[body:]


def _zstd_into(stored, target: memoryview, key: str) -> None:
    """Decompress one zstd frame to exactly fill ``target``; anything else is corruption."""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=False)
        written = 0
        while written < len(target):
            n = reader.readinto(target[written:])
            if not n:
                break
            written += n
        extra = reader.read(1) if written == len(target) else b""
    except zstandard.ZstdError as exc:
        raise CorruptObjectError(f"{key}: chunk does not decompress ({exc})") from exc
    if written != len(target) or extra:
        raise CorruptObjectError(
            f"{key}: chunk decompresses to the wrong size (wanted {len(target)})")
