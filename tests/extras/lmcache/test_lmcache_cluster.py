"""The LMCache plug-in on a real local Valkey Cluster (3 primaries) and the real lmcache package.

Every check looks at each primary itself (SCAN, INFO on the node), never only through the
cluster client: LMCache's own engine stores and retrieves a sequence, chunks spread over every
node, one pipeline per node for each batch, a TTL on every key, corrupt values are misses,
MOVED after a slot migration costs only the moved node's chunks (misses, dropped writes) and
the next batch goes to the right node, a paused node gives misses within the read bound, a
dead node costs only its chunks, OOM on one node drops only its chunks, and the ``vllmkv``
user of the shipped ACL is enough.
"""

from __future__ import annotations

import secrets
import time

import pytest

pytest.importorskip("lmcache", reason="needs the lmcache extra: pip install '.[lmcache]'")

from lmcache_support import (assert_every_call_misses_within, FULL_SHAPE, cache_key, chunk_bytes,  # noqa: E402
                             engines_round_trip, make_chunk, make_connector, run, tamper_cases)

from support import keys_per_primary, render_acl, shipped_acl_users  # noqa: E402
from ray_valkey_spill.integrations.lmcache import connector as connector_module  # noqa: E402
from ray_valkey_spill.integrations.lmcache._format import HEADER_BYTES  # noqa: E402
from ray_valkey_spill.testing.embedded_cluster import EmbeddedValkeyCluster  # noqa: E402

PRIMARIES = 3


@pytest.fixture(scope="module")
def kv_cluster():
    """A private 3-primary cluster; a long node timeout so that a node paused for a few
    seconds is slow, not failed (no failover, no CLUSTERDOWN)."""
    with EmbeddedValkeyCluster(primaries=PRIMARIES, config={
            "maxmemory": "64mb", "cluster-node-timeout": "15000"}) as cluster:
        yield cluster


@pytest.fixture
def ccli(kv_cluster):
    """A cluster client on emptied nodes with reset command statistics."""
    for i in kv_cluster.primary_indexes():
        with kv_cluster.nodes[i].client() as node:
            node.flushall()
            node.config_resetstat()
    with kv_cluster.client() as client:
        yield client


class NodeStats:
    """Per-primary command counts and read syscalls, on one connection per node."""

    def __init__(self, cluster):
        self.nodes = {i: cluster.nodes[i].client() for i in cluster.primary_indexes()}
        self.mark()

    def _read(self):
        return {i: (c.info("stats")["total_reads_processed"],
                    {k.removeprefix("cmdstat_"): v["calls"]
                     for k, v in c.info("commandstats").items()})
                for i, c in self.nodes.items()}

    def mark(self) -> None:
        self.before = self._read()

    def delta(self) -> dict[int, tuple[int, dict[str, int]]]:
        """{node: (reads processed, {command: calls})} since ``mark``, without the two INFOs."""
        after, out = self._read(), {}
        for i, (reads, cmds) in after.items():
            reads0, cmds0 = self.before[i]
            calls = {k: v - cmds0.get(k, 0) for k, v in cmds.items()
                     if k != "info" and v != cmds0.get(k, 0)}
            out[i] = (reads - reads0 - 2, calls)  # the INFO stats and commandstats of mark()
        return out

    def close(self) -> None:
        for c in self.nodes.values():
            c.close()


def _spy(monkeypatch, name: str) -> list[tuple[int, list[str]]]:
    """Record (node port, keys) of every direct_io ``name`` call the connector makes."""
    calls: list[tuple[int, list[str]]] = []
    original = getattr(connector_module, name)

    def spy(client, keys_or_items, *args, **kwargs):
        keys = [k if isinstance(k, str) else k[0] for k in keys_or_items]
        calls.append((client.connection_pool.connection_kwargs["port"], keys))
        return original(client, keys_or_items, *args, **kwargs)

    monkeypatch.setattr(connector_module, name, spy)
    return calls


def wait_for_map(conn, name: str, old_port: int) -> None:
    """Wait until the plug-in's client no longer sends ``name`` to ``old_port`` (the map is
    re-read in the background after a redirect)."""
    deadline = time.monotonic() + 10
    while conn.client.get_node_from_key(name).port == old_port:
        assert time.monotonic() < deadline, "the slot map was never re-read"
        time.sleep(0.02)


def _owner_ports(cluster, client, names) -> dict[str, int]:
    return {n: cluster.ports[cluster.slot_owner(client.keyslot(n))] for n in names}


def test_round_trip_is_byte_exact_with_one_pipeline_per_node(loop, cpu_backend, kv_cluster, ccli,
                                                             monkeypatch):
    wrapped, conn = make_connector(loop, cpu_backend, kv_cluster.url)
    keys = [cache_key(i) for i in range(24)]
    names = [conn.key_of(k) for k in keys]
    owners = _owner_ports(kv_cluster, ccli, names)
    objs = [make_chunk(cpu_backend, i) for i in range(24)]
    expected = [bytes(o.byte_array) for o in objs]
    sets, gets = _spy(monkeypatch, "set_many"), _spy(monkeypatch, "get_into")
    stats = NodeStats(kv_cluster)
    try:
        run(loop, wrapped.batched_put(keys, objs))
        spread = {i: {k.decode() for k in node_keys}
                  for i, node_keys in keys_per_primary(kv_cluster, "vllm:kv:").items()}
        assert set().union(*spread.values()) == set(names)
        assert all(len(node_keys) >= 3 for node_keys in spread.values()), spread  # ~8 each
        # one set_many per node, each on that node's own pool with exactly its keys
        assert len(sets) == PRIMARIES and all(owners[n] == port for port, ks in sets for n in ks)
        stats.mark()
        got = run(loop, wrapped.batched_get(keys))
        assert [bytes(g.byte_array) for g in got] == expected
        assert all(g.get_shape() == FULL_SHAPE for g in got)
        assert len(gets) == PRIMARIES and all(owners[n] == port for port, ks in gets for n in ks)
        for i, (reads, calls) in stats.delta().items():
            # each node got its GETs as one pipeline: one read, one GET per key it holds
            assert reads == 1 and calls == {"get": len(spread[i])}, (i, reads, calls)
        for g in got:
            g.ref_count_down()
        assert sorted(run(loop, wrapped.list())) == sorted(k.to_string() for k in keys)
        assert ccli.strlen(names[0]) == HEADER_BYTES + FULL_SHAPE.numel() * 2
    finally:
        stats.close()


def test_lmcache_engine_stores_and_retrieves_through_the_cluster(kv_cluster, ccli):
    """LMCache's own engine stores a sequence's KV on the cluster and a fresh engine retrieves
    it tensor for tensor: 6 GETs in all, summed over the nodes."""
    stats = NodeStats(kv_cluster)
    try:
        engines_round_trip(kv_cluster.url, ccli, lambda: sum(
            calls.get("get", 0) for _, calls in stats.delta().values()))
    finally:
        stats.close()
    assert sum(1 for node_keys in keys_per_primary(kv_cluster, "vllm:kv:").values() if node_keys) >= 2


def test_leading_chunks_with_a_hole_one_exists_pipeline_per_node(loop, cpu_backend, kv_cluster,
                                                                  ccli):
    wrapped, conn = make_connector(loop, cpu_backend, kv_cluster.url)
    keys = [cache_key(100 + i) for i in range(9)]
    run(loop, wrapped.batched_put(keys[:8], [make_chunk(cpu_backend, i) for i in range(8)]))
    ccli.unlink(conn.key_of(keys[4]))
    stats = NodeStats(kv_cluster)
    try:
        assert wrapped.batched_contains(keys) == 4
        delta = stats.delta()
        assert sum(calls.get("exists", 0) for _, calls in delta.values()) == 9
        for i, (reads, calls) in delta.items():
            assert set(calls) <= {"exists"} and reads <= 1, (i, reads, calls)
    finally:
        stats.close()
    assert run(loop, wrapped.batched_async_contains("l1", keys)) == 4
    assert run(loop, wrapped.exists(keys[3])) and not wrapped.exists_sync(keys[4])
    leading = run(loop, wrapped.batched_get_non_blocking("l1", keys))
    assert len(leading) == 4
    for obj in leading:
        obj.ref_count_down()


def test_every_key_on_every_node_has_a_ttl(loop, cpu_backend, kv_cluster, ccli):
    wrapped, conn = make_connector(loop, cpu_backend, kv_cluster.url, ttl_seconds=321,
                                   stats_flush_seconds=0)
    keys = [cache_key(200 + i) for i in range(12)]
    run(loop, wrapped.batched_put(keys, [make_chunk(cpu_backend, i) for i in range(12)]))
    run(loop, wrapped.put(keys[0], make_chunk(cpu_backend, 5)))
    for obj in run(loop, wrapped.batched_get(keys)):
        obj.ref_count_down()
    assert wrapped.batched_contains(keys) == 12 and wrapped.remove_sync(keys[11])
    assert run(loop, wrapped.ping()) == 0  # valkey-py sends a cluster PING to one node
    seen = 0
    for i in kv_cluster.primary_indexes():
        with kv_cluster.nodes[i].client() as node:
            for name in node.scan_iter(count=1000):
                ttl = node.ttl(name)
                assert 0 < ttl and (ttl <= 321 or name == b"vllm:kv:_stats"), (name, ttl)
                seen += 1
    assert seen == 12  # 11 chunks and the published hit rates


def test_corrupt_truncated_and_foreign_values_are_counted_misses(loop, cpu_backend, kv_cluster,
                                                                 ccli):
    wrapped, conn = make_connector(loop, cpu_backend, kv_cluster.url)
    keys = [cache_key(300 + i) for i in range(9)]
    run(loop, wrapped.batched_put(keys, [make_chunk(cpu_backend, i) for i in range(9)]))
    for key, value in tamper_cases(ccli, conn, cpu_backend, keys).items():
        ccli.set(conn.key_of(key), value, keepttl=True)
    before = conn.stats()["corrupt"]
    got = run(loop, wrapped.batched_get(keys))
    assert got[:8] == [None] * 8
    assert got[8] is not None and bytes(got[8].byte_array) == chunk_bytes(cpu_backend, 8)
    got[8].ref_count_down()
    assert conn.stats()["corrupt"] - before == 8


def test_moved_after_a_slot_migration_costs_only_that_nodes_chunks(loop, cpu_backend, kv_cluster,
                                                                   ccli):
    """The plug-in's client still has the old slot map when a slot moves: the old owner answers
    MOVED. Reads of that node's chunks are misses, a write into the moved slot is dropped, both
    counted; the map is re-read, so the next batch reads and writes everything."""
    wrapped, conn = make_connector(loop, cpu_backend, kv_cluster.url)
    conn.client.get_node_from_key("warm-up")  # the shared client exists before the move
    keys = [cache_key(800 + i) for i in range(12)]
    names = [conn.key_of(k) for k in keys]
    expected = [chunk_bytes(cpu_backend, i) for i in range(12)]
    run(loop, wrapped.batched_put(keys, [make_chunk(cpu_backend, i) for i in range(12)]))
    assert conn.stats()["puts"] == 12

    def move(name: str) -> int:
        """Move the slot of ``name`` to the next primary; the old owner's port."""
        slot = ccli.keyslot(name)
        owner = kv_cluster.slot_owner(slot)
        assert kv_cluster.move_slot(slot, (owner + 1) % PRIMARIES) == 1
        return kv_cluster.ports[owner]

    old_port = move(names[5])
    stale = [i for i, n in enumerate(names)
             if conn.client.get_node_from_key(n).port == old_port]  # the client's (old) view
    misses = conn.stats()["misses"]
    got = run(loop, wrapped.batched_get(keys))
    assert [i for i, g in enumerate(got) if g is None] == stale  # that node's group, no more
    assert all(bytes(g.byte_array) == expected[i] for i, g in enumerate(got) if g is not None)
    assert conn.stats()["misses"] - misses == len(stale)
    for g in got:
        if g is not None:
            g.ref_count_down()
    wait_for_map(conn, names[5], old_port)
    got = run(loop, wrapped.batched_get(keys))  # the map was re-read: every chunk again
    assert [bytes(g.byte_array) for g in got] == expected
    for g in got:
        g.ref_count_down()

    old_port = move(names[7])
    dropped, puts = conn.stats()["dropped_puts"], conn.stats()["puts"]
    run(loop, wrapped.batched_put(keys, [make_chunk(cpu_backend, i) for i in range(12)]))
    assert conn.stats()["dropped_puts"] - dropped == 1  # only the SET into the moved slot
    assert conn.stats()["puts"] - puts == 11
    wait_for_map(conn, names[7], old_port)
    run(loop, wrapped.batched_put(keys, [make_chunk(cpu_backend, i) for i in range(12)]))
    assert conn.stats()["puts"] - puts == 23  # the next batch reached the new owner
    assert wrapped.batched_contains(keys) == 12
    assert all(0 < ccli.ttl(n) <= 600 for n in names)


def test_a_paused_node_gives_misses_within_the_bound(loop, cpu_backend, kv_cluster, ccli):
    bound = 0.5
    wrapped, conn = make_connector(loop, cpu_backend, kv_cluster.url, read_timeout_s=bound,
                                   write_timeout_s=bound, socket_timeout_s=2.0, retries=0)
    keys = [cache_key(400 + i) for i in range(9)]
    expected = [chunk_bytes(cpu_backend, i) for i in range(9)]
    run(loop, wrapped.batched_put(keys, [make_chunk(cpu_backend, i) for i in range(9)]))
    assert wrapped.batched_contains(keys) == 9
    paused = kv_cluster.slot_owner(ccli.keyslot(conn.key_of(keys[0])))
    kv_cluster.nodes[paused].pause()
    try:
        assert_every_call_misses_within(loop, wrapped, cpu_backend, keys, bound)
    finally:
        kv_cluster.nodes[paused].resume()
    deadline = time.monotonic() + 15
    while wrapped.batched_contains(keys) != 9:  # threads come back once the node does
        assert time.monotonic() < deadline
        time.sleep(0.1)
    got = run(loop, wrapped.batched_get(keys))
    assert [bytes(g.byte_array) for g in got] == expected
    for g in got:
        g.ref_count_down()


def test_a_dead_node_costs_only_its_chunks(loop, cpu_backend, kv_cluster, ccli):
    """A primary crashes (SIGKILL) under a batch: reads of its chunks are misses and writes to
    it are dropped, both counted, while the other nodes' chunks come back and are stored."""
    wrapped, conn = make_connector(loop, cpu_backend, kv_cluster.url)
    keys = [cache_key(900 + i) for i in range(12)]
    names = [conn.key_of(k) for k in keys]
    expected = [chunk_bytes(cpu_backend, i) for i in range(12)]
    run(loop, wrapped.batched_put(keys, [make_chunk(cpu_backend, i) for i in range(12)]))
    dead = kv_cluster.slot_owner(ccli.keyslot(names[3]))
    on_dead = {i for i, n in enumerate(names) if kv_cluster.slot_owner(ccli.keyslot(n)) == dead}
    assert 0 < len(on_dead) < 12
    kv_cluster.kill_node(dead)
    try:
        start = time.monotonic()
        got = run(loop, wrapped.batched_get(keys))
        assert time.monotonic() - start < 1.5  # within read_timeout_s (1 s) and a margin
        assert {i for i, g in enumerate(got) if g is None} == on_dead
        assert all(bytes(g.byte_array) == expected[i] for i, g in enumerate(got) if g is not None)
        for g in got:
            if g is not None:
                g.ref_count_down()
        assert wrapped.batched_contains(keys) == min(on_dead)
        before = conn.stats()
        run(loop, wrapped.batched_put(keys, [make_chunk(cpu_backend, i) for i in range(12)]))
        after = conn.stats()
        assert after["dropped_puts"] - before["dropped_puts"] == len(on_dead)
        assert after["puts"] - before["puts"] == 12 - len(on_dead)
    finally:
        kv_cluster.restart_node(dead)  # same identity and slots, empty (no persistence)


def test_oom_on_one_node_drops_only_its_chunks_and_counts_them(loop, cpu_backend, kv_cluster,
                                                               ccli):
    wrapped, conn = make_connector(loop, cpu_backend, kv_cluster.url)
    keys = [cache_key(500 + i) for i in range(12)]
    names = [conn.key_of(k) for k in keys]
    full = kv_cluster.slot_owner(ccli.keyslot(names[0]))
    on_full = [n for n in names if kv_cluster.slot_owner(ccli.keyslot(n)) == full]
    with kv_cluster.nodes[full].client() as node:
        node.config_set("maxmemory-policy", "noeviction")
        node.config_set("maxmemory", "1")
        try:
            run(loop, wrapped.batched_put(keys, [make_chunk(cpu_backend, i) for i in range(12)]))
        finally:
            node.config_set("maxmemory", "64mb")
            node.config_set("maxmemory-policy", "volatile-lru")
    stats = conn.stats()
    assert stats["dropped_puts"] == len(on_full) and stats["puts"] == 12 - len(on_full)
    assert not any(ccli.exists(n) for n in on_full)
    assert all(ccli.ttl(n) > 0 for n in names if n not in on_full)


def test_works_as_the_deployed_vllmkv_user(loop, cpu_backend, kv_cluster, ccli, tmp_path,
                                           monkeypatch):
    passwords = {u: secrets.token_urlsafe(16) for u in shipped_acl_users()}
    monkeypatch.setenv("RVS_TEST_VLLMKV_PASSWORD", passwords["vllmkv"])
    aclfile = tmp_path / "users.acl"
    assert render_acl(aclfile, passwords).returncode == 0
    rules = next(line.split()[2:] for line in aclfile.read_text().splitlines()
                 if line.startswith("user vllmkv "))
    for node in kv_cluster.nodes:  # the shipped rules, as the cluster layout loads them
        with node.client() as c:
            c.execute_command("ACL SETUSER", "vllmkv", "reset", *rules)
    try:
        wrapped, conn = make_connector(loop, cpu_backend, kv_cluster.url, username="vllmkv",
                                       password_env="RVS_TEST_VLLMKV_PASSWORD",
                                       stats_flush_seconds=0)
        keys = [cache_key(700 + i) for i in range(9)]
        expected = [chunk_bytes(cpu_backend, i) for i in range(9)]
        run(loop, wrapped.batched_put(keys, [make_chunk(cpu_backend, i) for i in range(9)]))
        assert conn.stats()["puts"] == 9 and wrapped.batched_contains(keys) == 9
        assert len([n for n in keys_per_primary(kv_cluster, "vllm:kv:").values() if n]) == PRIMARIES
        got = run(loop, wrapped.batched_get(keys))
        assert [bytes(g.byte_array) for g in got] == expected
        for g in got:
            g.ref_count_down()
        assert sorted(run(loop, wrapped.list())) == sorted(k.to_string() for k in keys)
        assert wrapped.remove_sync(keys[0]) and wrapped.batched_contains(keys) == 0
        assert conn.maxmemory_policy == "volatile-lru"  # through INFO memory (+info|memory)
    finally:
        for node in kv_cluster.nodes:
            with node.client() as c:
                c.execute_command("ACL DELUSER", "vllmkv")
