"""Shedding cache entries to make room for a spill, on one memory-limited server.

Every test here starts its own small-maxmemory server (and stops it), because memory pressure
and eviction are instance-wide.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import valkey

from ray_valkey_spill import ConfigError
from ray_valkey_spill.caches import EmbeddingCache, KVCache
from ray_valkey_spill.testing.embedded import EmbeddedValkey
from ray_valkey_spill.shedding import shed_cache_entries

MiB = 1024 * 1024


def _uid() -> str:
    return uuid.uuid4().hex[:8]


@pytest.mark.parametrize("prefixes", [("ray:",), ("ray:x:",), ("r",), ("emb:", ""), "emb:",
                                      ("emb:*",)])
def test_shed_refuses_prefixes_touching_spilled_objects(prefixes):
    with pytest.raises(ConfigError):
        shed_cache_entries(object(), 1, prefixes)


def test_shed_refuses_bad_sizes():
    with pytest.raises(ConfigError):
        shed_cache_entries(object(), -1)


def _fill_caches_until_full(url: str, tag: str) -> tuple[EmbeddingCache, KVCache]:
    emb = EmbeddingCache(url, f"emb-{tag}", ttl_seconds=600)
    kv = KVCache(url, f"llm-{tag}", ttl_seconds=600)
    block = np.ones((64, 2048), np.float16)  # 256 KiB
    for round_ in range(400):
        emb.put_many([f"{round_}:{i}" for i in range(200)], np.ones((200, 768), np.float32))
        tokens = np.arange(16 * 8) + round_ * 1000
        kv.put(tokens, [block] * 8)
        if emb.stats()["dropped_puts"] and kv.stats()["dropped_puts"]:
            return emb, kv
    raise AssertionError("the server never filled up")


def test_shedding_makes_room_for_a_spill_under_noeviction():
    with EmbeddedValkey(config={"maxmemory": "64mb", "maxmemory-policy": "noeviction"}) as server:
        client = server.client()
        spill = {f"ray:t{_uid()}:obj{i}": np.random.default_rng(i).bytes(MiB) for i in range(8)}
        for key, value in spill.items():
            client.set(key, value)
        client.set("emb:legacy-no-ttl", b"x" * 1000)  # a cache-prefix key WITHOUT a TTL
        client.set("other:thing", b"y" * 1000, ex=600)  # TTL but not a cache prefix
        _fill_caches_until_full(server.url, "a")
        big = np.random.default_rng(99).bytes(4 * MiB)
        with pytest.raises(valkey.exceptions.OutOfMemoryError):
            client.set("ray:new-spill", big)
        freed = shed_cache_entries(client, len(big))
        assert freed >= 2 * len(big)  # the write is held twice while the server checks memory
        client.set("ray:new-spill", big)  # the retry succeeds
        assert client.get("ray:new-spill") == big
        for key, value in spill.items():
            assert client.get(key) == value and client.ttl(key) == -1
        assert client.get("emb:legacy-no-ttl") is not None
        assert client.get("other:thing") is not None
        # Asking for more than the caches hold removes every cache entry and nothing else.
        shed_cache_entries(client, 10**12)
        left = {k.decode() for k in client.scan_iter(count=1000)}
        assert left == set(spill) | {"ray:new-spill", "emb:legacy-no-ttl", "other:thing"}


def test_shedding_drops_the_longest_idle_entries_first():
    with EmbeddedValkey(config={"maxmemory": "64mb"}) as server:
        client = server.client()
        old = EmbeddingCache(client, "old", ttl_seconds=600)
        new = EmbeddingCache(client, "new", ttl_seconds=30)  # expires SOONER, yet used recently
        vectors = np.ones((50, 1024), np.float32)
        old.put_many([str(i) for i in range(50)], vectors)
        time.sleep(2.1)  # OBJECT IDLETIME has a one-second resolution
        new.put_many([str(i) for i in range(50)], vectors)
        per_key = client.memory_usage(new.key("0"))
        # A write of 10 keys' size makes room for twice that (see shed_cache_entries).
        idle = [client.object("idletime", old.key(str(i))) for i in range(50)]
        freed = shed_cache_entries(client, 10 * per_key, include_overage=False, slack_bytes=0)
        old_gone = sum(v is None for v in old.get_many([str(i) for i in range(50)]))
        new_gone = sum(v is None for v in new.get_many([str(i) for i in range(50)]))
        assert (freed >= 20 * per_key and 20 <= old_gone <= 21 and new_gone == 0), \
            (freed, per_key, old_gone, new_gone, idle)


def test_shedding_samples_every_cache_prefix_each_round():
    with EmbeddedValkey(config={"maxmemory": "64mb"}) as server:
        client = server.client()
        kv = KVCache(client, "llm", ttl_seconds=3600)
        tokens = list(range(16 * 8))
        kv.put(tokens, [np.ones(16 * 1024, np.float32)] * 8)  # 8 old blocks of 64 KiB
        time.sleep(2.1)
        emb = EmbeddingCache(client, "fresh", ttl_seconds=30)
        emb.put_many([str(i) for i in range(5000)], np.ones((5000, 8), np.float32))
        kv_bytes = sum(client.memory_usage(k) for k in kv.block_keys(tokens))
        # More emb keys than one round samples: the old KV blocks must still be found first.
        freed = shed_cache_entries(client, kv_bytes // 2, include_overage=False, slack_bytes=0,
                                   max_sample_keys=1000)
        assert freed >= kv_bytes and kv.lookup(tokens) == 0
        assert client.dbsize() >= 5000


def test_shedding_as_a_user_denied_the_cache_keys_says_so():
    """A least-privilege spill user may not touch cache keys: shedding frees nothing and says
    which prefixes it was denied, instead of claiming the server holds no cache entries."""
    from ray_valkey_spill.errors import ServerReplyError

    with EmbeddedValkey(config={"maxmemory": "64mb"}) as server:
        admin = server.client()
        for i in range(20):
            admin.set(f"emb:k{i}", b"v" * 1000, ex=600)
        admin.execute_command("ACL", "SETUSER", "spilly", "on", ">pw-for-test", "~ray:*",
                              "+@all")
        user = valkey.Valkey(host=server.host, port=server.port, username="spilly",
                             password="pw-for-test")
        with pytest.raises(ServerReplyError, match=r"20 cache keys under emb:.*NOPERM"):
            shed_cache_entries(user, 1 * MiB, include_overage=False)
        assert admin.dbsize() == 20  # nothing removed
        user.close()
