"""The compact binary form of one numpy array: a small header, then the raw C-order bytes.

Layout (all integers little-endian)::

    magic   1 byte   0xA7
    flags   1 byte   bit 0: payload is a zstd frame; bit 1: a label follows the payload
    dlen    1 byte   length of the dtype tag
    ndim    1 byte
    dtype   dlen bytes   numpy's dtype.str ('<f4', '>i2', '<c16', '<M8[ns]') or, for the
                         ml_dtypes extension types that numpy only knows as void ('<V2'), the
                         type's name ('bfloat16', 'float8_e4m3fn')
    shape   ndim x u64
    payload raw bytes of the array (or their zstd frame)
    label   (bit 1 only) label bytes, then their length as u32: e.g. the text of an embedding,
            so a cache can list what it holds; readers that want only the array skip it

Why not JSON or pickle: JSON is ~5x larger for float32 and loses float16/bfloat16 exactness;
pickle of an untrusted reply executes code. Why not .npy: its header is a padded Python-literal
dict (>= 64 bytes) that is parsed with ``ast``: slower and bigger for 3 KiB embeddings.

A decoded array is a read-only view over the reply bytes (no copy): call ``.copy()`` to write.
"""

from __future__ import annotations

import struct
import threading
from typing import Any, Sequence

import numpy as np

from ..errors import CacheValueError, ConfigError, CorruptValueError

MAGIC = 0xA7
FLAG_ZSTD = 0x01
FLAG_LABEL = 0x02
_LABEL_LEN = struct.Struct("<I")
_FIXED = struct.Struct("<BBBB")
_MAX_NDIM = 32
# Kinds numpy can rebuild from dtype.str: bool, ints, uints, floats, complex, datetimes.
_PLAIN_KINDS = frozenset("biufcmM")
# Below this size a zstd frame's own overhead eats the gain; such payloads are never tried.
MIN_COMPRESS_BYTES = 512


def as_numpy(value: Any) -> np.ndarray:
    """``value`` as a numpy array; torch tensors are converted without importing torch.

    Raises CacheValueError for values that are neither array-like numbers nor tensors.
    """
    if isinstance(value, np.ndarray):
        return value
    module = type(value).__module__ or ""
    if module.startswith("torch"):
        return _torch_to_numpy(value)
    try:
        array = np.asarray(value)
    except Exception as exc:
        raise CacheValueError(f"cannot store a {type(value).__name__} as an array: {exc}") from exc
    return array


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    # torch is only touched through the tensor's own methods: no import, no dependency.
    tensor = tensor.detach()
    if str(tensor.dtype) == "torch.bfloat16":
        # numpy has no bfloat16; keep the exact bits and tag them so they decode as bfloat16.
        bits = tensor.cpu().contiguous().view(_torch_int16(tensor)).numpy().view(np.uint16)
        bf16 = _bfloat16_dtype()
        return bits.view(bf16) if bf16 is not None else bits.view(_Tagged)
    return tensor.cpu().contiguous().numpy()


def _torch_int16(tensor: Any):
    import sys

    return sys.modules[type(tensor).__module__.split(".")[0]].int16


class _Tagged(np.ndarray):
    """uint16 bits of a bfloat16 tensor when ml_dtypes is absent; encoded with tag 'bfloat16'."""


def _bfloat16_dtype() -> np.dtype | None:
    try:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:
        return None


def _dtype_tag(array: np.ndarray) -> bytes:
    dtype = array.dtype
    if isinstance(array, _Tagged):
        return b"bfloat16"
    if dtype.kind in _PLAIN_KINDS:
        return dtype.str.encode()
    if dtype.kind == "V" and dtype.names is None and dtype.subdtype is None \
            and (dtype.type.__module__ or "").startswith("ml_dtypes"):
        return dtype.name.encode()
    raise CacheValueError(f"cannot store dtype {dtype!r}: only numeric dtypes (bool, int, uint, "
                          "float, complex, datetime, ml_dtypes types such as bfloat16)")


_dtype_cache: dict[bytes, np.dtype] = {}


def _dtype_from_tag(tag: bytes) -> np.dtype:
    dtype = _dtype_cache.get(tag)
    if dtype is not None:
        return dtype
    text = tag.decode("ascii")
    try:
        dtype = np.dtype(text)
    except TypeError:
        try:
            import ml_dtypes

            dtype = np.dtype(getattr(ml_dtypes, text))
        except (ImportError, AttributeError, TypeError) as exc:
            if text != "bfloat16":
                raise CorruptValueError(f"dtype tag {text!r} is not a dtype this reader knows "
                                        "(numpy or ml_dtypes)") from exc
            # Without ml_dtypes, bfloat16 comes back as its exact uint16 bits.
            dtype = np.dtype("<u2")
    ml = (dtype.type.__module__ or "").startswith("ml_dtypes")
    if dtype.hasobject or dtype.names is not None or not (dtype.kind in _PLAIN_KINDS or ml):
        raise CorruptValueError(f"dtype tag {text!r} is not a numeric dtype")
    _dtype_cache[tag] = dtype
    return dtype


_local = threading.local()


def _compressor(level: int):
    # zstd (de)compressor objects are not safe to share between threads.
    key = ("c", level)
    c = getattr(_local, "zstd", {}).get(key)
    if c is None:
        import zstandard

        c = zstandard.ZstdCompressor(level=level)
        _local.__dict__.setdefault("zstd", {})[key] = c
    return c


def _decompressor():
    d = getattr(_local, "zstd_d", None)
    if d is None:
        import zstandard

        d = _local.zstd_d = zstandard.ZstdDecompressor()
    return d


class ArrayCodec:
    """Encodes numpy arrays to bytes and back, exactly (dtype, byte order, shape, bits).

    ``zstd_level=None`` (the default) never compresses: float embeddings and fp16/bf16 KV
    blocks gain at most ~1.06-1.4x from lossless zstd, not worth the CPU on the hot path.
    With a level, a payload is stored compressed only when that makes it smaller.
    """

    __slots__ = ("zstd_level", "_last")

    def __init__(self, zstd_level: int | None = None):
        if zstd_level is not None and (isinstance(zstd_level, bool)
                                       or not isinstance(zstd_level, int)
                                       or not -7 <= zstd_level <= 22):
            raise ConfigError("zstd_level", zstd_level, "null (no compression) or -7 to 22")
        self.zstd_level = zstd_level
        # Decode fast path: consecutive values of one cache nearly always share dtype and shape,
        # so the header of the previous value is compared as bytes instead of parsed again.
        # One tuple, replaced whole, so threads sharing a codec never see a mixed state.
        self._last: tuple[bytes, np.dtype, tuple[int, ...], int] | None = None

    def header(self, array: np.ndarray, flags: int = 0) -> bytes:
        tag = _dtype_tag(array)
        if array.ndim > _MAX_NDIM:
            raise CacheValueError(f"at most {_MAX_NDIM} dimensions, got {array.ndim}")
        return (_FIXED.pack(MAGIC, flags, len(tag), array.ndim) + tag
                + struct.pack(f"<{array.ndim}Q", *array.shape))

    def encode(self, value: Any, label: bytes | None = None) -> bytes:
        """Bytes of ``value`` (numpy array, torch tensor or array-like), optionally followed by
        ``label`` (at most 4 GiB). Raises CacheValueError."""
        array = as_numpy(value)
        flags = 0 if label is None else FLAG_LABEL
        header = self.header(array, flags)  # refuses non-numeric dtypes before touching data
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        payload = memoryview(array.reshape(-1).view(np.uint8)) if array.size else b""
        if self.zstd_level is not None and len(payload) >= MIN_COMPRESS_BYTES:
            packed = _compressor(self.zstd_level).compress(payload)
            if len(packed) < len(payload):
                header, payload = self.header(array, flags | FLAG_ZSTD), packed
        if label is None:
            return b"".join((header, payload))
        return b"".join((header, payload, label, _LABEL_LEN.pack(len(label))))

    def encode_rows(self, batch: np.ndarray, labels: Sequence[bytes] | None = None
                    ) -> list[bytes]:
        """``encode`` of every row of a 2-D array (with ``labels[i]`` when given): the same
        bytes, with the header built once for all rows."""
        if len(batch) == 0:
            return []
        if self.zstd_level is not None:  # whether to compress is decided per value
            return [self.encode(row, None if labels is None else labels[i])
                    for i, row in enumerate(batch)]
        header_of = self.header(batch[0], 0 if labels is None else FLAG_LABEL)
        batch = np.ascontiguousarray(batch)
        if labels is None:
            return [header_of + row.tobytes() for row in batch]
        pack = _LABEL_LEN.pack
        return [b"".join((header_of, row.tobytes(), label, pack(len(label))))
                for row, label in zip(batch, labels)]

    def decode(self, data: bytes | memoryview) -> np.ndarray:
        """The array stored in ``data`` (a read-only view when uncompressed); a label is skipped.

        Raises CorruptValueError when the bytes are not a complete, valid encoding.
        """
        return self.decode_labelled(data)[0]

    def decode_labelled(self, data: bytes | memoryview) -> tuple[np.ndarray, bytes | None]:
        """The array stored in ``data`` and its label (None when it was stored without one).

        Raises CorruptValueError when the bytes are not a complete, valid encoding.
        """
        last = self._last
        if last is not None:
            header, dtype, shape, nbytes = last
            n = len(header)
            if data[:n] == header:
                end = n + nbytes
                if not header[1] & FLAG_LABEL:
                    if len(data) == end:
                        return np.frombuffer(data, dtype, offset=n).reshape(shape), None
                elif len(data) >= end + _LABEL_LEN.size and len(data) == (
                        end + _LABEL_LEN.size + _LABEL_LEN.unpack_from(data, len(data) - 4)[0]):
                    return (np.frombuffer(data, dtype, count=nbytes // dtype.itemsize,
                                          offset=n).reshape(shape),
                            bytes(data[end:len(data) - _LABEL_LEN.size]))
        return self._decode_slow(data)

    def _decode_slow(self, data: bytes | memoryview) -> tuple[np.ndarray, bytes | None]:
        try:
            magic, flags, dlen, ndim = _FIXED.unpack_from(data, 0)
        except (struct.error, TypeError) as exc:
            raise CorruptValueError(f"too short for an array header ({len(data)} bytes)") from exc
        if magic != MAGIC or flags & ~(FLAG_ZSTD | FLAG_LABEL) or ndim > _MAX_NDIM:
            raise CorruptValueError("not an encoded array (bad magic, flags or ndim)")
        label = None
        if flags & FLAG_LABEL:
            if len(data) < _FIXED.size + _LABEL_LEN.size:
                raise CorruptValueError("too short for a labelled array")
            label_end = len(data) - _LABEL_LEN.size
            label_start = label_end - _LABEL_LEN.unpack_from(data, label_end)[0]
            if label_start < _FIXED.size:
                raise CorruptValueError("label length runs past the array header")
            label = bytes(data[label_start:label_end])
            data = memoryview(data)[:label_start]
        offset = _FIXED.size + dlen + 8 * ndim
        if len(data) < offset:
            raise CorruptValueError("truncated array header")
        try:
            dtype = _dtype_from_tag(bytes(data[_FIXED.size:_FIXED.size + dlen]))
        except (TypeError, ValueError, UnicodeDecodeError, ImportError) as exc:  # ml_dtypes absent
            raise CorruptValueError(f"unknown dtype tag in header: {exc}") from exc
        shape = struct.unpack_from(f"<{ndim}Q", data, _FIXED.size + dlen)
        count = 1
        for n in shape:
            count *= n
        nbytes = count * dtype.itemsize
        if flags & FLAG_ZSTD:
            try:
                payload = _decompressor().decompress(bytes(data[offset:]), max_output_size=nbytes)
            except Exception as exc:
                raise CorruptValueError(f"zstd payload does not decompress: {exc}") from exc
            if len(payload) != nbytes:
                raise CorruptValueError(f"payload is {len(payload)} bytes, header says {nbytes}")
            return np.frombuffer(payload, dtype).reshape(shape), label
        if len(data) - offset != nbytes:
            raise CorruptValueError(f"payload is {len(data) - offset} bytes, header says {nbytes}")
        self._last = (bytes(data[:offset]), dtype, shape, nbytes)
        return np.frombuffer(data, dtype, offset=offset).reshape(shape), label


__all__ = ["ArrayCodec", "CacheValueError", "CorruptValueError", "as_numpy"]
