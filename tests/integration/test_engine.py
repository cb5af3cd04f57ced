"""The spill engine through SpillHarness (no Ray), against the real embedded server: each part
of the write and read path, byte for byte."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import MiB
from ray_valkey_spill.errors import InvalidSpillURLError, ObjectMissingError
from ray_valkey_spill.keyspace import scan_keys
from ray_valkey_spill.spill import keys as K
from ray_valkey_spill.spill.engine import FRAME_HEADER_BYTES, SpillObject
from ray_valkey_spill.spill.transport import (BATCH_BYTES, BATCH_COMMANDS, plan_jobs,
                                              read_batch_bytes)
from ray_valkey_spill.testing.harness import OWNER_ADDRESS, SpillHarness


@pytest.fixture
def harness(valkey_url, spill_prefix):
    with SpillHarness(valkey_url, spill_prefix, chunk_size_bytes=256 * 1024,
                      connections=2) as h:
        yield h


@pytest.mark.parametrize("size", [0, 1, 256 * 1024, 256 * 1024 + 1, 3 * MiB + 17])
def test_objects_of_every_size_come_back_byte_for_byte(harness, size):
    data = os.urandom(size)
    url = harness.spill(data, metadata=b"md")
    spill_url = K.parse_spill_url(url, harness.config.prefix)
    assert spill_url.n_chunks == -(-size // (256 * 1024))
    assert spill_url.size == FRAME_HEADER_BYTES + len(OWNER_ADDRESS) + len(b"md") + size
    assert bytes(harness.restore(url)) == data


def test_a_metadata_only_object_is_stored_and_a_missing_one_refused(harness):
    url = harness.spill_many([None], metadata=b"an error object")[0]
    reader = harness.restore_into(url, bytearray(0))
    assert (reader.size, reader.metadata) == (0, b"an error object")
    with pytest.raises(ValueError, match="does not exist"):
        harness.engine.spill([SpillObject("ab", None, b"", b"")])


def test_one_call_spills_many_objects_with_their_own_keys(harness, valkey_client):
    blobs = [os.urandom(300_000 + i) for i in range(5)]
    urls = harness.spill_many(blobs)
    assert len(set(urls)) == 5
    keys = scan_keys(valkey_client, harness.config.prefix + "*")
    assert sum(K.is_manifest_key(k) for k in keys) == 5
    assert all(K.parse_key(harness.config.prefix, k.decode()) for k in keys)
    for url, blob in zip(urls, blobs):
        assert bytes(harness.restore(url)) == blob


def test_a_reader_handed_a_partial_buffer_still_delivers_every_byte(harness):
    data = os.urandom(700_000)
    url = harness.spill(data)
    reader = harness.engine.open(url)
    out = bytearray(reader.size)
    view, done = memoryview(out), 0
    while done < reader.size:  # 100 kB at a time: the slow path, chunk by chunk
        done += reader.readinto(view[done:done + 100_000])
    assert bytes(out) == data


def test_compressible_objects_are_stored_smaller(valkey_url, spill_prefix):
    with SpillHarness(valkey_url, spill_prefix, chunk_size_bytes=MiB) as h:
        data = np.zeros(4 * MiB, np.uint8)
        url = h.spill(data)
        assert h.stored_bytes(url) < data.nbytes / 50
        assert bytes(h.restore(url)) == data.tobytes()


def test_delete_removes_the_objects_keys_and_destroy_the_nodes(harness, valkey_client):
    a, b = harness.spill_many([os.urandom(600_000), os.urandom(10)])
    harness.delete([a, b"not a url"])
    left = scan_keys(valkey_client, harness.config.prefix + "*")
    assert left and not any(K.parse_spill_url(a, harness.config.prefix).base_key.encode() in k
                            for k in left)
    with pytest.raises(ObjectMissingError):
        harness.restore(a)
    harness.destroy()
    assert scan_keys(valkey_client, harness.config.prefix + "*") == []


def test_destroy_also_removes_what_a_spill_in_flight_writes_after_its_first_sweep(
        harness, valkey_client, monkeypatch):
    """ray.shutdown() destroys the storage before it stops the IO workers: a chunk written
    just after destroy's first sweep must not outlive it."""
    from ray_valkey_spill.spill import engine as spill_engine

    harness.spill(os.urandom(1000))
    pattern = K.node_pattern(harness.config.prefix, harness.engine.session_name,
                             harness.engine.node_id)
    late_key = pattern.replace("*", "late-object:0")
    sweeps = []
    original = spill_engine.unlink_matching

    def sweep_then_a_late_write(client, match):
        sweeps.append(original(client, match))
        if len(sweeps) == 1:  # an IO worker's write lands right after the first sweep
            valkey_client.set(late_key, b"a chunk of a spill still in flight")
        return sweeps[-1]

    monkeypatch.setattr(spill_engine, "unlink_matching", sweep_then_a_late_write)
    harness.destroy()
    assert scan_keys(valkey_client, harness.config.prefix + "*") == []
    assert sweeps[0] > 0 and sweeps[1] == 1 and sweeps[2:] == [0]  # swept until quiet


def test_urls_outside_the_prefix_are_refused(harness):
    url = harness.spill(b"x" * 10)
    other = url.replace(harness.config.prefix.encode(), b"ray:other:")
    with pytest.raises(InvalidSpillURLError):
        harness.restore(other)


def test_jobs_are_zero_copy_views_bounded_by_bytes_and_commands():
    big = memoryview(bytearray(40 * MiB))
    small = [(f"k{i}", memoryview(bytearray(10))) for i in range(600)]
    jobs = plan_jobs([("big", big)] + small, MiB)
    assert all(j.nbytes <= BATCH_BYTES and len(j.items) <= BATCH_COMMANDS for j in jobs)
    first = jobs[0].items[0][3]
    assert first.obj is big.obj  # a view of the object's own memory, not a copy
    assert sum(len(j.items) for j in jobs) == 40 + 600


@pytest.mark.parametrize("object_mib, chunk_mib, connections, jobs", [
    (16, 4, 4, 4), (16, 4, 2, 2), (6, 4, 4, 2), (3, 4, 4, 1), (40, 1, 4, 4), (256, 4, 4, 16)])
def test_one_restored_object_spreads_over_every_connection(object_mib, chunk_mib, connections,
                                                           jobs):
    batch = read_batch_bytes(object_mib * MiB, chunk_mib * MiB, connections)
    planned = plan_jobs([("o", memoryview(bytearray(object_mib * MiB)))], chunk_mib * MiB, batch)
    assert len(planned) == jobs
    assert all(j.nbytes <= BATCH_BYTES for j in planned)
