"""The Ray Data scenario's row check (no Ray): right rows pass; a wrong payload or key, a row
missing or seen twice, rows out of key order and a wrong multiset are each reported."""

from __future__ import annotations

import numpy as np
import pytest

from ray_valkey_spill.lab.ray_data_workload import RayDataShape, RowCheck, _make_rows

SHAPE = RayDataShape(dataset_mib=1, row_bytes=1024, blocks=1)  # 1024 rows


def _rows(ids) -> dict:
    return _make_rows({"id": np.asarray(ids, dtype=np.int64)}, row_bytes=SHAPE.row_bytes,
                      kind=SHAPE.payload, seed=SHAPE.seed)


def _check(batches, in_key_order=False) -> list[str]:
    check = RowCheck(SHAPE, in_key_order=in_key_order, flipped=False)
    for b in batches:
        check.add(b)
    return check.errors("w")


def _sorted_rows() -> dict:
    rows = _rows(np.arange(SHAPE.rows))
    order = np.argsort(rows["key"])
    return {k: v[order] for k, v in rows.items()}


def test_right_rows_in_any_order_pass_and_sorted_rows_pass_the_order_check():
    ids = np.random.default_rng(0).permutation(SHAPE.rows)
    assert _check([_rows(ids[:500]), _rows(ids[500:])]) == []
    rows = _sorted_rows()
    assert _check([{k: v[:300] for k, v in rows.items()}, {k: v[300:] for k, v in rows.items()}],
                  in_key_order=True) == []


@pytest.mark.parametrize("fault, expected", [
    ("payload", "wrong payloads"), ("key", "wrong keys"), ("missing", "rows missing"),
    ("twice", "rows seen twice"), ("order", "out of key order")])
def test_each_fault_is_reported(fault, expected):
    rows = _sorted_rows()
    if fault == "payload":
        rows["payload"] = rows["payload"].copy()
        rows["payload"][7, 3] ^= 1
    elif fault == "key":
        rows["key"] = rows["key"].copy()
        rows["key"][5] += 1
    elif fault == "missing":
        rows = {k: v[1:] for k, v in rows.items()}
    elif fault == "twice":
        rows = {k: np.concatenate([v, v[:1]]) for k, v in rows.items()}
    else:
        rows = {k: v[::-1] for k, v in rows.items()}
    errors = _check([rows], in_key_order=True)
    assert any(expected in e for e in errors), errors
    if fault in ("key", "missing", "twice"):
        assert any("multiset checksum" in e for e in errors), errors
