"""Benchmark the caches side by side on ONE server in one run; print a table, write JSON.

Embeddings: put then get N vectors of D float32 in batches of B, for
  * raw      - the floor: pipelined ``SET EX`` / one ``MGET`` of raw float32 bytes, keys
               precomputed, ``np.frombuffer`` on the reply, no cache logic at all;
  * ours     - ``EmbeddingCache.put_many`` / ``get_many`` (hashing, header, TTL, counters);
  * redisvl  - RedisVL ``EmbeddingsCache.mset`` / ``mget`` (redis-py client, same server);
  * json     - a naive cache: one ``SET key json EX`` / ``GET`` + ``json.loads`` per vector.
KV blocks: put then get K blocks in requests of 16 blocks (a 256-token prefix). A block is 16
tokens of a Llama-3.2-3B-shaped model: 28 layers x K/V x 16 tokens x 8 KV heads x 128 dims,
bf16 bits = 1.75 MiB. ``KVCache.put`` / ``get`` (one pipeline) run against raw pipelined
``SET EX`` / ``GET`` of the same bytes (the server's GET throughput for that value size).

Every batch/request is timed on its own; a cell is the median over all batches of --runs
(>= 3) runs, interleaved, so that noise from other work on a shared machine hits one sample.
Example:
    ray-valkey-spill bench-caches --runs 3 --out bench_caches.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from typing import Callable

import numpy as np

from ..keyspace import unlink_matching
from ..cli.progress import Progress

MiB = 1024 * 1024


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def git_commit() -> str:
    """The git commit of this checkout, ``-dirty`` if it has changes; "unknown" outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True,
                               text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def timed_each(fn: Callable[[int, int], object], spans) -> list[float]:
    """Seconds of ``fn(a, b)`` for every span: per-batch samples, so that a burst of noise from
    other work on the machine spoils one sample, not a whole run."""
    out = []
    for a, b in spans:
        start = time.perf_counter()
        fn(a, b)
        out.append(time.perf_counter() - start)
    return out


def batches(n: int, size: int):
    """``(start, end)`` index spans covering ``range(n)`` in steps of ``size``."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]


# --- embedding workloads: each returns (put seconds per batch, get seconds per batch) ------

def emb_raw(client, texts, vectors, batch, ttl):
    """The embedding floor: pipelined SET EX and one MGET of raw float32 bytes, no cache
    logic."""
    import hashlib

    run = uuid.uuid4().hex[:6]
    keys = [f"emb:bench-raw-{run}:{hashlib.sha256(t.encode()).hexdigest()}" for t in texts]
    payloads = [v.tobytes() for v in vectors]  # the floor: bytes exist before the clock starts
    dim = vectors.shape[1]

    def put(a, b):
        pipe = client.pipeline(transaction=False)
        for k, p in zip(keys[a:b], payloads[a:b]):
            pipe.set(k, p, ex=ttl)
        pipe.execute()

    def get(a, b):
        out = [np.frombuffer(r, np.float32) for r in client.mget(keys[a:b])]
        assert len(out) == b - a and out[-1].shape == (dim,)

    spans = batches(len(keys), batch)
    t_put, t_get = timed_each(put, spans), timed_each(get, spans)
    client.unlink(*keys)
    return t_put, t_get


def emb_ours(client, texts, vectors, batch, ttl):
    """Embeddings through ``EmbeddingCache.put_many`` / ``get_many``."""
    from ..caches import EmbeddingCache

    cache = EmbeddingCache(client, f"bench-{uuid.uuid4().hex[:6]}", ttl_seconds=ttl)

    def put(a, b):
        cache.put_many(texts[a:b], vectors[a:b])

    def get(a, b):
        assert all(v is not None for v in cache.get_many(texts[a:b]))

    spans = batches(len(texts), batch)
    t_put, t_get = timed_each(put, spans), timed_each(get, spans)
    cache.clear()
    return t_put, t_get


def emb_redisvl(url, texts, vectors, batch, ttl):
    """Embeddings through RedisVL's ``EmbeddingsCache`` (redis-py client, same server); its
    keys are removed afterwards."""
    import redis
    from redisvl.extensions.cache.embeddings import EmbeddingsCache

    client = redis.Redis.from_url(url.replace("valkey://", "redis://"))
    name = f"emb:bench-redisvl-{uuid.uuid4().hex[:6]}"
    cache = EmbeddingsCache(name=name, ttl=ttl, redis_client=client)
    model = "bench"
    lists = [v.tolist() for v in vectors]  # its API takes list[float]; not timed

    def put(a, b):
        cache.mset([{"content": t, "model_name": model, "embedding": e}
                    for t, e in zip(texts[a:b], lists[a:b])])

    def get(a, b):
        for entry in cache.mget(texts[a:b], model):
            np.asarray(entry["embedding"], np.float32)

    spans = batches(len(texts), batch)
    t_put, t_get = timed_each(put, spans), timed_each(get, spans)
    unlink_matching(client, name + "*")
    client.close()
    return t_put, t_get


def emb_json(client, texts, vectors, batch, ttl):
    """A naive embedding cache: one SET EX of JSON and one GET + ``json.loads`` per vector."""
    import hashlib

    run = uuid.uuid4().hex[:6]

    def key(t):
        return f"emb:bench-json-{run}:{hashlib.sha256(t.encode()).hexdigest()}"

    def put(a, b):
        for t, v in zip(texts[a:b], vectors[a:b]):
            client.set(key(t), json.dumps(v.tolist()), ex=ttl)

    def get(a, b):
        for t in texts[a:b]:
            np.asarray(json.loads(client.get(key(t))), np.float32)

    spans = batches(len(texts), batch)
    t_put, t_get = timed_each(put, spans), timed_each(get, spans)
    client.unlink(*[key(t) for t in texts])
    return t_put, t_get


# --- KV blocks ------------------------------------------------------------------------------

KV_SHAPE = (28, 2, 16, 8, 128)  # Llama-3.2-3B: layers, K/V, tokens, KV heads, head dim
KV_REQUEST_BLOCKS = 16  # one request reads/writes a 256-token prefix: 16 blocks, 28 MiB


def kv_raw(client, blocks, ttl):
    """The floor: pipelined SET EX through valkey-py (values sent without a copy), and GETs on a
    plain socket received straight into a preallocated buffer (bench.RawClient): the server's
    own GET speed for this value size, with no parser in between."""
    from .rawclient import RawClient

    run = uuid.uuid4().hex[:6]
    spans = batches(len(blocks), KV_REQUEST_BLOCKS)
    size = blocks[0].nbytes
    keys = {a: [f"vllm:kv:bench-raw-{run}:{a}:{j}" for j in range(b - a)] for a, b in spans}
    kwargs = client.connection_pool.connection_kwargs
    raw = RawClient(1, kwargs.get("host"), kwargs.get("port"), kwargs.get("path"))
    target = memoryview(bytearray(KV_REQUEST_BLOCKS * size))

    def put(a, b):
        pipe = client.pipeline(transaction=False)
        for k, block in zip(keys[a], blocks[a:b]):
            pipe.set(k, memoryview(block).cast("B"), ex=ttl)
        pipe.execute()

    def get(a, b):
        raw.get_all(f"vllm:kv:bench-raw-{run}:{a}:", target[:(b - a) * size], size,
                    batch_bytes=(b - a) * size, batch_cmds=b - a)

    try:
        t_put, t_get = timed_each(put, spans), timed_each(get, spans)
    finally:
        raw.close()
    client.unlink(*[k for ks in keys.values() for k in ks])
    return t_put, t_get, None


def kv_ours(client, blocks, ttl):
    """KV blocks through ``KVCache.put`` / ``get``, one request per sequence; also times
    ``lookup`` (put, get and lookup seconds per request)."""
    from ..caches import KVCache

    kv = KVCache(client, f"bench-{uuid.uuid4().hex[:6]}", ttl_seconds=ttl)
    # One request = one sequence of KV_REQUEST_BLOCKS blocks; sequences differ in token 0.
    seqs = {a: np.arange(16 * (b - a)) + a * 100_000
            for a, b in batches(len(blocks), KV_REQUEST_BLOCKS)}

    def put(a, b):
        assert kv.put(seqs[a], blocks[a:b]) == b - a

    def get(a, b):
        assert len(kv.get(seqs[a])) == b - a

    spans = batches(len(blocks), KV_REQUEST_BLOCKS)
    t_put = timed_each(put, spans)
    t_lookup = timed_each(lambda a, b: kv.lookup(seqs[a]), spans)
    t_get = timed_each(get, spans)
    kv.clear()
    return t_put, t_get, t_lookup


def main(argv: list[str] | None = None) -> int:
    """Run every cache workload ``--runs`` times, interleaved, print the table and write the
    JSON report to ``--out``; 0 on success."""
    p = argparse.ArgumentParser(prog="ray-valkey-spill bench-caches", description=__doc__.split("\n")[0])
    p.add_argument("--url", help="server to use (default: start a private embedded server)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--n", type=int, default=10_000, help="embeddings")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--kv-blocks", type=int, default=64)
    p.add_argument("--skip", nargs="*", default=[], choices=["redisvl", "json"])
    p.add_argument("--out", default="bench_caches.json", help="JSON results file")
    args = p.parse_args(argv)
    if args.runs < 3:
        p.error("--runs must be at least 3 (the table reports medians)")

    server = None
    url = args.url
    if url is None:
        from ..testing.embedded import EmbeddedValkey

        server = EmbeddedValkey(config={"maxmemory": "2gb"})
        url = server.url
    try:
        from ..connection import connect

        client = connect(url)
        version = client.info("server").get("valkey_version") or client.info("server").get(
            "redis_version")
        rng = np.random.default_rng(0)
        texts = [f"document chunk number {i}: " + "lorem ipsum " * 8 for i in range(args.n)]
        vectors = rng.standard_normal((args.n, args.dim), dtype=np.float32)
        blocks = [rng.integers(0, 2**16, KV_SHAPE, dtype=np.uint16)
                  for _ in range(args.kv_blocks)]
        ttl = 3600
        emb_impls = {"raw": lambda: emb_raw(client, texts, vectors, args.batch, ttl),
                     "ours": lambda: emb_ours(client, texts, vectors, args.batch, ttl)}
        if "redisvl" not in args.skip:
            emb_impls["redisvl"] = lambda: emb_redisvl(url, texts, vectors, args.batch, ttl)
        if "json" not in args.skip:
            emb_impls["json"] = lambda: emb_json(client, texts, vectors, args.batch, ttl)
        kv_impls = {"raw": lambda: kv_raw(client, blocks, ttl),
                    "ours": lambda: kv_ours(client, blocks, ttl)}
        # One untimed pass of the cheap workloads: connections, allocator and server warm up.
        for name in ("raw", "ours"):
            emb_impls[name]()
            kv_impls[name]()
        samples: dict[str, list[tuple]] = {}
        progress = Progress("workloads", args.runs * (len(emb_impls) + len(kv_impls)),
                            unit_bytes=False)
        for _ in range(args.runs):  # interleaved, so drift hits every implementation alike
            for name, fn in emb_impls.items():
                samples.setdefault(f"emb/{name}", []).append(fn())
                progress.update(1)
            for name, fn in kv_impls.items():
                samples.setdefault(f"kv/{name}", []).append(fn())
                progress.update(1)
        progress.close()
    finally:
        if server is not None:
            server.stop()

    block_bytes = blocks[0].nbytes
    results = {}
    for name, runs in samples.items():
        # Pool the per-batch samples of every run; report the median batch and the p90.
        puts = [t for r in runs for t in r[0]]
        gets = [t for r in runs for t in r[1]]
        per_batch = args.batch if name.startswith("emb/") else KV_REQUEST_BLOCKS
        row = {"put_batch_s_median": statistics.median(puts),
               "get_batch_s_median": statistics.median(gets),
               "put_batch_s_p90": _p90(puts), "get_batch_s_p90": _p90(gets),
               "items_per_batch": per_batch, "runs": [list(r) for r in runs]}
        if name.startswith("emb/"):
            row["put_per_s"] = per_batch / row["put_batch_s_median"]
            row["get_per_s"] = per_batch / row["get_batch_s_median"]
        else:
            total = per_batch * block_bytes / MiB
            row["put_MiB_per_s"] = total / row["put_batch_s_median"]
            row["get_MiB_per_s"] = total / row["get_batch_s_median"]
            if runs[0][2] is not None:
                row["lookup_ms"] = statistics.median(t for r in runs for t in r[2]) * 1e3
        results[name] = row
    for kind in ("emb", "kv"):
        floor = results[f"{kind}/raw"]
        for name, row in results.items():
            if name.startswith(kind + "/"):
                row["put_vs_raw"] = floor["put_batch_s_median"] / row["put_batch_s_median"]
                row["get_vs_raw"] = floor["get_batch_s_median"] / row["get_batch_s_median"]

    print(f"server {url} (valkey {version}); {args.runs} runs, median batch; "
          f"{args.n} x {args.dim}-d float32 in batches of {args.batch}; "
          f"{args.kv_blocks} KV blocks of {block_bytes / MiB:.2f} MiB in requests of "
          f"{KV_REQUEST_BLOCKS}")
    print(f"{'workload':<14} {'put':>14} {'get':>14} {'put/raw':>8} {'get/raw':>8}")
    for name, row in results.items():
        if name.startswith("emb/"):
            put, get = f"{row['put_per_s']:,.0f} vec/s", f"{row['get_per_s']:,.0f} vec/s"
        else:
            put, get = f"{row['put_MiB_per_s']:,.0f} MiB/s", f"{row['get_MiB_per_s']:,.0f} MiB/s"
        print(f"{name:<14} {put:>14} {get:>14} {row['put_vs_raw']:>8.2f} {row['get_vs_raw']:>8.2f}")
    if "lookup_ms" in results["kv/ours"]:
        print(f"kv/ours lookup of {KV_REQUEST_BLOCKS} blocks: "
              f"{results['kv/ours']['lookup_ms']:.2f} ms")
    report = {
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "server": {"url": url, "version": version},
        "params": vars(args),
        "results": results,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
