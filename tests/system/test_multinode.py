"""Objects spilled on one node restore on another, also after that node is gone; and the
spilling config reaches Ray through `ray start` and the RAY_object_spilling_config variable."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import MiB
from ray_valkey_spill import spilling_config
from conftest import wait_for
from test_spill_ray import object_keys


@pytest.fixture
def two_node_cluster(valkey_url, spill_prefix):
    from ray.cluster_utils import Cluster

    config = spilling_config(valkey_url, prefix=spill_prefix, chunk_size_bytes=MiB)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 100 * MiB,
        "_system_config": {"object_spilling_config": config, "min_spilling_size": 0}})
    import ray

    # The driver connects while the head is the only node: Ray 2.40 and 2.50 may attach it to any
    # raylet on this host (2.60 prefers the head), and the test kills the worker's.
    ray.init(address=cluster.address)
    worker = cluster.add_node(num_cpus=1, object_store_memory=100 * MiB,
                              resources={"worker_node": 1})
    cluster.wait_for_nodes()
    yield ray, cluster, worker
    ray.shutdown()
    cluster.shutdown()


def test_spilled_on_worker_restored_on_head_after_worker_removed(two_node_cluster, valkey_client,
                                                                 spill_prefix):
    ray, cluster, worker = two_node_cluster

    @ray.remote(resources={"worker_node": 1}, max_retries=0)
    def produce(i):
        return np.full(10 * MiB // 8, i, dtype=np.int64)

    refs = [produce.remote(i) for i in range(25)]  # 250 MiB into a 100 MiB store on the worker
    ray.wait(refs, num_returns=len(refs), fetch_local=False)
    assert wait_for(lambda: len(object_keys(valkey_client, spill_prefix)) > 10)
    worker_id = worker.node_id.encode()
    keys = object_keys(valkey_client, spill_prefix)
    assert any(worker_id in k for k in keys), "the worker node spilled nothing"
    # Objects still in the worker's memory die with it; the spilled ones must not.
    spilled = [(i, r) for i, r in enumerate(refs) if any(r.hex().encode() in k for k in keys)]
    assert len(spilled) >= 10

    i0, r0 = spilled[0]
    assert int(ray.get(r0)[0]) == i0  # restored on the head, straight from Valkey
    # A crash, not Cluster.remove_node(): that test helper also calls destroy_external_storage
    # for the node, which no real node death or scale-down does.
    worker.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
    cluster.worker_nodes.remove(worker)
    for i, ref in spilled[1:]:
        value = ray.get(ref, timeout=120)
        assert value.shape == (10 * MiB // 8,) and int(value[0]) == i and int(value[-1]) == i


DRIVER = textwrap.dedent("""
    import sys, time, numpy as np, ray, valkey
    address, url, prefix = sys.argv[1:4]
    ray.init(address=address)
    refs = [ray.put(np.full(10 * 1024 * 1024 // 8, i, dtype=np.int64)) for i in range(25)]
    client = valkey.Valkey.from_url(url)
    for _ in range(100):
        spilled = [r for r in refs if any(r.hex() in k.decode()
                                          for k in client.scan_iter(match=prefix + "*"))]
        if spilled:
            break
        time.sleep(0.2)
    assert [int(ray.get(r)[-1]) for r in refs] == list(range(25))
    print("SPILLED", len(spilled))
""")


def _kill_processes_under(path: str) -> None:
    """Kill the Ray processes of one `ray start` (their command lines name its temp dir);
    `ray stop` would kill every Ray on the machine."""
    import signal

    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if path.encode() in f.read():
                    os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.mark.parametrize("how", ["system-config", "env"])
def test_ray_start_cli_spills_to_valkey(how, valkey_url, valkey_client, spill_prefix):
    import tempfile

    # Ray's socket paths must stay under ~107 bytes: pytest's tmp_path is too deep.
    tmp_path = tempfile.mkdtemp(prefix="rvs", dir="/tmp")
    config = spilling_config(valkey_url, prefix=spill_prefix, chunk_size_bytes=MiB)
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path), "RAY_AUTH_MODE": "disabled"}
    cmd = ["ray", "start", "--head", "--port=0", "--num-cpus=1", "--include-dashboard=false",
           f"--object-store-memory={100 * MiB}", f"--temp-dir={tmp_path}"]
    system_config = {"min_spilling_size": 0}
    if how == "system-config":
        system_config["object_spilling_config"] = config
    else:
        env["RAY_object_spilling_config"] = config
    cmd.append(f"--system-config={json.dumps(system_config)}")
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    cmd[0] = ray_bin
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        # `ray start` prints `ray start --address='IP:PORT'`, coloured when colorful is installed
        found = re.search(r"--address='?([0-9A-Za-z.\-]+:\d+)", re.sub(r"\x1b\[[0-9;]*m", "",
                                                                   started.stdout))
        assert found, started.stdout[-2000:]
        addr = found.group(1)
        run = subprocess.run([sys.executable, "-c", DRIVER, addr, valkey_url, spill_prefix],
                             env=env, capture_output=True, text=True, timeout=300)
        assert "SPILLED" in run.stdout, run.stderr[-3000:]
        assert int(run.stdout.split("SPILLED")[1].split()[0]) > 0, "nothing went to Valkey"
    finally:
        _kill_processes_under(tmp_path)
