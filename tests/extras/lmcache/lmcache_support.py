"""Helpers of the LMCache plug-in tests: configs, keys, and a CPU stand-in for the GPU connector.

LMCache's own GPU connectors need CUDA; ``CPUKVConnector`` stands in for the GPU: the "GPU"
KV cache is a CPU tensor ``[2, layers, tokens, hidden]`` and chunks are copied between it
and LMCache's memory objects (format KV_2LTD), as LMCache's vLLM connector does on a GPU.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Callable

import torch
from lmcache.utils import CacheEngineKey
from lmcache.v1.cache_engine import LMCacheEngineBuilder
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.gpu_connector.gpu_connectors import GPUConnectorInterface
from lmcache.v1.metadata import LMCacheMetadata
from lmcache.v1.storage_backend.connector import CreateConnector

from ray_valkey_spill.integrations.lmcache import SharedValkeyConnector
from ray_valkey_spill.integrations.lmcache._format import HEADER_BYTES
from ray_valkey_spill.keyspace import scan_keys

MODULE = "ray_valkey_spill.integrations.lmcache"
# A small model: 4 layers, 2 KV heads x 16 dims, 16-token chunks, bfloat16: 8 KiB per chunk.
LAYERS, HEADS, HEAD_DIM, CHUNK = 4, 2, 16, 16
FULL_SHAPE = torch.Size([2, LAYERS, CHUNK, HEADS * HEAD_DIM])


def make_metadata(model: str = "tiny-llm", dtype=torch.bfloat16, worker_id: int = 0,
                  world_size: int = 1, chunk: int = CHUNK) -> LMCacheMetadata:
    return LMCacheMetadata(model_name=model, world_size=world_size, local_world_size=world_size,
                           worker_id=worker_id, local_worker_id=worker_id, kv_dtype=dtype,
                           kv_shape=(LAYERS, 2, chunk, HEADS, HEAD_DIM), use_mla=False,
                           chunk_size=chunk)


def plugin_config(url: str, name: str = "rvs", chunk: int = CHUNK, **options) -> LMCacheEngineConfig:
    extra = {f"remote_storage_plugin.{name}.module_path": MODULE,
             f"remote_storage_plugin.{name}.class_name": "SharedValkeyConnectorAdapter",
             f"remote_storage_plugin.{name}.url": url}
    extra.update({f"remote_storage_plugin.{name}.{k}": v for k, v in options.items()})
    config = LMCacheEngineConfig.from_defaults(chunk_size=chunk, local_cpu=True,
                                               max_local_cpu_size=0.05,
                                               lmcache_instance_id=f"t{uuid.uuid4().hex[:8]}")
    config.remote_storage_plugins = [name]
    config.extra_config = extra
    return config


def cache_key(i: int, model: str = "tiny-llm", dtype=torch.bfloat16, **configs) -> CacheEngineKey:
    return CacheEngineKey(model, 1, 0, 0x1000 + i, dtype, configs or None)


def make_connector(loop, backend, url: str, **options):
    """(LMCache's wrapper, our connector), built the way LMCache builds it (``CreateConnector``
    with ``plugin://rvs``): also checks that LMCache loaded this plug-in, not a built-in."""
    options.setdefault("ttl_seconds", 600)
    options.setdefault("stats_flush_seconds", None)
    config = plugin_config(url, **options)
    wrapped = CreateConnector("plugin://rvs", loop, backend, config, make_metadata(),
                              plugin_name="rvs")
    assert isinstance(wrapped.getWrappedConnector(), SharedValkeyConnector), wrapped
    return wrapped, wrapped.getWrappedConnector()


def make_chunk(backend, seed: int, tokens: int = CHUNK):
    """A chunk of ``tokens`` tokens allocated from ``backend``, seeded random bfloat16."""
    obj = backend.allocate(torch.Size([2, LAYERS, tokens, HEADS * HEAD_DIM]), torch.bfloat16)
    torch.manual_seed(seed)
    obj.tensor.copy_(torch.randn(obj.tensor.shape).to(torch.bfloat16))
    return obj


def chunk_bytes(backend, seed: int, tokens: int = CHUNK) -> bytes:
    """The bytes of ``make_chunk(backend, seed, tokens)`` (the chunk itself is given back)."""
    obj = make_chunk(backend, seed, tokens)
    data = bytes(obj.byte_array)
    obj.ref_count_down()
    return data


def tamper_cases(client, conn, cpu_backend, keys):
    """Overwrite stored chunks in every way a value can be wrong (TTLs kept)."""
    good = [client.get(conn.key_of(k)) for k in keys]
    raw = chunk_bytes(cpu_backend, 42)
    flipped = bytearray(good[0])
    flipped[HEADER_BYTES + 1000] ^= 0x01
    header_flipped = bytearray(good[1])
    header_flipped[10] ^= 0x01  # the shape field
    foreign_dtype = bytearray(good[5])
    foreign_dtype[8:24] = b"float16".ljust(16, b"\0")
    return {
        keys[0]: bytes(flipped),               # one bit of the payload
        keys[1]: bytes(header_flipped),        # one bit of the header
        keys[2]: good[2][:-100],               # truncated
        keys[3]: raw,                          # LMCache's built-in format: no header
        keys[4]: good[6],                      # another key's (valid) chunk
        keys[5]: bytes(foreign_dtype),         # another layout's header
        keys[6]: good[6] + b"x",               # one byte too many
        keys[7]: b"",                          # empty
    }


class CPUKVConnector(GPUConnectorInterface):
    """Copies chunks between a CPU tensor standing in for vLLM's paged GPU KV cache and
    LMCache's memory objects (KV_2LTD: ``[2, layers, tokens, hidden]``)."""

    def __init__(self, kv: torch.Tensor):
        self.kv = kv

    def from_gpu(self, memory_obj, start: int, end: int, **kwargs):
        memory_obj.tensor.copy_(self.kv[:, :, start:end, :])

    def to_gpu(self, memory_obj, start: int, end: int, **kwargs):
        self.kv[:, :, start:end, :].copy_(memory_obj.tensor)

    def batched_from_gpu(self, memory_objs, starts, ends, **kwargs):
        for obj, start, end in zip(memory_objs, starts, ends):
            self.from_gpu(obj, start, end)

    def batched_to_gpu(self, memory_objs, starts=None, ends=None, **kwargs):
        for obj, start, end in zip(memory_objs, starts, ends):
            self.to_gpu(obj, start, end)

    def get_shape(self, num_tokens: int) -> torch.Size:
        return torch.Size([2, LAYERS, num_tokens, HEADS * HEAD_DIM])


def engines_round_trip(url: str, client, get_calls: Callable[[], int]) -> None:
    """LMCache's own engine (``LMCacheEngineBuilder``, CPU stand-in for the GPU) stores the
    KV of 6 chunks of tokens through the plug-in at ``url``; a second engine (empty local CPU
    cache) looks them up and retrieves them tensor for tensor, with 6 GETs on the server
    (``get_calls()``: GETs so far). ``client`` inspects the stored keys (SCAN, TTL)."""
    tokens = torch.arange(5000, 5000 + 6 * CHUNK)
    torch.manual_seed(3)
    kv = torch.randn(2, LAYERS, len(tokens), HEADS * HEAD_DIM).to(torch.bfloat16)
    engines, ids = [], []
    try:
        for gpu in (CPUKVConnector(kv.clone()), CPUKVConnector(torch.zeros_like(kv))):
            config = plugin_config(url, ttl_seconds=600, stats_flush_seconds=None)
            ids.append(config.lmcache_instance_id)
            engine = LMCacheEngineBuilder.get_or_create(ids[-1], config, make_metadata(), gpu,
                                                        lambda t, r: None, lambda o, r: o)
            engine.post_init()
            remote = engine.storage_manager.storage_backends["RemoteBackend-rvs"]
            assert isinstance(remote.connection.getWrappedConnector(), SharedValkeyConnector)
            engines.append(engine)
        writer, reader = engines
        writer.store(tokens)
        deadline = time.monotonic() + 30
        while len(scan_keys(client, "vllm:kv:*")) < 6:  # puts are asynchronous in LMCache
            assert time.monotonic() < deadline, "LMCache never wrote the chunks"
            time.sleep(0.05)
        assert all(0 < client.ttl(k) <= 600 for k in scan_keys(client, "vllm:kv:*"))
        before = get_calls()
        assert reader.lookup(tokens) == len(tokens)
        retrieved = reader.retrieve(tokens)
        assert int(retrieved.sum()) == len(tokens)
        assert torch.equal(reader.gpu_connector.kv, kv)
        assert get_calls() - before == 6  # the bytes came from Valkey
    finally:
        for instance_id in ids:  # its threads would keep the test process alive
            LMCacheEngineBuilder.destroy(instance_id)


def run(loop, coro, timeout: float = 30):
    """Run ``coro`` on ``loop`` (another thread) and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


def assert_every_call_misses_within(loop, wrapped, backend, keys, bound: float) -> None:
    """Every read and lookup of ``keys`` (and a put) through ``wrapped`` returns a miss or
    nothing within ``bound`` (+0.5 s), three times over: also once every I/O thread is stuck on
    an unresponsive server or node."""
    misses = (None, 0, False, [], [None] * len(keys))
    calls = (
        ("batched_get", lambda: run(loop, wrapped.batched_get(keys))),
        ("get", lambda: run(loop, wrapped.get(keys[0]))),
        ("batched_contains", lambda: wrapped.batched_contains(keys)),
        ("batched_async_contains", lambda: run(loop, wrapped.batched_async_contains("p", keys))),
        ("exists_sync", lambda: wrapped.exists_sync(keys[0])),
        ("batched_get_non_blocking",
         lambda: run(loop, wrapped.batched_get_non_blocking("p", keys))),
        ("put", lambda: run(loop, wrapped.put(cache_key(499), make_chunk(backend, 9)))))
    for name, call in calls:
        for _ in range(3):
            start = time.monotonic()
            result = call()
            took = time.monotonic() - start
            assert took < bound + 0.5, (name, took)
            assert result in misses, (name, result)

