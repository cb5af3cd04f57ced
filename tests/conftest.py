"""Shared fixtures: a real embedded valkey-server, unique key prefixes, and a real local Ray.

Tests live in three tiers that mirror the code, and each gets its tier's marker from its folder:
``unit`` (no server, no Ray), ``integration`` (a real valkey-server), ``system`` (a real Ray).

Set RVS_TEST_URL to run the Valkey I/O tests against another server instead of the embedded
one; every test then works under its own key prefix and cleans it with SCAN, never FLUSHALL.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from ray_valkey_spill import EmbeddedValkey, spilling_config
from ray_valkey_spill.connection import close_all
from ray_valkey_spill.keyspace import scan_keys
from ray_valkey_spill.prefixes import EMBEDDING_PREFIX, KV_PREFIX, SESSION_PREFIX, SPILL_PREFIX
from ray_valkey_spill.spill.engine import SpillObject
from ray_valkey_spill.spill.keys import is_manifest_key, parse_spill_url
from ray_valkey_spill.testing.harness import SpillHarness
from support import unique_prefixes

MiB = 1024 * 1024
TIERS = ("unit", "integration", "system")

# Small timeouts so that a fault is detected fast: one command costs at most
# (RETRIES + 1) * SOCKET_TIMEOUT_S plus backoff (connection.py: EqualJitterBackoff(base=0.05),
# i.e. at most 0.1 s before the first retry).
SOCKET_TIMEOUT_S = 0.5
CONNECT_TIMEOUT_S = 0.5
RETRIES = 1
ONE_COMMAND_BOUND_S = (RETRIES + 1) * SOCKET_TIMEOUT_S + RETRIES * 0.2
FAST_FAIL = dict(socket_timeout_s=SOCKET_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S,
                 retries=RETRIES)


def pytest_collection_modifyitems(config, items):
    """Mark every test with the tier of its folder (``pytest -m unit`` runs the fast tier)."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def valkey_server():
    """One embedded valkey-server for the whole session (spill-safe settings)."""
    with EmbeddedValkey() as server:
        yield server


@pytest.fixture(scope="session")
def valkey_url(valkey_server) -> str:
    return os.environ.get("RVS_TEST_URL") or valkey_server.url


@pytest.fixture
def valkey_client(valkey_url):
    import valkey

    client = valkey.Valkey.from_url(valkey_url)
    yield client
    client.close()


@pytest.fixture
def spill_prefix(valkey_client):
    """A unique ``ray``-style prefix for one test; its keys are removed afterwards."""
    with unique_prefixes(valkey_client, ray=SPILL_PREFIX) as prefixes:
        yield prefixes["ray"]


@pytest.fixture
def prefixes(valkey_client):
    """Unique emb/kv/session prefixes for one test, cleaned with SCAN afterwards."""
    with unique_prefixes(valkey_client, emb=EMBEDDING_PREFIX, kv=KV_PREFIX,
                         session=SESSION_PREFIX) as out:
        yield out


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.2) -> bool:
    """Poll ``predicate`` until it holds or the time is up; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def spill_and_restore(ray, client, prefix: str, what: str, seed: int) -> None:
    """Put 128 MiB through a 100 MiB object store, wait until a manifest lands under
    ``prefix`` (seen through ``client``), then get every array back byte for byte."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, 8 * MiB, dtype=np.uint8) for _ in range(16)]
    refs = [ray.put(a) for a in arrays]
    deadline = time.monotonic() + 30
    while not any(is_manifest_key(k) for k in scan_keys(client, prefix + "*")):
        assert time.monotonic() < deadline, f"nothing was spilled {what}"
        time.sleep(0.1)
    for ref, a in zip(refs, arrays):
        assert np.array_equal(ray.get(ref, timeout=60), a)


def start_ray(url: str, object_store_mib: int = 100, num_cpus: int = 2, **options):
    """Start a local Ray whose object store spills to ``url``."""
    import ray

    ray.init(
        address="local",  # never attach to another Ray running on this machine
        num_cpus=num_cpus,
        object_store_memory=object_store_mib * MiB,
        include_dashboard=False,
        _system_config={
            "object_spilling_config": spilling_config(url, **options),
            "min_spilling_size": 0,
        },
    )
    return ray


@pytest.fixture
def ray_spilling(valkey_url, spill_prefix):
    """A local Ray (100 MiB object store) spilling to the test server under spill_prefix."""
    ray = start_ray(valkey_url, prefix=spill_prefix, chunk_size_bytes=1 * MiB)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_on_private_server(request):
    """(ray, server, prefix): a local Ray spilling to a server of its own (no persistence
    unless the test's ``param`` config says so), with short timeouts, for tests that kill,
    pause, flush or restart that server."""
    config = getattr(request, "param", None) or {}
    with EmbeddedValkey(config=config) as server:
        prefix = unique_prefix("own")
        ray = start_ray(server.url, object_store_mib=100, prefix=prefix,
                        chunk_size_bytes=1 * MiB, **FAST_FAIL)
        try:
            yield ray, server, prefix
        finally:
            ray.shutdown()
            close_all()


# -- the spill engine without Ray (fault tests at the engine level and under partitions) --
def unique_prefix(tag: str) -> str:
    return f"ray:{tag}{uuid.uuid4().hex[:8]}:"


def make_storage(url: str, prefix: str, **options) -> SpillHarness:
    """The spill engine of node0 in session sess0, driven without Ray."""
    return SpillHarness(url, prefix, session="sess0", node_id="node0", **options)


def spill(storage: SpillHarness, payloads: dict[str, bytes]) -> dict[str, bytes]:
    """Spill ``{hex: data}`` in one call; return ``{hex: url}``."""
    urls = storage.engine.spill([
        SpillObject(h, memoryview(data), b"meta-" + h.encode(), b"owner-" + h.encode())
        for h, data in payloads.items()])
    assert len(urls) == len(payloads)
    return dict(zip(payloads, urls))


def restore(storage: SpillHarness, hex_id: str, url: bytes) -> bytes:
    target = bytearray(parse_spill_url(url, storage.config.prefix).size)  # an upper bound
    reader = storage.restore_into(url, target)
    assert reader.metadata == b"meta-" + hex_id.encode()
    assert reader.owner_address == b"owner-" + hex_id.encode()
    return bytes(target[:reader.size])
