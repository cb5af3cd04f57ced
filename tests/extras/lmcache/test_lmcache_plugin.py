"""The LMCache plug-in against the real lmcache package (CPU) and a real valkey-server.

Connectors are built the way LMCache builds them (``CreateConnector`` with ``plugin://rvs``
and the plug-in's ``module_path``/``class_name`` in ``extra_config``), so every test also
checks that LMCache loads the plug-in and wraps ours, not some built-in backend.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

pytest.importorskip("lmcache", reason="needs the lmcache extra: pip install '.[lmcache]'")

import torch  # noqa: E402
from lmcache.v1.storage_backend.connector import CreateConnector  # noqa: E402
from lmcache_support import (assert_every_call_misses_within, FULL_SHAPE, cache_key, chunk_bytes,  # noqa: E402
                             engines_round_trip, make_chunk, make_connector, make_metadata,
                             plugin_config, run, tamper_cases)

from support import command_delta, commandstats, render_acl, shipped_acl_users
from ray_valkey_spill import EmbeddedValkey  # noqa: E402
from ray_valkey_spill.errors import ConfigError  # noqa: E402
from ray_valkey_spill.integrations.lmcache._format import HEADER_BYTES  # noqa: E402
from ray_valkey_spill.keyspace import scan_keys  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


def _clean(server):
    client = server.client()
    client.flushall()
    client.config_resetstat()
    return client


def test_round_trip_is_byte_exact_and_keys_are_prefixed(loop, cpu_backend, kv_server):
    client = _clean(kv_server)
    wrapped, conn = make_connector(loop, cpu_backend, kv_server.url)
    keys = [cache_key(i) for i in range(4)] + [cache_key(9, **{"lmcache.tag.user": "a:b%*"})]
    objs = [make_chunk(cpu_backend, i) for i in range(5)]
    expected = [bytes(o.byte_array) for o in objs]
    run(loop, wrapped.batched_put(keys[:4], objs[:4]))
    run(loop, wrapped.put(keys[4], objs[4]))
    got = run(loop, wrapped.batched_get(keys)) + [run(loop, wrapped.get(keys[0]))]
    assert [bytes(g.byte_array) for g in got] == expected + expected[:1]
    assert all(g.get_shape() == FULL_SHAPE and g.get_dtype() == torch.bfloat16 for g in got)
    names = sorted(k.decode() for k in scan_keys(client, "*"))
    assert names == sorted(conn.key_of(k) for k in keys)
    assert all(n.startswith("vllm:kv:") and ":" not in n[len("vllm:kv:"):] for n in names)
    assert conn.key_of(keys[4]).endswith("@user%25a%3Ab%25%2A")  # escaped, injective
    assert client.strlen(names[0]) == HEADER_BYTES + FULL_SHAPE.numel() * 2
    assert sorted(run(loop, wrapped.list())) == sorted(k.to_string() for k in keys)
    # a partial last chunk (fewer tokens) comes back with its own shape
    partial = make_chunk(cpu_backend, 7, tokens=5)
    partial_bytes = bytes(partial.byte_array)
    run(loop, wrapped.put(cache_key(20), partial))
    back = run(loop, wrapped.get(cache_key(20)))
    assert bytes(back.byte_array) == partial_bytes and back.get_shape()[2] == 5
    for obj in got + [back]:
        obj.ref_count_down()


def test_lmcache_engine_stores_and_retrieves_through_the_plugin(kv_server):
    """LMCache's own engine (LMCacheEngineBuilder) on CPU: store a token sequence's KV, then a
    fresh engine (empty local CPU cache) finds and retrieves it from Valkey, tensor for tensor."""
    client = _clean(kv_server)
    engines_round_trip(kv_server.url, client, lambda: commandstats(client).get("get", 0))


def test_leading_chunks_with_a_hole_in_one_round_trip(loop, cpu_backend, kv_server):
    client = _clean(kv_server)
    wrapped, conn = make_connector(loop, cpu_backend, kv_server.url)
    keys = [cache_key(100 + i) for i in range(8)]
    run(loop, wrapped.batched_put(keys[:6], [make_chunk(cpu_backend, i) for i in range(6)]))
    client.unlink(conn.key_of(keys[2]))
    before = commandstats(client)
    reads = client.info("stats")["total_reads_processed"]
    assert wrapped.batched_contains(keys) == 2
    # the server read the whole lookup at once (the other read is this INFO) ...
    assert client.info("stats")["total_reads_processed"] - reads == 2
    # ... and it was 8 EXISTS, nothing else
    assert command_delta(before, commandstats(client)) == {"exists": 8}
    assert run(loop, wrapped.batched_async_contains("l1", keys)) == 2
    assert run(loop, wrapped.exists(keys[1])) and not wrapped.exists_sync(keys[2])
    leading = run(loop, wrapped.batched_get_non_blocking("l1", keys))
    assert len(leading) == 2
    for obj in leading:
        obj.ref_count_down()
    assert conn.stats()["hits"] >= 4


def test_every_key_has_a_ttl_after_every_method(loop, cpu_backend, kv_server):
    client = _clean(kv_server)
    wrapped, conn = make_connector(loop, cpu_backend, kv_server.url, ttl_seconds=321,
                               stats_flush_seconds=0)
    keys = [cache_key(200 + i) for i in range(3)]

    def check_ttls(after: str):
        names = scan_keys(client, "*")
        assert names, after
        ttls = {n: client.ttl(n) for n in names}
        assert all(t > 0 for t in ttls.values()), (after, ttls)
        assert all(t <= 321 for n, t in ttls.items() if n != b"vllm:kv:_stats"), (after, ttls)
        assert all(n.startswith(b"vllm:kv:") for n in names), (after, names)

    steps = [
        ("put", lambda: run(loop, wrapped.put(keys[0], make_chunk(cpu_backend, 0)))),
        ("batched_put", lambda: run(loop, wrapped.batched_put(
            keys, [make_chunk(cpu_backend, i) for i in range(3)]))),
        ("put again", lambda: run(loop, wrapped.put(keys[0], make_chunk(cpu_backend, 5)))),
        ("get", lambda: run(loop, wrapped.get(keys[0])).ref_count_down()),
        ("batched_get", lambda: [o.ref_count_down() for o in run(loop, wrapped.batched_get(keys))]),
        ("batched_get_non_blocking", lambda: [o.ref_count_down() for o in run(
            loop, wrapped.batched_get_non_blocking("x", keys))]),
        ("exists", lambda: run(loop, wrapped.exists(keys[1]))),
        ("exists_sync", lambda: wrapped.exists_sync(keys[1])),
        ("batched_contains", lambda: wrapped.batched_contains(keys)),
        ("batched_async_contains", lambda: run(loop, wrapped.batched_async_contains("x", keys))),
        ("list", lambda: run(loop, wrapped.list())),
        ("ping", lambda: run(loop, wrapped.ping())),
        ("remove_sync", lambda: wrapped.remove_sync(keys[2])),
    ]
    for name, step in steps:
        step()
        check_ttls(name)
    assert client.exists("vllm:kv:_stats")  # hit rates published, with a TTL like the rest


def test_missing_ttl_and_bad_options_are_config_errors(loop, cpu_backend, kv_server):
    for options, field in (({}, "ttl_seconds"), ({"ttl_seconds": 0}, "ttl_seconds"),
                           ({"ttl_seconds": 60, "prefix": "ray:"}, "prefix"),
                           ({"ttl_seconds": 60, "read_timeout_s": -1}, "read_timeout_s"),
                           ({"ttl_seconds": 60, "colour": "red"}, "colour")):
        config = plugin_config(kv_server.url, **options)
        with pytest.raises(ConfigError, match=field):
            CreateConnector("plugin://rvs", loop, cpu_backend, config, make_metadata(),
                            plugin_name="rvs")
    for field, value in (("remote_serde", "cachegen"), ("use_layerwise", True)):
        config = plugin_config(kv_server.url, ttl_seconds=60)
        setattr(config, field, value)
        with pytest.raises(ConfigError, match=field):
            CreateConnector("plugin://rvs", loop, cpu_backend, config, make_metadata(),
                            plugin_name="rvs")
    with pytest.raises(ConfigError, match="url") as info:  # a password belongs in password_env
        CreateConnector("plugin://rvs", loop, cpu_backend,
                        plugin_config("valkey://:secret@127.0.0.1:1/0", ttl_seconds=60),
                        make_metadata(), plugin_name="rvs")
    assert "secret" not in str(info.value)


def test_corrupt_truncated_and_foreign_values_are_counted_misses(loop, cpu_backend, kv_server):
    client = _clean(kv_server)
    wrapped, conn = make_connector(loop, cpu_backend, kv_server.url)
    keys = [cache_key(300 + i) for i in range(9)]
    run(loop, wrapped.batched_put(keys, [make_chunk(cpu_backend, i) for i in range(9)]))
    cases = tamper_cases(client, conn, cpu_backend, keys)
    for key, value in cases.items():
        client.set(conn.key_of(key), value, keepttl=True)
    got = run(loop, wrapped.batched_get(keys))
    assert got[:8] == [None] * 8
    assert got[8] is not None and bytes(got[8].byte_array) == chunk_bytes(cpu_backend, 8)
    got[8].ref_count_down()
    for key in cases:
        assert run(loop, wrapped.get(key)) is None
    stats = conn.stats()
    assert stats["corrupt"] == 16 and stats["misses"] >= 16


def test_paused_or_unreachable_server_reads_are_misses_within_the_bound(loop, cpu_backend):
    bound = 0.5
    with EmbeddedValkey() as server:
        wrapped, conn = make_connector(loop, cpu_backend, server.url, read_timeout_s=bound,
                                   write_timeout_s=bound, socket_timeout_s=2.0, retries=0)
        keys = [cache_key(400 + i) for i in range(3)]
        run(loop, wrapped.batched_put(keys, [make_chunk(cpu_backend, i) for i in range(3)]))
        server.pause()
        try:
            assert_every_call_misses_within(loop, wrapped, cpu_backend, keys, bound)
            start = time.monotonic()
            assert run(loop, wrapped.ping()) == -1  # LMCache's health monitor sees it
            assert time.monotonic() - start < bound + 0.5
        finally:
            server.resume()
        deadline = time.monotonic() + 10
        while wrapped.batched_contains(keys) != 3:  # threads come back once the server does
            assert time.monotonic() < deadline
            time.sleep(0.1)
        got = run(loop, wrapped.batched_get(keys))
        assert all(g is not None for g in got)
        for g in got:
            g.ref_count_down()
        assert run(loop, wrapped.ping()) == 0
    # nothing listens any more: misses at once
    start = time.monotonic()
    assert run(loop, wrapped.batched_get(keys)) == [None] * 3
    assert wrapped.batched_contains(keys) == 0
    assert time.monotonic() - start < 2 * bound + 0.5


def test_oom_on_put_drops_the_entries_and_counts_them(loop, cpu_backend):
    with EmbeddedValkey(config={"maxmemory": "3mb", "maxmemory-policy": "noeviction"}) as server:
        wrapped, conn = make_connector(loop, cpu_backend, server.url)
        keys = [cache_key(500 + i) for i in range(400)]  # 400 x 8 KiB > 3 MB
        for start in range(0, len(keys), 50):
            batch = keys[start:start + 50]
            run(loop, wrapped.batched_put(batch, [make_chunk(cpu_backend, i) for i in range(50)]))
        stats = conn.stats()
        assert stats["dropped_puts"] > 0 and stats["puts"] + stats["dropped_puts"] == 400
        assert server.client().exists(*[conn.key_of(k) for k in keys]) == stats["puts"]
        assert all(server.client().ttl(k) > 0 for k in server.client().scan_iter())


def test_stats_metrics_and_shedding_see_the_plugin_keys(loop, cpu_backend, kv_server,
                                                        monkeypatch):
    from ray_valkey_spill import metrics
    from ray_valkey_spill.shedding import shed_cache_entries
    from ray_valkey_spill.tools.stats import collect

    recorded: dict[tuple, float] = {}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def inc(self, n, tags=None):
            key = (self.name, tuple(sorted((tags or {}).items())))
            recorded[key] = recorded.get(key, 0) + n

    monkeypatch.setattr(metrics._registry, "get",
                        lambda: {n: Recorder(n) for n in metrics._DEFINITIONS})
    client = _clean(kv_server)
    wrapped, conn = make_connector(loop, cpu_backend, kv_server.url, stats_flush_seconds=0)
    keys = [cache_key(600 + i) for i in range(10)]
    run(loop, wrapped.batched_put(keys, [make_chunk(cpu_backend, i) for i in range(10)]))
    assert wrapped.batched_contains(keys + [cache_key(699)]) == 10
    for obj in run(loop, wrapped.batched_get(keys[:4])):
        obj.ref_count_down()
    report = collect(client)
    row = report["prefixes"]["vllm:kv:"]
    assert row["keys"] == 11 and row["keys_without_ttl"] == 0 and not report["warnings"]
    assert report["hit_rates"]["vllm:kv:_stats"]["hits"] == 10
    tag = (("cache", "vllm_kv"),)
    assert recorded[("cache_hits", tag)] == 10 and recorded[("cache_misses", tag)] == 1
    assert recorded[("cache_written_bytes", tag)] == 10 * FULL_SHAPE.numel() * 2
    assert recorded[("cache_read_bytes", tag)] == 4 * (FULL_SHAPE.numel() * 2 + HEADER_BYTES)
    assert shed_cache_entries(client, 40_000, include_overage=False) > 0
    assert wrapped.batched_contains(keys) < 10


def test_works_as_the_deployed_vllmkv_user(loop, cpu_backend, tmp_path, monkeypatch):
    passwords = {u: secrets.token_urlsafe(16) for u in shipped_acl_users()}
    monkeypatch.setenv("RVS_TEST_VLLMKV_PASSWORD", passwords["vllmkv"])
    aclfile = tmp_path / "users.acl"
    assert render_acl(aclfile, passwords).returncode == 0
    with EmbeddedValkey(config={"aclfile": str(aclfile)}) as server:
        wrapped, conn = make_connector(loop, cpu_backend, server.url, username="vllmkv",
                                   password_env="RVS_TEST_VLLMKV_PASSWORD",
                                   stats_flush_seconds=0)
        keys = [cache_key(700 + i) for i in range(3)]
        objs = [make_chunk(cpu_backend, i) for i in range(3)]
        expected = [bytes(o.byte_array) for o in objs]
        run(loop, wrapped.batched_put(keys, objs))
        assert wrapped.batched_contains(keys) == 3
        got = run(loop, wrapped.batched_get(keys))
        assert [bytes(g.byte_array) for g in got] == expected
        assert sorted(run(loop, wrapped.list())) == sorted(k.to_string() for k in keys)
        assert wrapped.remove_sync(keys[0])
        admin = server.client(username="admin", password=passwords["admin"])
        assert all(admin.ttl(k) > 0 for k in admin.scan_iter())
        # CONFIG GET is refused to vllmkv; the policy is read through INFO memory (+info|memory).
        assert conn.maxmemory_policy == "volatile-lru"
        for g in got:
            g.ref_count_down()
