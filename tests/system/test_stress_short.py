"""A short run of the spill stress test: every object comes back intact, no key is left."""

from __future__ import annotations

import pytest

from ray_valkey_spill.lab.stress import parse_args, run_once


@pytest.mark.parametrize("kind,total_gib", [("mixed", 0.25), ("fp16-kv", 0.2)])
def test_stress_short(valkey_url, kind, total_gib):
    args = parse_args(["--data", kind, "--total-gib", str(total_gib), "--object-mib", "16",
                       "--object-store-mib", "100", "--chunk-size-bytes", str(1024 * 1024),
                       "--delete-wait-s", "20", "--get-timeout-s", "60"])
    result = run_once("valkey", args, valkey_url, progress=False)
    f = result.figures
    assert f["objects"] >= 12
    assert f["spilled_bytes_after_put"] if "spilled_bytes_after_put" in f else f["stored_bytes_after_put"]
    assert f["lost"] == 0, result.errors
    assert f["corrupted"] == 0, result.errors
    assert f["left_after_drop"] == 0, result.errors
    assert f["left_after_shutdown"] == 0, result.errors
    assert not result.errors
