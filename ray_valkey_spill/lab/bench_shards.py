"""Spill throughput on 1 vs N Valkey Cluster shards, measured side by side in one run.

    ray-valkey-spill bench-shards [--shards 1,3] [--repeat 3] [--total-gib 0.75]
                                       [--object-mib 32] [--object-store-mib 256]
                                   [--chunk-size-bytes 4194304] [--json results/shards.json]
                                   [--skip-ray] [--skip-backend] [--skip-server]

For each shard count a local cluster (``EmbeddedValkeyCluster``, spill-safe settings) is
started once; the repetitions then alternate between shard counts so that background load on a
shared machine hits every configuration alike. Three layers are measured, medians printed:

1. ``ray``: the stress workload (``workload.run_once``): ``--total-gib`` of
   objects put through a small object store (most of it spills), then read back in order, in
   random order and from tasks, every byte checked. A fresh local Ray per run.
2. ``backend``: the spill backend alone (``testing.harness.SpillHarness``, no Ray): one large object
   written and read back through the spill engine, every byte checked.
3. ``server``: ``redis-benchmark`` (if installed) SET/GET of 1 MiB values, ``--cluster`` for
   more than one shard: what the shards themselves sustain on this machine.

Even a 1-shard configuration runs in cluster mode (``valkey+cluster://``), so that only the shard
count differs. On a small machine every shard, Ray's raylet, its IO workers and the driver
share the same cores: the figures say how the backend scales when the CPU is NOT the limit only
if the machine has cores to spare. Read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid

import numpy as np
import xxhash

from ..cli.options import report_problems

MiB = 1024 * 1024
GiB = 1024 * MiB

RAY_ROWS = [("spill_gibps", "spill GiB/s (put + wait)"),
            ("restore_gibps", "restore GiB/s (in order)"),
            ("random_restore_gibps", "restore GiB/s (random)"),
            ("concurrent_gibps", "restore GiB/s (tasks)"),
            ("raylet_spill_gibps", "raylet spill GiB/s"),
            ("raylet_restore_gibps", "raylet restore GiB/s"),
            ("latency_p50_ms", "get latency p50 ms")]
BACKEND_ROWS = [("write_gibps", "backend write GiB/s"), ("read_gibps", "backend read GiB/s")]
SERVER_ROWS = [("set_gibps", "server SET 1 MiB GiB/s"), ("get_gibps", "server GET 1 MiB GiB/s")]


def ray_run(url: str, args) -> dict:
    """The stress workload (``workload.run_once``) through a fresh local Ray; its figures."""
    from .workload import add_workload_options, run_once

    argv = ["--total-gib", str(args.total_gib), "--object-mib", str(args.object_mib),
            "--object-store-mib", str(args.object_store_mib), "--num-cpus", "2",
            "--chunk-size-bytes", str(args.chunk_size_bytes)]
    parser = argparse.ArgumentParser()
    add_workload_options(parser)
    result = run_once("valkey", parser.parse_args(argv), url, progress=False)
    fig = dict(result.figures)
    fig["errors"] = result.errors
    return fig


def backend_run(url: str, args) -> dict:
    """One large object spilled and restored through ``SpillHarness`` (no Ray); write/read
    GiB/s and any byte mismatch as an error."""
    from ..testing.harness import SpillHarness

    data = np.random.default_rng(int(time.time())).integers(
        0, 256, args.backend_mib * MiB, dtype=np.uint8)
    target = np.zeros_like(data)
    h = SpillHarness(url, f"ray:bs{uuid.uuid4().hex[:8]}:", chunk_size_bytes=args.chunk_size_bytes,
                     compression="none")
    try:
        h.connect()
        h.client.ping()
        t0 = time.perf_counter()
        spill_url = h.spill(data)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        h.restore_into(spill_url, target)
        t_read = time.perf_counter() - t0
        ok = xxhash.xxh3_64_intdigest(target) == xxhash.xxh3_64_intdigest(data)
        h.delete([spill_url])
    finally:
        h.close()
    return {"write_gibps": data.nbytes / GiB / t_write, "read_gibps": data.nbytes / GiB / t_read,
            "errors": [] if ok else ["restored bytes differ"]}


def server_run(port: int, shards: int, args) -> dict:
    """``redis-benchmark`` SET/GET of 1 MiB values against the cluster at ``port``; GiB/s, and
    errors (also when it is not installed)."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return {"errors": ["redis-benchmark not installed"]}
    size = MiB
    n = max(64, args.server_mib)
    base = [exe, "-h", "127.0.0.1", "-p", str(port), "-c", str(2 * shards), "-n", str(n),
            "-d", str(size), "-P", "4", "--csv", "-q"]
    if shards > 1:  # redis-benchmark refuses --cluster with a single node
        base.append("--cluster")
    out: dict = {"errors": []}
    # SET: new random keys, like spilling. GET: 64 keys written first (-r 64), then read at
    # random among them, so that every GET returns a full 1 MiB value (no misses).
    steps = (("set_gibps", ["-r", str(100 * n), "-t", "set"]),
             (None, ["-r", "64", "-t", "set", "-n", "256"]),
             ("get_gibps", ["-r", "64", "-t", "get"]))
    for name, extra in steps:
        cmd = base + extra
        if "-n" in extra:
            cmd = [a for i, a in enumerate(base) if a != "-n" and base[i - 1] != "-n"] + extra
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            out["errors"].append(f"{name or 'prefill'}: {exc}")
            continue
        for line in text.splitlines():
            cells = [c.strip('"') for c in line.split(",")]
            if name and cells and cells[0].upper() in ("SET", "GET"):
                try:
                    out[name] = float(cells[1]) * size / GiB
                except (IndexError, ValueError):
                    pass
    return out


def _flush(cluster) -> None:
    """Drop everything the benchmarks left (private cluster: FLUSHALL on each primary is fine)."""
    for i in cluster.primary_indexes():
        with cluster.nodes[i].client() as c:
            c.flushall()


def _median(runs: list[dict], name: str):
    vals = [r[name] for r in runs if isinstance(r.get(name), (int, float))]
    return statistics.median(vals) if vals else None


def parse_args(argv):
    """Parse the command line."""
    p = argparse.ArgumentParser(prog="ray-valkey-spill bench-shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", default="1,3", help="comma-separated primaries per cluster")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--total-gib", type=float, default=0.75)
    p.add_argument("--object-mib", type=int, default=32)
    p.add_argument("--object-store-mib", type=int, default=256)
    p.add_argument("--chunk-size-bytes", type=int, default=4 * MiB)
    p.add_argument("--backend-mib", type=int, default=256, help="object size of the backend bench")
    p.add_argument("--server-mib", type=int, default=512, help="MiB per redis-benchmark test")
    p.add_argument("--maxmemory", default="3gb", help="maxmemory per shard")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--skip-backend", action="store_true")
    p.add_argument("--skip-server", action="store_true")
    p.add_argument("--json", help="write config, environment, every run and the medians here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Start one cluster per shard count, run every layer ``--repeat`` times alternating, print
    the medians; 1 if any run reported an error, else 0."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    shard_counts = [int(s) for s in args.shards.split(",")]
    from ..testing.embedded_cluster import EmbeddedValkeyCluster

    clusters = {n: EmbeddedValkeyCluster(primaries=n, config={"maxmemory": args.maxmemory})
                for n in shard_counts}
    layers = [name for name, skip in (("ray", args.skip_ray), ("backend", args.skip_backend),
                                      ("server", args.skip_server)) if not skip]
    runs: dict = {layer: {n: [] for n in shard_counts} for layer in layers}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        for rep in range(args.repeat):
            for n in shard_counts:
                c = clusters[n]
                for layer in layers:
                    print(f"[{rep + 1}/{args.repeat}] {n} shard(s): {layer}", file=sys.stderr,
                          flush=True)
                    if layer == "ray":
                        fig = ray_run(c.url, args)
                    elif layer == "backend":
                        fig = backend_run(c.url, args)
                    else:
                        fig = server_run(c.nodes[0].port, n, args)
                    _flush(c)
                    runs[layer][n].append(fig)
                    for err in fig.get("errors", [])[:5]:
                        print(f"  ERROR: {err}", file=sys.stderr)
    finally:
        for c in clusters.values():
            c.stop()

    rows = ([("ray",) + r for r in RAY_ROWS] + [("backend",) + r for r in BACKEND_ROWS]
            + [("server",) + r for r in SERVER_ROWS])
    medians = {layer: {n: {name: _median(runs[layer][n], name) for l2, name, _ in rows
                           if l2 == layer} for n in shard_counts} for layer in layers}
    import ray

    env = {"date_utc": started, "cpus": os.cpu_count(), "machine": platform.machine(),
           "platform": platform.platform(), "python": platform.python_version(),
           "ray": ray.__version__, "load_avg_at_start": os.getloadavg()}
    print(f"\nmedian of {args.repeat}; {env['cpus']} CPUs; {args.total_gib} GiB in "
          f"{args.object_mib} MiB objects through a {args.object_store_mib} MiB object store; "
          f"chunk {args.chunk_size_bytes // MiB} MiB; {started}")
    head = f"{'':<28}" + "".join(f"{str(n) + ' shard(s)':>14}" for n in shard_counts)
    if len(shard_counts) > 1:
        head += f"{'ratio':>9}"
    print(head)
    print("-" * len(head))
    for layer, name, label in rows:
        if layer not in layers:
            continue
        vals = [medians[layer][n].get(name) for n in shard_counts]
        if all(v is None for v in vals):
            continue
        line = f"{label:<28}" + "".join(f"{v:>14.3f}" if v is not None else f"{'-':>14}"
                                        for v in vals)
        if len(shard_counts) > 1 and vals[0] and vals[-1]:
            line += f"{vals[-1] / vals[0]:>8.2f}x"
        print(line)
    errors = [e for layer in layers for n in shard_counts for r in runs[layer][n]
              for e in r.get("errors", [])]
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": vars(args), "environment": env, "medians": medians,
                       "runs": runs, "ok": not errors}, f, indent=2, default=str)
    return report_problems(errors)


if __name__ == "__main__":
    sys.exit(main())
