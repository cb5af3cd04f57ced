"""Backend benchmark without Ray: the spill backend's own write and read path vs the raw server.

    ray-valkey-spill bench [--url URL] [--object-mib 256] [--repeat 3] [--json PATH]
                           [--plot docs/bench_chunk_size.png] [--memory-gib 1]

The backend side is the real spill engine (``SpillEngine``, driven by ``SpillHarness``): the
object spilled is a numpy buffer, and restore decodes into a preallocated buffer through the
same ``readinto`` loop Ray runs. No Ray is started.

The raw side is a tight pipelined client on plain sockets: the same keys, value sizes,
connections and pipeline batches as the backend (SET sends the value straight from the source
buffer; GET reads straight into the target buffer), without encoding, checksums or manifests.
With ``--redis-benchmark`` Debian's ``redis-benchmark`` (package redis-tools) is run too.

It also reports the peak extra memory (RSS high-water mark delta) of spilling and restoring
one ``--memory-gib`` object through the backend: the write path must not copy the object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np
import xxhash

from ..keyspace import unlink_matching
from ..testing.embedded import EmbeddedValkey, add_transport_argument
from ..testing.harness import SpillHarness
from .rawclient import RawClient
from .data import make_data

MiB = 1024 * 1024
GiB = 1024 * MiB
DEFAULT_CHUNKS = (256 * 1024, 512 * 1024, MiB, 2 * MiB, 4 * MiB, 8 * MiB, 16 * MiB)
DEFAULT_CONNECTIONS = (1, 2, 4)
KINDS = ("float64", "fp16-kv", "int-tokens", "sparse")


# -- the raw server limit -------------------------------------------------------------------
def raw_round(address, connections: int, buf: memoryview, target: memoryview,
              chunk: int, client) -> tuple[float, float]:
    """One raw round: SET ``buf`` in chunks, GET it into ``target``, remove the keys; (SET, GET)
    throughput in GiB/s."""
    from ..spill.transport import BATCH_BYTES, BATCH_COMMANDS

    prefix = f"ray:rawbench{uuid.uuid4().hex[:8]}:"
    raw = RawClient(connections, address.host, address.port, address.unix_path)
    try:
        t_set = raw.set_all(prefix, buf, chunk, BATCH_BYTES, BATCH_COMMANDS)
        t_get = raw.get_all(prefix, target, chunk, BATCH_BYTES, BATCH_COMMANDS)
    finally:
        raw.close()
    unlink_matching(client, prefix + "*")
    return len(buf) / GiB / t_set, len(buf) / GiB / t_get


def redis_benchmark(address, connections: int, size: int, total: int) -> dict | None:
    """``redis-benchmark`` SET/GET throughput (GiB/s) for ``size``-byte values; None when it is
    not installed or fails to run."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return None
    n = max(connections * 4, total // size)
    pipeline = max(1, min(16, (16 * MiB) // size))
    where = (["-s", address.unix_path] if address.unix_path
             else ["-h", address.host, "-p", str(address.port)])
    base = [exe, *where, "-c", str(connections), "-n", str(n), "-d", str(size),
            "-P", str(pipeline), "--csv", "-q"]
    # SET to new random keys (like spilling); GET of one existing key ("key:__rand_int__"
    # without -r), so that every GET returns a full value rather than a miss.
    result = {}
    for cmd in (base + ["-r", str(10 * n), "-t", "set"], base + ["-t", "set,get"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        for line in out.splitlines():
            cells = [c.strip('"') for c in line.split(",")]
            name = cells[0].lower() + "_gibps" if cells else ""
            if name in ("set_gibps", "get_gibps") and name not in result:
                try:
                    result[name] = float(cells[1]) * size / GiB
                except (IndexError, ValueError):
                    pass
    return result


# -- measurements ---------------------------------------------------------------------------
def backend_round(url: str, buf: np.ndarray, target: np.ndarray, chunk: int, connections: int,
                  compression: str, verify: bool = True) -> dict[str, float]:
    """One backend round: spill ``buf``, restore it into ``target``, delete it; write/read GiB/s
    and stored/original bytes. Raises ``AssertionError`` if ``verify`` finds the bytes differ."""
    prefix = f"ray:bench{uuid.uuid4().hex[:8]}:"
    h = SpillHarness(url, prefix, chunk_size_bytes=chunk, connections=connections,
                     compression=compression)
    try:
        h.connect()  # connect + server check outside the timing
        h.client.ping()
        t0 = time.perf_counter()
        spill_url = h.spill(buf)
        t_write = time.perf_counter() - t0
        stored = h.stored_bytes(spill_url)
        t0 = time.perf_counter()
        h.restore_into(spill_url, target)
        t_read = time.perf_counter() - t0
        if verify and xxhash.xxh3_64_intdigest(target) != xxhash.xxh3_64_intdigest(buf):
            raise AssertionError("restored bytes differ from the original")
        h.delete([spill_url])
    finally:
        h.close()
    return {"write_gibps": buf.nbytes / GiB / t_write, "read_gibps": buf.nbytes / GiB / t_read,
            "stored_ratio": stored / buf.nbytes}


def _hwm_kib() -> tuple[int, int]:
    rss = hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, hwm


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _RssSampler:
    """Fallback when VmHWM cannot be reset: sample VmRSS every 5 ms."""

    def __init__(self):
        self.peak = _hwm_kib()[0]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _hwm_kib()[0])

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return max(self.peak, _hwm_kib()[0])


def memory_round(url: str, nbytes: int, kind: str, chunk: int, connections: int) -> dict[str, Any]:
    """Peak extra memory (MiB) and throughput of spilling and restoring one ``nbytes`` object of
    ``kind``, and whether the restored bytes match."""
    buf = make_data(kind, nbytes)
    target = np.empty_like(buf)
    target[::4096] = 1  # touch every page now, so it is not counted as extra
    prefix = f"ray:benchmem{uuid.uuid4().hex[:8]}:"
    h = SpillHarness(url, prefix, chunk_size_bytes=chunk, connections=connections)
    out: dict[str, Any] = {"object_bytes": nbytes, "kind": kind, "chunk_size_bytes": chunk,
                           "connections": connections}
    try:
        h.connect()
        h.client.ping()
        for phase in ("spill", "restore"):
            base = _hwm_kib()[0]
            exact = _reset_hwm()
            sampler = None if exact else _RssSampler()
            t0 = time.perf_counter()
            if phase == "spill":
                spill_url = h.spill(buf)
            else:
                h.restore_into(spill_url, target)
            dt = time.perf_counter() - t0
            peak = _hwm_kib()[1] if exact else sampler.stop()
            out[f"{phase}_extra_mib"] = (peak - base) / 1024
            out[f"{phase}_gibps"] = nbytes / GiB / dt
        out["method"] = "VmHWM reset via /proc/self/clear_refs" if exact else "VmRSS sampled (5 ms)"
        out["verified"] = bool(xxhash.xxh3_64_intdigest(target) == xxhash.xxh3_64_intdigest(buf))
        h.delete([spill_url])
    finally:
        h.close()
    return out


def _median_dict(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def run(args) -> dict[str, Any]:
    """Run every sweep of ``args`` (chunk size x connections, data kinds, peak memory) against
    ``args.url``; the results by sweep."""
    from ..config import parse_url

    url = args.url
    address = parse_url(url)
    nbytes = args.object_mib * MiB
    import valkey

    client = valkey.Valkey.from_url(url)
    results: dict[str, Any] = {"chunk_sweep": [], "kinds": [], "memory": None}
    buf = make_data("float64", nbytes)
    target = np.empty_like(buf)
    target[:] = 0
    total_cfg = len(args.chunk_sizes) * len(args.connections)
    done = 0
    for chunk in args.chunk_sizes:
        for conns in args.connections:
            done += 1
            sys.stderr.write(f"\r  chunk sweep {done}/{total_cfg}: chunk {chunk // 1024} KiB, "
                             f"{conns} connection(s)        ")
            sys.stderr.flush()
            backend_rounds, raw_rounds = [], []
            for _ in range(args.repeat):  # interleaved: backend, raw, backend, raw, ...
                backend_rounds.append(backend_round(url, buf, target, chunk, conns,
                                                    args.compression))
                w, r = raw_round(address, conns, memoryview(buf), memoryview(target), chunk,
                                 client)
                raw_rounds.append({"write_gibps": w, "read_gibps": r})
            b, raw = _median_dict(backend_rounds), _median_dict(raw_rounds)
            row = {"chunk_size_bytes": chunk, "connections": conns, "kind": "float64",
                   "backend_write_gibps": b["write_gibps"], "backend_read_gibps": b["read_gibps"],
                   "raw_set_gibps": raw["write_gibps"], "raw_get_gibps": raw["read_gibps"],
                   "write_vs_raw": statistics.median(
                       x["write_gibps"] / y["write_gibps"] for x, y in zip(backend_rounds, raw_rounds)),
                   "read_vs_raw": statistics.median(
                       x["read_gibps"] / y["read_gibps"] for x, y in zip(backend_rounds, raw_rounds)),
                   "stored_ratio": b["stored_ratio"]}
            if args.redis_benchmark:
                rb = redis_benchmark(address, conns, chunk, min(nbytes, 512 * MiB))
                if rb:
                    row.update({f"redis_benchmark_{k}": v for k, v in rb.items()})
            results["chunk_sweep"].append(row)
    sys.stderr.write("\n")
    del buf, target
    for kind in args.kinds:
        sys.stderr.write(f"  data kind {kind}\n")
        buf = make_data(kind, nbytes)
        target = np.zeros_like(buf)
        rounds = [backend_round(url, buf, target, args.kind_chunk, args.kind_connections,
                                args.compression) for _ in range(args.repeat)]
        raw_rounds = []
        for _ in range(args.repeat):
            w, r = raw_round(address, args.kind_connections, memoryview(buf),
                             memoryview(target), args.kind_chunk, client)
            raw_rounds.append({"write_gibps": w, "read_gibps": r})
        b, raw = _median_dict(rounds), _median_dict(raw_rounds)
        results["kinds"].append({
            "kind": kind, "chunk_size_bytes": args.kind_chunk, "connections": args.kind_connections,
            "backend_write_gibps": b["write_gibps"], "backend_read_gibps": b["read_gibps"],
            "raw_set_gibps": raw["write_gibps"], "raw_get_gibps": raw["read_gibps"],
            "stored_ratio": b["stored_ratio"]})
        del buf, target
    if args.memory_gib > 0:
        sys.stderr.write(f"  peak memory: one {args.memory_gib} GiB object\n")
        results["memory"] = [memory_round(url, int(args.memory_gib * GiB), kind, args.kind_chunk,
                                          args.kind_connections)
                             for kind in ("float64", "int-tokens")]
    client.close()
    return results


# -- output ---------------------------------------------------------------------------------
def print_tables(results: dict[str, Any]) -> None:
    """Print the results of ``run`` as text tables."""
    print(f"{'chunk':>8} {'conns':>5} | {'write':>7} {'raw SET':>7} {'ratio':>6} | "
          f"{'read':>7} {'raw GET':>7} {'ratio':>6}   (GiB/s, float64, medians)")
    for r in results["chunk_sweep"]:
        print(f"{r['chunk_size_bytes'] // 1024:>6}Ki {r['connections']:>5} | "
              f"{r['backend_write_gibps']:7.3f} {r['raw_set_gibps']:7.3f} {r['write_vs_raw']:5.2f}x | "
              f"{r['backend_read_gibps']:7.3f} {r['raw_get_gibps']:7.3f} {r['read_vs_raw']:5.2f}x"
              + (f"   redis-benchmark SET {r['redis_benchmark_set_gibps']:.3f} GET "
                 f"{r.get('redis_benchmark_get_gibps', float('nan')):.3f}"
                 if "redis_benchmark_set_gibps" in r else ""))
    if results["kinds"]:
        print()
        print(f"{'kind':>11} | {'write':>7} {'read':>7} {'raw SET':>7} {'raw GET':>7} {'stored/orig':>11}")
        for r in results["kinds"]:
            print(f"{r['kind']:>11} | {r['backend_write_gibps']:7.3f} {r['backend_read_gibps']:7.3f} "
                  f"{r['raw_set_gibps']:7.3f} {r['raw_get_gibps']:7.3f} {r['stored_ratio']:11.3f}")
    for m in results.get("memory") or []:
        print(f"\npeak extra memory, one {m['object_bytes'] / GiB:.2f} GiB {m['kind']} object "
              f"({m['method']}): spill {m['spill_extra_mib']:.0f} MiB "
              f"({m['spill_gibps']:.2f} GiB/s), restore {m['restore_extra_mib']:.0f} MiB "
              f"({m['restore_gibps']:.2f} GiB/s), verified={m['verified']}")


def plot(results: dict[str, Any], path: str, title: str) -> None:
    """Plot the chunk sweep and the by-kind results to a PNG at ``path`` (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5))
    rows = results["chunk_sweep"]
    for conns, color in zip(sorted({r["connections"] for r in rows}), ("C0", "C1", "C2", "C3")):
        sel = [r for r in rows if r["connections"] == conns]
        x = [r["chunk_size_bytes"] / MiB for r in sel]
        ax1.plot(x, [r["backend_write_gibps"] for r in sel], "o-", color=color,
                 label=f"backend, {conns} conn")
        ax1.plot(x, [r["raw_set_gibps"] for r in sel], "x--", color=color, alpha=0.6,
                 label=f"raw SET, {conns} conn")
        ax2.plot(x, [r["backend_read_gibps"] for r in sel], "o-", color=color,
                 label=f"backend, {conns} conn")
        ax2.plot(x, [r["raw_get_gibps"] for r in sel], "x--", color=color, alpha=0.6,
                 label=f"raw GET, {conns} conn")
    ticks = sorted({r["chunk_size_bytes"] for r in rows})
    for ax, what in ((ax1, "write (spill path)"), (ax2, "read (restore path)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([t / MiB for t in ticks],
                      [f"{t // 1024}K" if t < MiB else f"{t // MiB}M" for t in ticks])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("chunk size")
        ax.set_ylabel("GiB/s of original bytes")
        ax.set_title(f"{what}, float64")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    kinds = results["kinds"]
    if kinds:
        x = np.arange(len(kinds))
        ax3.bar(x - 0.2, [k["backend_write_gibps"] for k in kinds], 0.4, label="backend write")
        ax3.bar(x + 0.2, [k["backend_read_gibps"] for k in kinds], 0.4, label="backend read")
        ax3.set_xticks(x, [f"{k['kind']}\nstored {k['stored_ratio']:.2f}" for k in kinds])
        ax3.set_ylabel("GiB/s of original bytes")
        ax3.set_title(f"by data kind ({kinds[0]['chunk_size_bytes'] // MiB} MiB chunks, "
                      f"{kinds[0]['connections']} conn)")
        ax3.legend(fontsize=8)
        ax3.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1
        for suffix, m in (("kib", 1024), ("k", 1024), ("mib", MiB), ("m", MiB)):
            if part.endswith(suffix):
                part, mult = part[:-len(suffix)], m
                break
        out.append(int(float(part) * mult))
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line; exits with a usage error on an unknown data kind."""
    p = argparse.ArgumentParser(prog="ray-valkey-spill bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="Valkey server (default: start an embedded valkey-server)")
    add_transport_argument(p)
    p.add_argument("--object-mib", type=int, default=256, help="bytes per measurement (MiB)")
    p.add_argument("--chunk-sizes", type=_sizes, default=list(DEFAULT_CHUNKS),
                   help="comma-separated, e.g. 256k,1m,4m,16m")
    p.add_argument("--connections", type=lambda t: [int(x) for x in t.split(",")],
                   default=list(DEFAULT_CONNECTIONS), help="comma-separated, e.g. 1,2,4")
    p.add_argument("--kinds", type=lambda t: [k for k in t.split(",") if k], default=list(KINDS),
                   help=f"data kinds for the by-kind sweep ({','.join(KINDS)}); empty to skip")
    p.add_argument("--kind-chunk", type=_sizes, default=[4 * MiB], help="chunk size of the by-kind sweep")
    p.add_argument("--kind-connections", type=int, default=4)
    p.add_argument("--compression", choices=("auto", "zstd", "none"), default="auto")
    p.add_argument("--repeat", type=int, default=3, help="rounds per configuration; medians")
    p.add_argument("--memory-gib", type=float, default=1.0, help="object size of the peak-memory "
                   "check (0 to skip)")
    p.add_argument("--redis-benchmark", action="store_true",
                   help="also run redis-benchmark (Debian package redis-tools) per configuration")
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--plot", default=None, help="PNG path (e.g. docs/bench_chunk_size.png)")
    args = p.parse_args(argv)
    args.kind_chunk = args.kind_chunk[0]
    for k in args.kinds:
        if k not in KINDS:
            p.error(f"unknown kind {k!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (on an embedded server without ``--url``); exit code 1 if a peak-memory
    round restored different bytes, else 0."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    server = None
    if args.url is None:
        server = EmbeddedValkey()
        args.url = server.url_for(args.transport)
    try:
        from .environment import environment

        env = environment(args.url)
        results = run(args)
    finally:
        if server is not None:
            server.stop()
    print(f"backend bench: {args.object_mib} MiB per round, median of {args.repeat}, "
          f"valkey {env.get('valkey_server')} ({env.get('transport')}), {env['cpus']} CPUs, "
          f"commit {env['git_commit']}")
    print_tables(results)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        config = {k: v for k, v in vars(args).items() if k not in ("json",)}
        if server is not None:
            config["url"] = "embedded"
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": config, "environment": env, "results": results}, f, indent=2,
                      default=str)
    if args.plot:
        plot(results, args.plot, f"ray-valkey-spill backend vs raw server, valkey "
             f"{env.get('valkey_server')} ({env.get('transport')}), {env['cpus']} CPUs, "
             f"{env['date_utc']}, "
             f"commit {str(env['git_commit'])[:12]}")
        print(f"plot written to {args.plot}")
    bad = [m for m in results.get("memory") or [] if not m["verified"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
