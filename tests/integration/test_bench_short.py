"""A short run of the backend benchmark over both transports of the embedded server."""

from __future__ import annotations

import json

import pytest

from ray_valkey_spill.lab import bench


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_bench_short(tmp_path, transport):
    out = tmp_path / "bench.json"
    rc = bench.main(["--transport", transport, "--object-mib", "16", "--chunk-sizes", "1m",
                     "--connections", "2", "--kinds", "int-tokens", "--repeat", "1",
                     "--memory-gib", "0.0625", "--json", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())["results"]
    row = results["chunk_sweep"][0]
    for figure in ("backend_write_gibps", "backend_read_gibps", "raw_set_gibps", "raw_get_gibps"):
        assert row[figure] > 0, figure
    assert results["kinds"][0]["stored_ratio"] < 0.35
    assert all(m["verified"] for m in results["memory"])
