"""The spill workload through Ray: ``run_once`` starts a local Ray (spilling to Valkey or to
Ray's filesystem), pushes ``total_gib`` of objects of one data kind (``data.py``) through it and
reads every one back, checking every byte. ``stress`` runs it side by side per backend,
``bench-shards`` per shard count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..cli.progress import Progress
from ..config import GiB, MiB
from .data import DATA_KINDS, DataMaker, digest
from .probes import DirProbe, ValkeyProbe, raylet_stats


def add_workload_options(p: argparse.ArgumentParser) -> None:
    """The options ``run_once`` reads (sizes, data kind, spilling options, timeouts)."""
    p.add_argument("--total-gib", type=float, default=2.0, help="bytes pushed through Ray (GiB)")
    p.add_argument("--object-mib", type=int, default=64, help="size of one object (MiB)")
    p.add_argument("--object-store-mib", type=int, default=512, help="Ray object store (MiB)")
    p.add_argument("--min-spilling-mib", type=int, default=0, help="Ray min_spilling_size (MiB)")
    p.add_argument("--data", choices=DATA_KINDS, default="float64")
    p.add_argument("--baseline-dir", help="parent directory of the filesystem baseline's spill "
                   "directory (default: the system temp dir; /dev/shm measures Ray's ceiling)")
    p.add_argument("--chunk-size-bytes", type=int, help="spilling option chunk_size_bytes")
    p.add_argument("--connections", type=int, help="spilling option connections")
    p.add_argument("--compression", choices=("auto", "zstd", "none"), help="spilling option")
    p.add_argument("--num-cpus", type=int, default=2, help="Ray CPUs (task parallelism)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--spill-wait-s", type=float, default=120.0)
    p.add_argument("--get-timeout-s", type=float, default=120.0)
    p.add_argument("--delete-wait-s", type=float, default=30.0)


def _check_in_task(refs: list, expected: list[int]) -> list[tuple[int, bool, float]]:
    """Runs inside a Ray task: get each object, return (index, ok, seconds)."""
    import ray

    out = []
    for i, (ref, want) in enumerate(zip(refs, expected)):
        t0 = time.perf_counter()
        value = ray.get(ref)
        dt = time.perf_counter() - t0
        out.append((i, digest(value) == want, dt))
        del value
    return out


# -- one run --------------------------------------------------------------------------------
@dataclass
class RunResult:
    """The figures and errors of one run on one backend."""

    backend: str
    figures: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def run_once(backend: str, args, url: str | None, progress: bool, *,
             spill_options: dict | None = None, probe_options: dict | None = None,
             system_config: dict | None = None,
             before_read: Callable[[str | None], None] | None = None) -> RunResult:
    """Start a local Ray spilling to ``backend`` (Valkey at ``url``, or the filesystem), push
    ``args.total_gib`` through it, read everything back and check it; the figures and errors.

    ``spill_options``: more spilling options (e.g. ``username``, ``password_env``);
    ``probe_options``: the connection options of the Valkey probe; ``system_config``: more
    Ray system config (e.g. ``max_io_workers``); ``before_read(spill_dir)``: called once
    everything is spilled, before the first read (e.g. to evict the spill files from the
    page cache)."""
    import ray

    from ..config import spilling_config

    res = RunResult(backend)
    fig = res.figures
    object_bytes = args.object_mib * MiB
    n_objects = max(1, int(args.total_gib * GiB) // object_bytes)
    capacity = args.object_store_mib * MiB
    tmpdir = None
    probe: ValkeyProbe | DirProbe
    if backend == "valkey":
        options = dict(spill_options or {})
        # Under the given prefix (a least-privilege user may own only ray:<cluster>:*).
        prefix = options.pop("prefix", "ray:") + f"stress{uuid.uuid4().hex[:8]}:"
        options["prefix"] = prefix
        for name in ("chunk_size_bytes", "connections", "compression"):
            if getattr(args, name) is not None:
                options[name] = getattr(args, name)
        spill_cfg = spilling_config(url, **options)
        probe = ValkeyProbe(url, prefix, probe_options)
        fig["valkey_prefix"] = prefix
    else:
        parent = args.baseline_dir or None
        if parent:
            os.makedirs(parent, exist_ok=True)
        tmpdir = tempfile.mkdtemp(prefix="rvs-fs-spill-", dir=parent)
        spill_cfg = json.dumps({"type": "filesystem", "params": {"directory_path": tmpdir}})
        probe = DirProbe(tmpdir)
        fig["spill_dir"] = tmpdir

    maker = DataMaker(args.data, object_bytes, seed=args.seed)  # generation: not timed
    for attempt in (1, 2):  # a busy shared machine can time out Ray's start-up once
        try:
            # address="local": never join a cluster someone else started with `ray start`
            ray.init(address="local", num_cpus=args.num_cpus, object_store_memory=capacity,
                     include_dashboard=False, logging_level="warning", log_to_driver=False,
                     _system_config={"object_spilling_config": spill_cfg,
                                     "min_spilling_size": args.min_spilling_mib * MiB,
                                     **(system_config or {})})
            break
        except Exception as exc:  # noqa: BLE001
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
            print(f"  Ray start-up failed ({exc}); retrying once", file=sys.stderr)
            time.sleep(5)
    check_remote = ray.remote(num_cpus=1)(_check_in_task)
    try:
        # Warm the task workers now, so that their start-up is not timed later.
        ray.get([check_remote.remote([], []) for _ in range(args.num_cpus)])
        refs, digests, sizes, keepalive = [], [], [], []
        put_time = 0.0
        bar = Progress(f"{backend}: put+spill", n_objects * object_bytes, enabled=progress)
        for i in range(n_objects):
            value, size, d, children = maker.make(i, ray.put)
            t0 = time.perf_counter()
            ref = ray.put(value)
            put_time += time.perf_counter() - t0
            del value
            refs.append(ref)
            digests.append(d)
            sizes.append(size)
            keepalive.append(children)
            bar.update(size)
            del ref, children  # the lists hold them; a stray name would keep one object alive
        total_bytes = sum(sizes)
        # Wait until the raylet has spilled enough to get below its threshold.
        must_spill = max(0, total_bytes - int(0.8 * capacity) - object_bytes)
        t0 = time.perf_counter()
        stats = raylet_stats()
        deadline = t0 + args.spill_wait_s
        while time.perf_counter() < deadline:
            stats = raylet_stats()
            if stats is not None:
                spilled = stats["spilled_bytes_total"]
            elif backend == "valkey":
                spilled = probe.manifest_count() * object_bytes
            else:
                spilled = probe.stored_bytes()[1]
            if spilled >= must_spill:
                break
            time.sleep(0.02)
        wait_time = time.perf_counter() - t0
        bar.close()
        spill_time = put_time + wait_time
        fig.update(objects=n_objects, total_bytes=total_bytes, put_s=put_time, spill_wait_s=wait_time,
                   spill_s=spill_time, spill_gibps=total_bytes / GiB / spill_time)
        if stats is not None:
            fig["spilled_bytes_after_put"] = stats["spilled_bytes_total"]
            fig["spilled_objects_after_put"] = stats["spilled_objects_total"]
            if stats["spill_time_total_s"]:
                fig["raylet_spill_gibps"] = (stats["spilled_bytes_total"] / GiB
                                             / stats["spill_time_total_s"])
        n_stored, stored = probe.stored_bytes()
        fig["stored_items_after_put"], fig["stored_bytes_after_put"] = n_stored, stored
        spilled_now = fig.get("spilled_bytes_after_put") or stored
        if spilled_now:
            fig["stored_per_spilled_byte"] = stored / spilled_now
        if isinstance(probe, ValkeyProbe):
            used = probe.used_memory() - probe.base_used
            fig["valkey_used_delta_after_put"] = used
            if spilled_now:
                fig["valkey_memory_per_spilled_byte"] = used / spilled_now

        if before_read is not None:
            before_read(tmpdir)
        lost = corrupt = 0
        latencies: list[float] = []

        def verify(i: int, value) -> None:
            nonlocal corrupt
            if digest(value) != digests[i]:
                corrupt += 1
                res.errors.append(f"object {i} corrupted")

        def read_pass(name: str, order: list[int]) -> float:
            nonlocal lost
            bar = Progress(f"{backend}: {name}", sum(sizes[i] for i in order), enabled=progress)
            spent = 0.0
            for i in order:
                t0 = time.perf_counter()
                try:
                    value = ray.get(refs[i], timeout=args.get_timeout_s)
                except Exception as exc:  # noqa: BLE001 - counted as lost
                    lost += 1
                    res.errors.append(f"object {i} lost in {name} pass: {type(exc).__name__}: {exc}")
                    continue
                dt = time.perf_counter() - t0
                spent += dt
                latencies.append(dt)
                verify(i, value)
                del value
                bar.update(sizes[i])
            bar.close()
            return spent

        order = list(range(n_objects))
        t_in_order = read_pass("read in order", order)
        fig.update(restore_s=t_in_order, restore_gibps=total_bytes / GiB / t_in_order)
        if (stats := raylet_stats()) is not None:
            fig["restored_bytes_after_first_pass"] = stats["restored_bytes_total"]
        shuffled = order[:]
        random.Random(args.seed).shuffle(shuffled)
        t_random = read_pass("read random", shuffled)
        fig["random_restore_gibps"] = total_bytes / GiB / t_random
        fig["latency_p50_ms"] = 1000 * _percentile(latencies, 50)
        fig["latency_p99_ms"] = 1000 * _percentile(latencies, 99)

        # Concurrent reads from Ray tasks: a quarter of the objects (at least 4), 2 tasks/CPU.
        sample = random.Random(args.seed + 1).sample(order, min(n_objects, max(4, n_objects // 4)))
        n_tasks = min(len(sample), 2 * args.num_cpus)
        groups = [sample[j::n_tasks] for j in range(n_tasks)]
        t0 = time.perf_counter()
        futures = [check_remote.remote([refs[i] for i in g], [digests[i] for i in g])
                   for g in groups]
        task_lat = []
        try:
            for g, out in zip(groups, ray.get(futures, timeout=args.get_timeout_s * len(sample))):
                for j, ok, dt in out:
                    task_lat.append(dt)
                    if not ok:
                        corrupt += 1
                        res.errors.append(f"object {g[j]} corrupted (read in a task)")
        except Exception as exc:  # noqa: BLE001
            lost += len(sample)
            res.errors.append(f"concurrent task reads failed: {type(exc).__name__}: {exc}")
        t_conc = time.perf_counter() - t0
        fig["concurrent_gibps"] = sum(sizes[i] for i in sample) / GiB / t_conc
        fig["concurrent_objects"] = len(sample)
        fig["concurrent_latency_p50_ms"] = 1000 * _percentile(task_lat, 50)
        if (stats := raylet_stats()) is not None:
            fig["spilled_bytes_total"] = stats["spilled_bytes_total"]
            fig["restored_bytes_total"] = stats["restored_bytes_total"]
            if stats["restore_time_total_s"]:
                fig["raylet_restore_gibps"] = (stats["restored_bytes_total"] / GiB
                                               / stats["restore_time_total_s"])
        if isinstance(probe, ValkeyProbe):
            probe.stop()
            fig["valkey_used_memory_peak"] = probe.peak_used
            fig["valkey_used_delta_peak"] = probe.peak_used - probe.base_used
            spilled_total = fig.get("spilled_bytes_total") or stored
            if spilled_total:
                fig["compression_ratio_peak"] = fig["valkey_used_delta_peak"] / spilled_total
        fig.update(lost=lost, corrupted=corrupt)

        # Drop every ref: Ray deletes spilled copies asynchronously (about once a second).
        refs.clear()  # the closures above share these lists: empty them, Ray frees the objects
        keepalive.clear()
        t0 = time.perf_counter()
        left = probe.stored_bytes()[0]
        while left and time.perf_counter() - t0 < args.delete_wait_s:
            time.sleep(0.25)
            left = probe.stored_bytes()[0]
        fig["left_after_drop"] = left
        fig["delete_wait_s"] = time.perf_counter() - t0
    finally:
        ray.shutdown()
        if isinstance(probe, ValkeyProbe):
            probe.stop()
    left = probe.stored_bytes()[0]
    fig["left_after_shutdown"] = left
    if left or fig.get("left_after_drop"):
        res.errors.append(f"{fig.get('left_after_drop')} keys/files left after refs were dropped, "
                          f"{left} after ray.shutdown()")
    if isinstance(probe, ValkeyProbe):
        probe.close()
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return res
