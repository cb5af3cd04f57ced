"""The ray-data scenario, short: Ray Data on a dataset bigger than the object store, spilling to
Valkey and to Ray's filesystem; every row comes back right, Ray reports spilled bytes, and
nothing is left after shutdown."""

from __future__ import annotations

import json

import pytest

from ray_valkey_spill.lab.scenarios import main

pytestmark = pytest.mark.slow


def test_ray_data_scenario_spills_on_both_backends_and_checks_every_row(tmp_path):
    rc = main(["ray-data", "--repeat", "1", "--ray-data-mib", "96", "--object-store-mib", "76",
               "--ray-data-blocks", "8", "--json-dir", str(tmp_path)])
    result = json.loads((tmp_path / "scenarios_ray-data.json").read_text())
    assert rc == 0 and result["ok"], result["errors"]
    rows = result["summary"]["shape"]["rows"]
    for label, runs in result["summary"]["runs"].items():
        (run,) = runs
        assert run["random_shuffle/rows_checked"] == rows, label
        assert run["sort/rows_checked"] == rows, label
        assert run["map_batches_twice/rows_checked"] == 2 * rows, label
        for workload in ("random_shuffle", "sort", "map_batches_twice"):
            assert run[f"{workload}/spilled_bytes"] > 0, (label, workload, "nothing spilled")
        assert run["map_batches_twice/restored_bytes"] > 0, label
        assert run["left_after_shutdown"] == 0, label
