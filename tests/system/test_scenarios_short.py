"""Short versions of the cross-node and lost-node scenarios (``ray-valkey-spill scenarios``) on
a real 3-node local Ray: every object spilled by node A comes back intact on node B, also after
A's raylet is killed; Ray's filesystem spilling, in the same crash, loses what has no lineage.
"""

from __future__ import annotations

import pytest

from ray_valkey_spill.lab.multinode import (FAST_DETECTION, ClusterShape, SpillTarget,
                                              cross_node_run, lost_node_run)

pytestmark = pytest.mark.slow
SHAPE = ClusterShape(store_a_mib=96, store_b_mib=256, system_config=FAST_DETECTION)


def test_spilled_on_a_read_on_b_every_byte(valkey_url, spill_prefix):
    results = cross_node_run(SpillTarget("valkey", url=valkey_url, options={"prefix": spill_prefix}),
                             ["float64"], total_gib=0.05, object_mib=8, shape=SHAPE, batch=4,
                             timeout_s=60)
    f = results["float64"].figures
    assert f["objects"] == 2 * 6
    assert f["spilled_on_a"] == f["objects"], "some objects were read from A's memory, not spilled"
    assert f["lost"] == 0 and f["corrupted"] == 0, results["float64"].errors
    assert f["seq_gibps"] > 0 and f["batch_gibps"] > 0
    assert f["left_after_shutdown"] == 0, "keys left after Ray freed every object"
    assert not results["float64"].errors


@pytest.mark.parametrize("backend", ["valkey", "filesystem"])
def test_node_a_crashes_after_spilling(backend, valkey_url, spill_prefix):
    target = (SpillTarget("valkey", url=valkey_url, options={"prefix": spill_prefix})
              if backend == "valkey" else SpillTarget("filesystem"))
    res = lost_node_run(target, "int-tokens", actor_objects=2, task_objects=2, object_mib=8,
                        task_cost_s=0.5, shape=SHAPE, timeout_s=60)
    f = res.figures
    assert f["spilled_on_a"] == 4, res.errors
    assert f["corrupted"] == 0, res.errors
    # Task outputs come back either way (from Valkey, or by lineage re-execution on B).
    assert f["task_recovered"] == 2 and f["task_lost"] == 0
    if backend == "valkey":
        assert f["actor_recovered"] == 2 and f["lost"] == 0, f
        assert f["left_for_gc"] > 0, "the crashed node's keys should be left for gc"
    else:
        # Ray's own spill files died with node A: outputs without lineage are gone.
        assert f["actor_lost"] == 2, f
