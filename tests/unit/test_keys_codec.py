"""Key/URL formats and the chunk codec, as pure functions (no server needed)."""

import numpy as np
import pytest

from ray_valkey_spill.spill import keys as K
from ray_valkey_spill.spill.codec import CODEC_RAW, ChunkCodec, ChunkInfo, Manifest
from ray_valkey_spill.errors import CorruptObjectError, InvalidSpillURLError

SESSION = "session_2026-11-30_00-00-00_000000_1"
NODE = "ab" * 28


def test_spill_url_round_trip():
    base = K.new_base_key("ray:", SESSION, NODE, "ff" * 20)
    url = K.SpillURL(base, 1234, 3).encode()
    assert K.parse_spill_url(url, "ray:") == K.SpillURL(base, 1234, 3)
    # Ray's raylet splits at the first '?' and its Python parser needs a non-empty host.
    assert url.count(b"?") == 1 and url.startswith(b"valkey://spill/ray:")


def test_base_keys_are_unique_per_spill():
    assert K.new_base_key("ray:", SESSION, NODE, "00") != K.new_base_key("ray:", SESSION, NODE, "00")


@pytest.mark.parametrize("url", [
    b"valkey://spill/emb:s:n:o.1?offset=0&size=1&chunks=1",      # outside the prefix
    b"valkey://spill/ray:s:n?offset=0&size=1&chunks=1",          # not session:node:object
    b"valkey://spill/ray:s:n:o.1",                               # no query
    b"valkey://spill/ray:s:n:o.1?offset=5&size=1&chunks=1",      # offset must be 0
    b"valkey://spill/ray:s:n:o.1?offset=0&size=-1&chunks=1",
    b"valkey://spill/ray:s:n:o*?offset=0&size=1&chunks=1",       # glob characters
    b"valkey://spill/ray:s:n:hb?offset=0&size=1&chunks=0",       # the heartbeat key
    b"file:///tmp/x?offset=0&size=1",
    b"\xff\xfe",
])
def test_bad_spill_urls_are_refused(url):
    with pytest.raises(InvalidSpillURLError):
        K.parse_spill_url(url, "ray:")


def test_node_pattern_covers_objects_and_heartbeat_only_of_that_node():
    import fnmatch
    pattern = K.node_pattern("ray:", SESSION, NODE)
    base = K.new_base_key("ray:", SESSION, NODE, "aa")
    other = K.new_base_key("ray:", SESSION, "cd" * 28, "aa")
    assert fnmatch.fnmatchcase(K.chunk_key(base, 0), pattern)
    assert fnmatch.fnmatchcase(K.heartbeat_key("ray:", SESSION, NODE), pattern)
    assert not fnmatch.fnmatchcase(K.chunk_key(other, 0), pattern)
    assert K.split_key("ray:", K.manifest_key(base))[:2] == (SESSION, NODE)


def _encode_all(codec, data: bytes, chunk: int):
    view = memoryview(data)
    return [codec.encode(view[i:i + chunk]) for i in range(0, len(data), chunk)]


def test_random_floats_stored_raw_and_tokens_compressed():
    rng = np.random.default_rng(1)
    codec = ChunkCodec("auto", 1)
    floats = rng.random(1 << 17).tobytes()
    tokens = rng.integers(0, 50_000, 1 << 17).astype(np.int64).tobytes()
    (f_info, f_payload), = _encode_all(codec, floats, len(floats))
    (t_info, t_payload), = _encode_all(codec, tokens, len(tokens))
    assert f_info.codec == CODEC_RAW and bytes(f_payload) == floats
    assert t_info.codec != CODEC_RAW and t_info.stored_len < 0.35 * len(tokens)


@pytest.mark.parametrize("mode", ["auto", "zstd", "none"])
def test_decode_restores_exact_bytes(mode):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 4, 300_000, dtype=np.uint8).tobytes()
    codec = ChunkCodec(mode, 3)
    target = bytearray(len(data))
    chunk = 65536
    for i, (info, payload) in enumerate(_encode_all(codec, data, chunk)):
        ChunkCodec.decode_into(info, bytes(payload), memoryview(target)[i * chunk:i * chunk + chunk], "k")
    assert bytes(target) == data


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap", "missing"])
def test_damaged_chunks_are_detected(damage):
    rng = np.random.default_rng(3)
    a = rng.integers(0, 9, 70_000, dtype=np.uint8).tobytes()
    b = rng.integers(0, 9, 70_000, dtype=np.uint8).tobytes()
    codec = ChunkCodec("auto", 1)
    info, payload = codec.encode(memoryview(a))
    stored = bytearray(payload)
    if damage == "flip":
        stored[len(stored) // 2] ^= 0x01
    elif damage == "truncate":
        stored = stored[:-1]
    elif damage == "swap":
        stored = bytearray(codec.encode(memoryview(b))[1])
    elif damage == "missing":
        stored = None
    with pytest.raises(CorruptObjectError):
        ChunkCodec.decode_into(info, stored if stored is None else bytes(stored),
                               memoryview(bytearray(len(a))), "ray:x:0")


def test_manifest_round_trip_and_corruption():
    m = Manifest(4, 10, b"owner", b"meta", (ChunkInfo(0, 4, 1), ChunkInfo(1, 3, 2),
                                             ChunkInfo(0, 2, 3)))
    data = m.encode()
    assert Manifest.decode(data, "k") == m
    for i in range(len(data)):
        broken = bytearray(data)
        broken[i] ^= 0x40
        with pytest.raises(CorruptObjectError):
            Manifest.decode(bytes(broken), "k")
    with pytest.raises(CorruptObjectError):
        Manifest.decode(data[:-3], "k")


@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize("extra", [0, 1, 7])
def test_unshuffle_inverts_shuffle(width, extra):
    from ray_valkey_spill.spill.codec import shuffle, unshuffle_into

    rng = np.random.default_rng(width + extra)
    noise = rng.bytes(width * 1000 + extra)
    small = rng.integers(0, 200, 1000, dtype=f"<u{width}").tobytes() + noise[:extra]  # zero planes
    for data in (noise, small):
        shuffled = shuffle(memoryview(data), width)
        assert shuffled[:1000].tobytes() == data[0:width * 1000:width]  # plane 0 first
        target = bytearray(b"\xff" * len(data))  # stale bytes must not survive
        unshuffle_into(shuffled, memoryview(target), width)
        assert bytes(target) == data


@pytest.mark.parametrize("dtype,codec,ratio", [(np.int64, "narrow8to2", 0.25),
                                                 (np.int32, "narrow4to2", 0.5)])
def test_token_ids_are_narrowed_and_restore_exactly(dtype, codec, ratio):
    from ray_valkey_spill.spill.codec import _CODEC_NAMES

    tokens = np.random.default_rng(4).integers(0, 30_000, 200_001, dtype=np.int64).astype(dtype)
    data = tokens.tobytes() + b"end"  # a ragged tail stays in place
    info, payload = ChunkCodec("auto", 1).encode(memoryview(data))
    assert _CODEC_NAMES[info.codec] == codec, info
    assert info.stored_len == len(tokens) * tokens.itemsize * ratio + 3
    target = bytearray(b"\xff" * len(data))  # stale bytes must not survive
    ChunkCodec.decode_into(info, bytes(payload), memoryview(target), "k")
    assert bytes(target) == data
    broken = bytearray(payload)
    broken[len(broken) // 2] ^= 1
    with pytest.raises(CorruptObjectError):
        ChunkCodec.decode_into(info, bytes(broken), memoryview(bytearray(len(data))), "k")
    with pytest.raises(CorruptObjectError):  # a narrowed chunk of the wrong length
        ChunkCodec.decode_into(info, bytes(payload)[:-1], memoryview(bytearray(len(data))), "k")


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_ids_of_a_large_vocabulary_are_byte_shuffled(dtype):
    """Ids up to 128 256 (Llama 3) need 3 bytes: no narrower integer type holds them."""
    from ray_valkey_spill.spill.codec import _CODEC_NAMES

    tokens = np.random.default_rng(5).integers(0, 128_256, 200_000, dtype=np.int64).astype(dtype)
    data = tokens.tobytes()
    info, payload = ChunkCodec("auto", 1).encode(memoryview(data))
    assert _CODEC_NAMES[info.codec].startswith("shuffle"), info
    assert info.stored_len < 0.8 * len(data)
    target = bytearray(len(data))
    ChunkCodec.decode_into(info, bytes(payload), memoryview(target), "k")
    assert bytes(target) == data


def test_a_chunk_its_samples_misjudge_is_not_narrowed_wrongly():
    """The probe sees small ids in its samples; one big id elsewhere must not be truncated."""
    from ray_valkey_spill.spill.codec import _CODEC_NAMES

    codec = ChunkCodec("auto", 1)
    tokens = np.random.default_rng(6).integers(0, 30_000, 500_000, dtype=np.int64)
    chosen = codec.choose(memoryview(tokens.tobytes()))
    assert _CODEC_NAMES[chosen] == "narrow8to2"
    tokens[123_457] = 1 << 40
    data = tokens.tobytes()
    info, payload = codec.encode(memoryview(data), chosen)
    assert not _CODEC_NAMES[info.codec].startswith("narrow"), info
    target = bytearray(len(data))
    ChunkCodec.decode_into(info, bytes(payload), memoryview(target), "k")
    assert bytes(target) == data


@pytest.mark.parametrize("width,to", [(8, 4), (8, 2), (8, 1), (4, 2), (4, 1), (2, 1)])
@pytest.mark.parametrize("extra", [0, 1, 3])
def test_widen_inverts_narrow(width, to, extra):
    from ray_valkey_spill.spill.narrow import narrow, narrowing_for, stored_len, widen_into

    extra = min(extra, width - 1)  # a ragged tail: shorter than one element
    rng = np.random.default_rng(width * 10 + to + extra)
    values = rng.integers(0, 256 ** to, 1000, dtype=np.uint64).astype(f"<u{width}")
    data = values.tobytes() + rng.bytes(extra)
    assert narrowing_for(memoryview(data), width) <= to
    packed = narrow(memoryview(data), width, to)
    assert len(packed) == stored_len(len(data), width, to) == 1000 * to + extra
    target = bytearray(b"\xff" * len(data))
    widen_into(packed, memoryview(target), width, to)
    assert bytes(target) == data
    assert narrowing_for(memoryview(np.full(8, 2**63, np.uint64).tobytes()), 8) is None


def test_io_workers_import_neither_numpy_nor_pyarrow_at_start_up():
    """Every spill/restore IO worker imports the storage module when it starts; numpy and
    pyarrow (~55 ms) are loaded only when a chunk is compressed or shuffled."""
    import subprocess
    import sys

    code = ("import sys, ray_valkey_spill.spill.ray_storage as s; "
            "s.ValkeyStorage('node', 'session', url='valkey://127.0.0.1:1/0'); "
            "print(sorted(m for m in ('numpy', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
