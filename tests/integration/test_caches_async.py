"""The coroutine API of EmbeddingCache and SessionStore on valkey.asyncio, against a real server.

Each test drives its coroutines with ``asyncio.run`` (no pytest plug-in needed). Round trips
are counted twice: socket sends of the asyncio connections, and INFO commandstats deltas on a
private server.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from support import AsyncSends, commandstats, command_delta
from ray_valkey_spill import (BackendUnavailableError, ConfigError, EmbeddedValkey, EmbeddingCache,
                              SessionStore, SpillConfig)
from ray_valkey_spill.connection import connect_async

DIM = 64


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def _vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.fixture(scope="module")
def private_server():
    with EmbeddedValkey() as server:
        yield server


def test_async_batches_are_one_round_trip_each(private_server, monkeypatch):
    client = private_server.client()
    cache = EmbeddingCache(private_server.url, f"m{_uid()}", dimension=DIM, ttl_seconds=60,
                           stats_flush_seconds=None)
    texts = [f"text {i}" for i in range(500)]
    vectors = _vectors(500)

    async def run():
        await cache.aget_many(["warm"])  # opens the loop's connection and reads the size limit
        sends = AsyncSends(monkeypatch)
        before = commandstats(client)
        assert await cache.aput_many(texts, vectors) == 500
        assert sends.count == 1
        mid = commandstats(client)
        assert command_delta(before, mid) == {"set": 500}
        got = await cache.aget_many(texts + ["missing"])
        assert sends.count == 2
        assert command_delta(mid, commandstats(client)) == {"mget": 1}
        return got

    got = asyncio.run(run())
    assert all(np.array_equal(g, v) for g, v in zip(got, vectors)) and got[-1] is None
    assert all(0 < client.ttl(k) <= 60 for k in cache.keys(texts[:5]))
    cache.clear()


def test_async_get_or_compute_calls_embed_once_with_misses(valkey_url, prefixes):
    cache = EmbeddingCache(valkey_url, "m", dimension=2, ttl_seconds=60, prefix=prefixes["emb"])
    cache.put_many(["a", "b"], np.array([[1, 1], [2, 2]], np.float32))  # the sync API's writes
    calls = []

    async def embed(texts):
        calls.append(list(texts))
        return [[len(t), 0] for t in texts]  # a coroutine returning Python lists

    async def run():
        out = await cache.aget_or_compute(["a", "ccc", "b", "dd", "ccc"], embed)
        again = await cache.aget_or_compute(["ccc", "dd"], lambda ts: 1 / 0)  # all cached now
        return out, again

    out, again = asyncio.run(run())
    assert calls == [["ccc", "dd"]]
    assert [v[0] for v in out] == [1, 3, 2, 2, 3] and out[1].dtype == np.float32
    assert [v[0] for v in again] == [3, 2]
    assert [v[0] for v in cache.get_many(["ccc", "dd"])] == [3, 2]  # readable by the sync API
    assert cache.stats()["hits"] == 6 and cache.stats()["misses"] == 3


def test_one_async_pool_per_event_loop_per_config(valkey_url):
    async def clients():
        a = connect_async(valkey_url)
        b = connect_async(valkey_url)
        c = connect_async(valkey_url, socket_timeout_s=7.5)
        assert await a.ping()
        return a, b, c

    a1, b1, c1 = asyncio.run(clients())
    a2, _, _ = asyncio.run(clients())
    assert a1 is b1 and a1 is not c1  # same loop and config: one pool; another config: another
    assert a1 is not a2  # another event loop: another pool
    with pytest.raises(ConfigError, match="event loop"):
        connect_async(valkey_url)  # no running loop


def test_async_client_uses_the_same_credentials(private_server, monkeypatch):
    admin = private_server.client()
    user, secret = f"asy{_uid()}", _uid() + "Secret!"
    admin.acl_setuser(user, enabled=True, passwords=[f"+{secret}"], keys=["emb:*"],
                      commands=["+@read", "+@write", "+config|get", "+ping", "+acl|whoami"])
    monkeypatch.setenv("RVS_ASYNC_TEST_PASSWORD", secret)
    try:
        url = private_server.url.replace("://", f"://{user}@")
        config = SpillConfig.from_params({"url": url, "password_env": "RVS_ASYNC_TEST_PASSWORD"})
        cache = EmbeddingCache(config, f"m{_uid()}", ttl_seconds=60)

        async def run():
            assert await cache.aput("x", np.ones(4, np.float32))
            return await cache.aget("x"), await connect_async(config).acl_whoami()

        got, whoami = asyncio.run(run())
        assert got is not None and whoami in (user, user.encode())
        cache.clear()
    finally:
        admin.acl_deluser(user)


def test_async_methods_need_a_url_or_an_async_client(valkey_client, prefixes):
    import valkey.asyncio

    cache = EmbeddingCache(valkey_client, "m", ttl_seconds=60, prefix=prefixes["emb"])
    with pytest.raises(ConfigError, match="async_client"):
        asyncio.run(cache.aget_many(["x"]))
    with pytest.raises(ConfigError, match="async_client"):
        EmbeddingCache(valkey_client, "m", ttl_seconds=60, async_client=valkey_client)

    async def explicit():
        aclient = valkey.asyncio.Valkey.from_url(
            f"redis://{valkey_client.connection_pool.connection_kwargs['host']}:"
            f"{valkey_client.connection_pool.connection_kwargs['port']}")
        both = EmbeddingCache(valkey_client, "m", ttl_seconds=60, prefix=prefixes["emb"],
                              async_client=aclient)
        await both.aput("y", np.ones(3, np.float32))
        await aclient.aclose()
        return both.get("y")

    assert asyncio.run(explicit()) is not None


# --- SessionStore ---------------------------------------------------------------------------

def test_async_session_round_trip_order_and_ttl(valkey_url, valkey_client, prefixes):
    store = SessionStore(valkey_url, ttl_seconds=100, max_turns=3, prefix=prefixes["session"])
    turns_key, results_key = store._keys("s")

    async def run():
        assert await store.aappend("s", {"n": 1}) == 1
        valkey_client.expire(turns_key, 5)
        assert await store.aappend("s", {"n": 2}, {"n": 3}, {"n": 4}) == 3  # trimmed to 3
        assert valkey_client.ttl(turns_key) > 90  # the write refreshed the TTL
        await store.aset_result("s", "vec", np.arange(4, dtype=np.int16))
        await store.aset_result("s", "meta", {"k": [1, 2]})
        last = await store.alast("s", 10)
        vec, meta = await store.aget_result("s", "vec"), await store.aget_result("s", "meta")
        await store.atrim("s", 1)
        after_trim = await store.alast("s", 10)
        touched = await store.atouch("s")
        deleted = await store.adelete("s")
        return last, vec, meta, after_trim, touched, deleted, await store.alast("s", 10)

    last, vec, meta, after_trim, touched, deleted, gone = asyncio.run(run())
    assert last == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert vec.dtype == np.int16 and vec.tolist() == [0, 1, 2, 3] and meta == {"k": [1, 2]}
    assert after_trim == [{"n": 4}] and touched and deleted == 2 and gone == []
    assert store.last("s", 10) == []


def test_async_append_is_one_transaction_sent_once(private_server, monkeypatch):
    client = private_server.client()
    store = SessionStore(private_server.url, ttl_seconds=60, prefix=f"session:o{_uid()}:")

    async def run():
        await store.alast("warm", 1)
        sends = AsyncSends(monkeypatch)
        before = commandstats(client)
        await store.aappend("s", "a", "b", "c")
        return sends.count, command_delta(before, commandstats(client))

    count, delta = asyncio.run(run())
    assert count == 1
    assert delta == {"multi": 1, "rpush": 1, "ltrim": 1, "expire": 2, "llen": 1, "exec": 1}
    assert store.last("s", 5) == ["a", "b", "c"]
    store.delete("s")


def test_async_append_across_a_stall_is_stored_once():
    """A server that stalls longer than the socket timeout: the append fails (it may or may not
    have been stored) and is never resent, so the turn is stored at most once."""
    with EmbeddedValkey() as server:
        config = SpillConfig.from_params({"url": server.url, "socket_timeout_s": 0.5})
        store = SessionStore(config, ttl_seconds=600)

        async def run():
            await store.alast("warm", 1)
            server.pause()
            loop = asyncio.get_running_loop()
            loop.call_later(0.8, server.resume)
            with pytest.raises(BackendUnavailableError, match="not resent"):
                await store.aappend("s", "turn")
            await asyncio.sleep(0.5)

        asyncio.run(run())
        assert store.last("s", 10) in ([], ["turn"])
