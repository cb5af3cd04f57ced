"""Metrics: the recording API without Ray, and the real thing read back from the Prometheus
endpoint of a local Ray (which needs ``ray[default]``: the metrics agent lives in the dashboard
agent, absent from a minimal ``ray`` install).
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import numpy as np
import pytest

from conftest import MiB
from ray_valkey_spill import metrics as M
from ray_valkey_spill import spilling_config


# -- the API, without a Ray cluster ------------------------------------------------------------
class _Recorder:
    def __init__(self, fail=False):
        self.calls = []
        self.fail = fail

    def inc(self, value, tags=None):
        self.attempts = getattr(self, "attempts", 0) + 1
        if self.fail:
            raise RuntimeError("broken exporter")
        if value <= 0:  # what Ray's Counter.inc does
            raise ValueError(value)
        self.calls.append(("inc", value, tags))

    def observe(self, value, tags=None):
        self.attempts = getattr(self, "attempts", 0) + 1
        if self.fail:
            raise RuntimeError("broken exporter")
        self.calls.append(("observe", value, tags))


@pytest.fixture
def fake_metrics(monkeypatch):
    fakes = {name: _Recorder() for name in M._DEFINITIONS}
    monkeypatch.setattr(M._registry, "_metrics", fakes)
    return fakes


def test_nothing_is_created_before_ray_is_connected(monkeypatch):
    import sys

    registry = M._Registry()
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert registry.get() is None  # Ray not imported: never imported by us either
    assert "ray" not in sys.modules
    monkeypatch.undo()
    import ray

    if not ray.is_initialized():
        assert registry.get() is None
    # And every call is a silent no-op then.
    M.SpillMetrics().spilled(1, 10, 5, 0.1)
    M.CacheMetrics("emb").hit(3)


def test_spill_metrics_record_what_they_are_given(fake_metrics):
    sm = M.spill_metrics()
    assert sm is M.spill_metrics()
    sm.spilled(3, 3000, 1200, 0.25)
    sm.restored(1, 1000, 0.002)
    sm.deleted(2, 2000)
    sm.deleted(0)  # zero is skipped, not passed to Ray (which refuses it)
    sm.error("restore", KeyError("x"))
    sm.error("spill", "ConnectionError")
    assert fake_metrics["spilled_objects"].calls == [("inc", 3, None)]
    assert fake_metrics["spilled_bytes"].calls == [("inc", 3000, None)]
    assert fake_metrics["spilled_stored_bytes"].calls == [("inc", 1200, None)]
    assert fake_metrics["spill_seconds"].calls == [("observe", 0.25, None)]
    assert fake_metrics["restore_seconds"].calls == [("observe", 0.002, None)]
    assert fake_metrics["deleted_objects"].calls == [("inc", 2, None)]
    assert fake_metrics["errors"].calls == [
        ("inc", 1, {"operation": "restore", "kind": "KeyError"}),
        ("inc", 1, {"operation": "spill", "kind": "ConnectionError"})]


def test_cache_metrics_carry_the_cache_tag(fake_metrics):
    cm = M.CacheMetrics("vllm_kv")
    cm.hit(2)
    cm.miss(0)
    cm.miss()
    cm.bytes_read(100)
    cm.bytes_written(50)
    tags = {"cache": "vllm_kv"}
    assert fake_metrics["cache_hits"].calls == [("inc", 2, tags)]
    assert fake_metrics["cache_misses"].calls == [("inc", 1, tags)]
    assert fake_metrics["cache_read_bytes"].calls == [("inc", 100, tags)]
    assert fake_metrics["cache_written_bytes"].calls == [("inc", 50, tags)]


def test_recording_never_raises(monkeypatch):
    """Every metric object raises; recording still returns normally (and did try each one)."""
    broken = {n: _Recorder(fail=True) for n in M._DEFINITIONS}
    monkeypatch.setattr(M._registry, "_metrics", broken)
    M.spill_metrics().spilled(1, 1, 1, 1.0)
    M.spill_metrics().error("delete", OSError())
    M.CacheMetrics("session").hit()
    tried = {n for n, r in broken.items() if getattr(r, "attempts", 0)}
    assert {"spilled_objects", "errors", "cache_hits"} <= tried, tried  # each call site tried


def test_caches_feed_cache_metrics(fake_metrics, valkey_url):
    import uuid

    from ray_valkey_spill.caches import EmbeddingCache, KVCache, SessionStore

    tag = uuid.uuid4().hex[:8]
    emb = EmbeddingCache(valkey_url, "m", ttl_seconds=60, prefix=f"emb:t{tag}:",
                         stats_flush_seconds=None)
    emb.put_many(["a", "b"], np.ones((2, 4), dtype=np.float32))
    emb.get_many(["a", "b", "c"])
    kv = KVCache(valkey_url, "m", block_size_tokens=4, ttl_seconds=60,
                 prefix=f"vllm:kv:t{tag}:", stats_flush_seconds=None)
    kv.put(list(range(8)), [np.zeros(16, dtype=np.float16)])
    assert kv.lookup(list(range(8))) == 4
    assert len(kv.get(list(range(8)))) == 1
    sessions = SessionStore(valkey_url, ttl_seconds=60, prefix=f"session:t{tag}:")
    sessions.append("s1", {"role": "user"})
    sessions.set_result("s1", "x", b"abc")
    assert sessions.get_result("s1", "x") == b"abc"
    assert sessions.get_result("s1", "nope") is None
    try:
        def by_cache(name):
            out = {}
            for _, value, tags in fake_metrics[name].calls:
                out[tags["cache"]] = out.get(tags["cache"], 0) + value
            return out

        assert by_cache("cache_hits") == {"emb": 2, "vllm_kv": 1, "session": 1}
        assert by_cache("cache_misses") == {"emb": 1, "vllm_kv": 1, "session": 1}
        written, read = by_cache("cache_written_bytes"), by_cache("cache_read_bytes")
        assert set(written) == set(read) == {"emb", "vllm_kv", "session"}
        assert written["emb"] == read["emb"] > 32 and read["session"] == 4  # tag byte + "abc"
    finally:
        emb.clear()
        kv.clear()
        sessions.delete("s1")


# -- the spill engine's call sites, in process (no Ray) ---------------------------------------
def _storage(url: str, prefix: str):
    from ray_valkey_spill.testing.harness import SpillHarness

    return SpillHarness(url, prefix, session="sess0", node_id="node0", compression="zstd",
                        chunk_size_bytes=64 * 1024)


def test_storage_records_spill_restore_delete_and_errors(fake_metrics, valkey_url, spill_prefix):
    from ray_valkey_spill.errors import ObjectMissingError

    from ray_valkey_spill.spill.engine import SpillObject

    storage = _storage(valkey_url, spill_prefix)
    payloads = {f"{i:02x}" * 4: bytes(200_000 + i) for i in range(3)}  # zeros: compressible
    urls = storage.engine.spill([SpillObject(h, memoryview(data), b"meta", b"owner")
                                 for h, data in payloads.items()])
    sizes = [24 + len(b"owner") + len(b"meta") + len(d) for d in payloads.values()]
    assert fake_metrics["spilled_objects"].calls == [("inc", 3, None)]
    assert fake_metrics["spilled_bytes"].calls == [("inc", sum(sizes), None)]
    (_, stored, _), = fake_metrics["spilled_stored_bytes"].calls
    assert 0 < stored < sum(sizes) / 10  # zstd on zeros; manifests included
    assert len(fake_metrics["spill_seconds"].calls) == 1

    storage.restore(urls[0])
    assert fake_metrics["restored_objects"].calls == [("inc", 1, None)]
    assert fake_metrics["restored_bytes"].calls == [("inc", sizes[0], None)]
    assert len(fake_metrics["restore_seconds"].calls) == 1

    storage.delete(urls[:2] + [b"not-a-url"])
    assert fake_metrics["deleted_objects"].calls == [("inc", 2, None)]
    assert fake_metrics["deleted_bytes"].calls == [("inc", sizes[0] + sizes[1], None)]
    with pytest.raises(ObjectMissingError):
        storage.restore(urls[0])
    with pytest.raises(ValueError):  # "does not exist": no data and no metadata
        storage.engine.spill([SpillObject("ffff", None, b"", b"owner")])
    assert fake_metrics["errors"].calls == [
        ("inc", 1, {"operation": "delete", "kind": "InvalidSpillURLError"}),
        ("inc", 1, {"operation": "restore", "kind": "ObjectMissingError"}),
        ("inc", 1, {"operation": "spill", "kind": "ValueError"})]
    storage.delete(urls[2:])


# -- the real export path: a local Ray, its metrics agent, /metrics ----------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def _scrape(port: int) -> dict[str, list[tuple[str, float]]]:
    """name -> [(labels, value)] from the Prometheus text at /metrics ({} if not up yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            out.setdefault(match.group(1), []).append((match.group(2) or "", float(match.group(3))))
    return out


def _total(samples, name: str, label: str = "") -> float:
    return sum(v for labels, v in samples.get(name, []) if label in labels)


@pytest.fixture
def ray_with_metrics(valkey_url, spill_prefix):
    import ray

    from ray_valkey_spill.spill.ray_compat import metrics_agent_missing

    if metrics_agent_missing() is not None:
        pytest.skip("Ray's metrics agent needs ray[default] (pip install 'ray[default]')")
    port = _free_port()
    ray.init(
        address="local",
        num_cpus=1,
        object_store_memory=100 * MiB,
        include_dashboard=False,
        _metrics_export_port=port,
        _system_config={
            "object_spilling_config": spilling_config(valkey_url, prefix=spill_prefix,
                                                      chunk_size_bytes=1 * MiB),
            "min_spilling_size": 0,
            # Workers push metrics to the agent every max(this, 1000) ms (default 10 s).
            "metrics_report_interval_ms": 1000,
        },
    )
    M._registry.reset()
    yield ray, port
    ray.shutdown()
    M._registry.reset()


def test_metrics_reach_the_ray_metrics_endpoint(ray_with_metrics, valkey_url):
    ray, port = ray_with_metrics
    assert ray._private.worker._global_node.metrics_export_port == port
    n_objects, size = 12, 25 * MiB  # 300 MiB through a 100 MiB object store
    refs = [ray.put(np.full(size // 8, i, dtype=np.int64)) for i in range(n_objects)]
    for i in (0, 1, 2):  # the first ones were spilled: restored from Valkey
        assert ray.get(refs[i])[0] == i

    @ray.remote
    def use_cache(url):
        from ray_valkey_spill.caches import EmbeddingCache

        cache = EmbeddingCache(url, "metrics-test", ttl_seconds=60, stats_flush_seconds=None)
        cache.put("hello", np.ones(8, dtype=np.float32))
        found = cache.get_many(["hello", "absent"])
        cache.clear()
        return [f is not None for f in found]

    assert ray.get(use_cache.remote(valkey_url)) == [True, False]
    del refs  # frees the spilled copies: delete_spilled_objects runs about once a second

    name = M.exported_name
    wanted = [name("spilled_objects"), name("spilled_bytes"), name("spilled_stored_bytes"),
              name("restored_objects"), name("restored_bytes"), name("deleted_objects"),
              "ray_valkey_spill_spill_seconds_count",
              "ray_valkey_spill_restore_seconds_count"]

    def unmet(samples) -> list[str]:
        """What the endpoint does not show yet. Each IO worker pushes its own metrics about once
        a second, so the totals grow for a while: wait for all of them, not the first one."""
        total = lambda n, label="": _total(samples, n, label)  # noqa: E731
        checks = {
            **{f"{n} > 0": total(n) > 0 for n in wanted},
            "spilled_objects >= 3": total(name("spilled_objects")) >= 3,
            "spilled_bytes >= 3 objects": total(name("spilled_bytes")) >= 3 * size,
            "restored_bytes >= 3 objects": total(name("restored_bytes")) >= 3 * size,
            "emb hits == 1": total(name("cache_hits"), 'cache="emb"') == 1,
            "emb misses == 1": total(name("cache_misses"), 'cache="emb"') == 1,
            "emb written bytes > 0": total(name("cache_written_bytes"), 'cache="emb"') > 0,
            # Buckets are cumulative up to +Inf, which equals the count.
            "restore histogram: +Inf bucket == count >= 3":
                total("ray_valkey_spill_restore_seconds_bucket", 'le="+Inf"')
                == total("ray_valkey_spill_restore_seconds_count") >= 3,
        }
        return [what for what, ok in checks.items() if not ok]

    deadline = time.monotonic() + 60
    samples = _scrape(port)
    while unmet(samples) and time.monotonic() < deadline:
        time.sleep(1)
        samples = _scrape(port)
    ours = sorted(n for n in samples if "valkey_spill" in n)
    assert not unmet(samples), f"not (yet) true after 60 s: {unmet(samples)}; exported: {ours}"
