"""KVCache with a declared KV layout against a real valkey-server: blocks of another layout,
dtype or tensor-parallel rank never collide and never come back as a hit."""

from __future__ import annotations


import numpy as np
import pytest

from ray_valkey_spill.caches import CacheValueError, KVCache
from ray_valkey_spill.keyspace import scan_keys

SHAPE = (4, 2, 16, 2, 32)


@pytest.fixture
def kv_prefix(prefixes):
    return prefixes["kv"]


def _block(dtype=np.float16, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_other_layouts_dtypes_and_ranks_never_hit(valkey_url, kv_prefix):
    tokens = list(range(48))

    def cache(**layout):
        return KVCache(valkey_url, "llm", prefix=kv_prefix, stats_flush_seconds=None,
                       **{"block_shape": SHAPE, "dtype": "float16", **layout})

    base = cache()
    blocks = [_block(seed=i) for i in range(3)]
    assert base.put(tokens, blocks) == 3
    assert base.lookup(tokens) == 48
    assert all(np.array_equal(a, b) for a, b in zip(base.get(tokens), blocks))
    for other in (cache(dtype="bfloat16"), cache(block_shape=(4, 2, 16, 4, 32)),
                  cache(tp_rank=1, tp_size=2), cache(tp_rank=0, tp_size=2),
                  KVCache(valkey_url, "llm", prefix=kv_prefix)):
        assert other.lookup(tokens) == 0 and other.get(tokens) == []
        assert not set(other.block_keys(tokens)) & set(base.block_keys(tokens))


def test_put_of_a_wrong_block_is_a_cache_value_error(valkey_url, valkey_client, kv_prefix):
    kv = KVCache(valkey_url, "llm", prefix=kv_prefix, block_shape=SHAPE, dtype="float16")
    for bad in ([_block(), _block(np.float32)], [_block(shape=(4, 2, 8, 2, 32))]):
        with pytest.raises(CacheValueError, match="this cache holds blocks of shape"):
            kv.put(list(range(32)), bad)
    assert scan_keys(valkey_client, kv_prefix + "*") == []  # nothing half-written


def test_a_stored_value_of_another_layout_is_a_counted_miss(valkey_url, valkey_client,
                                                             kv_prefix):
    tokens = list(range(32))
    kv = KVCache(valkey_url, "llm", prefix=kv_prefix, block_shape=SHAPE, dtype="float16",
                 stats_flush_seconds=None)
    kv.put(tokens, [_block(seed=1), _block(seed=2)])
    undeclared = KVCache(valkey_url, "x", prefix=kv_prefix, zstd_level=None)
    # the second block's value replaced by a float32 block (e.g. a writer with a wrong config)
    valkey_client.set(kv.block_keys(tokens)[1], undeclared.codec.encode(_block(np.float32)),
                      keepttl=True)
    got = kv.get(tokens)
    assert len(got) == 1 and np.array_equal(got[0], _block(seed=1))
    assert kv.stats()["corrupt"] == 1
