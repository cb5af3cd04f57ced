"""LMCache remote connector on the shared Valkey: TTL on every key, verified chunks, bounded reads.

Every public coroutine hands its I/O to a small pool of threads and waits at most
``read_timeout_s`` (reads) or ``write_timeout_s`` (writes); a read that runs out of time is a
miss, so a slow, paused or unreachable server never holds LMCache's event loop or a vLLM step
longer than that. A read that timed out keeps its buffers until its thread has finished with
them (they are released then, never handed back to LMCache half-written). While every thread
is busy, further requests are misses at once instead of queueing behind a dead server.

I/O goes through ``ray_valkey_spill.direct_io`` on the process's shared pool (``connect``):
a batch of puts is one pipeline of ``SET key header+payload EX ttl`` sent from LMCache's own
buffers, a batch of gets is one pipeline of GETs received straight into the buffers LMCache
allocates (the 64-byte header into a small buffer, the payload into the chunk), and
"how many leading chunks exist" is one pipeline of EXISTS.

On Valkey Cluster (``valkey+cluster://``) each batch is split by the primary serving each
key's slot (``ray_valkey_spill.node_groups``) and sent as one such pipeline per node, on that
node's own pool, nodes one after the other. A node that times out, fails, or answers MOVED/ASK
(a stale slot map after a resharding or failover) costs only its own keys: reads of them are
misses, writes of them are dropped, both counted. After a redirect or a refused connection
the slot map is re-read (in the background) so that the following batches go to the right
nodes. Nothing is followed to
another node within a batch: a cache entry is not worth a second round trip inside a read's
time budget.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, List, Optional

from lmcache.utils import CacheEngineKey
from lmcache.v1.memory_management import MemoryObj
from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector

from ...caches._base import Counters, backend_errors, leading_hits, warn_if_allkeys_policy
from ...connection import connect
from ...direct_io import exists_many, get_into, set_many
from ...errors import ConfigError
from ...keyspace import scan_keys
from ...node_groups import NodeGroup, is_routing_reply
from ...prefixes import STATS_SUFFIX
from ._format import HEADER_BYTES, ChunkLayout, check, escape_key, header, unescape_key
from ._io_threads import Abandonable, IOThreads
from ._options import PluginOptions
from ._per_node import PerNodeExchange

logger = logging.getLogger("ray_valkey_spill")


class SharedValkeyConnector(RemoteConnector):
    """An LMCache ``RemoteConnector`` storing chunks under ``vllm:kv:`` on the shared Valkey.

    Args:
        config, metadata: LMCache's engine config and metadata (chunk shape and dtype).
        local_cpu_backend: LMCache's allocator for the chunks a read returns.
        options: validated ``PluginOptions``.

    Raises:
        ConfigError: a bad option, a chunk layout this connector cannot describe, or a
            ``remote_serde`` other than ``naive`` (compressed chunks have other shapes), or
            LMCache's layer-wise mode.
        BackendUnavailableError: no client can be set up for the URL.
    """

    def __init__(self, config: Any, metadata: Any, local_cpu_backend: Any,
                 options: PluginOptions):
        super().__init__(config, metadata)
        serde = getattr(config, "remote_serde", "naive")
        if serde not in ("naive", None):
            raise ConfigError("remote_serde", serde, "'naive' (LMCache's default): chunks are "
                              "stored as they are and verified against the engine's layout")
        if getattr(config, "use_layerwise", False):
            raise ConfigError("use_layerwise", True, "false: layer-wise chunks are not supported "
                              "by this plug-in yet")
        if len(self.meta_shapes) != 1 or len(self.meta_dtypes) != 1:
            raise ConfigError("kv layer groups", len(self.meta_shapes),
                              "one group (models with several KV layer groups are not supported)")
        shape = tuple(int(d) for d in self.meta_shapes[0])
        if not 1 <= len(shape) <= 6:
            raise ConfigError("chunk shape", shape, "1 to 6 dimensions")
        dtype = self.meta_dtypes[0]
        self.layout = ChunkLayout(fmt=self.meta_fmt.value, dtype=str(dtype).removeprefix("torch."),
                                  full_shape=shape, token_dim=self.meta_fmt.token_dim(),
                                  itemsize=dtype.itemsize)
        self.options = options
        self.prefix = options.prefix
        self.local_cpu_backend = local_cpu_backend
        self.client = connect(options.url, **options.connection)
        self.counters = Counters(self.prefix + STATS_SUFFIX, options.stats_flush_seconds,
                                 cache="vllm_kv")
        self._io = IOThreads(options.io_threads)
        self._nodes = PerNodeExchange(self.client, self.prefix)
        self.maxmemory_policy = warn_if_allkeys_policy(self.client)

    # -- keys --------------------------------------------------------------------------------

    def key_of(self, key: CacheEngineKey) -> str:
        """The Valkey key of one LMCache key: prefix + escaped ``key.to_string()``."""
        return self.prefix + escape_key(key.to_string())

    # -- the I/O, on the pool's threads ----------------------------------------------------

    def _publish_stats(self) -> None:
        if self.counters.due():
            try:
                with backend_errors("publishing KV cache stats"):
                    pipe = self.client.pipeline(transaction=False)
                    if self.counters.publish_into(pipe):
                        pipe.execute()
            except Exception as exc:  # noqa: BLE001 - statistics are best effort
                logger.debug("KV cache stats not published: %s", exc)

    def _put_sync(self, keys: List[CacheEngineKey], memory_objs: List[MemoryObj]) -> int:
        """SET every chunk with its header and the TTL, one pipeline per node; holds a
        reference on each chunk until its bytes are sent. Returns how many were stored."""
        try:
            items, sizes = [], []
            for key, obj in zip(keys, memory_objs):
                name = self.key_of(key)
                payload = memoryview(obj.byte_array).cast("B")
                shape = tuple(int(d) for d in obj.get_shape())
                if self.layout.shape_of(payload.nbytes) != shape or obj.get_dtype() != \
                        self.meta_dtypes[0]:
                    logger.warning("KV chunk %s not stored: shape %s dtype %s does not fit the "
                                   "engine's layout %s", name, shape, obj.get_dtype(), self.layout)
                    continue
                items.append((name, (header(name.encode(), self.layout, shape, payload),
                                     payload)))
                sizes.append(payload.nbytes)
            if not items:
                return 0
            errors: list = [None] * len(items)

            def exchange(group: NodeGroup) -> None:
                replies = set_many(group.client, group.pick(items),
                                   ex_seconds=self.options.ttl_seconds,
                                   timeout_s=self.options.write_timeout_s)
                for i, error in zip(group.indexes, replies):
                    errors[i] = error

            # A node that failed mid-batch may have stored some of its chunks: they count as
            # dropped all the same (a cache only promises what it counts as stored).
            lost = {i for group in self._nodes.run("writing", [name for name, _ in items], exchange)
                    for i in group.indexes}
        finally:
            for obj in memory_objs:
                obj.ref_count_down()
        oom = sum(1 for e in errors if e is not None and e.out_of_memory)
        redirected = sum(1 for e in errors if e is not None and is_routing_reply(e))
        other = next((e for e in errors if e is not None and not e.out_of_memory
                      and not is_routing_reply(e)), None)
        stored = [i for i, e in enumerate(errors) if e is None and i not in lost]
        self.counters.add(puts=len(stored), dropped_puts=oom + redirected + len(lost))
        self.counters.metrics.bytes_written(sum(sizes[i] for i in stored))
        if oom:
            logger.info("KV cache: %d chunks dropped, the server is out of memory (OOM)", oom)
        if redirected:
            # SET is not followed to the new node: a write after MOVED/ASK would need the
            # redirect's node (and ASKING) per chunk; the chunk is only a cache entry.
            logger.info("KV cache: %d chunks dropped, their slots moved (MOVED/ASK)",
                        redirected)
            self._nodes.refresh_slot_map_soon()
        self._publish_stats()
        if other is not None:
            raise other  # NOPERM, WRONGTYPE: a misconfiguration, not a full cache
        return len(stored)

    def _get_sync(self, keys: List[CacheEngineKey], handover: Abandonable) -> list:
        """Allocate a chunk per key, GET them in one pipeline per node straight into those
        chunks, verify each; unverified chunks are released and come back as None (so do the
        chunks of a node that timed out, failed or redirected)."""
        objs: list[Optional[MemoryObj]] = []
        for _ in keys:
            obj = self.local_cpu_backend.allocate(self.meta_shapes, self.meta_dtypes,
                                                  self.meta_fmt)
            if obj is None:
                logger.warning("KV cache: LMCache's CPU buffer is full, %d chunks not read",
                               len(keys) - len(objs))
                break
            objs.append(obj)
        objs += [None] * (len(keys) - len(objs))
        names = [self.key_of(k) for k in keys]
        heads = [bytearray(HEADER_BYTES) for _ in keys]
        payloads: list[Optional[memoryview]] = [None] * len(keys)
        wrong_size = [False] * len(keys)

        def destination(i: int, n: int):
            obj = objs[i]
            if obj is None:
                return None
            if self.layout.shape_of(n - HEADER_BYTES) is None:
                wrong_size[i] = True
                return None  # skipped on the wire: nothing lands in LMCache's buffer
            payloads[i] = memoryview(obj.byte_array).cast("B")[:n - HEADER_BYTES]
            return [memoryview(heads[i]), payloads[i]]

        results: list[Optional[MemoryObj]] = [None] * len(keys)
        misses = corrupt = nbytes = 0  # hits were counted by the lookup before the read
        try:
            lengths: list[Optional[int]] = [None] * len(keys)

            def exchange(group: NodeGroup) -> None:
                at = group.indexes
                got = get_into(group.client, group.pick(names),
                               lambda j, n: destination(at[j], n),
                               timeout_s=self.options.read_timeout_s)
                for i, n in zip(at, got):
                    lengths[i] = n

            self._nodes.run("reading", names, exchange)
            for i, (name, obj) in enumerate(zip(names, objs)):
                if obj is None or lengths[i] is None:
                    misses += 1
                    continue
                problem = ("size fits no chunk of this engine" if wrong_size[i]
                           else check(name.encode(), self.layout, heads[i], payloads[i]))
                if problem is not None:
                    corrupt += 1
                    misses += 1
                    logger.warning("KV cache: chunk %s counted as a miss: %s", name, problem)
                    continue
                if payloads[i].nbytes < self.layout.full_bytes:
                    obj = self.reshape_partial_chunk(obj, payloads[i].nbytes)
                results[i] = obj
                nbytes += lengths[i]
        except BaseException:  # a refusal (NOPERM): every chunk is released below
            results = [None] * len(keys)
            raise
        finally:
            self._release(o for o, r in zip(objs, results) if o is not None and r is None)
        self.counters.add(misses=misses, corrupt=corrupt)
        self.counters.metrics.bytes_read(nbytes)
        self._publish_stats()
        with handover.lock:
            if handover.abandoned:
                self._release(results)
                return [None] * len(keys)
            handover.results = results
        return results

    def _leading_sync(self, keys: List[CacheEngineKey]) -> int:
        """How many of ``keys``, from the first, exist: one pipeline of EXISTS per node, each
        socket call bounded by read_timeout_s (the thread is free again soon after a timeout).
        The keys of a node that failed count as absent, so the count stops at the first."""
        if not keys:
            return 0
        names = [self.key_of(k) for k in keys]
        present = [False] * len(keys)

        def exchange(group: NodeGroup) -> None:
            for i, there in zip(group.indexes, exists_many(
                    group.client, group.pick(names), timeout_s=self.options.read_timeout_s)):
                present[i] = there

        self._nodes.run("looking up", names, exchange)
        leading = leading_hits(present)
        self.counters.add(hits=leading, misses=len(keys) - leading)
        self._publish_stats()
        return leading

    @staticmethod
    def _release(objs) -> None:
        for obj in objs:
            if obj is not None:
                obj.ref_count_down()

    # -- bounded waiting -------------------------------------------------------------------

    async def _read(self, keys: List[CacheEngineKey]) -> List[Optional[MemoryObj]]:
        handover = Abandonable()
        future = self._io.submit(lambda: self._get_sync(keys, handover))
        if future is None:
            self.counters.add(misses=len(keys))
            return [None] * len(keys)
        try:
            return await self._io.wait(future, self.options.read_timeout_s)
        except asyncio.TimeoutError:
            with handover.lock:
                if handover.results is not None:
                    return handover.results
                handover.abandoned = True
            logger.warning("KV cache read of %d chunks took longer than %.3g s: misses",
                           len(keys), self.options.read_timeout_s)
            return [None] * len(keys)

    def _count_sync(self, keys: List[CacheEngineKey]) -> int:
        future = self._io.submit(lambda: self._leading_sync(keys))
        if future is None:
            return 0
        try:
            return future.result(self.options.read_timeout_s)
        except TimeoutError:  # concurrent.futures' TimeoutError is the builtin since 3.11
            logger.warning("KV cache lookup took longer than %.3g s: no hit",
                           self.options.read_timeout_s)
            return 0

    async def _count(self, keys: List[CacheEngineKey]) -> int:
        future = self._io.submit(lambda: self._leading_sync(keys))
        if future is None:
            return 0
        try:
            return await self._io.wait(future, self.options.read_timeout_s)
        except asyncio.TimeoutError:
            logger.warning("KV cache lookup took longer than %.3g s: no hit",
                           self.options.read_timeout_s)
            return 0

    async def _write(self, keys: List[CacheEngineKey], memory_objs: List[MemoryObj]) -> None:
        for obj in memory_objs:
            obj.ref_count_up()  # released by the I/O thread once the bytes are sent
        future = self._io.submit(lambda: self._put_sync(keys, memory_objs))
        if future is None:
            self._release(memory_objs)
            self.counters.add(dropped_puts=len(keys))
            return
        try:
            await self._io.wait(future, self.options.write_timeout_s)
        except asyncio.TimeoutError:
            logger.warning("KV cache write of %d chunks still running after %.3g s",
                           len(keys), self.options.write_timeout_s)

    # -- LMCache's RemoteConnector interface -----------------------------------------------

    async def exists(self, key: CacheEngineKey) -> bool:
        """Whether the chunk of ``key`` is stored (bounded by read_timeout_s; False if not)."""
        return await self._count([key]) == 1

    def exists_sync(self, key: CacheEngineKey) -> bool:
        """Synchronous ``exists``."""
        return self._count_sync([key]) == 1

    async def get(self, key: CacheEngineKey) -> Optional[MemoryObj]:
        """The verified chunk of ``key``, or None (missing, corrupt, foreign, or too slow)."""
        return (await self._read([key]))[0]

    async def put(self, key: CacheEngineKey, memory_obj: MemoryObj) -> None:
        """Store one chunk with ``SET ... EX ttl_seconds``."""
        await self._write([key], [memory_obj])

    def support_batched_put(self) -> bool:
        """LMCache contract: batched puts are one pipeline."""
        return True

    async def batched_put(self, keys: List[CacheEngineKey],
                          memory_objs: List[MemoryObj]) -> None:
        """Store every chunk in one pipeline of ``SET ... EX ttl_seconds``."""
        await self._write(list(keys), list(memory_objs))

    def support_batched_get(self) -> bool:
        """LMCache contract: batched gets are one pipeline read into LMCache's buffers."""
        return True

    async def batched_get(self, keys: List[CacheEngineKey]) -> List[Optional[MemoryObj]]:
        """One pipeline of GETs into freshly allocated chunks; None where a chunk is missing,
        fails verification, or the read ran out of time."""
        return await self._read(list(keys))

    def support_batched_get_non_blocking(self) -> bool:
        """LMCache contract: the batched get may run without blocking the engine."""
        return True

    async def batched_get_non_blocking(self, lookup_id: str,
                                       keys: List[CacheEngineKey]) -> List[MemoryObj]:
        """The leading verified chunks of ``keys`` (stops at the first that is not)."""
        results = await self._read(list(keys))
        leading: list[MemoryObj] = []
        for obj in results:
            if obj is None:
                break
            leading.append(obj)
        self._release(results[len(leading):])
        return leading

    def support_batched_contains(self) -> bool:
        """LMCache contract: leading hits are counted in one round trip."""
        return True

    def batched_contains(self, keys: List[CacheEngineKey]) -> int:
        """How many of ``keys``, from the first, are stored: one round trip."""
        return self._count_sync(list(keys))

    def support_batched_async_contains(self) -> bool:
        """LMCache contract: the leading-hit count has an async form."""
        return True

    async def batched_async_contains(self, lookup_id: str, keys: List[CacheEngineKey],
                                     pin: bool = False) -> int:
        """Async ``batched_contains`` (``pin`` does not apply to a remote store)."""
        return await self._count(list(keys))

    def remove_sync(self, key: CacheEngineKey) -> bool:
        """Delete the chunk of ``key``; True if it existed."""
        with backend_errors("removing a KV chunk"):
            return bool(self.client.unlink(self.key_of(key)))

    async def list(self) -> List[str]:
        """LMCache key strings of every chunk under the prefix (SCAN, never KEYS)."""
        def scan() -> list[str]:
            with backend_errors(f"listing {self.prefix}"):
                names = scan_keys(self.client, self.prefix + "*")
            head = len(self.prefix)
            return [unescape_key(n.decode()[head:]) for n in names
                    if not n.decode().endswith(STATS_SUFFIX)]

        return await asyncio.get_running_loop().run_in_executor(self._io.executor, scan)

    def support_ping(self) -> bool:
        """LMCache contract: ping answers within read_timeout_s."""
        return True

    async def ping(self) -> int:
        """0 if the server answers PING within read_timeout_s; else LMCache's error codes:
        -1 (timeout), -2 (any other failure). LMCache's health monitor calls this."""
        future = self._io.submit(self.client.ping)
        if future is None:
            return -1  # every I/O thread is waiting on the server
        try:
            await self._io.wait(future, self.options.read_timeout_s)
            return 0
        except asyncio.TimeoutError:
            return -1
        except Exception:  # noqa: BLE001 - LMCache's error code for any other failure
            return -2

    async def close(self) -> None:
        """Stop the I/O threads (queued work finishes); the shared client stays open for the
        spill backend and other caches of the process."""
        self._io.shutdown()

    def stats(self) -> dict[str, Any]:
        """This process's counters: hits, misses, corrupt, puts, dropped_puts, hit_rate."""
        return self.counters.snapshot()

    def __repr__(self) -> str:
        return f"<SharedValkeyConnector {self.prefix} ttl={self.options.ttl_seconds}s>"


__all__ = ["SharedValkeyConnector"]
