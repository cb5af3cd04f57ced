"""``ray-valkey-spill stats``: keys and bytes per prefix, eviction settings, cache hit rates.

Walks the keyspace with SCAN (never KEYS) and sizes keys with ``MEMORY USAGE ... SAMPLES n``
and ``PTTL``, both batched in one pipeline per SCAN page, so the server is never blocked for
more than one short batch. ``--sample N`` stops after N keys and scales the counts up by
DBSIZE: a big keyspace is summarised in bounded time.

Hit rates come from the ``<cache prefix>_stats`` hashes the caches publish (summed over every
process, best effort: they carry a TTL like every cache key and may be evicted).

It also reports the two mistakes that put spilled objects at risk: cache keys without a TTL
(never evictable, so they crowd out spills) and an ``allkeys-*`` policy.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import BackendUnavailableError, RayValkeySpillError, ServerReplyError
from ..keyspace import SCAN_COUNT
from ..prefixes import CACHE_PREFIXES, SPILL_PREFIX, STATS_SUFFIX
from ..server_checks import each_node
from ..cli.options import EXIT_OK, add_connection_options, config_from_args, fail



def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ray-valkey-spill stats``."""
    p = argparse.ArgumentParser(prog="ray-valkey-spill stats", description=__doc__.split("\n")[0])
    add_connection_options(p, prefix_help="key prefix of spilled objects (default: ray:)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--sample", type=int, default=0, metavar="N",
                   help="look at N keys at most and extrapolate (0: every key)")
    p.add_argument("--memory-samples", type=int, default=5, metavar="S",
                   help="MEMORY USAGE SAMPLES for lists/hashes (0: exact, slower)")
    return p


def _classify(key: bytes, prefixes: list[tuple[str, bytes]]) -> str:
    for name, raw in prefixes:
        if key.startswith(raw):
            return name
    return "other"


def collect(client: Any, spill_prefix: str = SPILL_PREFIX, sample: int = 0,
            memory_samples: int = 5) -> dict[str, Any]:
    """The report as a dict (what ``--json`` prints). Raises BackendUnavailableError."""
    import valkey

    names = [spill_prefix] + [p for p in CACHE_PREFIXES if p != spill_prefix]
    prefixes = [(n, n.encode()) for n in names]
    rows = {n: {"keys": 0, "bytes": 0, "keys_without_ttl": 0, "keys_with_ttl": 0}
            for n in names + ["other"]}
    stats_keys: list[bytes] = []
    try:
        # valkey-py sends INFO and DBSIZE to one node of a cluster: ask every primary.
        infos = []
        dbsize = 0
        for _, node_client in each_node(client, primaries_only=True):
            info = node_client.info("memory")
            info.update(node_client.info("stats"))
            infos.append(info)
            dbsize += int(node_client.dbsize())
        scanned = 0
        batch: list[bytes] = []

        def flush() -> None:
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.memory_usage(key, samples=memory_samples)
                pipe.pttl(key)
            replies = pipe.execute(raise_on_error=False)
            for i, key in enumerate(batch):
                size, ttl_ms = replies[2 * i], replies[2 * i + 1]
                if not isinstance(ttl_ms, int) or ttl_ms == -2:
                    continue  # expired or evicted between SCAN and now
                row = rows[_classify(key, prefixes)]
                row["keys"] += 1
                row["bytes"] += size if isinstance(size, int) else 0
                row["keys_with_ttl" if ttl_ms >= 0 else "keys_without_ttl"] += 1
            batch.clear()

        for key in client.scan_iter(count=SCAN_COUNT):
            batch.append(key)
            scanned += 1
            if key.endswith(STATS_SUFFIX.encode()) and _classify(key, prefixes) in CACHE_PREFIXES:
                stats_keys.append(key)
            if len(batch) >= SCAN_COUNT:
                flush()
            if sample and scanned >= sample:
                break
        if batch:
            flush()
        hit_rates = {}
        for key in stats_keys:
            fields = {k.decode(): int(v) for k, v in client.hgetall(key).items()}
            lookups = fields.get("hits", 0) + fields.get("misses", 0)
            fields["hit_rate"] = fields.get("hits", 0) / lookups if lookups else None
            hit_rates[key.decode()] = fields
    except (valkey.exceptions.ConnectionError, valkey.exceptions.TimeoutError) as exc:
        raise BackendUnavailableError(f"stats: Valkey unavailable: {exc}") from exc
    except valkey.exceptions.ResponseError as exc:
        raise ServerReplyError(
            f"stats: the server refused ({exc}). stats reads INFO, DBSIZE and every tenant's "
            "keys (SCAN, MEMORY USAGE, PTTL): run it as a user allowed those, such as the "
            "shipped read-only 'platform' user (--username platform)") from exc
    estimated = bool(sample) and scanned < dbsize and scanned > 0
    if estimated:
        scale = dbsize / scanned
        for row in rows.values():
            for field in row:
                row[field] = round(row[field] * scale)
    policies = sorted({str(i.get("maxmemory_policy")) for i in infos})
    policy = next((p for p in policies if p.startswith("allkeys-")), policies[0])
    limits = [int(i.get("maxmemory") or 0) for i in infos]
    cache_keys_without_ttl = sum(rows[p]["keys_without_ttl"] for p in CACHE_PREFIXES
                                 if p in rows and p != spill_prefix)
    warnings = []
    if len(policies) > 1:
        warnings.append(f"the primaries disagree on maxmemory-policy: {', '.join(policies)}")
    if policy and str(policy).startswith("allkeys-"):
        warnings.append(f"maxmemory-policy {policy} can evict spilled objects: use volatile-lru")
    if cache_keys_without_ttl:
        warnings.append(f"{cache_keys_without_ttl} cache keys have no TTL: they can never be "
                        "evicted and crowd out spilled objects")
    if rows[spill_prefix]["keys_with_ttl"]:
        warnings.append(f"{rows[spill_prefix]['keys_with_ttl']} keys under {spill_prefix} have a "
                        "TTL: they can be evicted or expire")
    return {
        "prefixes": rows,
        "dbsize": dbsize,
        "scanned_keys": scanned,
        "estimated": estimated,
        "server": {  # summed over the primaries of a cluster
            "primaries": len(infos),
            "used_memory": sum(int(i.get("used_memory") or 0) for i in infos),
            "maxmemory": 0 if 0 in limits else sum(limits),  # 0: a node without a limit
            "maxmemory_policy": policy,
            "evicted_keys": sum(int(i.get("evicted_keys") or 0) for i in infos),
            "expired_keys": sum(int(i.get("expired_keys") or 0) for i in infos),
        },
        "hit_rates": hit_rates,
        "warnings": warnings,
    }


def _mib(n: Any) -> str:
    return "-" if n is None else f"{int(n) / 2**20:,.1f}"


def format_table(report: dict[str, Any]) -> str:
    """The report of ``collect`` as text: a row per prefix, server memory, hit rates, warnings."""
    lines = [f"{'prefix':<12} {'keys':>10} {'MiB':>10} {'no TTL':>8} {'with TTL':>9}"]
    for name, row in report["prefixes"].items():
        lines.append(f"{name:<12} {row['keys']:>10,} {_mib(row['bytes']):>10} "
                     f"{row['keys_without_ttl']:>8,} {row['keys_with_ttl']:>9,}")
    if report["estimated"]:
        lines.append(f"(estimated from {report['scanned_keys']:,} of {report['dbsize']:,} keys)")
    s = report["server"]
    maxmemory = "unlimited" if not s["maxmemory"] else f"{_mib(s['maxmemory'])} MiB"
    where = "server" if s["primaries"] == 1 else f"{s['primaries']} primaries"
    lines.append(f"{where}: used {_mib(s['used_memory'])} MiB of {maxmemory}, policy "
                 f"{s['maxmemory_policy']}, evicted_keys {s['evicted_keys']}, "
                 f"expired_keys {s['expired_keys']}")
    for key, f in sorted(report["hit_rates"].items()):
        rate = "-" if f["hit_rate"] is None else f"{f['hit_rate']:.1%}"
        lines.append(f"{key}: hit rate {rate} (hits {f.get('hits', 0):,}, misses "
                     f"{f.get('misses', 0):,}, corrupt {f.get('corrupt', 0):,}, "
                     f"dropped puts {f.get('dropped_puts', 0):,})")
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Run ``stats``; exit codes as in ``cli_options``."""
    if argv and argv[0] == "--":  # `ray-valkey-spill stats -- --url ...` passes the separator on
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    from ..connection import connect

    try:
        config = config_from_args(args)
        report = collect(connect(config), spill_prefix=config.prefix, sample=max(args.sample, 0),
                         memory_samples=max(args.memory_samples, 0))
    except RayValkeySpillError as exc:
        return fail("stats", exc)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
    return EXIT_OK
