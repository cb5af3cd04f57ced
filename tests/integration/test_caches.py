"""Embedding, KV-block and session caches against a real valkey-server.

Shared-server tests use a unique prefix under each cache's default prefix and remove it with
SCAN afterwards; tests that count commands or change server settings use a private server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from support import commandstats, command_delta
from ray_valkey_spill import ConfigError
from ray_valkey_spill.errors import BackendUnavailableError
from ray_valkey_spill.caches import (ArrayCodec, CacheValueError, CorruptValueError,
                                     EmbeddingCache, EvictionPolicyWarning, KVCache, SessionStore)
from ray_valkey_spill.connection import connect
from ray_valkey_spill.testing.embedded import EmbeddedValkey
from ray_valkey_spill.keyspace import scan_keys

DIM = 768


def _uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def private_server():
    """A server of our own (small maxmemory) where INFO commandstats deltas are ours alone."""
    with EmbeddedValkey(config={"maxmemory": "64mb"}) as server:
        yield server


class _RoundTrips:
    """Counts pipeline sends (one per round trip): valkey-py's packed sends and direct_io's
    gather-list sends."""

    def __init__(self, monkeypatch):
        import valkey.connection

        from ray_valkey_spill import direct_io

        self.count = 0
        original = valkey.connection.AbstractConnection.send_packed_command
        original_send_all = direct_io.send_all

        def counting(conn, command, check_health=True):
            self.count += 1
            return original(conn, command, check_health)

        def counting_send_all(sock, parts):
            self.count += 1
            return original_send_all(sock, parts)

        monkeypatch.setattr(valkey.connection.AbstractConnection, "send_packed_command", counting)
        monkeypatch.setattr(direct_io, "send_all", counting_send_all)


def test_importing_caches_shedding_and_stats_does_not_import_ray():
    code = ("import sys, ray_valkey_spill.caches, ray_valkey_spill.shedding, "
            "ray_valkey_spill.tools.stats; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout.strip()
    assert out == "False"


# --- the binary array format ---------------------------------------------------------------

NUMERIC_DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                  "uint64", "float16", "float32", "float64", "longdouble", "complex64",
                  "complex128", ">f4", ">i8", "<M8[ns]", "<m8[s]"]


def _random_array(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    # Random bits, so NaN payloads, -0.0 and denormals are all covered by the exactness check.
    dt = np.dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    raw = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    if dt.kind == "b":
        raw = raw % 2
    return raw.view(dt).reshape(shape)


def _random_vectors(n: int, dim: int = DIM, dtype: str = "float32", seed: int = 0) -> np.ndarray:
    """Finite embeddings (an embedding cache refuses NaN and infinities, which random bits hold)."""
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(dtype)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (DIM,), (4, 5, 3)])
def test_codec_round_trips_exactly(dtype, shape):
    codec = ArrayCodec()
    a = _random_array(dtype, shape)
    assert _same(codec.decode(codec.encode(a)), a)
    assert _same(codec.decode(codec.encode(a)), a)  # second time through the header fast path


def test_codec_bfloat16_and_non_contiguous_and_zstd():
    codec = ArrayCodec(zstd_level=3)
    bits = _random_array("uint16", (8, 16))  # bfloat16-like: exact uint16 bits
    assert _same(codec.decode(codec.encode(bits)), bits)
    strided = _random_array("float32", (10, 12))[::2, ::3]
    assert _same(codec.decode(codec.encode(strided)), np.ascontiguousarray(strided))
    zeros = np.zeros((256, 64), np.float32)
    encoded = codec.encode(zeros)
    assert len(encoded) < zeros.nbytes // 10  # compressible data is stored compressed
    assert _same(codec.decode(encoded), zeros)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = bits.view(ml_dtypes.bfloat16)
    out = ArrayCodec().decode(ArrayCodec().encode(bf16))
    assert out.dtype == bf16.dtype and out.tobytes() == bf16.tobytes()


def test_codec_refuses_objects_and_rejects_garbage():
    codec = ArrayCodec()
    with pytest.raises(CacheValueError):
        codec.encode(np.array([object()]))
    with pytest.raises(CacheValueError):
        codec.encode(np.zeros(2, dtype=[("a", "<i4")]))
    good = codec.encode(np.arange(10, dtype=np.float32))
    for bad in (b"", b"\x00" * 3, b"\xa7\x00\x03\x01<f4", good[:-1], good + b"x",
                b"\xa7\x00\x01\x00O", b"\xa7\x02" + good[2:]):
        with pytest.raises(CorruptValueError):
            ArrayCodec().decode(bad)
    with pytest.raises(ConfigError):
        ArrayCodec(zstd_level=99)


# --- configuration and cooperation with spilling --------------------------------------------

@pytest.mark.parametrize("make", [
    lambda url: EmbeddingCache(url, "m", ttl_seconds=60, prefix="ray:emb:"),
    lambda url: EmbeddingCache(url, "m", ttl_seconds=60, prefix="vllm:"),
    lambda url: EmbeddingCache(url, "m", ttl_seconds=60, prefix="session:x:"),
    lambda url: EmbeddingCache(url, "m", ttl_seconds=60, prefix="emb"),
    lambda url: KVCache(url, "m", prefix="emb:kv:"),
    lambda url: KVCache(url, "m", prefix="ray:"),
    lambda url: SessionStore(url, ttl_seconds=60, prefix="r"),
    lambda url: SessionStore(url, ttl_seconds=60, prefix="vllm:kv:s:"),
])
def test_overlapping_prefixes_are_refused(valkey_url, make):
    with pytest.raises(ConfigError, match="prefix"):
        make(valkey_url)


@pytest.mark.parametrize("ttl", [0, -1, None, 1.5, True, "60", 10**9])
def test_ttl_is_required_and_validated(valkey_url, ttl):
    for make in (lambda: EmbeddingCache(valkey_url, "m", ttl_seconds=ttl),
                 lambda: KVCache(valkey_url, "m", ttl_seconds=ttl),
                 lambda: SessionStore(valkey_url, ttl_seconds=ttl)):
        with pytest.raises(ConfigError, match="ttl_seconds"):
            make()


def test_caches_share_the_spill_backends_pool(valkey_url, valkey_client, prefixes):
    shared = connect(valkey_url)
    assert EmbeddingCache(valkey_url, "m", ttl_seconds=60, prefix=prefixes["emb"]).client is shared
    assert KVCache(valkey_url, "m", prefix=prefixes["kv"]).client is shared
    assert SessionStore(valkey_url, ttl_seconds=60, prefix=prefixes["session"]).client is shared
    assert EmbeddingCache(valkey_client, "m", ttl_seconds=60).client is valkey_client


def test_allkeys_policy_warns_and_noperm_is_tolerated(private_server):
    admin = private_server.client()
    admin.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.warns(EvictionPolicyWarning, match="allkeys-lru"):
            EmbeddingCache(private_server.client(), "m", ttl_seconds=60)
    finally:
        admin.config_set("maxmemory-policy", "volatile-lru")
    admin.acl_setuser("cacheonly", enabled=True, passwords=["+pw"], keys=["emb:*"],
                      commands=["+@read", "+@write", "+@keyspace", "+@connection", "-@dangerous"])
    limited = private_server.client(username="cacheonly", password="pw")
    cache = EmbeddingCache(limited, "m", ttl_seconds=60)  # CONFIG GET refused: no error
    assert cache.maxmemory_policy is None
    cache.put("x", np.ones(4, np.float32))
    assert _same(cache.get("x"), np.ones(4, np.float32))
    cache.clear()
    admin.acl_deluser("cacheonly")


def test_every_cache_key_has_a_ttl_after_every_method(valkey_url, valkey_client, prefixes):
    emb = EmbeddingCache(valkey_url, "m", ttl_seconds=300, prefix=prefixes["emb"],
                         stats_flush_seconds=0, zstd_level=1)
    vectors = _random_vectors(5)
    emb.put_many([f"t{i}" for i in range(5)], vectors)
    emb.put("one", vectors[0])
    emb.put("one", vectors[1])  # overwrite must keep a TTL
    emb.get_many(["t0", "nope"])
    emb.get_or_compute(["t0", "new1", "new2"], lambda ts: np.zeros((len(ts), DIM), np.float32))
    emb.flush_stats()
    kv = KVCache(valkey_url, "m", prefix=prefixes["kv"], stats_flush_seconds=0)
    tokens = list(range(100))
    kv.put(tokens, _random_array("uint16", (3, 2, 16, 8)))
    kv.put(tokens, [_random_array("uint16", (2, 16, 8))])  # rewrite of block 0
    kv.lookup(tokens)
    kv.get(tokens)
    kv.flush_stats()
    sessions = SessionStore(valkey_url, ttl_seconds=300, prefix=prefixes["session"], max_turns=4)
    sessions.append("s1", {"role": "user", "text": "hi"})
    sessions.set_result("s1", "retrieved", np.arange(5))
    sessions.set_result("s2", "only-result", {"a": 1})  # a session with results only
    sessions.append("s2", "x", "y")
    sessions.trim("s1", 1)
    sessions.touch("s1")
    sessions.last("s1", 3)
    keys = [k for p in prefixes.values() for k in scan_keys(valkey_client, p + "*")]
    assert len(keys) >= 15
    ttls = {k: valkey_client.ttl(k) for k in keys}
    assert all(t > 0 for t in ttls.values()), {k: t for k, t in ttls.items() if t <= 0}


# --- EmbeddingCache -------------------------------------------------------------------------

# Before declared schemas this stored every numeric dtype and 0-d, empty and 2-D arrays as
# "embeddings" (complex, NaN-filled random bits, matrices): exactly the poison the schema now
# refuses (tests/integration/test_embedding_schema.py). It now covers every embedding dtype.
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "bfloat16", "int8", "uint8"])
def test_embedding_round_trip_through_server(valkey_url, prefixes, dtype):
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    cache = EmbeddingCache(valkey_url, "m", ttl_seconds=60, prefix=prefixes["emb"], dtype=dtype)
    if dtype in ("int8", "uint8"):
        arrays = _random_array(dtype, (3, DIM))
    else:
        arrays = _random_vectors(3).astype(cache.schema.dtype)
    texts = ["a", "b", "c"]
    assert cache.put_many(texts, arrays) == 3
    for got, want in zip(cache.get_many(texts), arrays):
        assert _same(got, want)


def test_embedding_models_are_isolated(valkey_url, prefixes):
    a = EmbeddingCache(valkey_url, "model", ttl_seconds=60, prefix=prefixes["emb"])
    b = EmbeddingCache(valkey_url, "model:v2", ttl_seconds=60, prefix=prefixes["emb"])
    c = EmbeddingCache(valkey_url, "BAAI/bge small*", ttl_seconds=60, prefix=prefixes["emb"])
    a.put("hello", np.ones(3, np.float32))
    assert b.get("hello") is None and c.get("hello") is None
    b.put("hello", np.zeros(3, np.float32))
    c.put("hello", np.full(3, 2, np.float32))
    assert a.get("hello")[0] == 1 and b.get("hello")[0] == 0 and c.get("hello")[0] == 2
    assert a.clear() == 1  # removes model's keys only, not those of "model:v2"
    assert b.get("hello") is not None and c.get("hello") is not None


def test_get_or_compute_calls_embed_fn_once_with_misses(valkey_url, prefixes):
    cache = EmbeddingCache(valkey_url, "m", ttl_seconds=60, prefix=prefixes["emb"])
    cache.put_many(["a", "b"], np.array([[1, 1], [2, 2]], np.float32))
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.array([[len(t), 0] for t in texts], np.float32)

    out = cache.get_or_compute(["a", "ccc", "b", "dd", "ccc"], embed)
    assert calls == [["ccc", "dd"]]
    assert [v[0] for v in out] == [1, 3, 2, 2, 3]
    assert cache.get_or_compute(["ccc", "dd"], embed) and len(calls) == 1  # now cached
    stats = cache.stats()
    assert stats["hits"] == 4 and stats["misses"] == 3 and stats["hit_rate"] == 4 / 7


def test_corrupt_value_is_a_counted_miss(valkey_url, valkey_client, prefixes):
    cache = EmbeddingCache(valkey_url, "m", ttl_seconds=60, prefix=prefixes["emb"])
    cache.put("good", np.ones(4, np.float32))
    valkey_client.set(cache.key("bad"), b"\xa7garbage", ex=60)
    valkey_client.set(cache.key("json"), json.dumps([0.1, 0.2]), ex=60)
    got = cache.get_many(["good", "bad", "json"])
    assert got[0] is not None and got[1] is None and got[2] is None
    assert cache.stats()["corrupt"] == 2 and cache.stats()["misses"] == 2


def test_embedding_batches_are_one_round_trip(private_server, monkeypatch):
    client = private_server.client()
    cache = EmbeddingCache(client, f"m{_uid()}", ttl_seconds=60, stats_flush_seconds=None)
    texts = [f"text {i}" for i in range(1000)]
    vectors = _random_vectors(1000)
    trips = _RoundTrips(monkeypatch)
    before = commandstats(client)
    trips.count = 0
    assert cache.put_many(texts, vectors) == 1000
    assert trips.count == 1
    after = commandstats(client)
    assert command_delta(before, after) == {"set": 1000}
    trips.count = 0
    got = cache.get_many(texts + ["missing"])
    assert trips.count == 1
    assert command_delta(after, commandstats(client)) == {"mget": 1}
    assert all(_same(g, v) for g, v in zip(got, vectors)) and got[-1] is None
    cache.clear()


def test_published_counters_ride_in_the_same_round_trip(private_server, monkeypatch):
    client = private_server.client()
    cache = EmbeddingCache(client, f"m{_uid()}", ttl_seconds=60, stats_flush_seconds=0,
                           prefix="emb:pub:")
    cache.put_many(["a"], [np.ones(2, np.float32)])
    trips = _RoundTrips(monkeypatch)
    cache.get_many(["a", "b"])  # publishes the put's counters
    cache.get_many(["c"])  # publishes the first get's counters
    assert trips.count == 2
    stats = {k: int(v) for k, v in client.hgetall("emb:pub:_stats").items()}
    assert stats[b"hits"] == 1 and stats[b"misses"] == 1 and stats[b"puts"] == 1
    assert client.ttl("emb:pub:_stats") > 0
    cache.clear()
    client.unlink("emb:pub:_stats")


# --- KVCache --------------------------------------------------------------------------------

def _kv_block(seed: int) -> np.ndarray:
    # (layers, k/v, tokens, kv heads, head dim) in bfloat16 bits
    return _random_array("uint16", (4, 2, 16, 2, 32), seed=seed)


def test_kv_put_lookup_get_and_first_miss(valkey_url, valkey_client, prefixes):
    kv = KVCache(valkey_url, "tiny-llm", prefix=prefixes["kv"])
    tokens = np.arange(1000, 1070, dtype=np.int32)  # 4 full blocks + 6 tokens
    blocks = [_kv_block(i) for i in range(4)]
    assert kv.put(tokens, blocks) == 4
    assert kv.lookup(tokens) == 64
    assert kv.lookup(list(tokens[:40])) == 32  # only full blocks count
    got = kv.get(tokens)
    assert len(got) == 4 and all(_same(g, b) for g, b in zip(got, blocks))
    assert len(kv.get(tokens, n_blocks=2)) == 2
    assert all(t > 0 for t in (valkey_client.ttl(k) for k in kv.block_keys(tokens)))
    # A different continuation shares the first two blocks only.
    other = tokens.copy()
    other[40] += 1
    assert kv.lookup(other) == 32
    # Remove block 2: lookup and get stop there even though block 3 is present.
    valkey_client.unlink(kv.block_keys(tokens)[2])
    assert kv.lookup(tokens) == 32
    assert len(kv.get(tokens)) == 2
    assert kv.stats()["hits"] > 0


def test_kv_extra_keys_separate_caches(valkey_url, prefixes):
    tokens = list(range(32))
    base = KVCache(valkey_url, "llm", prefix=prefixes["kv"])
    base.put(tokens, [_kv_block(0), _kv_block(1)])
    for other in (KVCache(valkey_url, "llm2", prefix=prefixes["kv"]),
                  KVCache(valkey_url, "llm", lora_id="sql-adapter", prefix=prefixes["kv"]),
                  KVCache(valkey_url, "llm", cache_salt="tenant-7", prefix=prefixes["kv"]),
                  KVCache(valkey_url, "llm", extra_keys=("tp=2", "rank=1"), prefix=prefixes["kv"]),
                  KVCache(valkey_url, "llm", block_size_tokens=8, prefix=prefixes["kv"])):
        assert other.lookup(tokens) == 0
    assert KVCache(valkey_url, "llm", prefix=prefixes["kv"]).lookup(tokens) == 32


def test_kv_refuses_more_blocks_than_tokens_and_bad_tokens(valkey_url, prefixes):
    kv = KVCache(valkey_url, "llm", prefix=prefixes["kv"])
    with pytest.raises(ConfigError):
        kv.put(list(range(20)), [_kv_block(0), _kv_block(1)])
    with pytest.raises(CacheValueError):
        kv.lookup(np.ones((2, 16), np.int64))
    with pytest.raises(CacheValueError):
        kv.lookup([0.5] * 16)
    for not_blocks in (None, 3, "block"):
        with pytest.raises(CacheValueError, match=r"^blocks: got .*allowed: a list or tuple"):
            kv.put(list(range(32)), not_blocks)


def test_kv_lookup_and_get_are_one_round_trip(private_server, monkeypatch):
    client = private_server.client()
    kv = KVCache(client, f"m{_uid()}", stats_flush_seconds=None)
    tokens = list(range(16 * 32))
    kv.put(tokens, [_kv_block(i) for i in range(20)])
    trips = _RoundTrips(monkeypatch)
    before = commandstats(client)
    trips.count = 0
    assert kv.lookup(tokens) == 16 * 20
    assert trips.count == 1
    mid = commandstats(client)
    assert command_delta(before, mid) == {"exists": 32}
    trips.count = 0
    assert len(kv.get(tokens)) == 20
    assert trips.count == 1
    # all 32 block GETs in one pipeline (one send); the 20 cached ones come back
    assert command_delta(mid, commandstats(client)) == {"get": 32}
    kv.clear()


_HASH_SCRIPT = """
import sys
from ray_valkey_spill.caches import KVCache
kv = KVCache(sys.argv[1], "llama-3", lora_id="a", cache_salt="s", stats_flush_seconds=None)
print(",".join(kv.block_keys(list(range(7, 7 + 16 * 5)))))
"""


def test_kv_block_hash_is_stable_across_processes(valkey_url):
    ours = KVCache(valkey_url, "llama-3", lora_id="a", cache_salt="s").block_keys(
        list(range(7, 7 + 16 * 5)))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", _HASH_SCRIPT, valkey_url], env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout.strip().split(",")
    assert out == ours and len(ours) == 5 and len(set(ours)) == 5


class _FakeTensor:
    """Just enough of a torch.Tensor (module 'torch') to check the lazy, torch-free conversion."""

    def __init__(self, array, dtype="torch.float16"):
        self.array, self.dtype = array, dtype

    def detach(self):
        return self

    def cpu(self):
        return self

    def contiguous(self):
        return _FakeTensor(np.ascontiguousarray(self.array), self.dtype)

    def view(self, dtype):
        return _FakeTensor(self.array.view(np.int16), "torch.int16")

    def numpy(self):
        assert self.dtype != "torch.bfloat16", "torch cannot export bfloat16 to numpy"
        return self.array


_FakeTensor.__module__ = "torch"


def test_kv_converts_tensors_without_importing_torch(valkey_url, prefixes, monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(int16="torch.int16"))
    kv = KVCache(valkey_url, "llm", prefix=prefixes["kv"])
    half = _random_array("float16", (2, 2, 16, 4))
    bf16_bits = _random_array("uint16", (2, 2, 16, 4), seed=1)
    kv.put(list(range(32)), [_FakeTensor(half), _FakeTensor(bf16_bits, "torch.bfloat16")])
    got = kv.get(list(range(32)))
    assert _same(got[0], half)
    assert got[1].tobytes() == bf16_bits.tobytes() and got[1].dtype.itemsize == 2


def test_kv_accepts_torch_tensors_when_installed(valkey_url, prefixes):
    torch = pytest.importorskip("torch")
    kv = KVCache(valkey_url, "llm", prefix=prefixes["kv"])
    block = torch.randn(2, 2, 16, 4).to(torch.bfloat16)
    kv.put(torch.arange(16), block.unsqueeze(0))
    got = kv.get(list(range(16)))[0]
    assert got.tobytes() == block.view(torch.int16).numpy().tobytes()


# --- SessionStore ---------------------------------------------------------------------------

def test_session_turns_results_trim_and_ttl_refresh(valkey_url, valkey_client, prefixes):
    store = SessionStore(valkey_url, ttl_seconds=100, max_turns=3, prefix=prefixes["session"])
    assert store.append("user:42", {"role": "user", "text": "hi"}) == 1
    assert store.append("user:42", "a", "b", "c") == 3  # trimmed to max_turns
    assert store.last("user:42", 2) == ["b", "c"]
    assert store.last("user:42", 10) == ["a", "b", "c"]
    store.set_result("user:42", "emb", np.arange(4, dtype=np.float32))
    store.set_result("user:42", "raw", b"\x00\x01")
    store.set_result("user:42", "meta", {"k": [1, 2]})
    assert _same(store.get_result("user:42", "emb"), np.arange(4, dtype=np.float32))
    assert store.get_result("user:42", "raw") == b"\x00\x01"
    assert store.get_result("user:42", "meta") == {"k": [1, 2]}
    assert store.get_result("user:42", "none") is None
    turns_key, results_key = store._keys("user:42")
    valkey_client.expire(turns_key, 5)
    valkey_client.expire(results_key, 5)
    store.append("user:42", "d")  # any write refreshes BOTH keys' TTL
    assert valkey_client.ttl(turns_key) > 90 and valkey_client.ttl(results_key) > 90
    store.trim("user:42", 1)
    assert store.last("user:42", 5) == ["d"]
    assert store.last("nobody", 5) == []
    assert store.delete("user:42") == 2


@pytest.mark.parametrize("stall_s", [0.6, 0.75, 1.5])
def test_session_append_across_a_stall_is_stored_once(stall_s):
    """A server stalled longer than socket_timeout_s. valkey-py used to resend the timed-out
    MULTI on a new connection; when the stall was short the server ran both, and the caller
    saw success with the turn stored twice. Now the append either succeeds or says the turn
    may or may not have been stored; either way it is stored once."""
    import threading

    from ray_valkey_spill.connection import close_all, connect

    with EmbeddedValkey() as server:
        client = connect(server.url, socket_timeout_s=0.5, connect_timeout_s=0.5, retries=1)
        store = SessionStore(client, ttl_seconds=600)
        store.append("conv", "first")
        server.pause()
        threading.Timer(stall_s, server.resume).start()
        try:
            store.append("conv", "second")
        except BackendUnavailableError as exc:
            assert "may or may not have been stored" in str(exc)
        time.sleep(stall_s + 1.0)  # anything the stalled server had buffered has run by now
        assert store.last("conv", 10) == ["first", "second"]
    close_all()


def test_session_expires_after_inactivity(valkey_url, prefixes):

    store = SessionStore(valkey_url, ttl_seconds=1, prefix=prefixes["session"])
    store.append("s", "hello")
    time.sleep(1.2)
    assert store.last("s", 1) == []


def test_refusals_are_server_reply_errors_not_misses(valkey_url, valkey_client, prefixes):
    """WRONGTYPE (or NOPERM) from the server is a ServerReplyError, never a miss or an outage."""
    from ray_valkey_spill.errors import ServerReplyError

    kv = KVCache(valkey_url, "tiny-llm", prefix=prefixes["kv"])
    tokens = np.arange(1000, 1070, dtype=np.int32)
    assert kv.put(tokens, [_kv_block(i) for i in range(4)]) == 4
    first = kv.block_keys(tokens)[0]
    valkey_client.delete(first)
    valkey_client.rpush(first, b"not a string")  # now GET answers WRONGTYPE
    with pytest.raises(ServerReplyError, match="WRONGTYPE"):
        kv.get(tokens)
    sessions = SessionStore(valkey_url, prefix=prefixes["session"])
    turns_key, _ = sessions._keys("s1")
    valkey_client.set(turns_key, b"a string where a list belongs", ex=60)
    with pytest.raises(ServerReplyError, match="WRONGTYPE"):
        sessions.last("s1", 1)


def test_session_bytes_that_are_not_json_are_corrupt_values(valkey_url, valkey_client, prefixes):
    sessions = SessionStore(valkey_url, prefix=prefixes["session"])
    sessions.append("s1", [{"role": "user", "content": "hi"}])
    turns_key, _ = sessions._keys("s1")
    valkey_client.rpush(turns_key, b"\xff{not json")
    with pytest.raises(CorruptValueError, match="not JSON"):
        sessions.last("s1", 2)


def test_cache_writes_reconnect_after_a_server_restart():
    """Batches are written on pooled connections (direct_io); a connection the restarted server
    closed must be replaced when taken from the pool, not fail the next put."""
    with EmbeddedValkey() as server:
        emb = EmbeddingCache(server.url, f"m{_uid()}", ttl_seconds=60, stats_flush_seconds=None)
        kv = KVCache(server.url, f"m{_uid()}", ttl_seconds=60, stats_flush_seconds=None)
        vectors, tokens = _random_vectors(4), list(range(32))
        assert emb.put_many(["a", "b", "c", "d"], vectors) == 4
        assert kv.put(tokens, [_kv_block(0), _kv_block(1)]) == 2
        server.kill()
        server.start()  # empty: no persistence
        assert emb.put_many(["a", "b", "c", "d"], vectors) == 4
        assert kv.put(tokens, [_kv_block(0), _kv_block(1)]) == 2
        assert all(_same(g, v) for g, v in zip(emb.get_many(["a", "b", "c", "d"]), vectors))
        assert len(kv.get(tokens)) == 2
