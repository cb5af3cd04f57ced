"""The spill workload through Ray: data kinds, the run itself, and its measurements.

``DataMaker`` makes objects of one data kind; ``run_once`` starts a local Ray (spilling to
Valkey or to Ray's filesystem), pushes ``total_gib`` of objects through it and reads every one
back, checking every byte. ``stress`` runs it side by side per backend, ``bench-shards`` per
shard count, and ``bench`` borrows the data kinds.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import xxhash

from ..keyspace import scan_keys
from ..spill import keys as K
from ..cli.progress import Progress

MiB = 1024 * 1024
GiB = 1024 * MiB
DATA_KINDS = ("float64", "fp16-kv", "int-tokens", "sparse", "mixed")
# Every object differs from its siblings: these positions get fresh values per object.
VARY_STRIDE_BYTES = 64 * 1024


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


def make_data(kind: str, nbytes: int, seed: int = 7) -> np.ndarray:
    """A flat byte view of ``nbytes`` of one data kind (one ``DataMaker`` base block)."""
    if kind == "mixed":
        raise ValueError("make_data makes one array; 'mixed' objects are not arrays")
    maker = DataMaker(kind, nbytes, seed, bases=1)
    return maker.bases[0].reshape(-1).view(np.uint8)


# -- data -----------------------------------------------------------------------------------
def digest(value: Any, ref_digest: Callable[[Any], int] | None = None) -> int:
    """xxh3-64 of a value: raw bytes for arrays and bytes, pickle bytes for Python objects;
    an ObjectRef inside a dict or list counts as the digest of the value it points to."""
    if isinstance(value, np.ndarray):
        h = xxhash.xxh3_64(f"{value.dtype.str}{value.shape}".encode())
        h.update(memoryview(np.ascontiguousarray(value)).cast("B"))
        return h.intdigest()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return xxhash.xxh3_64_intdigest(value)
    if isinstance(value, dict):
        h = xxhash.xxh3_64()
        for k in sorted(value, key=repr):
            h.update(repr(k).encode())
            h.update(digest(value[k], ref_digest).to_bytes(8, "little"))
        return h.intdigest()
    if isinstance(value, (list, tuple)) and any(_is_ref(v) or isinstance(v, (dict, np.ndarray))
                                                for v in value):
        h = xxhash.xxh3_64(type(value).__name__.encode())
        for v in value:
            h.update(digest(v, ref_digest).to_bytes(8, "little"))
        return h.intdigest()
    if _is_ref(value):
        if ref_digest is None:
            import ray

            return digest(ray.get(value))
        return ref_digest(value)
    return xxhash.xxh3_64_intdigest(pickle.dumps(value, protocol=5))


def _is_ref(value: Any) -> bool:
    import ray

    return isinstance(value, ray.ObjectRef)


def nbytes_of(value: Any) -> int:
    """Bytes of array and bytes data in ``value``, through dicts, lists and tuples (other values
    count 0)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes_of(v) for v in value)
    return 0


class DataMaker:
    """Makes objects of one kind fast: a few random base blocks are generated once; each object
    is a base block whose values at every ``VARY_STRIDE_BYTES`` are replaced by fresh ones (so
    every object, and every chunk of it, differs). ``ray.put`` copies the block into plasma,
    so the block can be mutated again for the next object."""

    N_BASE = 3

    def __init__(self, kind: str, object_bytes: int, seed: int = 1234, bases: int | None = None):
        if kind not in DATA_KINDS:
            raise ValueError(f"unknown data kind {kind!r}")
        self.kind = kind
        self.object_bytes = object_bytes
        self.rng = np.random.default_rng(seed)
        count = bases or (self.N_BASE if kind != "mixed" else 2)
        self.bases = [self._base() for _ in range(count)]

    def _base(self) -> np.ndarray:
        rng, n = self.rng, self.object_bytes
        if self.kind in ("float64", "mixed"):
            a = np.empty(n // 8, dtype=np.float64)
            rng.random(out=a)
            return a
        if self.kind == "fp16-kv":
            # (layers, 2, heads, tokens, dim) of half-precision activations
            heads, dim = 8, 128
            tokens = max(1, n // (2 * 2 * heads * dim * 2) // 4)
            layers = max(1, n // (2 * 2 * heads * tokens * dim))
            a = np.empty((layers, 2, heads, tokens, dim), dtype=np.float16)
            flat = a.reshape(-1)
            step = 1 << 22
            tmp = np.empty(step, dtype=np.float32)
            for s in range(0, flat.size, step):
                m = min(step, flat.size - s)
                rng.standard_normal(out=tmp[:m], dtype=np.float32)
                flat[s:s + m] = tmp[:m]
            return a
        if self.kind == "int-tokens":
            return rng.integers(0, 50_000, size=n // 8, dtype=np.int64)
        if self.kind == "sparse":
            a = np.zeros(n // 8, dtype=np.float64)
            nz = max(1, a.size // 100)
            a[rng.choice(a.size, size=nz, replace=False)] = rng.standard_normal(nz)
            return a
        raise AssertionError(self.kind)

    def _vary(self, a: np.ndarray, index: int) -> None:
        flat = a.reshape(-1)
        stride = max(1, VARY_STRIDE_BYTES // flat.itemsize)
        pos = flat[(index * 7919) % stride::stride]
        if self.kind == "fp16-kv":
            pos[:] = self.rng.standard_normal(pos.size, dtype=np.float32)
        elif self.kind == "int-tokens":
            pos[:] = self.rng.integers(0, 50_000, size=pos.size)
        elif self.kind == "sparse":
            # same positions each time: density stays ~1 %
            flat[::stride] = self.rng.standard_normal(flat[::stride].size)
        else:
            pos[:] = self.rng.random(pos.size)
        flat[0] = index  # no two objects alike, whatever the rng does

    def make(self, index: int, put: Callable[[Any], Any]) -> tuple[Any, int, int, list]:
        """Return (value to put, original bytes, digest, child refs kept alive by the value)."""
        if self.kind != "mixed":
            a = self.bases[index % len(self.bases)]
            self._vary(a, index)
            return a, a.nbytes, digest(a), []
        base = self.bases[index % len(self.bases)]
        self._vary(base, index)
        flavour = index % 3
        if flavour == 0:  # a plain numpy array (float32 view: another dtype)
            a = base.view(np.float32)
            return a, a.nbytes, digest(a), []
        if flavour == 1:  # raw bytes (a copy, made from the block)
            b = base.tobytes()
            return b, len(b), digest(b), []
        # a dict of Python objects, an array, bytes and refs to other objects
        child_arr = np.arange(index, index + 128 * 1024, dtype=np.int64)  # 1 MiB
        child_obj = {"step": index, "tags": [f"t{index}-{j}" for j in range(50)]}
        children = {put(child_arr): digest(child_arr), put(child_obj): digest(child_obj)}
        refs = list(children)
        half = len(base) // 2
        value = {
            "id": index,
            "array": base[:half],
            "blob": base[half:].tobytes(),
            "meta": {"name": f"obj-{index}", "shape": list(base.shape), "scale": 0.5 * index,
                     "nested": [(i, str(i) * 3) for i in range(200)]},
            "refs": refs,
        }
        d = digest(value, ref_digest=lambda r: children[r])
        return value, nbytes_of(value), d, refs


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


# -- storage-specific probes ----------------------------------------------------------------
class ValkeyProbe:
    """Watches the server (standalone or cluster: memory summed over the primaries)."""

    def __init__(self, url: str, prefix: str, connection_options: dict | None = None):
        """``connection_options``: credentials for the probe's own connection (it reads INFO,
        which a least-privilege spill user may not)."""
        from ..config import SpillConfig, parse_url
        from ..connection import connect

        self._cluster = parse_url(url).cluster
        self.client = connect(SpillConfig.from_params({"url": url, **connection_options})
                              if connection_options else url)
        self.prefix = prefix
        self.base_used = self.used_memory()
        self.peak_used = self.base_used
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def used_memory(self) -> int:
        """The server's ``used_memory`` in bytes (summed over the primaries of a cluster)."""
        if not self._cluster:
            return int(self.client.info("memory")["used_memory"])
        from valkey.cluster import ValkeyCluster

        per_node = self.client.info("memory", target_nodes=ValkeyCluster.PRIMARIES)
        if "used_memory" in per_node:  # one primary: valkey-py unwraps the reply
            return int(per_node["used_memory"])
        return sum(int(v["used_memory"]) for v in per_node.values())

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.peak_used = max(self.peak_used, self.used_memory())
            except Exception:  # noqa: BLE001 - the sampler must never kill the run
                continue

    def keys(self) -> list[bytes]:
        """Keys of spilled objects (a node's heartbeat key, ``...:hb``, is not one)."""
        return [k for k in scan_keys(self.client, self.prefix + "*")
                if not K.is_heartbeat_key(k)]

    def stored_bytes(self) -> tuple[int, int]:
        """(number of spill keys, their total value bytes)."""
        keys = self.keys()
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.strlen(k)
        return len(keys), sum(pipe.execute()) if keys else 0

    def manifest_count(self) -> int:
        """Number of manifests under the prefix: objects completely spilled."""
        return sum(1 for k in self.keys() if K.is_manifest_key(k))

    def stop(self) -> None:
        """Stop the memory sampler and take a last sample."""
        self._stop.set()
        self._thread.join(timeout=2)
        self.peak_used = max(self.peak_used, self.used_memory())

    def close(self) -> None:
        """Close the client."""
        self.client.close()


class DirProbe:
    """Watches the spill directory of Ray's filesystem spilling."""

    def __init__(self, path: str):
        self.path = path

    def files(self) -> list[str]:
        """Paths of every file under the directory."""
        out = []
        for root, _, names in os.walk(self.path):
            out.extend(os.path.join(root, n) for n in names)
        return out

    def stored_bytes(self) -> tuple[int, int]:
        """(number of files, their total bytes); a file removed meanwhile counts 0 bytes."""
        files = self.files()
        total = 0
        for f in files:
            try:
                total += os.path.getsize(f)
            except OSError:
                pass
        return len(files), total


def raylet_stats() -> dict | None:
    """The raylet's store stats (spilled/restored bytes) or None when grpcio is missing."""
    try:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    except ImportError:
        return None
    s = reply.store_stats
    return {name: getattr(s, name) for name in (
        "spilled_bytes_total", "spilled_objects_total", "spill_time_total_s",
        "restored_bytes_total", "restored_objects_total", "restore_time_total_s",
        "object_store_bytes_used", "object_store_bytes_avail")}


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


# -- reporting ------------------------------------------------------------------------------


def environment(url: str | None) -> dict[str, Any]:
    """Versions, machine and commit, for a results file (the server version when ``url`` is
    given)."""
    import ray

    from .. import __version__

    env: dict[str, Any] = {
        "ray": ray.__version__, "package": __version__, "python": platform.python_version(),
        "numpy": np.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
        "platform": platform.platform(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import valkey

        env["valkey_py"] = valkey.__version__
        if url:
            env["transport"] = "unix" if url.startswith("unix:") else "tcp"
            info = valkey.Valkey.from_url(url).info("server")
            env["valkey_server"] = info.get("valkey_version") or info.get("redis_version")
    except Exception as exc:  # noqa: BLE001
        env["valkey_server"] = f"unknown ({exc})"
    try:
        with open("/proc/meminfo") as f:
            env["mem_total_kib"] = int(f.readline().split()[1])
    except OSError:
        pass
    env["git_commit"] = git_commit()
    return env


def git_commit() -> str | None:
    """The git commit of this checkout, ``-dirty`` if tracked code changed (docs excluded); None
    outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
        # Documentation and result files of earlier runs do not change what is measured.
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no",
                                "--", ":/", ":(exclude,top)docs", ":(exclude,top,glob)**/*.md"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None
