"""Ray Data on a spilling Ray: a dataset bigger than the object store through three workloads
(``random_shuffle``, ``sort`` on a random key with a payload column, a ``map_batches`` pipeline
materialized and read twice), every row checked, Ray's spilled bytes per workload.

Every row is a pure function of its ``id`` (``key`` and ``payload`` are hashes of it), so a
reader recomputes what each row must hold: a wrong payload or key, a row missing or seen twice,
or a sorted output out of order is an error, and a multiset checksum over (id, key) must match
the one of the source. Works on Ray 2.40 to 2.60 (``override_num_blocks``, numpy batches).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from ..config import MiB
from .probes import DirProbe, IOWorkerCPU, ValkeyProbe, raylet_stats

WORKLOADS = ("random_shuffle", "sort", "map_batches_twice")
PAYLOADS = ("random", "tokens")  # incompressible uint64 hashes; int32 tokens < 50000 (~2x zstd)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_FLIP = 0x5A5A5A5A  # what the map_batches step XORs into every payload word


@dataclass(frozen=True)
class RayDataShape:
    """Sizes of one run: the dataset, its rows and blocks, and the object store."""

    dataset_mib: int = 1024
    row_bytes: int = 8192
    blocks: int = 64
    object_store_mib: int = 384
    payload: str = "random"
    seed: int = 1234
    num_cpus: int = 2

    @property
    def rows(self) -> int:
        """Rows in the dataset."""
        return max(1, self.dataset_mib * MiB // self.row_bytes)


# -- rows as functions of their id ------------------------------------------------------------
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, vectorized (wrapping uint64 arithmetic)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def row_keys(ids: np.ndarray, seed: int) -> np.ndarray:
    """The random sort key of each row."""
    return _mix(ids.astype(np.uint64) ^ np.uint64(seed))


_POOL_WORDS = 1 << 21  # 16 MiB of uint64: a row's payload is a slice at a hashed offset
_pools: dict[tuple[str, int], np.ndarray] = {}


def _pool(kind: str, seed: int) -> np.ndarray:
    """This process's random pool of ``kind`` (made once: generating per row is too slow)."""
    if (kind, seed) not in _pools:
        rng = np.random.default_rng(seed)
        _pools[(kind, seed)] = (rng.integers(0, 2**64, _POOL_WORDS, dtype=np.uint64, endpoint=False)
                                if kind == "random" else
                                rng.integers(0, 50000, 2 * _POOL_WORDS, dtype=np.int32))
    return _pools[(kind, seed)]


def payloads(ids: np.ndarray, row_bytes: int, kind: str, seed: int = 0) -> np.ndarray:
    """The payload of each row (``row_bytes`` per id): a slice of the pool at an offset hashed
    from the id, so every row differs and zstd finds no repeats within its window."""
    pool = _pool(kind, seed)
    words = row_bytes // pool.itemsize
    offsets = (_mix(ids.astype(np.uint64) + _GOLDEN) % np.uint64(len(pool) - words)).astype(np.int64)
    return np.lib.stride_tricks.sliding_window_view(pool, words)[offsets]


def _checksum(ids: np.ndarray, keys: np.ndarray) -> int:
    """Order-free checksum of (id, key) pairs: wrapping sum of a hash of each pair."""
    with np.errstate(over="ignore"):
        return int(_mix(ids.astype(np.uint64) * _GOLDEN ^ keys.astype(np.uint64)).sum(
            dtype=np.uint64))


def _make_rows(batch: dict, *, row_bytes: int, kind: str, seed: int) -> dict:
    ids = np.asarray(batch["id"], dtype=np.int64)
    return {"id": ids, "key": row_keys(ids, seed), "payload": payloads(ids, row_bytes, kind, seed)}


def _flip_payload(batch: dict) -> dict:
    pay = batch["payload"]
    return {"id": batch["id"], "key": batch["key"], "payload": pay ^ pay.dtype.type(_FLIP)}


class RowCheck:
    """Checks a stream of batches against the rows they must hold."""

    def __init__(self, shape: RayDataShape, *, in_key_order: bool, flipped: bool):
        """``in_key_order``: rows must come sorted by key; ``flipped``: payloads went through
        the map_batches step."""
        self.shape, self.in_key_order, self.flipped = shape, in_key_order, flipped
        self.seen = np.zeros(shape.rows, dtype=bool)
        self.checksum = 0
        self.rows = self.duplicates = self.out_of_range = self.bad_keys = self.bad_payloads = 0
        self.out_of_order = 0
        self._last_key: int | None = None

    def add(self, batch: dict) -> None:
        """Check one numpy batch."""
        ids = np.asarray(batch["id"], dtype=np.int64)
        keys = np.asarray(batch["key"], dtype=np.uint64)
        self.rows += len(ids)
        if not len(ids):
            return
        ok = (ids >= 0) & (ids < self.shape.rows)
        self.out_of_range += int((~ok).sum())
        ids, keys, pay = ids[ok], keys[ok], np.asarray(batch["payload"])[ok]
        uniq, counts = np.unique(ids, return_counts=True)
        self.duplicates += int((counts - 1).sum()) + int(self.seen[uniq].sum())
        self.seen[uniq] = True
        self.bad_keys += int((keys != row_keys(ids, self.shape.seed)).sum())
        want = payloads(ids, self.shape.row_bytes, self.shape.payload, self.shape.seed)
        if self.flipped:
            want ^= want.dtype.type(_FLIP)
        if pay.shape != want.shape:
            self.bad_payloads += len(ids)
        else:
            self.bad_payloads += int((pay != want).any(axis=1).sum())
        self.checksum = (self.checksum + _checksum(ids, keys)) % 2**64
        if self.in_key_order:
            self.out_of_order += int((keys[1:] < keys[:-1]).sum())
            if self._last_key is not None and int(keys[0]) < self._last_key:
                self.out_of_order += 1
            self._last_key = int(keys[-1])

    def errors(self, label: str) -> list[str]:
        """What was wrong, one line each (empty when every row was right)."""
        ids = np.arange(self.shape.rows, dtype=np.int64)
        want_sum = _checksum(ids, row_keys(ids, self.shape.seed))
        missing = int((~self.seen).sum())
        out = [f"{label}: {n} {what}" for n, what in (
            (missing, "rows missing"), (self.duplicates, "rows seen twice"),
            (self.out_of_range, "rows with an id out of range"), (self.bad_keys, "wrong keys"),
            (self.bad_payloads, "wrong payloads"), (self.out_of_order, "rows out of key order"))
            if n]
        if self.checksum != want_sum:
            out.append(f"{label}: multiset checksum {self.checksum:#x} != {want_sum:#x}")
        return out


def _read_all(ds, check: RowCheck) -> None:
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        check.add(batch)


# -- one run: a local Ray, the three workloads ------------------------------------------------
@dataclass
class RayDataResult:
    """Per workload: seconds, spilled and restored bytes; errors; what was left after shutdown."""

    backend: str
    figures: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _spill_counters() -> tuple[int, int]:
    stats = raylet_stats() or {}
    return int(stats.get("spilled_bytes_total", 0)), int(stats.get("restored_bytes_total", 0))


def _settled_count(count, timeout_s: float = 15.0) -> int:
    """``count()`` once it stops falling to 0 (Ray deletes spilled objects asynchronously)."""
    deadline = time.monotonic() + timeout_s
    n = count()
    while n and time.monotonic() < deadline:
        time.sleep(0.5)
        n = count()
    return n


def run_ray_data(backend: str, shape: RayDataShape, url: str | None = None, *,
                 spill_options: dict | None = None, system_config: dict | None = None,
                 workloads: tuple[str, ...] = WORKLOADS, baseline_dir: str | None = None
                 ) -> RayDataResult:
    """Start a local Ray spilling to ``backend`` (Valkey at ``url``, or the filesystem), run
    ``workloads`` on a dataset of ``shape``, check every row; figures ``<workload>/seconds``,
    ``<workload>/spilled_bytes``, ``<workload>/restored_bytes``, ``<workload>/io_worker_cpu_s``
    and ``<workload>/server_cpu_s`` (CPU seconds of the IO workers and of the Valkey server),
    ``<workload>/spill_cpu_s`` (their sum), ``left_after_shutdown``."""
    import ray

    from ..config import spilling_config

    res = RayDataResult(backend)
    fig = res.figures
    tmpdir = None
    probe: ValkeyProbe | DirProbe
    if backend == "valkey":
        options = dict(spill_options or {})
        options["prefix"] = options.pop("prefix", "ray:") + f"rdata{uuid.uuid4().hex[:8]}:"
        spill_cfg = spilling_config(url, **options)
        probe = ValkeyProbe(url, options["prefix"])
    else:
        if baseline_dir:
            os.makedirs(baseline_dir, exist_ok=True)
        tmpdir = tempfile.mkdtemp(prefix="rvs-rdata-spill-", dir=baseline_dir)
        spill_cfg = json.dumps({"type": "filesystem", "params": {"directory_path": tmpdir}})
        probe = DirProbe(tmpdir)
    ray.init(address="local", num_cpus=shape.num_cpus,
             object_store_memory=shape.object_store_mib * MiB, include_dashboard=False,
             logging_level="warning", log_to_driver=False,
             _system_config={"object_spilling_config": spill_cfg, **(system_config or {})})
    io_cpu: IOWorkerCPU | None = None
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        source = ray.data.range(shape.rows, override_num_blocks=shape.blocks).map_batches(
            partial(_make_rows, row_bytes=shape.row_bytes, kind=shape.payload, seed=shape.seed),
            batch_format="numpy", batch_size=None)
        io_cpu = IOWorkerCPU(ray._private.worker._global_node.session_name)

        def cpu_s() -> tuple[float, float]:  # (IO workers, the server for Valkey)
            server = probe.cpu_s() if isinstance(probe, ValkeyProbe) else None
            return io_cpu.total_s(), server or 0.0

        for name in workloads:
            spilled0, restored0 = _spill_counters()
            cpu0 = cpu_s()
            t0 = time.perf_counter()
            if name == "random_shuffle":
                check = RowCheck(shape, in_key_order=False, flipped=False)
                _read_all(source.random_shuffle(seed=shape.seed), check)
                checks = [check]
            elif name == "sort":
                check = RowCheck(shape, in_key_order=True, flipped=False)
                _read_all(source.sort("key"), check)
                checks = [check]
            else:
                mapped = source.map_batches(_flip_payload, batch_format="numpy",
                                            batch_size=None).materialize()
                checks = [RowCheck(shape, in_key_order=False, flipped=True) for _ in range(2)]
                for check in checks:
                    _read_all(mapped, check)
                del mapped
            fig[f"{name}/seconds"] = time.perf_counter() - t0
            spilled1, restored1 = _spill_counters()
            fig[f"{name}/spilled_bytes"] = spilled1 - spilled0
            fig[f"{name}/restored_bytes"] = restored1 - restored0
            (io1, server1), (io0, server0) = cpu_s(), cpu0
            fig[f"{name}/io_worker_cpu_s"] = io1 - io0
            fig[f"{name}/server_cpu_s"] = server1 - server0
            fig[f"{name}/spill_cpu_s"] = io1 - io0 + server1 - server0
            fig[f"{name}/rows_checked"] = sum(c.rows for c in checks)
            for i, check in enumerate(checks):
                res.errors += check.errors(name if len(checks) == 1 else f"{name} read {i + 1}")
            print(f"  {backend} {name}: {fig[f'{name}/seconds']:.1f} s, spilled "
                  f"{fig[f'{name}/spilled_bytes'] / MiB:.0f} MiB", file=sys.stderr, flush=True)
    except Exception as exc:  # noqa: BLE001 - a failed workload is a reported error, not a crash
        res.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if io_cpu is not None:
            io_cpu.stop()
        ray.shutdown()
        count = (lambda: len(probe.keys())) if isinstance(probe, ValkeyProbe) else \
            (lambda: len(probe.files()))
        fig["left_after_shutdown"] = _settled_count(count)
        if isinstance(probe, ValkeyProbe):
            probe.stop()
            probe.close()
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return res
