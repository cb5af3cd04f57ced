"""Fixtures for the LMCache plug-in tests: the real lmcache package on CPU, a real valkey-server.

Nothing here imports lmcache at import time: without the extra, the test module skips itself
and this file must still load (the default test run collects it).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ray_valkey_spill import EmbeddedValkey


@pytest.fixture(scope="session")
def kv_server():
    """A private valkey-server (command counts are ours alone; tests flush it)."""
    with EmbeddedValkey(config={"maxmemory": "256mb"}) as server:
        yield server


@pytest.fixture
def loop():
    """An asyncio loop running in its own thread, as LMCache runs one."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture
def cpu_backend():
    """LMCache's local CPU backend (the allocator a remote read fills)."""
    from lmcache.v1.config import LMCacheEngineConfig
    from lmcache.v1.memory_allocators.pin_memory_allocator import PinMemoryAllocator
    from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend
    from lmcache_support import CHUNK, make_metadata

    backend = LocalCPUBackend(config=LMCacheEngineConfig.from_defaults(chunk_size=CHUNK),
                              metadata=make_metadata(),
                              memory_allocator=PinMemoryAllocator(64 << 20))
    yield backend
    # Every chunk a test allocated or a read returned was given back: none leaked by the
    # plug-in, including reads abandoned at their timeout (their threads free them later).
    allocator = backend.memory_allocator.allocator
    deadline = time.monotonic() + 10
    while allocator.total_allocated_size and time.monotonic() < deadline:
        time.sleep(0.05)
    assert allocator.total_allocated_size == 0, "LMCache memory objects leaked"
    backend.close()
