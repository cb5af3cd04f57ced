"""A tiny run of lab/bench_frameworks.py: it measures all three caches, checks what each one
returned and that each key had a TTL, and writes its JSON (no speed is asserted here)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("redisvl")
pytest.importorskip("langchain_community")

from ray_valkey_spill.lab import bench_frameworks  # noqa: E402


def test_short_run_writes_checked_results(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--texts", "60", "--dim", "16", "--batch", "25", "--runs", "3", "--out", str(out)]
    assert bench_frameworks.main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["medians"]) == {"ours", "redisstore", "redisvl"}
    assert all(c == {"values_equal": True, "every_key_has_ttl": True}
               for c in result["checks"].values()), result["checks"]
    assert all(len(s["put"]) == 3 for s in result["samples"].values())
    assert result["commit"] and result["command"].endswith(" ".join(argv))
    assert "ours / redisvl" in capsys.readouterr().out


def test_fewer_than_three_runs_is_refused():
    with pytest.raises(SystemExit):
        bench_frameworks.main(["--runs", "2"])
