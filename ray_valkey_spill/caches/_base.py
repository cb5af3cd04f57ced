"""What every cache shares: the pooled client, TTL and name checks, the eviction-policy warning,
hit/miss counters, and the translation of valkey-py errors into the package's error tree.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import urllib.parse
import warnings
from typing import Any, Iterator

from ..config import SpillConfig
from ..direct_io import set_many
from ..errors import BackendUnavailableError, CacheValueError, ConfigError, ServerReplyError
from ..metrics import CacheMetrics
from ..node_groups import is_cluster
from ..prefixes import validate_prefix
from ..server_checks import config_get, eviction_policy, eviction_risk

logger = logging.getLogger("ray_valkey_spill")

MAX_TTL_SECONDS = 365 * 24 * 3600
# Counters are published to the server at most this often, inside a pipeline the cache sends
# anyway: cross-process hit rates for `ray-valkey-spill stats` without an extra round trip.
DEFAULT_STATS_FLUSH_SECONDS = 10.0
STATS_TTL_SECONDS = 7 * 24 * 3600


class EvictionPolicyWarning(UserWarning):
    """The server's maxmemory-policy can evict keys without a TTL (spilled Ray objects)."""


def resolve_client(client_or_url: Any, **options: Any):
    """The shared pooled client for a URL/SpillConfig (``connect``), or the client given.

    Raises ConfigError for a bad URL or option, BackendUnavailableError if no client can be set up.
    """
    if isinstance(client_or_url, (str, SpillConfig)):
        from ..connection import connect

        return connect(client_or_url, **options)
    if options:
        raise ConfigError("options", sorted(options), "none when an existing client is given")
    if not hasattr(client_or_url, "pipeline"):
        raise ConfigError("client", type(client_or_url).__name__,
                          "a server URL, a SpillConfig or a valkey-py client")
    return client_or_url


def async_source(client_or_url: Any, async_client: Any) -> Any:
    """What the async methods get their client from: an explicit valkey.asyncio client
    (``Valkey`` or ``cluster.ValkeyCluster``), else the URL/SpillConfig (one pool per event loop
    through ``connect_async``), else None."""
    if async_client is not None:
        if not hasattr(async_client, "pipeline") or not _is_async_client(async_client):
            raise ConfigError("async_client", type(async_client).__name__,
                              "a valkey.asyncio client (Valkey or cluster.ValkeyCluster), "
                              "or None")
        return async_client
    return client_or_url if isinstance(client_or_url, (str, SpillConfig)) else None


def _is_async_client(client: Any) -> bool:
    return (type(client).__module__ or "").startswith("valkey.asyncio")


def async_client(source: Any, owner: str):
    """The valkey.asyncio client for ``source`` (see ``async_source``) in the running loop.

    Raises ConfigError when the cache was built from a sync client and no ``async_client``.
    """
    if source is None:
        raise ConfigError("client_or_url", f"a synchronous client ({owner})",
                          "a server URL or SpillConfig (the async methods then use one pool "
                          "per event loop), or pass async_client= a valkey.asyncio client")
    if isinstance(source, (str, SpillConfig)):
        from ..connection import connect_async

        return connect_async(source)
    return source


async def amget(aclient: Any, keys: list) -> list[Any]:
    """MGET on a valkey.asyncio client: one command on a standalone server; on a cluster one
    MGET per slot, grouped into one pipeline per node, the nodes' sent concurrently."""
    if is_cluster(aclient):
        return await aclient.mget_nonatomic(keys)
    return await aclient.mget(keys)


def check_ttl(field: str, value: Any) -> int:
    """``value`` if it is a whole number of seconds in 1..MAX_TTL_SECONDS, else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TTL_SECONDS:
        raise ConfigError(field, value, f"an integer number of seconds from 1 to {MAX_TTL_SECONDS} "
                          "(cache keys must always expire: they share memory with spilled objects)")
    return value


def check_cache_prefix(use: str, prefix: Any) -> str:
    """A well-formed prefix overlapping no other use's prefix (ray:, emb:, ...); else ConfigError."""
    return validate_prefix(use, prefix)


def key_part(field: str, name: Any) -> str:
    """``name`` as one key component: non-empty text, with ':', '%', glob characters, braces and
    spaces percent-escaped, so components never run into each other or into SCAN patterns.
    """
    if not isinstance(name, str) or not name or len(name) > 256:
        raise ConfigError(field, name, "a non-empty string of at most 256 characters")
    return urllib.parse.quote(name, safe="/-_.@+=,")


_checked_lock = threading.Lock()
_checked: dict[int, str | None] = {}


def warn_if_allkeys_policy(client: Any) -> str | None:
    """Read maxmemory-policy once per client (tolerating NOPERM) and warn under ``allkeys-*``.

    The spill backend refuses such servers; a cache only warns because it loses nothing itself,
    but its writes are what pushes spilled objects out. Returns the policy, or None if unreadable.
    """
    with _checked_lock:
        if id(client) in _checked:
            return _checked[id(client)]
    try:
        policy = eviction_policy(client)
    except Exception as exc:  # noqa: BLE001 - an unreachable server must not fail construction; first use will
        logger.debug("cannot read maxmemory-policy: %s", exc)
        return None
    with _checked_lock:
        _checked[id(client)] = policy
    if eviction_risk(policy):
        warnings.warn(
            f"Valkey runs maxmemory-policy {policy}: cache writes can evict spilled Ray objects "
            "(silent data loss). Run the server with maxmemory-policy volatile-lru.",
            EvictionPolicyWarning, stacklevel=3)
    elif policy is None:
        logger.info("cannot read maxmemory-policy (no CONFIG permission); the server must run a "
                    "volatile-* policy for caches and spilling to share it safely")
    return policy


# The server's proto-max-bulk-len when it cannot be read (no CONFIG permission): its default.
DEFAULT_MAX_BULK_BYTES = 512 * 1024 * 1024
_bulk_limits: dict[Any, int] = {}


def _bulk_limit_from(value: Any) -> int:
    try:
        return int(value) if value is not None else DEFAULT_MAX_BULK_BYTES
    except (TypeError, ValueError):
        return DEFAULT_MAX_BULK_BYTES


def max_value_bytes(client: Any) -> int:
    """The largest value the server accepts (proto-max-bulk-len), read once per client; the
    512 MB default when CONFIG is refused or unreachable (the write itself then reports)."""
    limit = _bulk_limits.get(id(client))
    if limit is None:
        try:
            limit = _bulk_limit_from(config_get(client, "proto-max-bulk-len"))
        except Exception as exc:  # noqa: BLE001 - unreachable now: do not cache the fallback
            logger.debug("cannot read proto-max-bulk-len: %s", exc)
            return DEFAULT_MAX_BULK_BYTES
        _bulk_limits[id(client)] = limit
    return limit


async def amax_value_bytes(client: Any) -> int:
    """``max_value_bytes`` for a valkey.asyncio client."""
    import valkey

    limit = _bulk_limits.get(id(client))
    if limit is None:
        try:
            reply = await client.config_get("proto-max-bulk-len")
            limit = _bulk_limit_from(reply.get("proto-max-bulk-len"))
        except valkey.exceptions.ResponseError:  # NOPERM: a least-privilege cache user
            limit = DEFAULT_MAX_BULK_BYTES
        except Exception as exc:  # noqa: BLE001 - unreachable now: do not cache the fallback
            logger.debug("cannot read proto-max-bulk-len: %s", exc)
            return DEFAULT_MAX_BULK_BYTES
        _bulk_limits[id(client)] = limit
    return limit


async def avalue_limit(client: Any, aclient: Any) -> int:
    """The limit for ``aclient``, a valkey.asyncio client of the same server as ``client``:
    the sync client's, read at construction, else read once through ``aclient``."""
    return _bulk_limits.get(id(client)) or await amax_value_bytes(aclient)


def check_sizes(payloads: list[bytes], limit_bytes: int, names: Any) -> None:
    """CacheValueError listing every payload over the server's limit (``names[i]`` describes
    item i); nothing is sent then: a value over proto-max-bulk-len makes the server drop the
    connection mid-batch."""
    failed = {i: f"{len(p):,} bytes, more than the server's proto-max-bulk-len of "
                 f"{limit_bytes:,}" for i, p in enumerate(payloads) if len(p) > limit_bytes}
    if failed:
        first = next(iter(failed))
        raise CacheValueError(f"{len(failed)} of {len(payloads)} values are too large for the "
                              f"server (nothing was stored); first: {names[first]}: "
                              f"{failed[first]}", failed)


def leading_hits(replies) -> int:
    """How many replies, from the first, are hits: a prefix lookup stops at the first miss."""
    count = 0
    for present in replies:
        if not present:
            break
        count += 1
    return count


@contextlib.contextmanager
def backend_errors(what: str) -> Iterator[None]:
    """Turn valkey-py connection failures into BackendUnavailableError (callers may treat it as a
    miss) and error replies into ServerReplyError (NOPERM, WRONGTYPE: never a miss)."""
    import valkey

    try:
        yield
    except (valkey.exceptions.ConnectionError, valkey.exceptions.TimeoutError, OSError) as exc:
        raise BackendUnavailableError(f"{what}: Valkey unavailable: {exc}") from exc
    except valkey.exceptions.ResponseError as exc:
        raise ServerReplyError(f"{what}: the server refused: {exc}") from exc


class Counters:
    """Hit/miss counters of one cache object, optionally published to ``<prefix>_stats``.

    Published counters are deltas added with HINCRBY, so all processes sum into one hash; the
    hash has a TTL like every other cache key, so it may be evicted: treat it as best effort.
    """

    FIELDS = ("hits", "misses", "corrupt", "puts", "dropped_puts")

    def __init__(self, stats_key: str, flush_seconds: float | None, cache: str = "other"):
        if flush_seconds is not None and (isinstance(flush_seconds, bool)
                                          or not isinstance(flush_seconds, (int, float))
                                          or not 0 <= flush_seconds <= 86400):
            raise ConfigError("stats_flush_seconds", flush_seconds,
                              "null (per-process counters only) or 0 to 86400 seconds")
        self.stats_key = stats_key
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._totals = dict.fromkeys(self.FIELDS, 0)
        self._unpublished = dict.fromkeys(self.FIELDS, 0)
        self._last_flush = time.monotonic()
        self.metrics = CacheMetrics(cache)  # Ray metrics (no-op outside a connected Ray)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, n in deltas.items():
                self._totals[name] += n
                self._unpublished[name] += n
        self.metrics.hit(deltas.get("hits", 0))
        self.metrics.miss(deltas.get("misses", 0))

    def snapshot(self) -> dict[str, float]:
        """This process's counters and hit rate (hits / (hits + misses), None before any get)."""
        with self._lock:
            out: dict[str, Any] = dict(self._totals)
        lookups = out["hits"] + out["misses"]
        out["hit_rate"] = out["hits"] / lookups if lookups else None
        return out

    def due(self) -> bool:
        """Whether ``publish_into`` would queue commands now (cheap; no lock needed)."""
        return (self.flush_seconds is not None
                and time.monotonic() - self._last_flush >= self.flush_seconds
                and any(self._unpublished.values()))

    def publish_into(self, pipe: Any, force: bool = False) -> bool:
        """Queue HINCRBYs of the unpublished deltas (and EXPIRE) on ``pipe`` when due."""
        if self.flush_seconds is None:
            return False
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_flush < self.flush_seconds:
                return False
            deltas = {k: v for k, v in self._unpublished.items() if v}
            self._unpublished = dict.fromkeys(self.FIELDS, 0)
            self._last_flush = now
        if not deltas:
            return False
        for name, n in deltas.items():
            pipe.hincrby(self.stats_key, name, n)
        pipe.expire(self.stats_key, STATS_TTL_SECONDS)
        return True


class KeyedArrayCache:
    """What the embedding and KV caches share: TTL'd pipelined writes, counters, clearing.

    Subclasses set ``client``, ``ttl_seconds``, ``counters`` and ``_key_head`` (the prefix
    plus model namespace that every key of the instance starts with).
    """

    client: Any
    ttl_seconds: int
    counters: Counters
    _key_head: str
    _cluster: bool  # a ValkeyCluster client: writes go through its pipeline, not direct_io

    def _write(self, keys: list[str], payloads: list[bytes],
               names: Any = None) -> int:
        """SET every key with the TTL in one pipeline; an OOM reply drops that entry (it is
        only a cache) and is counted; any other error is raised. Returns how many stored.

        Raises CacheValueError (``failed``: index -> reason) before sending anything when a
        payload is larger than the server accepts."""
        if not keys:
            return 0
        check_sizes(payloads, max_value_bytes(self.client), names or keys)
        with backend_errors(f"writing {len(keys)} keys under {self._key_head}"):
            if self._cluster:
                pipe = self._queue_writes(self.client.pipeline(transaction=False), keys,
                                          payloads)
                replies = pipe.execute(raise_on_error=False)
            else:
                # The same SETs as one gather-list send: valkey-py's per-command packing and
                # reply parsing were a third of a 1,000-vector put.
                replies = set_many(self.client, list(zip(keys, payloads)),
                                   ex_seconds=self.ttl_seconds)
                if self.counters.due():  # at most once per stats_flush_seconds
                    pipe = self.client.pipeline(transaction=False)
                    if self.counters.publish_into(pipe):
                        pipe.execute()
        return self._count_writes(replies, payloads)

    async def _awrite(self, aclient: Any, keys: list[str], payloads: list[bytes],
                      names: Any = None) -> int:
        """``_write`` on a valkey.asyncio client: the same single pipeline (on a cluster, one
        send per node holding any of the keys, the nodes' sent concurrently)."""
        if not keys:
            return 0
        check_sizes(payloads, await avalue_limit(self.client, aclient), names or keys)
        with backend_errors(f"writing {len(keys)} keys under {self._key_head}"):
            pipe = self._queue_writes(aclient.pipeline(transaction=False), keys, payloads)
            replies = await pipe.execute(raise_on_error=False)
        return self._count_writes(replies, payloads)

    def _queue_writes(self, pipe: Any, keys: list[str], payloads: list[bytes]) -> Any:
        # execute_command, not pipe.set(): set()'s option parsing cost ~5 us per key, a tenth
        # of a 1000-vector batch's time; the command sent is the same.
        queue, ttl = pipe.execute_command, self.ttl_seconds
        for key, payload in zip(keys, payloads):
            queue("SET", key, payload, "EX", ttl)
        self.counters.publish_into(pipe)
        return pipe

    def _count_writes(self, replies: list[Any], payloads: list[bytes]) -> int:
        import valkey

        stored = dropped = nbytes = 0
        for reply, payload in zip(replies[:len(payloads)], payloads):
            if isinstance(reply, valkey.exceptions.OutOfMemoryError) or (
                    isinstance(reply, ServerReplyError) and reply.out_of_memory):
                dropped += 1
            elif isinstance(reply, (valkey.exceptions.ConnectionError,
                                    valkey.exceptions.TimeoutError)):
                # An async cluster pipeline returns a node's lost connection as its replies.
                raise BackendUnavailableError(f"writing {len(payloads)} keys under "
                                              f"{self._key_head}: Valkey unavailable: {reply}")
            elif isinstance(reply, Exception):  # NOPERM, WRONGTYPE...: never a silent drop
                raise ServerReplyError(f"writing {len(payloads)} keys under {self._key_head}: "
                                       f"the server refused: {reply}") from reply
            else:
                stored += 1
                nbytes += len(payload)
        self.counters.add(puts=stored, dropped_puts=dropped)
        self.counters.metrics.bytes_written(nbytes)
        return stored

    def stats(self) -> dict[str, Any]:
        """This process's counters: hits, misses, corrupt, puts, dropped_puts, hit_rate."""
        return self.counters.snapshot()

    def flush_stats(self) -> None:
        """Publish unpublished counters now (e.g. at shutdown). Raises BackendUnavailableError."""
        with backend_errors("flush_stats"):
            pipe = self.client.pipeline(transaction=False)
            if self.counters.publish_into(pipe, force=True):
                pipe.execute()

    def clear(self) -> int:
        """Delete this instance's entries (SCAN + UNLINK, never KEYS). Returns how many."""
        from ..keyspace import unlink_matching

        with backend_errors("clear"):
            return unlink_matching(self.client, self._key_head + "*")
