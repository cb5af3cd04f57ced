"""``ray-valkey-spill gc`` against keys that real Ray sessions left behind.

A 2-node ``ray.cluster_utils.Cluster`` (head without CPUs, one worker that spills) is run under
a private RAY_TMPDIR (a Cluster writes ``ray_current_cluster``, which would redirect other
people's ``ray.init()`` on this machine) and torn down the way a crash does: the worker's raylet
killed ungracefully, then everything stopped without ``destroy_external_storage``. A second,
live session then runs beside those leftovers while gc decides.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid

import numpy as np
import pytest

from conftest import MiB
from ray_valkey_spill.spill.heartbeat import INTERVAL_ENV
from ray_valkey_spill import EmbeddedValkey, spilling_config
from ray_valkey_spill.cli import main as cli_main
from ray_valkey_spill.connection import close_all
from ray_valkey_spill.spill.keys import parse_key
from ray_valkey_spill.tools.gc import DELETE, KEEP_LIVE, KEEP_YOUNG, main as gc_main
from ray_valkey_spill.keyspace import scan_keys

OBJ_MIB = 8
SHORT = ["--allow-short-grace", "--quiet"]


def run_gc(capsys, url, prefix, grace_s, *extra):
    capsys.readouterr()
    rc = cli_main(["gc", "--url", url, "--prefix", prefix, "--grace-s", str(grace_s), "--json",
                   *SHORT, *extra])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads(out)
    return report, {s["session"]: s for s in report["sessions"]}


def _keys(client, pattern):
    return sorted(k.decode() for k in scan_keys(client, pattern))


def _synthetic_session(client, prefix, session, with_heartbeat_at=None, objects=2):
    keys = []
    for i in range(objects):
        base = f"{prefix}{session}:nodeX:obj{i}.0a1b2c3d"
        client.set(base + ":0", b"z" * 1000)
        client.set(base + ":m", b"manifest")
        keys += [base + ":0", base + ":m"]
    if with_heartbeat_at is not None:
        client.set(f"{prefix}{session}:nodeX:hb", str(int(with_heartbeat_at)))
        keys.append(f"{prefix}{session}:nodeX:hb")
    return keys


@pytest.fixture(scope="module")
def server():
    with EmbeddedValkey() as s:
        yield s
    close_all()


@pytest.fixture(scope="module")
def dead_cluster(server, tmp_path_factory):
    """Run a 2-node cluster whose worker spills, kill the worker's raylet, check what gc says
    while the head and the owner still live, then stop everything without any cleanup."""
    import ray
    from ray.cluster_utils import Cluster

    prefix = f"ray:gc{uuid.uuid4().hex[:8]}:"
    client = server.client()
    # Heartbeat-less leftovers created long before gc runs (an old version, or a session whose
    # beats never reached the server): gc may delete them once their keys are idle for grace.
    old_unbeaten = _synthetic_session(client, prefix, "session_unbeaten_old")
    ray_tmp = tempfile.mkdtemp(prefix="rvsgc", dir="/tmp")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = ray_tmp  # where the Cluster writes ray_current_cluster
    os.environ[INTERVAL_ENV] = "1"  # beats well inside the short test grace
    os.makedirs(os.path.join(ray_tmp, "ray"))
    result = {"prefix": prefix, "old_unbeaten": old_unbeaten}
    cluster = None
    try:
        config = spilling_config(server.url, prefix=prefix, chunk_size_bytes=1 * MiB)
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "object_store_memory": 100 * MiB, "temp_dir": os.path.join(ray_tmp, "ray"),
            "include_dashboard": False,
            "_system_config": {"object_spilling_config": config, "min_spilling_size": 0}})
        # Driver first, on the head: Ray 2.40 and 2.50 may attach it to any raylet on this host.
        ray.init(address=cluster.address)
        worker = cluster.add_node(num_cpus=1, object_store_memory=100 * MiB)
        cluster.wait_for_nodes()

        @ray.remote(num_cpus=1)
        def make(i):
            # random bytes: incompressible, so the stored size is the object size
            return np.random.default_rng(i).integers(0, 256, OBJ_MIB * MiB, dtype=np.uint8)

        refs = [make.remote(i) for i in range(16)]  # 128 MiB into the worker's 100 MiB store
        ray.wait(refs, num_returns=len(refs), fetch_local=False, timeout=120)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            manifests = [k for k in _keys(client, prefix + "*") if k.endswith(":m")]
            if len(manifests) >= 4:
                break
            time.sleep(0.1)
        session = ray._private.worker._global_node.session_name
        worker_id = worker.node_id
        worker_keys = _keys(client, f"{prefix}{session}:{worker_id}:*")
        assert any(k.endswith(":m") for k in worker_keys), "the worker spilled nothing"
        assert f"{prefix}{session}:{worker_id}:hb" in worker_keys, "the worker never beat"
        # A crash: the raylet is SIGKILLed and nobody cleans up. Cluster.remove_node would
        # also call Node.destroy_external_storage() for the node (a test-harness courtesy no
        # real crash or autoscaler scale-down performs), which would delete the keys of
        # objects the live owner still needs; switch that off for every node.
        for node in (worker, cluster.head_node):
            node.destroy_external_storage = lambda: None
        cluster.remove_node(worker, allow_graceful=False)  # the raylet dies; its keys stay
        killed_at = time.time()

        # While the head and the driver (the owner) live, gc with a short grace: the dead
        # node's objects are still needed (see test_gc_keeps_a_session_whose_...).
        last_beat = float(client.get(f"{prefix}{session}:{worker_id}:hb"))
        time.sleep(max(0.0, last_beat + 6.5 - time.time(), killed_at + 5.5 - time.time()))
        report = _gc_json(server.url, prefix, 4)
        result["verdict_while_owner_alive"] = report.get(session, {}).get("verdict")
        result["report_while_owner_alive"] = report.get(session)
        print("gc while the owner is alive:", report.get(session))
        spilled = {k.split(":")[-2].split(".")[0] for k in worker_keys if k.endswith(":m")}
        alive_ref = next(r for r in refs if r.hex() in spilled)
        # ... and they ARE still restorable: the head restores straight from Valkey.
        value = ray.get(alive_ref, timeout=60)
        expected = np.random.default_rng(refs.index(alive_ref)).integers(
            0, 256, OBJ_MIB * MiB, dtype=np.uint8)
        result["restored_after_node_death"] = bool(np.array_equal(value, expected))
        del value, refs, alive_ref
        ray.shutdown()
        cluster.shutdown()
        cluster = None
        # destroy was switched off above, so the driver's session stamp was not removed at
        # shutdown; the driver of a crashed cluster is gone too: stop its stamp.
        from ray_valkey_spill.spill.heartbeat import stop_driver_heartbeat

        stop_driver_heartbeat(prefix, session)
        result.update(session=session, worker_id=worker_id, killed_at=killed_at,
                      dead_at=time.time(), keys=_keys(client, f"{prefix}{session}:*"))
        yield result
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        os.environ.pop(INTERVAL_ENV, None)
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(ray_tmp, ignore_errors=True)
        for key in scan_keys(client, prefix + "*"):
            client.unlink(key)
        client.close()


def _gc_json(url, prefix, grace_s):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = gc_main(["--url", url, "--prefix", prefix, "--grace-s", str(grace_s), "--json",
                      *SHORT])
    assert rc == 0
    return {s["session"]: s for s in json.loads(buf.getvalue())["sessions"]}


def test_killed_raylet_leaves_keys_that_gc_reports_then_removes(server, dead_cluster, capsys):
    import ray

    prefix, dead_session = dead_cluster["prefix"], dead_cluster["session"]
    client = server.client()
    assert dead_cluster["restored_after_node_death"]
    assert dead_cluster["keys"], "the dead session left no keys (nothing to collect)"
    # Other tenants and another spill prefix, written with this backend's key shapes.
    others = {f"emb:{uuid.uuid4().hex}": b"e", f"session:{uuid.uuid4().hex}": b"s",
              f"vllm:kv:{uuid.uuid4().hex}": b"v",
              f"ray:other{uuid.uuid4().hex[:6]}:{dead_session}:n:obj.0a1b2c3d:0": b"o",
              f"{prefix}team:{dead_session}:n:obj.0a1b2c3d:0": b"nested"}
    for k, v in others.items():
        client.set(k, v)

    # Widen the gap between the dead session's last activity and the live session's first
    # heartbeat: gc's grace must fall between the two.
    time.sleep(max(0.0, dead_cluster["dead_at"] + 6 - time.time()))
    live = start_local_ray(server.url, prefix)
    try:
        rng = np.random.default_rng(11)
        arrays = [rng.integers(0, 256, OBJ_MIB * MiB, dtype=np.uint8) for _ in range(16)]
        live_refs = [live.put(a) for a in arrays]
        live_session = live._private.worker._global_node.session_name
        deadline = time.monotonic() + 30
        while not any(k.endswith(":hb") for k in _keys(client, f"{prefix}{live_session}:*")):
            assert time.monotonic() < deadline, "the live session never beat"
            time.sleep(0.1)
        young_unbeaten = _synthetic_session(client, prefix, "session_unbeaten_young")
        now = time.time()
        beats = [float(client.get(k)) for k in _keys(client, f"{prefix}{live_session}:*:hb")]
        live_age = now - max(beats)
        dead_age = now - dead_cluster["dead_at"]
        assert dead_age - live_age > 4, (dead_age, live_age)
        grace = round((dead_age + live_age) / 2, 1)
        live_keys = _keys(client, f"{prefix}{live_session}:*")

        # Dry run (the default): reports, deletes nothing.
        before = _keys(client, prefix + "*")
        report, by_session = run_gc(capsys, server.url, prefix, grace)
        assert set(before) <= set(_keys(client, prefix + "*"))  # (the live session may add)
        assert report["mode"] == "dry-run" and report["keys_deleted"] == 0
        assert by_session[dead_session]["verdict"] == DELETE
        assert by_session[dead_session]["keys"] == len(dead_cluster["keys"])
        assert by_session[dead_session]["bytes"] > 4 * OBJ_MIB * MiB * 0.9
        assert by_session[dead_session]["nodes"] == 2  # the worker and the head (it restored)
        assert by_session[live_session]["verdict"] == KEEP_LIVE
        assert by_session["session_unbeaten_old"]["verdict"] == DELETE
        assert by_session["session_unbeaten_young"]["verdict"] == KEEP_YOUNG
        assert report["foreign_keys_ignored"] >= 1  # the nested prefix's key

        # The table form names each session and its verdict.
        capsys.readouterr()
        assert gc_main(["--url", server.url, "--prefix", prefix, "--grace-s", str(grace),
                        *SHORT]) == 0
        table = capsys.readouterr().out
        assert dead_session in table and live_session in table and "--yes" in table

        # --yes deletes exactly the gone sessions' keys.
        report, by_session = run_gc(capsys, server.url, prefix, grace, "--yes")
        assert report["keys_deleted"] == len(dead_cluster["keys"]) + \
            len(dead_cluster["old_unbeaten"])
        assert _keys(client, f"{prefix}{dead_session}:*") == []
        assert _keys(client, f"{prefix}session_unbeaten_old:*") == []
        assert _keys(client, f"{prefix}session_unbeaten_young:*") == sorted(young_unbeaten)
        assert set(live_keys) <= set(_keys(client, f"{prefix}{live_session}:*"))
        for k, v in others.items():
            assert client.get(k) == v, f"gc touched {k}"
        # The live session's objects still restore byte for byte.
        for ref, a in zip(live_refs, arrays):
            assert np.array_equal(live.get(ref, timeout=60), a)
    finally:
        ray.shutdown()
        for k in others:
            client.unlink(k)
        client.close()


def test_gc_keeps_a_session_whose_surviving_nodes_never_spilled(dead_cluster):
    """Spill/restore IO workers beat only on nodes that spilled or restored. After the only
    spilling node died, the head and the owner were alive and the object WAS restorable
    (checked in the fixture): the driver's session stamp (``<session>:driver:hb``, written by
    the process that ran ``ray.init()``) must keep gc from judging the session gone."""
    assert dead_cluster["restored_after_node_death"]
    assert dead_cluster["verdict_while_owner_alive"] != DELETE, \
        dead_cluster["report_while_owner_alive"]


# -- no Ray ---------------------------------------------------------------------------------
def start_local_ray(url, prefix):
    import ray

    ray.init(address="local", num_cpus=1, object_store_memory=100 * MiB,
             include_dashboard=False,
             _system_config={"object_spilling_config": spilling_config(
                 url, prefix=prefix, chunk_size_bytes=1 * MiB), "min_spilling_size": 0})
    return ray


@pytest.mark.parametrize("key,expected", [
    ("ray:s1:n1:abc.0a1b2c3d:0", ("s1", "n1", False)),
    ("ray:s1:n1:abc.0a1b2c3d:17", ("s1", "n1", False)),
    ("ray:s1:n1:abc.0a1b2c3d:m", ("s1", "n1", False)),
    ("ray:s1:n1:hb", ("s1", "n1", True)),
    ("ray:team:s1:n1:abc.0a1b2c3d:0", None),  # a nested prefix is not ours
    ("ray:s1:n1:abc.0a1b2c3d", None),
    ("ray:s1:n1:abc.0a1b2c3d:x", None),
    ("ray:s1:n1:abc:0", None),
    ("ray:s1:n1:abc.0a1b2c3d:00", None),
    ("emb:s1:n1:abc.0a1b2c3d:0", None),
    ("ray:s*:n1:hb", None),
])
def test_parse_key_accepts_only_this_backends_shapes(key, expected):
    assert parse_key("ray:", key) == expected


def test_short_grace_is_refused_without_the_flag(server, capsys):
    assert gc_main(["--url", server.url, "--grace-s", "30"]) == 2
    assert "--allow-short-grace" in capsys.readouterr().err


def test_gc_refuses_foreign_prefixes_and_passwords_in_urls(server, capsys):
    assert gc_main(["--url", server.url, "--prefix", "emb:"]) == 2
    assert "overlaps" in capsys.readouterr().err
    assert gc_main(["--url", "valkey://u:secret@127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err
    assert "password_env" in err and "secret" not in err


def test_unreachable_server_is_a_clean_error(capsys):
    from ray_valkey_spill.testing.embedded import free_port

    assert gc_main(["--url", f"valkey://127.0.0.1:{free_port()}/0", "--quiet"]) == 2
    assert "gc" in capsys.readouterr().err


def test_heartbeat_that_comes_back_stops_the_deletion(server, capsys):
    """A session judged gone whose heartbeat is fresh again by the time gc deletes is kept."""
    import ray_valkey_spill.tools.gc as gc_module

    prefix = f"ray:gcr{uuid.uuid4().hex[:8]}:"
    client = server.client()
    keys = _synthetic_session(client, prefix, "session_revived", with_heartbeat_at=time.time() - 3600)
    time.sleep(2.1)
    original = gc_module.survey

    def survey_then_beat(*args, **kwargs):
        result = original(*args, **kwargs)
        client.set(f"{prefix}session_revived:nodeX:hb", str(int(time.time())))
        return result

    gc_module.survey = survey_then_beat
    try:
        report, by_session = run_gc(capsys, server.url, prefix, 2, "--yes")
    finally:
        gc_module.survey = original
    assert report["keys_deleted"] == 0
    assert by_session["session_revived"]["verdict"].startswith(KEEP_LIVE)
    assert _keys(client, prefix + "*") == sorted(keys)
    for k in keys:
        client.unlink(k)
    client.close()


def test_gc_asks_a_running_cluster_which_session_is_live(server, capsys):
    """A cluster started with ``ray start --head`` has no driver stamp; when every node that
    spilled has died, heartbeats alone would doom objects their owners can still restore.
    ``--ray-address`` asks the cluster's GCS instead."""
    from ray_valkey_spill.spill.heartbeat import stop_driver_heartbeat

    prefix = f"ray:gcg{uuid.uuid4().hex[:8]}:"
    client = server.client()
    ray = start_local_ray(server.url, prefix)
    try:
        node = ray._private.worker._global_node
        session = node.session_name
        stop_driver_heartbeat(prefix, session)  # as if started by `ray start --head`
        keys = _synthetic_session(client, prefix, session, with_heartbeat_at=time.time() - 3600)
        time.sleep(2.1)
        _, by_session = run_gc(capsys, server.url, prefix, 2)
        assert by_session[session]["verdict"] == DELETE  # what heartbeats alone say
        report, by_session = run_gc(capsys, server.url, prefix, 2, "--yes",
                                    "--ray-address", node.gcs_address)
        assert by_session[session]["verdict"] == \
            f"keep: current session of the Ray cluster at {node.gcs_address}"
        assert report["keys_deleted"] == 0 and _keys(client, prefix + "*") == sorted(keys)
    finally:
        ray.shutdown()
    for k in keys:
        client.unlink(k)
    client.close()


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1:1", "no Ray GCS answers at 127.0.0.1:1"),
    ("raycluster-head-svc", "HOST:PORT"),
])
def test_gc_stops_when_it_cannot_ask_the_cluster(server, capsys, address, expected):
    started = time.monotonic()
    assert gc_main(["--url", server.url, "--quiet", "--yes", "--ray-address", address]) == 2
    assert expected in capsys.readouterr().err
    assert time.monotonic() - started < 10


def test_orphan_chunks_of_a_live_session_are_collected_when_old(server, capsys):
    """A spill worker killed between its chunks and its manifest leaves chunks nothing can
    restore or delete. In a live session gc removes them once idle for --orphan-grace-s,
    and leaves alone complete objects, young chunks (a spill in flight) and the heartbeat."""
    prefix = f"ray:gco{uuid.uuid4().hex[:8]}:"
    client = server.client()
    session = "session_live_with_orphans"
    node = f"{prefix}{session}:nodeA"
    complete = [f"{node}:objc.0a1b2c3d:0", f"{node}:objc.0a1b2c3d:m"]
    old_orphans = [f"{node}:objo.0a1b2c3d:0", f"{node}:objo.0a1b2c3d:1"]
    for k in complete + old_orphans:
        client.set(k, b"x" * 100)
    time.sleep(3.1)
    young_orphan = f"{node}:objy.0a1b2c3d:0"  # a spill still writing
    client.set(young_orphan, b"y" * 100)
    beat = f"{node}:hb"
    client.set(beat, str(int(time.time())))  # the session is live

    report, by_session = run_gc(capsys, server.url, prefix, 2, "--orphan-grace-s", "3")
    assert by_session[session]["verdict"] == KEEP_LIVE
    assert by_session[session]["orphan_chunks"] == 2 and report["orphan_chunks_deleted"] == 0
    assert all(client.exists(k) for k in old_orphans)  # a dry run deletes nothing

    report, by_session = run_gc(capsys, server.url, prefix, 2, "--orphan-grace-s", "3", "--yes")
    assert report["orphan_chunks_deleted"] == 2
    assert _keys(client, prefix + "*") == sorted(complete + [young_orphan, beat])
    for k in complete + [young_orphan, beat]:
        client.unlink(k)
    client.close()


def test_orphan_grace_below_the_session_grace_is_refused(server, capsys):
    assert gc_main(["--url", server.url, "--grace-s", "600", "--orphan-grace-s", "60"]) == 2
    assert "--orphan-grace-s" in capsys.readouterr().err


def test_a_removed_worker_stamp_is_not_brought_back_until_the_next_spill(server):
    """``ray.shutdown()`` removes a node's keys while its IO workers still beat; a beat after
    that must not leave a stamp behind (the flaky leftover ``...:hb`` this guards against)."""
    from ray_valkey_spill.spill.heartbeat import Heartbeat

    client = server.client()
    key = "ray:hbtest:session_x:node_y:hb"
    beat = Heartbeat(lambda: client, key, interval_s=0.05, refresh_only=True)
    try:
        beat.start()
        assert _wait_until(lambda: client.exists(key)), "the first beat never landed"
        client.unlink(key)  # what destroy_external_storage does
        time.sleep(0.5)  # ten beat intervals
        assert not client.exists(key), "a beat brought the removed stamp back"
        beat.start()  # the next spill
        assert _wait_until(lambda: client.exists(key)), "the next spill did not stamp again"
        first = client.get(key)
        client.set(key, b"0")
        assert _wait_until(lambda: client.get(key) != b"0"), "a running beat stopped refreshing"
        assert int(first) > 0
    finally:
        beat.stop_and_remove()
    assert not client.exists(key)


def _wait_until(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("beats,min_idle,idle_unknown,expected", [
    ([990.0], 50.0, False, "keep: live"),              # a fresh beat wins over everything
    ([990.0, 100.0], None, True, "keep: live"),        # one live node keeps the whole session
    ([100.0], 500.0, False, "delete"),                 # stale beats, keys idle
    ([100.0], 50.0, False, "keep: heartbeat stale but keys recently used"),
    ([100.0], None, True, "delete"),                   # stale beats, LFU (no idle times)
    ([], 50.0, False, "keep: no heartbeat, keys recently used"),  # a session just starting
    ([], 500.0, False, "delete"),
    ([], None, True, "keep: no heartbeat, key age unknown"),
    ([2000.0], 500.0, False, "keep: live"),            # a beat from the future (clock skew)
])
def test_verdicts(beats, min_idle, idle_unknown, expected):
    from ray_valkey_spill.tools.gc import SessionInfo

    info = SessionInfo("s", keys=3, min_idle_s=min_idle, idle_unknown=idle_unknown)
    info.heartbeats = {f"ray:s:n{i}:hb": t for i, t in enumerate(beats)}
    assert info.judge(now=1000.0, grace_s=200.0) == expected
