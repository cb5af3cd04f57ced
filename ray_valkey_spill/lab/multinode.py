"""Spill workloads across nodes of a local multi-node Ray (``ray.cluster_utils.Cluster``: one
GCS, and per node its own raylet, object store and IO workers, all on this machine).

Node A makes the objects and spills them; node B consumes them (``cross_node_run``), or node A
crashes first and B consumes what is left (``lost_node_run``). The driver lives on a head
node without CPUs, so it owns the objects without holding them. Shared by the ``scenarios``
tool and the system tests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..config import GiB, MiB
from .data import DataMaker, digest
from .probes import ValkeyProbe
from .workload import RunResult

# Data kinds that are one array: an object of "mixed" holds refs owned by its maker, which
# would die with node A and say nothing about the backend.
ARRAY_KINDS = ("float64", "fp16-kv", "int-tokens", "sparse")
# Ray system config that notices a dead node in ~3 s instead of ~15-30 s (the defaults: health
# checks every 3 s, 5 misses; a pull retried after 10 s, 20 s, ...).
FAST_DETECTION = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
                  "health_check_failure_threshold": 3, "object_manager_pull_timeout_ms": 1000}


@dataclass
class SpillTarget:
    """Where a run spills: Valkey at ``url`` (with spilling ``options``), or Ray's filesystem
    spilling in a fresh directory under ``fs_parent`` when ``url`` is None."""

    label: str
    url: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    probe_options: dict[str, Any] | None = None
    fs_parent: str | None = None
    # Called with the spill directory (None for Valkey) once all is spilled, before reading.
    before_read: Callable[[str | None], None] | None = None
    # The Valkey server's process, when local: its CPU time is reported beside the nodes'.
    server_pid: int | None = None

    @property
    def is_valkey(self) -> bool:
        """True when the target is a Valkey server."""
        return self.url is not None


@dataclass
class ClusterShape:
    """Sizes of the three local nodes (the head runs the driver and no tasks)."""

    store_a_mib: int = 128
    store_b_mib: int = 512
    cpus_a: int = 2
    cpus_b: int = 2
    head_store_mib: int = 96
    # More Ray system config, e.g. faster failure detection for the lost-node runs.
    system_config: dict[str, Any] = field(default_factory=dict)


class _Spill:
    """The spilling config of one run, and what it leaves behind."""

    def __init__(self, target: SpillTarget):
        self.target = target
        self.tmpdir = None
        self.probe: ValkeyProbe | None = None
        if target.is_valkey:
            from ..config import spilling_config

            options = dict(target.options)
            self.prefix = options.pop("prefix", "ray:") + f"scen{uuid.uuid4().hex[:8]}:"
            self.config = spilling_config(target.url, prefix=self.prefix, **options)
            self.probe = ValkeyProbe(target.url, self.prefix, target.probe_options)
        else:
            if target.fs_parent:
                os.makedirs(target.fs_parent, exist_ok=True)
            self.tmpdir = tempfile.mkdtemp(prefix="rvs-fs-spill-", dir=target.fs_parent)
            self.config = json.dumps({"type": "filesystem",
                                      "params": {"directory_path": self.tmpdir}})

    def before_read(self) -> None:
        if self.target.before_read is not None:
            self.target.before_read(self.tmpdir)

    def cleanup(self) -> int:
        """Remove what a crashed node leaves (gc's job in production); the keys/files found."""
        if self.probe is not None:
            self.probe.stop()
            keys = self.probe.keys()
            if keys:
                self.probe.client.unlink(*keys)
            self.probe.close()
            return len(keys)
        left = sum(len(files) for _, _, files in os.walk(self.tmpdir))
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return left


class LocalCluster:
    """Context manager: head (driver, no CPUs), node A and node B, spilling to ``spill``;
    ``ray`` is connected on entry and shut down on exit."""

    def __init__(self, spill_config: str, shape: ClusterShape):
        self.spill_config, self.shape = spill_config, shape

    def __enter__(self) -> "LocalCluster":
        import ray
        from ray.cluster_utils import Cluster

        s = self.shape
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "object_store_memory": s.head_store_mib * MiB,
            "include_dashboard": False,
            # Pre-faulted object stores, as on a node that has been running a while: on this kind
            # of VM the first write to a fresh plasma page costs more than the restore itself
            # (measured: 150-175 ms vs 30-70 ms per 32 MiB restored into a fresh 512 MiB store).
            "_system_config": {"object_spilling_config": self.spill_config,
                               "min_spilling_size": 0, "preallocate_plasma_memory": True,
                               **s.system_config}})
        try:
            # Driver first, while the head is the only node: Ray 2.40 and 2.50 may attach it to
            # any raylet on this host, and a driver on node A dies with A in the lost-node run.
            ray.init(address=self.cluster.address, logging_level="warning", log_to_driver=False)
            self.node_a = self.cluster.add_node(num_cpus=s.cpus_a,
                                                object_store_memory=s.store_a_mib * MiB)
            self.node_b = self.cluster.add_node(num_cpus=s.cpus_b,
                                                object_store_memory=s.store_b_mib * MiB)
            self.cluster.wait_for_nodes()
            head = self.cluster.head_node.node_id
            if ray.get_runtime_context().get_node_id() != head:
                raise RuntimeError("the driver attached to a worker node's raylet, not the head")
        except BaseException:
            ray.shutdown()
            self.cluster.shutdown()
            raise
        return self

    def on(self, node, soft: bool = False) -> dict:
        """Task/actor options that place work on ``node`` (``soft``: elsewhere if it is gone)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node.node_id, soft=soft)}

    def crash(self, node) -> None:
        """Kill ``node``'s raylet and agents with SIGKILL, as a machine failure would (not
        ``remove_node``, which also tears down its spill storage gracefully)."""
        node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
        self.cluster.worker_nodes.remove(node)

    def __exit__(self, *exc) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


# -- remote code ------------------------------------------------------------------------------
class _Producer:
    """An actor on node A: its method returns are stored (and spilled) by A and owned by the
    caller; an actor's returns cannot be rebuilt from lineage once it is dead, like put data."""

    def __init__(self, kind: str, object_bytes: int, seed: int):
        self.maker = DataMaker(kind, object_bytes, seed)
        self.object_bytes = object_bytes

    def make(self, index: int):
        value, _, d, _ = self.maker.make(index, put=None)
        return value, d

    def filler(self):
        return np.zeros(self.object_bytes // 8, dtype=np.float64)

    def ready(self) -> bool:
        return True


def _produce_task(kind: str, object_bytes: int, seed: int, index: int, cost_s: float):
    """A task output with a known cost: ``cost_s`` of work, then the object (the same bytes
    every time it runs, so lineage re-execution gives an identical object)."""
    time.sleep(cost_s)
    value, _, d, _ = DataMaker(kind, object_bytes, seed + index, bases=1).make(index, put=None)
    return value, d


def _consume(refs: list, expected: list[int], timeout_s: float, batch: int = 1,
             fetch_all_first: bool = False) -> dict:
    """Runs on node B: get the objects ``batch`` at a time (one ``ray.get`` per group; after one
    ``ray.wait`` for all with ``fetch_all_first``) and check every byte. Per object: (status,
    seconds: its group's get time shared out, bytes, error type); the wall time when all were
    in after ``fetch_all_first``."""
    import ray

    out, t_all, started = [], None, time.time()
    if fetch_all_first:
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s, fetch_local=True)
        t_all = time.time()
    for start in range(0, len(refs), batch):
        group, wants = refs[start:start + batch], expected[start:start + batch]
        t0 = time.perf_counter()
        try:
            values = ray.get(group, timeout=timeout_s)
        except Exception:  # noqa: BLE001 - some are lost: find out which, one by one
            values = None
        dt = time.perf_counter() - t0
        if values is None:
            for ref, want in zip(group, wants):
                t0 = time.perf_counter()
                try:
                    value = ray.get(ref, timeout=timeout_s)
                except Exception as exc:  # noqa: BLE001 - a lost object is a result here
                    out.append(("lost", time.perf_counter() - t0, 0, type(exc).__name__))
                    continue
                out.append(("ok" if digest(value) == want else "corrupted",
                            time.perf_counter() - t0, value.nbytes, ""))
                del value
            continue
        for value, want in zip(values, wants):
            out.append(("ok" if digest(value) == want else "corrupted", dt / len(group),
                        value.nbytes, ""))
        del values
    return {"objects": out, "started_at": started, "done_at": time.time(), "all_fetched_at": t_all}


def _did_spill(refs: list) -> list[bool]:
    import ray

    locations = ray.experimental.get_local_object_locations(refs)
    return [bool(locations.get(r, {}).get("did_spill")) for r in refs]


def _spill_everything(producer, refs: list, store_bytes: int, object_bytes: int,
                      timeout_s: float) -> int:
    """Push node A's store with fillers until every object in ``refs`` is spilled (Ray does not
    spill in creation order), then with a storeful more, so that A's memory no longer holds
    them either (a spilled object stays in its store until the space is needed, and reads
    would come from there; the owner cannot tell for filesystem spilling, which reports the
    spilling node as a location). The fillers are dropped again; returns the objects spilled."""
    import ray

    fillers = []
    deadline = time.monotonic() + timeout_s
    while not all(_did_spill(refs)) and time.monotonic() < deadline:
        fillers.append(producer.filler.remote())
        ray.wait(fillers[-1:], fetch_local=False)
    for _ in range(-(-store_bytes // object_bytes) + 1):
        fillers.append(producer.filler.remote())
        ray.wait(fillers[-1:], fetch_local=False)
    done = sum(_did_spill(refs))
    fillers.clear()
    return done


def tree_cpu_s(root_pid: int) -> float:
    """CPU seconds (user + system) of a process and its live descendants, plus what their
    reaped children used; 0 once it is gone. From /proc: no dependency."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, used = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        parent[int(entry)] = int(fields[1])
        used[int(entry)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += used.get(pid, 0)
        todo += [child for child, p in parent.items() if p == pid]
    return total / tick


def _raylet_pid(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def _percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"latency_p50_ms": float("nan"), "latency_p99_ms": float("nan")}
    a = np.asarray(values)
    return {"latency_p50_ms": 1000 * float(np.percentile(a, 50)),
            "latency_p99_ms": 1000 * float(np.percentile(a, 99))}


# -- scenario runs ----------------------------------------------------------------------------
def cross_node_run(target: SpillTarget, kinds: list[str], total_gib: float, object_mib: int,
                   shape: ClusterShape, seed: int = 1234, batch: int = 8,
                   timeout_s: float = 120.0) -> dict[str, RunResult]:
    """Per data kind: node A makes two sets of ``total_gib`` of objects (plus two to warm up)
    and spills all of them; tasks on node B read the first set one object per ``ray.get`` and
    the second ``batch`` objects per ``ray.get``, checking every byte. Figures: B's read GiB/s
    of each pass (bytes / time in ``ray.get``), per-object latency p50/p99 of the first."""
    import ray

    spill = _Spill(target)
    results: dict[str, RunResult] = {}
    try:
        with LocalCluster(spill.config, shape) as lc:
            producer_cls = ray.remote(num_cpus=0, max_restarts=0)(_Producer)
            consume = ray.remote(num_cpus=1, max_retries=0)(_consume).options(**lc.on(lc.node_b))
            for kind in kinds:
                res = results[kind] = RunResult(target.label)
                object_bytes = object_mib * MiB
                n = max(2, int(total_gib * GiB) // object_bytes)
                producer = producer_cls.options(**lc.on(lc.node_a)).remote(kind, object_bytes, seed)
                ray.get(producer.ready.remote())
                pairs = [producer.make.options(num_returns=2).remote(i) for i in range(2 * n + 2)]
                refs = [p[0] for p in pairs]
                digests = ray.get([p[1] for p in pairs])
                del pairs
                ray.wait(refs, num_returns=len(refs), fetch_local=False)
                spilled = _spill_everything(producer, refs, shape.store_a_mib * MiB, object_bytes,
                                            timeout_s)
                spill.before_read()
                # Warm B's workers (and with Valkey its restore workers): start-up is not a restore.
                ray.get(consume.remote(refs[-2:], digests[-2:], timeout_s, 1))
                figures: dict[str, Any] = {"objects": 2 * n, "object_bytes": object_bytes,
                                           "spilled_on_a": spilled - 2}
                outs = []
                # CPU seconds spent by each node's processes (raylet, its workers) and the
                # server while B reads: who does the work of a cross-node restore.
                pids = {"a": _raylet_pid(lc.node_a), "b": _raylet_pid(lc.node_b),
                        "server": target.server_pid}
                cpu0 = {k: tree_cpu_s(p) for k, p in pids.items() if p}
                for name, lo, hi, size in (("seq", 0, n, 1), ("batch", n, 2 * n, batch)):
                    out = ray.get(consume.remote(refs[lo:hi], digests[lo:hi], timeout_s, size),
                                  timeout=timeout_s * n)["objects"]
                    outs += out
                    read_s = sum(o[1] for o in out)
                    got = [o for o in out if o[0] == "ok"]
                    figures[f"{name}_gibps"] = sum(o[2] for o in got) / GiB / read_s if read_s else 0.0
                    if name == "seq":
                        figures.update(_percentiles_ms([o[1] for o in got]))
                        figures["seq_latencies_ms"] = [round(1000 * o[1], 1) for o in out]
                read_gib = sum(o[2] for o in outs) / GiB
                for k, t0 in cpu0.items():
                    if read_gib:
                        figures[f"{k}_cpu_s_per_gib"] = (tree_cpu_s(pids[k]) - t0) / read_gib
                figures.update(batch=batch, lost=sum(o[0] == "lost" for o in outs),
                               corrupted=sum(o[0] == "corrupted" for o in outs))
                res.figures.update(figures)
                if spilled < len(refs):
                    res.errors.append(f"{kind}: only {spilled} of {len(refs)} objects spilled on A")
                for i, o in enumerate(outs):
                    if o[0] != "ok":
                        res.errors.append(f"{kind}: object {i} {o[0]} {o[3]}")
                del refs
                ray.kill(producer)
    finally:
        left = spill.cleanup()
    for res in results.values():
        res.figures["left_after_shutdown"] = left
    return results


def lost_node_run(target: SpillTarget, kind: str, actor_objects: int, task_objects: int,
                  object_mib: int, task_cost_s: float, shape: ClusterShape, seed: int = 1234,
                  timeout_s: float = 180.0) -> RunResult:
    """Node A makes ``actor_objects`` objects in an actor (no lineage: lost for good when A's
    copy is) and ``task_objects`` task outputs that cost ``task_cost_s`` each (lineage can
    rebuild them); all are spilled; A is killed; a task on node B fetches every object and
    checks every byte. Figures: recovered / lost / corrupted per kind of object and the time
    from the crash until all that came back was back on B."""
    import ray

    spill = _Spill(target)
    res = RunResult(target.label)
    object_bytes = object_mib * MiB
    try:
        with LocalCluster(spill.config, shape) as lc:
            producer = ray.remote(num_cpus=0, max_restarts=0)(_Producer).options(
                **lc.on(lc.node_a)).remote(kind, object_bytes, seed)
            produce = ray.remote(num_cpus=1, max_retries=3)(_produce_task)
            consume = ray.remote(num_cpus=1, max_retries=0)(_consume)
            ray.get(producer.ready.remote())
            actor_pairs = [producer.make.options(num_returns=2).remote(i)
                           for i in range(actor_objects)]
            # soft: lineage re-execution may run elsewhere once A is gone
            task_pairs = [produce.options(num_returns=2, **lc.on(lc.node_a, soft=True)).remote(
                kind, object_bytes, seed, i, task_cost_s) for i in range(task_objects)]
            groups = {"actor": [p[0] for p in actor_pairs], "task": [p[0] for p in task_pairs]}
            digests = {"actor": ray.get([p[1] for p in actor_pairs]),
                       "task": ray.get([p[1] for p in task_pairs])}
            every = groups["actor"] + groups["task"]
            ray.wait(every, num_returns=len(every), fetch_local=False)
            spilled = _spill_everything(producer, every, shape.store_a_mib * MiB, object_bytes,
                                        timeout_s)
            res.figures.update(spilled_on_a=spilled, objects=len(every), task_cost_s=task_cost_s,
                               object_bytes=object_bytes)
            if spilled < len(every):
                res.errors.append(f"only {spilled} of {len(every)} objects spilled on node A")
            ray.get(consume.options(**lc.on(lc.node_b)).remote([], [], timeout_s))
            t_kill = time.time()
            lc.crash(lc.node_a)
            del actor_pairs, task_pairs
            # One fetch of everything: Ray recovers the objects in parallel, as for a job's
            # inputs; the clock runs from the crash until the last one is on B.
            out = ray.get(consume.options(**lc.on(lc.node_b)).remote(
                every, digests["actor"] + digests["task"], timeout_s, 1, True),
                timeout=timeout_s * 4)
            res.figures["all_back_s"] = out["all_fetched_at"] - t_kill
            res.figures["consumer_started_s"] = out["started_at"] - t_kill
            split = {"actor": out["objects"][:actor_objects],
                     "task": out["objects"][actor_objects:]}
            for name, objs in split.items():
                res.figures.update({
                    f"{name}_recovered": sum(o[0] == "ok" for o in objs),
                    f"{name}_lost": sum(o[0] == "lost" for o in objs),
                    f"{name}_corrupted": sum(o[0] == "corrupted" for o in objs),
                    f"{name}_errors": sorted({o[3] for o in objs if o[3]})})
                for i, o in enumerate(objs):
                    if o[0] == "corrupted":
                        res.errors.append(f"{name} object {i} corrupted")
            res.figures["recovered"] = res.figures["actor_recovered"] + res.figures["task_recovered"]
            res.figures["lost"] = res.figures["actor_lost"] + res.figures["task_lost"]
            res.figures["corrupted"] = (res.figures["actor_corrupted"]
                                        + res.figures["task_corrupted"])
            res.figures["recovered_bytes"] = res.figures["recovered"] * object_bytes
    finally:
        res.figures["left_for_gc"] = spill.cleanup()
    return res
