"""Ray spilling through a server that caches fill: only cache keys are evicted, every object
comes back."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid

import numpy as np
import pytest

from ray_valkey_spill.caches import EmbeddingCache, KVCache
from ray_valkey_spill.testing.embedded import EmbeddedValkey

MiB = 1024 * 1024


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _cache_writer(url: str, stop: threading.Event, written: list[int]) -> None:
    emb = EmbeddingCache(url, "bge-small", ttl_seconds=3600)
    kv = KVCache(url, "llama-3.2-1b", ttl_seconds=3600)
    block = np.ones((16, 2, 16, 8, 64), np.float16)  # 512 KiB: a 16-token block of a 1B model
    vectors = np.ones((500, 384), np.float32)
    i = 0
    while not stop.is_set():
        emb.put_many([f"{i}:{j}" for j in range(500)], vectors)
        kv.put(np.arange(16 * 16) + i * 10_000, [block] * 16)
        written[0] += vectors.nbytes + 16 * block.nbytes
        i += 1


@pytest.mark.slow
def test_ray_spills_through_a_full_cache_server_and_only_cache_keys_are_evicted(monkeypatch):
    from conftest import start_ray

    # Start our own Ray even if another local Ray is running (ray.init() would attach to it).
    monkeypatch.setenv("RAY_ADDRESS", "local")

    with EmbeddedValkey(config={"maxmemory": "400mb", "maxmemory-policy": "volatile-lru"}) \
            as server:
        client = server.client()
        prefix = f"ray:t{_uid()}:"
        stop, written = threading.Event(), [0]
        writer = threading.Thread(target=_cache_writer, args=(server.url, stop, written))
        ray = start_ray(server.url, prefix=prefix, chunk_size_bytes=1 * MiB)
        try:
            writer.start()
            refs, digests = [], []
            for i in range(30):  # 300 MiB through a 100 MiB object store
                array = np.random.default_rng(i).integers(0, 255, 10 * MiB, dtype=np.uint8)
                digests.append(hashlib.sha256(array.tobytes()).hexdigest())
                refs.append(ray.put(array))
                del array
            deadline = time.monotonic() + 30
            while (written[0] < 600 * MiB
                   or int(client.info("stats")["evicted_keys"]) == 0) \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            stop.set()
            writer.join(timeout=60)
            spill_keys = list(client.scan_iter(match=prefix + "*", count=1000))
            assert spill_keys, "nothing was spilled"
            assert all(client.pttl(k) == -1 for k in spill_keys)
            evicted = int(client.info("stats")["evicted_keys"])
            print(f"spill keys {len(spill_keys)}, cache bytes written {written[0] // MiB} MiB, "
                  f"evicted_keys {evicted}")
            assert evicted > 0
            for ref, digest in zip(refs, digests):
                assert hashlib.sha256(ray.get(ref).tobytes()).hexdigest() == digest
        finally:
            stop.set()
            ray.shutdown()
