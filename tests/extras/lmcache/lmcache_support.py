"""Helpers of the LMCache plug-in tests: configs, keys, and a CPU stand-in for the GPU connector.

LMCache's own GPU connectors need CUDA; ``CPUKVConnector`` stands in for the GPU: the "GPU"
KV cache is a CPU tensor ``[2, layers, tokens, hidden]`` and chunks are copied between it
and LMCache's memory objects (format KV_2LTD), as LMCache's vLLM connector does on a GPU.
"""

from __future__ import annotations

import asyncio
import uuid

import torch
from lmcache.utils import CacheEngineKey
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.gpu_connector.gpu_connectors import GPUConnectorInterface
from lmcache.v1.metadata import LMCacheMetadata

MODULE = "ray_valkey_spill.integrations.lmcache"
# A small model: 4 layers, 2 KV heads x 16 dims, 16-token chunks, bfloat16: 8 KiB per chunk.
LAYERS, HEADS, HEAD_DIM, CHUNK = 4, 2, 16, 16


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


def run(loop, coro, timeout: float = 30):
    """Run ``coro`` on ``loop`` (another thread) and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)
