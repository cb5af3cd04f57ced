"""`ray-valkey-spill snapshot-cost` on a small data set: the deployed server is filled, snapshot
idle and under writes (those writes cost copy-on-write pages), and its SIGTERM writes a final
snapshot; the table and JSON carry every figure and the extrapolated row."""

from __future__ import annotations

import json

from support import REPO
from ray_valkey_spill.lab import snapshot_cost


def test_snapshot_cost_measures_fork_copy_on_write_and_shutdown(tmp_path, capsys):
    out = tmp_path / "snap.json"
    assert snapshot_cost.main(["--gib", "0.1", "--value-mib", "1", "--target-gib", "12",
                               "--cluster-configs", str(REPO / "cluster_configs"),
                               "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(extrapolated)" in printed and "copy-on-write MiB" in printed
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert 0.09 < row["gib"] <= 0.1 and row["rdb_gib"] > 0.09  # random values: no compression
    assert row["idle_fork_ms"] > 0 and row["idle_snapshot_s"] > 0
    assert row["busy_cow_mib"] > 0, "writes during a snapshot copied no page"
    assert row["write_gibps_before"] > 0 and row["write_gibps_during"] > 0
    assert row["shutdown_saved"], "SIGTERM wrote no final snapshot"
    assert data["extrapolated"]["gib"] == 12
    assert data["extrapolated"]["shutdown_s"] > row["shutdown_s"]
