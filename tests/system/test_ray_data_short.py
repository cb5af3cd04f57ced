"""The ray-data scenario's workload, short: Ray Data on a dataset bigger than the object store
spilling to Valkey; Ray reports spilled (and restored) bytes for every workload, every row
comes back right (sortedness, payloads, multiset checksum), and no key is left after shutdown."""

from __future__ import annotations

import pytest

from ray_valkey_spill.lab.ray_data_workload import WORKLOADS, RayDataShape, run_ray_data

pytestmark = pytest.mark.slow
# 96 MiB in 8 blocks of 12 MiB through Ray's smallest object store (75 MiB + 1).
SHAPE = RayDataShape(dataset_mib=96, blocks=8, object_store_mib=76)


def test_ray_data_spills_to_valkey_and_every_row_comes_back(valkey_url, spill_prefix):
    res = run_ray_data("valkey", SHAPE, valkey_url, spill_options={"prefix": spill_prefix})
    assert not res.errors, res.errors
    fig = res.figures
    for workload in WORKLOADS:
        reads = 2 if workload == "map_batches_twice" else 1
        assert fig[f"{workload}/rows_checked"] == reads * SHAPE.rows, workload
        assert fig[f"{workload}/spilled_bytes"] > 0, f"{workload}: nothing spilled"
    assert fig["map_batches_twice/restored_bytes"] > 0, "the second read restored nothing"
    assert fig["left_after_shutdown"] == 0, "keys left after ray.shutdown()"
    # The CPU probe finds the IO workers (they rename themselves ray::*SpillWorker).
    assert sum(fig[f"{w}/io_worker_cpu_s"] for w in WORKLOADS) > 0.1, fig
    assert sum(fig[f"{w}/server_cpu_s"] for w in WORKLOADS) > 0, fig
