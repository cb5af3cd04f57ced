"""``ray-valkey-spill stats`` against a real server: keys and bytes per prefix, TTLs, hit rates."""

from __future__ import annotations

import json

import numpy as np

from ray_valkey_spill.caches import EmbeddingCache, KVCache, SessionStore
from ray_valkey_spill.testing.embedded import EmbeddedValkey
from ray_valkey_spill.tools import stats


def test_stats_reports_prefixes_ttls_and_hit_rates(capsys):
    with EmbeddedValkey(config={"maxmemory": "64mb"}) as server:
        client = server.client()
        emb = EmbeddingCache(server.url, "m", ttl_seconds=600, stats_flush_seconds=0)
        emb.put_many(["a", "b"], np.ones((2, 8), np.float32))
        emb.get_many(["a", "c"])
        emb.flush_stats()
        KVCache(server.url, "m").put(list(range(16)), [np.ones(8)])
        SessionStore(server.url, ttl_seconds=60).append("s", "hi")
        client.set("ray:obj", b"z" * 10000)
        client.set("emb:forgot-ttl", b"1")
        client.set("misc", b"1")
        assert stats.main(["--url", server.url, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        p = report["prefixes"]
        assert p["ray:"]["keys"] == 1 and p["ray:"]["bytes"] >= 10000
        assert p["emb:"]["keys"] == 4 and p["emb:"]["keys_without_ttl"] == 1  # 2 + stats + forgot
        assert p["vllm:kv:"]["keys"] == 1 and p["session:"]["keys"] == 1  # turns only
        assert p["other"]["keys"] == 1
        assert report["server"]["maxmemory_policy"] == "volatile-lru"
        assert report["hit_rates"]["emb:_stats"]["hit_rate"] == 0.5
        assert any("no TTL" in w for w in report["warnings"])
        assert stats.main(["--url", server.url, "--sample", "3"]) == 0
        table = capsys.readouterr().out
        assert "vllm:kv:" in table and "estimated from 3" in table
