"""Make room for a spill by dropping cache entries, oldest first, never a spilled object.

When a spill SET fails with Valkey's OOM error (``noeviction``, or a ``volatile-*`` policy that
could not evict enough in time), the spill backend calls ``shed_cache_entries`` and retries.

Which entries go first: the ones idle longest (``OBJECT IDLETIME``: seconds since the last read
or write, the same LRU clock ``volatile-lru`` uses). Remaining TTL is the wrong order on a
shared server: each cache has its own TTL (KV blocks 1 h, embeddings days), so "expires soonest"
would always shed fresh KV blocks before embeddings nobody has read for a day. Remaining TTL is
used only where the LRU clock is unavailable (``OBJECT IDLETIME`` is refused under ``*-lfu``
policies). None of OBJECT IDLETIME, PTTL, MEMORY USAGE or SCAN touches a key's LRU clock, so
sampling does not disturb the order it measures.

Like the server's own eviction (which picks the idlest of a few random keys) this samples instead
of sorting the whole keyspace: each round SCANs (MATCH per prefix, never KEYS) up to
``max_sample_keys`` keys, removes the idlest of them, and scans on only if more is needed.
SCAN order is hash-table order, i.e. unrelated to age, so a round is a fair sample. Measured
(loopback, 2 shared cores, valkey-py without libvalkey): ~0.1 s per 5,000 keys sampled, so the
default of 2,000 costs ~40 ms a round. Callers should therefore ask for a generous amount
(tens of MiB) rather than shed once per chunk. Keys without a TTL are skipped even under a
cache prefix: a key without a TTL is by definition not a rebuildable cache entry. Verified
against the server: the probes leave OBJECT IDLETIME unchanged, a GET resets it.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from .errors import BackendUnavailableError, ConfigError, ServerReplyError
from .keyspace import SCAN_COUNT
from .prefixes import CACHE_PREFIXES, SPILL_PREFIX

logger = logging.getLogger("ray_valkey_spill")

PROTECTED_PREFIXES: tuple[str, ...] = (SPILL_PREFIX,)
DEFAULT_MAX_SAMPLE_KEYS = 2000
WRITE_SLACK_BYTES = 1024 * 1024
_PIPELINE_KEYS = 500


def _check_prefixes(prefixes: Sequence[str], protected: Sequence[str]) -> tuple[str, ...]:
    if isinstance(prefixes, str) or not prefixes:
        raise ConfigError("prefixes", prefixes, "a non-empty sequence of cache key prefixes")
    for p in prefixes:
        if not isinstance(p, str) or not p or any(c in p for c in "*?[]\\"):
            raise ConfigError("prefixes", p, "a non-empty prefix without glob characters")
        for q in protected:
            if p.startswith(q) or q.startswith(p):
                raise ConfigError("prefixes", p, f"a prefix disjoint from the protected spill "
                                  f"prefix {q!r}: spilled objects are never shed")
    return tuple(prefixes)


def _is_noperm(reply: Any) -> bool:
    import valkey

    return isinstance(reply, valkey.exceptions.NoPermissionError) or (
        isinstance(reply, Exception) and "NOPERM" in str(reply))


def _sample(client: Any, keys: list[bytes],
            denied: list[bytes]) -> list[tuple[int, int, int, bytes]]:
    """(idle seconds or -1, ttl ms, bytes, key) of every key that has a TTL; keys the ACL user
    may not read go to ``denied``."""
    import valkey

    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.object("idletime", key)
        pipe.pttl(key)
        pipe.memory_usage(key, samples=0)
    replies = pipe.execute(raise_on_error=False)
    out = []
    for i, key in enumerate(keys):
        idle, ttl_ms, size = replies[3 * i:3 * i + 3]
        if _is_noperm(ttl_ms):
            denied.append(key)
            continue
        if isinstance(ttl_ms, Exception) or ttl_ms is None or ttl_ms < 0:
            continue  # -1: no TTL (not a cache entry), -2: already gone
        if isinstance(idle, valkey.exceptions.ResponseError) or idle is None:
            idle = -1  # LFU policy: no LRU clock; ordered by TTL instead
        out.append((int(idle), int(ttl_ms), int(size or 0) if not isinstance(size, Exception)
                    else 0, key))
    return out


def _overage_bytes(client: Any) -> int:
    import valkey

    try:
        info = client.info("memory")
    except valkey.exceptions.ResponseError:  # NOPERM: INFO is in @dangerous
        return 0
    maxmemory = int(info.get("maxmemory") or 0)
    if not maxmemory:
        return 0
    return max(0, int(info.get("used_memory", 0)) - maxmemory)


def _unlink(client: Any, victims: list[tuple[int, int, int, bytes]]) -> int:
    pipe = client.pipeline(transaction=False)
    for _, _, _, key in victims:
        pipe.unlink(key)
    # Strings (every embedding and KV value) are freed synchronously even by UNLINK, so the
    # memory is back before the caller retries; only big lists/hashes go to the lazyfree thread.
    return sum(size for (_, _, size, _), removed in zip(victims, pipe.execute()) if removed)


def shed_cache_entries(client: Any, bytes_needed: int,
                       prefixes: Sequence[str] = CACHE_PREFIXES, *,
                       max_sample_keys: int = DEFAULT_MAX_SAMPLE_KEYS,
                       protected_prefixes: Sequence[str] = PROTECTED_PREFIXES,
                       include_overage: bool = True,
                       slack_bytes: int = WRITE_SLACK_BYTES) -> int:
    """Drop cache entries under ``prefixes``, least recently used first, until about
    ``bytes_needed`` bytes are freed; return the estimate of bytes freed (sum of ``MEMORY
    USAGE`` of the keys removed; may be less than asked if the caches hold less).

    ``bytes_needed`` is the size of the write about to be retried (0: only get back under
    ``maxmemory``). The
    target is ``2 * bytes_needed + slack_bytes`` plus, with ``include_overage`` (default), the
    amount by which ``used_memory`` already exceeds ``maxmemory`` (INFO memory; skipped if the
    ACL user may not run INFO). Why twice: the server checks memory while the command is held
    both in the client's query buffer and as parsed arguments (measured on valkey 9.1 with a
    64 MiB maxmemory: a 4 MiB SET still failed with 7.2 MB free, and succeeds with 2 x 4 MiB +
    1 MiB free).

    Samples up to ``max_sample_keys`` keys per round with SCAN, removes the oldest of them, and
    keeps scanning only while more is needed. Keys under ``protected_prefixes`` (the spill
    prefix) and keys without a TTL are never removed.

    Raises:
        ConfigError: bytes_needed is negative, or a prefix overlaps a protected prefix.
        BackendUnavailableError: the server cannot be reached.
        ServerReplyError: nothing was freed because the ACL user may not touch the cache keys
            it found (NOPERM); the message names the prefixes.
    """
    import valkey

    if isinstance(bytes_needed, bool) or not isinstance(bytes_needed, int) or bytes_needed < 0:
        raise ConfigError("bytes_needed", bytes_needed, "a non-negative integer")
    if isinstance(slack_bytes, bool) or not isinstance(slack_bytes, int) or slack_bytes < 0:
        raise ConfigError("slack_bytes", slack_bytes, "a non-negative integer")
    if isinstance(max_sample_keys, bool) or not isinstance(max_sample_keys, int) \
            or max_sample_keys < 1:
        raise ConfigError("max_sample_keys", max_sample_keys, "a positive integer")
    prefixes = _check_prefixes(prefixes, protected_prefixes)
    freed = 0
    denied: list[bytes] = []
    try:
        target = 2 * bytes_needed + slack_bytes if bytes_needed else 0
        if include_overage:
            target += _overage_bytes(client)
        if target == 0:
            return 0
        # One SCAN per prefix, drawn from in turn, so each round samples every cache.
        scans = {p: client.scan_iter(match=p + "*", count=SCAN_COUNT) for p in prefixes}
        guard = tuple(q.encode() for q in protected_prefixes)
        while freed < target and scans:
            quota = max(1, max_sample_keys // len(scans))
            batch: list[bytes] = []
            for prefix in list(scans):
                taken = 0
                for key in scans[prefix]:
                    if (key if isinstance(key, bytes) else key.encode()).startswith(guard):
                        continue  # cannot match given the prefix check; kept as a second guard
                    batch.append(key)
                    taken += 1
                    if taken >= quota:
                        break
                else:
                    del scans[prefix]
            sampled: list[tuple[int, int, int, bytes]] = []
            for start in range(0, len(batch), _PIPELINE_KEYS):
                sampled += _sample(client, batch[start:start + _PIPELINE_KEYS], denied)
            # Longest idle first; without an LRU clock (idle == -1), soonest expiry first.
            sampled.sort(key=lambda s: (-s[0], s[1]))
            start = 0
            while freed < target and start < len(sampled):
                # Remove in small groups so that we stop close to the target.
                group, need = [], target - freed
                while start < len(sampled) and need > 0 and len(group) < 256:
                    group.append(sampled[start])
                    need -= sampled[start][2]
                    start += 1
                freed += _unlink(client, group)
    except (valkey.exceptions.ConnectionError, valkey.exceptions.TimeoutError) as exc:
        raise BackendUnavailableError(f"shedding cache entries: {exc}") from exc
    if not freed and denied:
        where = sorted({p for p in prefixes for k in denied
                        if (k if isinstance(k, bytes) else k.encode()).startswith(p.encode())})
        raise ServerReplyError(
            f"shedding found {len(denied)} cache keys under {', '.join(where)} but this ACL user "
            "may not read or remove them (NOPERM). Under a volatile-* policy the server evicts "
            "cache entries itself before it refuses a write; shedding only helps a noeviction "
            "server, with a user allowed PTTL, OBJECT, MEMORY USAGE and UNLINK on the cache "
            "prefixes")
    logger.info("shed cache entries: %d bytes freed for a %d-byte write", freed, bytes_needed)
    return freed


__all__ = ["shed_cache_entries", "CACHE_PREFIXES"]
