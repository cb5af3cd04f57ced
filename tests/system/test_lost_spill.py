"""Spilled objects whose keys are gone for good, through a real Ray: a deleted manifest, an
operator's FLUSHDB, a server restart without persistence. Each ``ray.get`` must fail within
seconds with ``ObjectLostError`` (Ray alone retries the restore at 10 s x 2^n for ever and the
get hangs), the restore worker's log must name the object and its key, and the objects that
were not lost must still come back byte for byte.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from conftest import MiB
from test_ray_faults import _logs_dir, _wait_for_log
from ray_valkey_spill.keyspace import scan_keys

OBJ_MIB = 8
# One restore attempt, not Ray's retry: its first retry of a failed restore comes after 10 s.
LOST_BOUND_S = 8.0


def _manifests(client, prefix: str) -> dict[str, str]:
    """{object hex: manifest key} of everything spilled under ``prefix``."""
    return {k.decode().split(":")[-2].split(".")[0]: k.decode()
            for k in scan_keys(client, prefix + "*") if k.endswith(b":m")}


def _spill(ray, client, prefix: str, make, n: int = 14) -> tuple[list, list, dict[str, str]]:
    """Make n 8 MiB objects through a 100 MiB store, wait until at least 6 of them are spilled,
    then push the spilled ones out of memory. Returns (refs, arrays, manifests)."""
    arrays = [np.full(OBJ_MIB * MiB, i, dtype=np.uint8) for i in range(n)]
    refs = [make(i) for i in range(n)]
    ray.wait(refs, num_returns=n, fetch_local=False, timeout=60)
    deadline = time.monotonic() + 30
    while len(_manifests(client, prefix)) < 6:
        assert time.monotonic() < deadline, "Ray did not spill"
        time.sleep(0.1)
    return refs, arrays, _manifests(client, prefix)


def _evict(ray) -> list:
    return [ray.put(np.zeros(OBJ_MIB * MiB, dtype=np.uint8)) for _ in range(11)]


def _get_lost(ray, ref) -> float:
    """Seconds until ``ray.get(ref)`` raised ObjectLostError (fails if it returned or hung)."""
    started = time.monotonic()
    with pytest.raises(ray.exceptions.ObjectLostError):
        ray.get(ref, timeout=30)
    return time.monotonic() - started


def test_lost_spilled_objects_fail_fast_and_loud(ray_on_private_server):
    ray, server, prefix = ray_on_private_server
    client = server.client()

    @ray.remote
    def produce(i):  # objects with lineage: Ray still does not re-execute it for a spill
        return np.full(OBJ_MIB * MiB, i, dtype=np.uint8)

    refs, arrays, manifests = _spill(ray, client, prefix, lambda i: produce.remote(i))
    spilled = [i for i, r in enumerate(refs) if r.hex() in manifests]
    deleted, kept = spilled[0], spilled[1:]
    filler = _evict(ray)

    # 1. A deleted manifest: that object fails fast, naming its key; the others restore.
    client.delete(manifests[refs[deleted].hex()])
    assert _get_lost(ray, refs[deleted]) < LOST_BOUND_S
    hits = _wait_for_log(_logs_dir(ray), f"spilled object {refs[deleted].hex()} is lost", 10)
    assert hits and manifests[refs[deleted].hex()] in hits[0], hits
    assert _get_lost(ray, refs[deleted]) < LOST_BOUND_S  # and again: no hang on a second get
    for i in kept[:2]:
        assert np.array_equal(ray.get(refs[i], timeout=60), arrays[i])
    del filler

    # 2. FLUSHDB, 3. a restart without persistence: every spilled object fails fast.
    def flushdb():
        client.flushdb()

    def restart_empty():
        server.kill()
        for entry in os.listdir(server.data_dir):
            if entry.startswith(("appendonly", "dump")):
                path = os.path.join(server.data_dir, entry)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        server.start()

    for lose in (flushdb, restart_empty):
        refs, _, manifests = _spill(ray, server.client(), prefix, lambda i: ray.put(arrays[i]))
        lost = next(r for r in refs if r.hex() in manifests)
        filler = _evict(ray)
        lose()
        assert _get_lost(ray, lost) < LOST_BOUND_S, lose.__name__
        del filler, refs, lost
