"""Declared embedding schemas against a real server: identity in the key, misfits refused on
write (naming the item, nothing sent), misfits stored by others read as counted misses, and
values over the server's proto-max-bulk-len refused before anything is sent."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import numpy as np
import pytest

from support import commandstats, command_delta
from ray_valkey_spill import CacheValueError, ConfigError, EmbeddedValkey, EmbeddingCache, KVCache
from ray_valkey_spill.caches._base import DEFAULT_MAX_BULK_BYTES, _bulk_limits, max_value_bytes
from ray_valkey_spill.caches._schema import EmbeddingSchema
from ray_valkey_spill.caches._values import ArrayCodec

DIM = 16


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def _vectors(n: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, dim)).astype(np.float32)


@pytest.fixture
def prefix(prefixes):
    return prefixes["emb"]


@pytest.fixture(scope="module")
def small_bulk_server():
    """proto-max-bulk-len at its minimum (1 MB), so a 'too large' value is cheap to build."""
    with EmbeddedValkey(config={"proto-max-bulk-len": "1mb"}) as server:
        yield server


# --- identity -------------------------------------------------------------------------------

def test_every_schema_field_is_in_the_key_injectively():
    models = ["m", "m:v2", "m%3Av2", "a/b"]
    revisions = [None, "1", "1:"]
    dims = [None, 7, 768]
    dtypes = ["float32", "float16"]
    roles = [None, "query", "document"]
    heads = {}
    for combo in itertools.product(models, revisions, dims, dtypes, roles):
        head = EmbeddingSchema(*combo).key_head("emb:")
        assert head not in heads, (combo, heads.get(head))
        heads[head] = combo
    # No head is a prefix of another: clear() (SCAN head*) never reaches another schema's keys.
    ordered = sorted(heads)
    assert not any(b.startswith(a) for a, b in zip(ordered, ordered[1:]))


def test_schemas_do_not_read_each_other(valkey_url, prefix):
    query = EmbeddingCache(valkey_url, "bge", role="query", dimension=DIM, ttl_seconds=60,
                           prefix=prefix)
    doc = EmbeddingCache(valkey_url, "bge", role="document", dimension=DIM, ttl_seconds=60,
                         prefix=prefix)
    rev2 = EmbeddingCache(valkey_url, "bge", revision="2", role="query", dimension=DIM,
                          ttl_seconds=60, prefix=prefix)
    query.put("hello", _vectors(1)[0])
    assert doc.get("hello") is None and rev2.get("hello") is None
    assert query.get("hello") is not None


@pytest.mark.parametrize("field, value", [("dimension", 0), ("dimension", 2.0),
                                          ("dtype", "complex64"), ("dtype", "int32"),
                                          ("role", ""), ("revision", 3)])
def test_bad_schema_fields_are_config_errors(valkey_url, field, value):
    with pytest.raises(ConfigError, match=field):
        EmbeddingCache(valkey_url, "m", ttl_seconds=60, **{field: value})


# --- writes that do not fit ---------------------------------------------------------------

MISFITS = [
    (np.ones(DIM + 1, np.float32), "declares dimension 16"),
    (np.ones((2, DIM), np.float32), "1-D vector"),
    (np.full(DIM, np.nan, np.float32), "NaN or infinite"),
    (np.full(DIM, np.inf), "NaN or infinite"),
    (np.full(DIM, 1e300), "NaN or infinite"),  # overflows float32 in the cast
    (np.ones(DIM, np.complex64), "does not cast"),
    (["a"] * DIM, "does not cast"),
    (np.ones(0, np.float32), "declares dimension"),
]


@pytest.mark.parametrize("bad, reason", MISFITS)
def test_misfit_writes_raise_naming_the_item_and_send_nothing(private_server_client, bad, reason):
    client, url = private_server_client
    cache = EmbeddingCache(url, f"m{_uid()}", dimension=DIM, ttl_seconds=60)
    before = commandstats(client)
    with pytest.raises(CacheValueError, match=reason) as info:
        cache.put_many(["ok0", "bad one", "ok2"], [_vectors(1)[0], bad, _vectors(1)[0]])
    assert info.value.failed.keys() == {1} and "'bad one'" in info.value.failed[1]
    assert "vector 1" in str(info.value)
    assert commandstats(client) == before  # nothing was sent, not even the good items
    assert cache.get_many(["ok0", "ok2"]) == [None, None]


# A batch of plain lists (what LangChain hands over) or one 2-D array is checked in one pass;
# one bad row must still be found and named, exactly as in a batch of separate arrays.
# (A 2-D array has one dtype for all rows, so only values, not types, can misfit in one row.)
BATCH_MISFITS = [
    ([1.0] * (DIM + 1), "declares dimension 16", False),
    ([float("nan")] + [0.0] * (DIM - 1), "NaN or infinite", True),
    ([1e300] * DIM, "NaN or infinite", True),
    ([1j] * DIM, "does not cast", False),
    (["0.5"] * DIM, "does not cast", False),
    ([True] * DIM, "does not cast", False),
    ([None] * DIM, "does not cast", False),
    ([], "declares dimension 16", False),
]


@pytest.mark.parametrize("bad, reason, as_array", [
    (bad, reason, as_array) for bad, reason, array_too in BATCH_MISFITS
    for as_array in ((False, True) if array_too else (False,))])
def test_one_misfit_row_in_a_batch_is_named(private_server_client, bad, reason, as_array):
    client, url = private_server_client
    cache = EmbeddingCache(url, f"m{_uid()}", dimension=DIM, ttl_seconds=60)
    rows = [_vectors(1)[0].tolist(), bad, _vectors(2)[1].tolist()]
    rows = np.array(rows) if as_array else rows
    before = commandstats(client)
    with pytest.raises(CacheValueError, match=reason) as info:
        cache.put_many(["ok0", "bad one", "ok2"], rows)
    assert info.value.failed.keys() == {1} and "'bad one'" in info.value.failed[1]
    assert commandstats(client) == before


@pytest.mark.parametrize("keep_texts", [False, True])
@pytest.mark.parametrize("zstd_level", [None, 3])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_a_batch_is_stored_byte_for_byte_as_its_rows_one_by_one(
        private_server_client, keep_texts, zstd_level, dtype):
    client, url = private_server_client
    texts = [f"t{i}" for i in range(8)]
    ints = np.arange(8 * DIM).reshape(8, DIM) % 100  # values every dtype holds exactly
    rows = ints.tolist() if dtype == "int8" else ints.astype(float).tolist()
    name = f"m{_uid()}"
    options = dict(dimension=DIM, dtype=dtype, ttl_seconds=60, keep_texts=keep_texts,
                   zstd_level=zstd_level)
    batched = EmbeddingCache(url, name, prefix="emb:batch:", **options)
    single = EmbeddingCache(url, name, prefix="emb:single:", **options)
    assert batched.schema.coerce_rows(rows) is not None  # the one-pass path is the one tested
    assert batched.put_many(texts, rows) == 8
    for text, row in zip(texts, rows):
        assert single.put(text, row)
    assert [client.get(k) for k in batched.keys(texts)] == [client.get(k) for k in single.keys(texts)]
    assert all(np.array_equal(got, row) for got, row in zip(batched.get_many(texts), rows))
    batched.clear()
    single.clear()


@pytest.fixture(scope="module")
def private_server_client():
    with EmbeddedValkey() as server:
        yield server.client(), server.url


def test_lists_are_cast_to_the_declared_dtype(valkey_url, valkey_client, prefix):
    for dtype, itemsize in (("float32", 4), ("float16", 2)):
        cache = EmbeddingCache(valkey_url, "m", dimension=DIM, dtype=dtype, ttl_seconds=60,
                               prefix=prefix)
        cache.put("list", [0.5] * DIM)  # a Python list: float64 to numpy, stored as declared
        got = cache.get("list")
        assert got.dtype == np.dtype(dtype) and got.tolist() == [0.5] * DIM
        header = len(ArrayCodec().header(got))
        assert valkey_client.strlen(cache.key("list")) == header + DIM * itemsize


def test_embed_fn_of_the_wrong_width_is_refused(valkey_url, prefix):
    cache = EmbeddingCache(valkey_url, "m", dimension=DIM, ttl_seconds=60, prefix=prefix)
    with pytest.raises(CacheValueError, match="embed_fn result 1") as info:
        cache.get_or_compute(["a", "b"], lambda ts: [np.ones(DIM), np.ones(DIM - 1)])
    assert set(info.value.failed) == {1}
    assert cache.get_many(["a", "b"]) == [None, None]
    with pytest.raises(CacheValueError, match="embed_fn result 0"):
        asyncio.run(cache.aget_or_compute(["c"], lambda ts: np.ones((1, 2, DIM))))


def test_stored_misfits_are_counted_misses(valkey_url, valkey_client, prefix):
    cache = EmbeddingCache(valkey_url, "m", dimension=DIM, ttl_seconds=60, prefix=prefix)
    codec = ArrayCodec()
    # Written by an older version or another tool, under this schema's keys:
    valkey_client.set(cache.key("short"), codec.encode(np.ones(DIM - 1, np.float32)), ex=60)
    valkey_client.set(cache.key("f64"), codec.encode(np.ones(DIM, np.float64)), ex=60)
    valkey_client.set(cache.key("matrix"), codec.encode(np.ones((1, DIM), np.float32)), ex=60)
    cache.put("good", np.ones(DIM, np.float32))
    got = cache.get_many(["short", "f64", "matrix", "good"])
    assert got[:3] == [None, None, None] and got[3] is not None
    stats = cache.stats()
    assert stats["misses"] == 3 and stats["corrupt"] == 3 and stats["hits"] == 1
    assert asyncio.run(cache.aget_many(["short", "good"]))[0] is None


# --- values the server cannot take --------------------------------------------------------

def test_too_large_values_fail_before_anything_is_sent(small_bulk_server):
    client = small_bulk_server.client()
    assert max_value_bytes(client) == 1024 * 1024
    dim = 300_000  # 1.2 MB of float32: over the 1 MB limit
    cache = EmbeddingCache(small_bulk_server.url, f"big{_uid()}", ttl_seconds=60)
    small, big = np.ones(8, np.float32), np.ones(dim, np.float32)
    before = commandstats(client)
    with pytest.raises(CacheValueError, match="proto-max-bulk-len") as info:
        cache.put_many(["a", "huge", "b", "huge2"], [small, big, small, big])
    assert sorted(info.value.failed) == [1, 3] and "'huge'" in str(info.value)
    with pytest.raises(CacheValueError, match="too large") as info:
        asyncio.run(cache.aput_many(["a", "huge"], [small, big]))
    assert sorted(info.value.failed) == [1]
    assert commandstats(client) == before  # neither batch sent anything
    # Unreadable at construction (server down then): the async path reads the limit itself.
    _bulk_limits.pop(id(cache.client))
    with pytest.raises(CacheValueError, match="1,048,576"):
        asyncio.run(cache.aput_many(["huge"], [big]))
    delta = command_delta(before, commandstats(client))
    delta.pop("client|setinfo", None)  # the new event loop's connection handshake
    assert delta == {"config|get": 1}
    assert client.ping() and cache.put("a", small)  # the connection and server are fine
    kv = KVCache(small_bulk_server.url, "tiny", block_size_tokens=4)
    with pytest.raises(CacheValueError, match="too large") as info:
        kv.put(list(range(8)), [np.ones(8, np.uint8), np.ones(dim, np.float32)])
    assert sorted(info.value.failed) == [1]


def test_unreadable_limit_falls_back_to_512_mb(small_bulk_server):
    admin = small_bulk_server.client()
    user = f"noconf{_uid()}"
    admin.acl_setuser(user, enabled=True, nopass=True, keys=["emb:*"],
                      commands=["+@read", "+@write", "+ping"])
    try:
        limited = small_bulk_server.client(username=user)
        assert max_value_bytes(limited) == DEFAULT_MAX_BULK_BYTES == 512 * 1024 * 1024
    finally:
        admin.acl_deluser(user)


def test_integer_dtypes_take_integers_that_fit(valkey_url, prefix):
    cache = EmbeddingCache(valkey_url, "q", dimension=4, dtype="int8", ttl_seconds=60,
                           prefix=prefix)
    assert cache.put("list", [1, -2, 127, -128])  # Python ints: int64 to numpy, fit int8
    assert cache.get("list").dtype == np.int8 and cache.get("list").tolist() == [1, -2, 127, -128]
    for bad in ([1, 2, 3, 128], [0.5, 1.0, 2.0, 3.0], [True, False, True, False]):
        with pytest.raises(CacheValueError, match="does not cast"):
            cache.put("bad", bad)


# --- texts kept beside the vectors ----------------------------------------------------------

def test_kept_texts_are_listed_and_deleted(valkey_url, prefix):
    cache = EmbeddingCache(valkey_url, "m", dimension=DIM, ttl_seconds=60, prefix=prefix,
                           keep_texts=True)
    texts = [f"text {i}" for i in range(30)] + ["ünïcode ✓", "a:b*c?"]
    cache.put_many(texts, _vectors(len(texts)))
    plain = EmbeddingCache(valkey_url, "m", dimension=DIM, ttl_seconds=60, prefix=prefix)
    assert plain.get("ünïcode ✓") is not None  # readers that want only the vector skip the text
    assert sorted(cache.texts()) == sorted(texts)
    assert sorted(cache.texts(prefix="text 2")) == ["text 2"] + [f"text 2{i}" for i in range(10)]
    assert asyncio.run(_collect(cache.atexts("a:"))) == ["a:b*c?"]
    assert cache.delete_many(texts[:10] + ["never stored"]) == 10
    assert len(list(cache.texts())) == len(texts) - 10
    with pytest.raises(ConfigError, match="keep_texts"):
        list(plain.texts())


async def _collect(agen) -> list:
    return [x async for x in agen]


def test_kept_texts_on_a_cluster():
    from ray_valkey_spill.testing.embedded_cluster import EmbeddedValkeyCluster

    with EmbeddedValkeyCluster(primaries=3) as cluster:
        cache = EmbeddingCache(cluster.url, "m", dimension=DIM, ttl_seconds=60, keep_texts=True)
        texts = [f"t{i}" for i in range(200)]  # spread over every primary
        assert cache.put_many(texts, _vectors(200)) == 200
        assert sorted(cache.texts()) == sorted(texts)
        assert cache.delete_many(texts[:50]) == 50
        assert len(list(cache.texts())) == 150


def test_too_large_session_values_fail_before_anything_is_sent(small_bulk_server):
    from ray_valkey_spill import SessionStore

    client = small_bulk_server.client()
    store = SessionStore(small_bulk_server.url, ttl_seconds=60, prefix=f"session:b{_uid()}:")
    big = "x" * (1024 * 1024 + 1)
    before = commandstats(client)
    with pytest.raises(CacheValueError, match="turn 1: .*proto-max-bulk-len") as info:
        store.append("s", "small", big)
    assert sorted(info.value.failed) == [1]
    with pytest.raises(CacheValueError, match="result 'blob'"):
        store.set_result("s", "blob", big.encode())
    with pytest.raises(CacheValueError, match="turn 0"):
        asyncio.run(store.aappend("s", big))
    with pytest.raises(CacheValueError, match="result 'blob'"):
        asyncio.run(store.aset_result("s", "blob", np.zeros(300_000, np.float32)))
    assert commandstats(client) == before
    assert store.append("s", "small") == 1 and store.last("s", 5) == ["small"]
