"""Spilling through a real Ray into the real embedded valkey-server, every byte checked."""

import glob
import os
import pickle
import time

import numpy as np
import pytest

from conftest import MiB, start_ray, wait_for
from ray_valkey_spill import BackendUnavailableError, ConfigError, EmbeddedValkey, UnsafeServerError
from ray_valkey_spill.keyspace import scan_keys
from ray_valkey_spill.spill import keys as K
from ray_valkey_spill.spill.codec import Manifest


def object_keys(client, prefix):
    """Keys of spilled objects (chunks and manifests), not the per-node heartbeat."""
    return [k for k in scan_keys(client, prefix + "*") if not k.endswith(b":hb")]


def make_objects(ray):
    """Many objects of many kinds, ~3x the 100 MiB object store in total."""
    rng = np.random.default_rng(7)
    inner = ray.put(np.arange(1000, dtype=np.int32))
    expected = {
        "float64": rng.random(2 * MiB // 8),
        "float32": rng.random(MiB // 4, dtype=np.float32),
        "float16": rng.standard_normal(MiB // 2).astype(np.float16),
        "int8": rng.integers(-128, 127, MiB, dtype=np.int8),
        "uint64": rng.integers(0, 2**63, MiB // 8, dtype=np.uint64),
        "bool": rng.random(MiB) > 0.5,
        "complex": rng.random(4096) + 1j * rng.random(4096),
        "empty": np.zeros((0, 7), dtype=np.float64),
        "zero_d": np.array(3.5),
        "bytes": rng.bytes(3 * MiB + 17),
        "python": {"a": [1, 2.5, "x" * 1000], "b": (None, True), "c": set(range(100))},
        "holds_ref": {"ref": inner, "note": "nested"},
        "huge": rng.integers(0, 50_000, 40 * MiB // 8, dtype=np.int64),  # 40 chunks of 1 MiB
    }
    for i in range(30):  # filler that forces spilling of everything above
        expected[f"fill{i}"] = np.full(8 * MiB // 8, i, dtype=np.int64)
    refs = {name: ray.put(value) for name, value in expected.items()}
    return inner, expected, refs


def assert_same(name, got, want):
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name
    elif name == "holds_ref":
        import ray
        assert ray.get(got["ref"]).tolist() == list(range(1000)) and got["note"] == "nested"
    else:
        assert pickle.dumps(got) == pickle.dumps(want), name


def test_round_trip_of_many_kinds_through_spilling(ray_spilling, valkey_client, spill_prefix):
    ray = ray_spilling
    inner, expected, refs = make_objects(ray)
    assert wait_for(lambda: len(object_keys(valkey_client, spill_prefix)) > 40), \
        "nothing was spilled to Valkey"
    for name in ["huge", "float64", "bytes"]:  # spilled early, so certainly restored from Valkey
        assert_same(name, ray.get(refs[name]), expected[name])
    for name, ref in reversed(list(refs.items())):
        assert_same(name, ray.get(ref), expected[name])


def test_delete_frees_keys_object_by_object(ray_spilling, valkey_client, spill_prefix):
    ray = ray_spilling
    refs = [ray.put(np.full(10 * MiB // 8, i, dtype=np.int64)) for i in range(30)]
    assert wait_for(lambda: len(object_keys(valkey_client, spill_prefix)) > 0)
    spilled = len(object_keys(valkey_client, spill_prefix))
    del refs[:10]  # free a third: their keys must go although others stay
    assert wait_for(lambda: len(object_keys(valkey_client, spill_prefix)) < spilled)
    assert [int(ray.get(r)[0]) for r in refs] == list(range(10, 30))
    del refs
    assert wait_for(lambda: not object_keys(valkey_client, spill_prefix)), \
        "spilled keys were not deleted after their refs were dropped"


def test_shutdown_removes_the_heads_keys(valkey_url, valkey_client, spill_prefix):
    ray = start_ray(valkey_url, prefix=spill_prefix, chunk_size_bytes=MiB)
    try:
        refs = [ray.put(np.full(10 * MiB // 8, i, dtype=np.int64)) for i in range(25)]
        assert wait_for(lambda: len(object_keys(valkey_client, spill_prefix)) > 0)
    finally:
        ray.shutdown()
    assert not scan_keys(valkey_client, spill_prefix + "*")
    del refs


def test_chunks_stay_below_a_1mb_proto_max_bulk_len():
    with EmbeddedValkey(config={"proto-max-bulk-len": "1mb"}) as server:
        client = server.client()
        with pytest.raises(ConfigError, match="proto-max-bulk-len"):
            start_ray(server.url, chunk_size_bytes=MiB)
        ray = start_ray(server.url, chunk_size_bytes=512 * 1024)
        try:
            rng = np.random.default_rng(5)
            big = rng.random(24 * MiB // 8)
            refs = [ray.put(big)] + [ray.put(np.full(MiB, i, dtype=np.int64)) for i in range(20)]
            assert wait_for(lambda: client.dbsize() > 24)
            sizes = [client.strlen(k) for k in scan_keys(client, "ray:*")]
            assert max(sizes) <= 512 * 1024
            assert ray.get(refs[0]).tobytes() == big.tobytes()
        finally:
            ray.shutdown()


def test_spilling_over_the_embedded_servers_unix_socket(valkey_server):
    """The default transport of the stress run: a private socket (mode 700), no TCP. Keys are
    checked on that same embedded server (not RVS_TEST_URL), under a prefix of this test's."""
    import stat
    import uuid

    assert stat.S_IMODE(os.stat(valkey_server.unix_socket).st_mode) == 0o700
    prefix = f"ray:unixsock{uuid.uuid4().hex[:8]}:"
    valkey_client = valkey_server.client()
    ray = start_ray(valkey_server.unix_url, prefix=prefix, chunk_size_bytes=MiB)
    rng = np.random.default_rng(9)
    values = [rng.random(5 * MiB // 8) for _ in range(30)]  # 150 MiB through 100 MiB
    refs = []
    try:
        refs = [ray.put(v) for v in values]
        assert wait_for(lambda: len(object_keys(valkey_client, prefix)) > 10)
        for ref, want in zip(refs, values):
            assert ray.get(ref).tobytes() == want.tobytes()
    finally:
        del refs
        ray.shutdown()
    assert not scan_keys(valkey_client, prefix + "*")
    valkey_client.close()


def test_embedded_server_socket_fits_under_a_deep_data_dir(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    with EmbeddedValkey(data_dir=str(deep)) as server:
        assert len(os.fsencode(server.unix_socket)) <= 100
        import valkey

        assert valkey.Valkey.from_url(server.unix_url).ping()
    assert not os.path.exists(server.unix_socket)


def _stored_bytes(client, prefix):
    return sum(client.strlen(k) for k in object_keys(client, prefix))


# float64 may come out at ~0.94: CI twice measured 0.973-0.977, the manifest confirming that
# some chunks were kept zstd-compressed (a chunk reusing its object's verdict keeps zstd when it
# saves 3%); why the verdict differs between runs is open (see the closing note).
@pytest.mark.parametrize("kind,low,high", [("float64", 0.93, 1.02), ("tokens", 0.05, 0.35),
                                           ("sparse", 0.0, 0.05)])
def test_compression_pays_for_itself(valkey_url, valkey_client, spill_prefix, kind, low, high):
    rng = np.random.default_rng(11)
    n = 16 * MiB // 8
    if kind == "float64":
        data = rng.random(n)
    elif kind == "tokens":
        data = rng.integers(0, 50_000, n, dtype=np.int64)
    else:
        data = np.zeros(n)
        data[rng.integers(0, n, n // 100)] = rng.random(n // 100)
    ray = start_ray(valkey_url, prefix=spill_prefix, chunk_size_bytes=MiB)
    try:
        ref = ray.put(data)
        fill = [ray.put(np.zeros(10 * MiB // 8)) for _ in range(12)]  # pushes `ref` out first
        # the first spilled object is `data`: find its chunks by object id, once its manifest
        # (written after all its chunks) is there; counting earlier missed a chunk under load
        oid = ref.hex().encode()
        assert wait_for(lambda: any(oid in k and k.endswith(b":m")
                                    for k in object_keys(valkey_client, spill_prefix)))
        # Measure the spill that committed (its manifest names its chunks), not whatever keys a
        # listing catches: summing listed keys once gave 0.973 in CI, which raw chunks of random
        # floats cannot give (cause not pinned down; the manifest is the source of truth).
        manifest_key = next(k for k in object_keys(valkey_client, spill_prefix)
                            if oid in k and k.endswith(b":m")).decode()
        manifest = Manifest.decode(valkey_client.get(manifest_key), manifest_key)
        chunk_keys = K.object_keys(manifest_key[:-len(K.MANIFEST_SUFFIX)],
                                   len(manifest.chunks))[1:]
        assert len(chunk_keys) >= 16  # 16 MiB of data plus the serialization header
        assert [valkey_client.strlen(k) for k in chunk_keys] == \
            [c.stored_len for c in manifest.chunks]  # what is stored is what the manifest says
        ratio = sum(c.stored_len for c in manifest.chunks) / data.nbytes
        assert low <= ratio <= high, f"{kind}: stored/original = {ratio:.3f}"
        assert ray.get(ref).tobytes() == data.tobytes()
        del fill
    finally:
        ray.shutdown()


def _logs_contain(ray, text):
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    for path in glob.glob(os.path.join(session_dir, "logs", "*")):
        try:
            with open(path, errors="replace") as f:
                if text in f.read():
                    return True
        except OSError:
            pass
    return False


def test_a_flipped_byte_is_detected_and_never_returned(valkey_url, valkey_client, spill_prefix):
    ray = start_ray(valkey_url, prefix=spill_prefix, chunk_size_bytes=MiB)
    try:
        data = np.random.default_rng(3).random(4 * MiB // 8)
        ref = ray.put(data)
        fill = [ray.put(np.zeros(10 * MiB // 8)) for _ in range(12)]
        oid = ref.hex().encode()
        assert wait_for(lambda: any(oid in k for k in object_keys(valkey_client, spill_prefix)))
        chunk = sorted(k for k in object_keys(valkey_client, spill_prefix)
                       if oid in k and k.endswith(b":1"))[0]
        byte = valkey_client.getrange(chunk, 1000, 1000)
        valkey_client.setrange(chunk, 1000, bytes([byte[0] ^ 0x10]))
        # Cycle the object store so that no in-memory copy of `ref` survives: the next get
        # must restore from Valkey.
        fill += [ray.put(np.zeros(10 * MiB // 8)) for _ in range(12)]
        del fill
        try:
            value = ray.get(ref, timeout=8)
        except ray.exceptions.GetTimeoutError:
            pass
        else:
            assert value.tobytes() == data.tobytes(), "corrupted data was returned"
            pytest.fail("the object was not restored from the corrupted chunk")
        assert wait_for(lambda: _logs_contain(ray, "checksum mismatch"), timeout_s=40)
        assert _logs_contain(ray, chunk.decode())
    finally:
        ray.shutdown()


def test_unreachable_server_fails_ray_init_quickly():
    import ray

    from ray_valkey_spill.testing.embedded import free_port

    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="cannot reach Valkey"):
        start_ray(f"valkey://127.0.0.1:{free_port()}/0", connect_timeout_s=1.0)
    assert time.monotonic() - started < 15
    assert not ray.is_initialized()


def test_bad_option_fails_ray_init_naming_the_field(valkey_url):
    with pytest.raises(ConfigError, match="compression"):
        start_ray(valkey_url, compression="gzip")


def test_allkeys_policy_is_refused_unless_accepted():
    with EmbeddedValkey(config={"maxmemory-policy": "allkeys-lru"}) as server:
        with pytest.raises(UnsafeServerError, match="volatile-lru"):
            start_ray(server.url)
        ray = start_ray(server.url, allow_allkeys_eviction=True)
        ray.shutdown()


def test_full_server_sheds_cache_entries_never_spilled_objects():
    """noeviction + full of cache entries: the spill backend sheds cache keys, then spills."""
    import valkey

    with EmbeddedValkey(config={"maxmemory": "96mb", "maxmemory-policy": "noeviction"}) as server:
        client = server.client()
        filler = np.random.default_rng(0).bytes(MiB)
        cached = 0
        try:
            while True:
                client.set(f"emb:test:{cached}", filler, ex=3600)
                cached += 1
        except valkey.exceptions.OutOfMemoryError:
            pass
        assert cached > 40
        ray = start_ray(server.url, chunk_size_bytes=MiB)
        try:
            rng = np.random.default_rng(1)
            values = [rng.random(10 * MiB // 8) for _ in range(13)]
            refs = [ray.put(v) for v in values]
            assert wait_for(lambda: len(object_keys(client, "ray:")) > 20, timeout_s=60)
            for ref, value in zip(refs, values):
                assert ray.get(ref).tobytes() == value.tobytes()
            remaining = len(scan_keys(client, "emb:test:*"))
            assert remaining < cached, "no cache entry was shed"
            assert all(client.ttl(k) == -1 for k in object_keys(client, "ray:"))
            assert _logs_contain(ray, "shed")
        finally:
            ray.shutdown()


def test_destroy_removes_exactly_this_nodes_keys_of_this_session(valkey_url, valkey_client,
                                                               spill_prefix):
    from ray_valkey_spill.spill import keys as K
    from ray_valkey_spill.spill.ray_storage import ValkeyStorage

    me, other_node, other_session = ("ab" * 28, "s_me"), ("cd" * 28, "s_me"), ("ab" * 28, "s_x")
    written = {}
    for node, session in (me, other_node, other_session):
        base = K.new_base_key(spill_prefix, session, node, "00ff")
        written[(node, session)] = K.object_keys(base, 2)
        for key in written[(node, session)]:
            valkey_client.set(key, b"v")
    valkey_client.set("emb:" + spill_prefix + "x", b"v", ex=60)  # another use entirely

    ValkeyStorage(me[0], me[1], url=valkey_url, prefix=spill_prefix).destroy_external_storage()

    left = {k.decode() for k in scan_keys(valkey_client, spill_prefix + "*")}
    assert not left & set(written[me])
    assert left == set(written[other_node]) | set(written[other_session])
    assert valkey_client.exists("emb:" + spill_prefix + "x")
    valkey_client.delete("emb:" + spill_prefix + "x")
