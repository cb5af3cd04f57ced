"""The Ray ``ExternalStorage`` that spills objects to Valkey. Imports Ray; loaded by the plug-in.

Write path: each object's plasma buffer is cut into ``chunk_size_bytes`` views (no copy); I/O
threads, one connection each, encode batches of chunks (checksum, zstd when the probe says it
pays; pyarrow and xxhash release the GIL) and send each batch as one pipeline of SETs. An
object's manifest is written only after all its chunks are stored, so a partly written object
is never restorable; on a failure the complete objects' URLs are returned (Ray re-pins and
retries the rest) and the partial keys are removed.

Read path: the manifest is fetched, Ray allocates the plasma buffer, and the I/O threads fetch
the chunks with pipelined GETs and decode each one straight into its slice of that buffer,
verifying its checksum there.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from typing import Iterator, Sequence

from valkey.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError
from valkey.exceptions import ClusterError as ValkeyClusterError
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import OutOfMemoryError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

from . import keys as K
from .codec import CODEC_RAW, ChunkCodec, ChunkInfo, Manifest
from .codec import scratch as codec_scratch
from .direct_io import get_into, set_from
from .config import SpillConfig
from .connection import connect
from .heartbeat import Heartbeat, start_driver_heartbeat, stop_driver_heartbeat
from .keyspace import unlink_keys, unlink_matching
from .errors import (BackendUnavailableError, CorruptObjectError, ObjectMissingError,
                     RayValkeySpillError, ServerReplyError, SpillError)
from .metrics import spill_metrics
from .server_checks import check_server
from .shedding import shed_cache_entries
from .spill import ray_compat

logger = logging.getLogger("ray_valkey_spill")

# A pipeline carries at most this many bytes or commands: big enough to amortise round trips,
# small enough that in-flight buffers stay bounded (connections x 2 batches) and that one
# batch never monopolises the server for long.
BATCH_BYTES = 16 * 1024 * 1024
BATCH_COMMANDS = 256
# Chunks of one object reuse its codec verdict; every REPROBE_EVERY-th chunk is probed again
# (32 MiB at the default chunk size), so a mixed object still gets each region's codec.
REPROBE_EVERY = 8
# Shedding costs a SCAN round (~40 ms), so free generously rather than once per chunk.
SHED_MIN_BYTES = 32 * 1024 * 1024
_RAY_HEADER_BYTES = 24  # Ray's own framing: three u64 lengths
# In cluster mode a dead primary is replaced by its replica only after cluster-node-timeout
# (default 15 s) plus an election: transient cluster faults are retried for about this long.
CLUSTER_FAILOVER_BUDGET_S = 30.0
_CLUSTER_TRANSIENT = (ClusterDownError, TryAgainError, ValkeyClusterError, SlotNotCoveredError)


def _log_like_ray() -> None:
    """IO workers give our logger no handler: add one formatted like Ray's own lines, so our
    errors land in io_worker-*.err with a time and a level."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(
            "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _is_ray_start_cli() -> bool:
    return os.path.basename(sys.argv[0] if sys.argv else "") == "ray" and "start" in sys.argv


def _in_io_worker() -> bool:
    # IO workers run ray/_private/workers/default_worker.py; the raylet kills one that does not
    # register within 60 s, so they must not block on the network in __init__.
    return os.path.basename(sys.argv[0] if sys.argv else "") == "default_worker.py"


class _ChunkJob:
    """Chunks (of one or more objects) written or read together in one pipeline."""

    __slots__ = ("items", "nbytes")

    def __init__(self):
        self.items: list[tuple[int, int, str, memoryview]] = []  # (object, chunk, key, view)
        self.nbytes = 0


def _plan_jobs(views: Sequence[tuple[str, memoryview]], chunk_size: int) -> list[_ChunkJob]:
    jobs, job = [], _ChunkJob()
    for obj_index, (base_key, buf) in enumerate(views):
        for chunk_index, start in enumerate(range(0, len(buf), chunk_size)):
            piece = buf[start:start + chunk_size]
            if job.items and (job.nbytes + len(piece) > BATCH_BYTES
                              or len(job.items) >= BATCH_COMMANDS):
                jobs.append(job)
                job = _ChunkJob()
            job.items.append((obj_index, chunk_index, K.chunk_key(base_key, chunk_index), piece))
            job.nbytes += len(piece)
    if job.items:
        jobs.append(job)
    return jobs


class ValkeyStorage(ray_compat.external_storage_base()):
    """Spills Ray objects to Valkey under ``<prefix><session>:<node>:`` keys."""

    def __init__(self, node_id: str, session_name: str, *, check_server_now: bool = False,
                 **params):
        """``check_server_now``: PING and check the server in the constructor. The plug-in
        sets it only for Ray's head validation; ``ray.shutdown()`` also builds a storage (to
        destroy), and that must not fail because the server is down."""
        super().__init__()
        self.config = SpillConfig.from_params(params)
        self.node_id = node_id
        self.session_name = session_name
        K.node_pattern(self.config.prefix, session_name, node_id)  # validates both names
        self._codec = ChunkCodec(self.config.compression, self.config.zstd_level)
        self._lock = threading.Lock()
        self._leftovers = _LeftoverChunks()
        self._executor: ThreadPoolExecutor | None = None
        self._client = None
        self._checked = False
        self._heartbeat: Heartbeat | None = None
        if _in_io_worker():
            _log_like_ray()
            self._heartbeat = Heartbeat(
                lambda: self.client, K.heartbeat_key(self.config.prefix, session_name, node_id),
                refresh_only=True)
        # Ray validates by building a storage and destroying it at once; that destroy must not
        # stop the session's driver heartbeat, the one at ray.shutdown() must.
        self._validating = check_server_now
        if check_server_now:
            self._ensure_checked()
            if not _is_ray_start_cli():  # `ray start --head` exits at once: nothing to stamp
                start_driver_heartbeat(self.config.prefix, session_name, lambda: self.client)

    # -- connection -------------------------------------------------------------------------
    @property
    def client(self):
        # connect() returns the process-wide pooled client; remember it (hot path).
        if self._client is None:
            self._client = connect(self.config)
        return self._client

    def _ensure_checked(self) -> None:
        if not self._checked:
            check_server(self.config)
            self._checked = True

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._ensure_checked()
                self._executor = ThreadPoolExecutor(self.config.connections,
                                                    thread_name_prefix="valkey-spill")
            return self._executor

    def _stamp_node(self) -> None:
        # A node that spills or restores keeps its session alive for gc. Not from __init__:
        # Ray also starts IO workers at shutdown (to delete), after the node's keys are gone.
        if self._heartbeat is not None:
            self._heartbeat.start()

    # -- spill ------------------------------------------------------------------------------
    def spill_objects(self, object_refs, owner_addresses) -> list[bytes]:
        try:
            return self._spill_objects(object_refs, owner_addresses)
        except Exception as exc:
            spill_metrics().error("spill", exc.__cause__ or exc)
            raise

    def _spill_objects(self, object_refs, owner_addresses) -> list[bytes]:
        if len(object_refs) == 0:
            return []
        started = time.perf_counter()
        pool = self._pool()
        self._stamp_node()
        objects = ray_compat.objects_from_store(self, object_refs)
        bases, views, sizes = [], [], []
        for ref, (buf, metadata), owner in zip(object_refs, objects, owner_addresses):
            if buf is None and len(metadata) == 0:
                raise ValueError(f"Object {ref.hex()} does not exist.")
            view = memoryview(buf).cast("B") if buf is not None else memoryview(b"")
            base = K.new_base_key(self.config.prefix, self.session_name, self.node_id, ref.hex())
            bases.append(base)
            views.append((base, view))
            sizes.append(_RAY_HEADER_BYTES + len(owner) + len(metadata) + len(view))

        infos: list[list[ChunkInfo | None]] = [
            [None] * -(-len(v) // self.config.chunk_size_bytes) for _, v in views]
        failed_at = len(views)
        error: BaseException | None = None
        jobs = _plan_jobs(views, self.config.chunk_size_bytes)
        choices: dict[int, int] = {}
        write = functools.partial(self._write_job, choices=choices)
        with closing(self._run_bounded(pool, write, jobs)) as done:
            for job, future in done:
                try:
                    for (obj, chunk, _, _), info in zip(job.items, future.result()):
                        infos[obj][chunk] = info
                except Exception as exc:  # noqa: BLE001 - reported below with the object
                    # Stop at once: against a dead or paused server every further batch
                    # would only wait out its own timeouts. Later objects count as failed.
                    failed_at, error = job.items[0][0], exc
                    break
        # Objects before the first failure are complete: commit them with their manifests.
        urls: list[bytes] = []
        manifests = []
        for i in range(failed_at):
            metadata = objects[i][1]
            manifest = Manifest(self.config.chunk_size_bytes, len(views[i][1]),
                                bytes(owner_addresses[i]), bytes(metadata), tuple(infos[i]))
            manifests.append((K.manifest_key(bases[i]), manifest.encode()))
            urls.append(K.SpillURL(bases[i], sizes[i], len(infos[i])).encode())
        try:
            self._set_many(manifests)
        except Exception as exc:  # noqa: BLE001
            failed_at, error, urls = 0, exc, []
        if error is not None:
            self._leftovers.add([(bases[i], len(infos[i])) for i in range(failed_at, len(views))])
            self._remove_leftovers()
            logger.error("spill to %s failed at object %d of %d (%s); %d objects spilled, "
                         "the rest stay in memory and Ray retries them",
                         self.config.address.display(), failed_at, len(views), error, len(urls))
            if not urls:
                raise SpillError(f"spilling {len(views)} objects to "
                                 f"{self.config.address.display()} failed: {error}") from error
            spill_metrics().error("spill", error)
        else:  # the server answers: remove what earlier failed spills left
            self._remove_leftovers()
        stored = sum(i.stored_len for obj in infos[:len(urls)] for i in obj)
        spill_metrics().spilled(len(urls), sum(sizes[:len(urls)]),
                                stored + sum(len(m) for _, m in manifests),
                                time.perf_counter() - started)
        logger.debug("spilled %d objects in %.3fs", len(urls), time.perf_counter() - started)
        return urls

    def _run_bounded(self, pool, fn, jobs: list[_ChunkJob]) -> Iterator[tuple[_ChunkJob, Future]]:
        """Run jobs on the pool, yielding them finished and in order, with at most 2 per
        connection in flight (bounded memory). Closing the generator early cancels the jobs
        not started and waits for the running ones (they use buffers the caller owns)."""
        limit = 2 * self.config.connections
        pending: deque[tuple[_ChunkJob, Future]] = deque()
        try:
            for job in jobs:
                if len(pending) >= limit:
                    pending[0][1].exception()
                    yield pending.popleft()
                pending.append((job, pool.submit(fn, job)))
            while pending:
                pending[0][1].exception()
                yield pending.popleft()
        finally:
            for _, future in pending:
                future.cancel()
            for _, future in pending:
                if not future.cancelled():
                    future.exception()

    def _write_job(self, job: _ChunkJob, choices: dict[int, int]) -> list[ChunkInfo]:
        """Encode and SET a batch of chunks. ``choices`` (one per spill call, shared by the I/O
        threads) holds each object's codec: the probe costs as much CPU as the checksum, so
        the chunks of an object reuse its verdict, probing afresh every REPROBE_EVERY chunks
        and after a chunk the chosen codec did not shrink."""
        infos, items = [], []
        for obj, chunk, key, view in job.items:
            codec = choices.get(obj) if chunk % REPROBE_EVERY else None
            if codec is None:
                codec = choices[obj] = self._codec.choose(view)
            info, payload = self._codec.encode(view, codec)
            if info.codec != codec:
                choices.pop(obj, None)
            infos.append(info)
            items.append((key, payload))
        self._set_many(items)
        return infos

    def _set_many(self, items: list) -> None:
        """SET (key, value) pairs in pipelines; on OOM, shed cache entries and retry once."""
        for start in range(0, len(items), BATCH_COMMANDS):
            batch = items[start:start + BATCH_COMMANDS]
            try:
                self._pipeline_set(batch)
            except OutOfMemoryError:
                nbytes = sum(len(v) for _, v in batch)
                freed = shed_cache_entries(self.client, max(nbytes, SHED_MIN_BYTES),
                                           protected_prefixes=(self.config.prefix,))
                logger.warning("%s is full: shed %d bytes of cache entries (emb:, vllm:kv:, "
                               "session:) to store %d bytes of spilled data",
                               self.config.address.display(), freed, nbytes)
                if not freed:
                    raise SpillError(f"{self.config.address.display()} is out of memory and "
                                     "holds no cache entries to shed; raise maxmemory or add "
                                     "shards (Ray keeps the objects in memory and retries)")
                self._pipeline_set(batch)  # SET is idempotent: the whole batch may repeat

    def _pipeline_set(self, batch) -> None:
        # SET is idempotent: a retried batch may repeat
        if self.config.address.cluster:
            return self._with_retries(self._pipeline_set_cluster, batch)
        return self._with_retries(self._pipeline_set_direct, batch)

    def _pipeline_set_direct(self, batch) -> None:
        try:
            set_from(self.client, batch)
        except ServerReplyError as exc:
            if str(exc).startswith("OOM"):
                raise OutOfMemoryError(str(exc)) from exc
            raise

    def _pipeline_set_cluster(self, batch) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, value in batch:
            pipe.set(key, value)
        pipe.execute()

    # -- restore ----------------------------------------------------------------------------
    def restore_spilled_objects(self, object_refs, url_with_offset_list) -> int:
        self._stamp_node()
        total = 0
        for ref, url in zip(object_refs, url_with_offset_list):
            started = time.perf_counter()
            try:
                spill_url = K.parse_spill_url(url, self.config.prefix)
                manifest = self._read_manifest(spill_url)
                reader = _ObjectReader(self, spill_url.base_key, manifest)
                self._put_object_to_store(manifest.metadata, manifest.buf_len, reader, ref,
                                          manifest.owner_address)
            except RayValkeySpillError as exc:
                # Ray only logs this and retries after 10 s, 20 s, ...: say loudly what is wrong.
                logger.error("restore of object %s from %r failed: %s", ref.hex(), url, exc)
                spill_metrics().error("restore", exc)
                raise
            except Exception as exc:
                logger.error("restore of object %s from %r failed: %s", ref.hex(), url, exc)
                spill_metrics().error("restore", exc)
                raise BackendUnavailableError(
                    f"restore of {url!r} from {self.config.address.display()} failed: "
                    f"{exc}") from exc
            total += manifest.buf_len
            spill_metrics().restored(1, spill_url.size, time.perf_counter() - started)
        self._remove_leftovers()
        return total

    def _read_manifest(self, spill_url: K.SpillURL) -> Manifest:
        key = K.manifest_key(spill_url.base_key)
        self._pool()
        if self.config.address.cluster:  # ride out a failover (standalone: valkey-py retries)
            data = self._with_retries(self.client.get, key)
        else:
            data = self.client.get(key)
        if data is None:
            raise ObjectMissingError(f"{key}: spilled object is missing from "
                                     f"{self.config.address.display()} (server restarted "
                                     "without persistence, evicted, or deleted)")
        manifest = Manifest.decode(data, key)
        if len(manifest.chunks) != spill_url.n_chunks:
            raise CorruptObjectError(f"{key}: manifest has {len(manifest.chunks)} chunks, "
                                     f"the URL {spill_url.n_chunks}")
        return manifest

    def _fill(self, base_key: str, manifest: Manifest, target: memoryview) -> None:
        """Fetch every chunk and decode it into its slice of ``target`` (the whole object)."""
        jobs = _plan_jobs([(base_key, target)], manifest.chunk_size)
        with closing(self._run_bounded(self._pool(), self._read_job_for(manifest), jobs)) as done:
            for _, future in done:
                future.result()

    def _read_job_for(self, manifest: Manifest):
        if self.config.address.cluster:
            return lambda job: self._with_retries(self._read_job_cluster, manifest, job)
        return lambda job: self._with_retries(self._read_job_direct, manifest, job)

    def _read_job_cluster(self, manifest: Manifest, job: _ChunkJob) -> None:
        """Cluster mode: the chunks of a job grouped by the primary serving their slot, each
        group read with ``get_into`` on that node's own pool (zero-copy, like standalone).
        A redirect, a dead node or any other cluster fault sends the group through the cluster
        pipeline instead, which follows MOVED/ASK and refreshes the slot map."""
        client = self.client
        groups: dict[str, tuple] = {}
        for item in job.items:
            node = client.get_node_from_key(item[2])
            groups.setdefault(node.name, (node, []))[1].append(item)
        for node, items in groups.values():
            sub = _ChunkJob()
            sub.items = items
            try:
                self._read_job_direct(manifest, sub, client.get_valkey_connection(node))
            except (ServerReplyError, OSError, ValkeyConnectionError, ValkeyTimeoutError) as exc:
                if isinstance(exc, ServerReplyError) and not str(exc).startswith(
                        ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "LOADING")):
                    raise
                logger.info("direct read from %s: %s; reading through the cluster client",
                            node.name, exc)
                self._read_job_pipelined(manifest, sub)

    def _read_job_pipelined(self, manifest: Manifest, job: _ChunkJob) -> None:
        pipe = self.client.pipeline(transaction=False)
        for _, _, key, _ in job.items:
            pipe.get(key)
        for (_, chunk, key, view), stored in zip(job.items, pipe.execute()):
            if stored is None:
                raise ObjectMissingError(f"{key}: chunk {chunk} of a spilled object is missing")
            ChunkCodec.decode_into(manifest.chunks[chunk], stored, view, key)

    def _read_job_direct(self, manifest: Manifest, job: _ChunkJob, client=None) -> None:
        """Raw chunks land in plasma straight from the socket; zstd ones via one scratch copy."""
        scratch: dict[int, memoryview] = {}

        def destination(i: int, n: int) -> memoryview:
            _, chunk, key, view = job.items[i]
            info = manifest.chunks[chunk]
            if n != info.stored_len:
                raise CorruptObjectError(f"{key}: stored chunk is {n} bytes, manifest says "
                                         f"{info.stored_len}")
            if info.codec == CODEC_RAW:
                return view
            scratch[i] = codec_scratch(i, n)
            return scratch[i]

        lengths = get_into(client or self.client, [key for _, _, key, _ in job.items],
                           destination)
        for i, ((_, chunk, key, view), n) in enumerate(zip(job.items, lengths)):
            if n is None:
                raise ObjectMissingError(f"{key}: chunk {chunk} of a spilled object is missing")
            info = manifest.chunks[chunk]
            if info.codec == CODEC_RAW:
                ChunkCodec.verify(info, view, key)
            else:
                ChunkCodec.decode_into(info, scratch[i], view, key)

    def _with_retries(self, fn, *args):
        """Retry transient faults (reset, timeout, LOADING) with jittered exponential backoff."""
        attempt = 0
        cluster = self.config.address.cluster
        deadline = time.monotonic() + CLUSTER_FAILOVER_BUDGET_S
        while True:
            try:
                return fn(*args)
            except (OSError, ValkeyConnectionError, ValkeyTimeoutError, ServerReplyError,
                    *_CLUSTER_TRANSIENT) as exc:
                transient = (not isinstance(exc, ServerReplyError) or str(exc).startswith("LOADING")
                             or isinstance(exc, _CLUSTER_TRANSIENT))
                # Cluster: keep retrying through a failover (bounded by time, not count).
                exhausted = (time.monotonic() >= deadline if cluster
                             else attempt >= self.config.retries)
                if not transient or exhausted:
                    raise
                attempt += 1
                delay = min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random() / 2)
                logger.warning("read from %s failed (%s); retry %d of %d in %.2fs",
                               self.config.address.display(), exc, attempt,
                               self.config.retries, delay)
                time.sleep(delay)

    # -- delete -----------------------------------------------------------------------------
    def delete_spilled_objects(self, urls) -> None:
        doomed, freed = [], 0
        for url in urls:
            try:
                spill_url = K.parse_spill_url(url, self.config.prefix)
            except Exception as exc:  # noqa: BLE001 - never let one bad URL leak the others
                logger.error("not deleting %r: %s", url, exc)
                spill_metrics().error("delete", exc)
                continue
            doomed.append((spill_url.base_key, spill_url.n_chunks))
            freed += spill_url.size
        try:
            self._remove(doomed)
        except Exception as exc:
            # Ray does not ask again: keep them, removed after the next successful operation.
            self._leftovers.add(doomed)
            spill_metrics().error("delete", exc)
            raise
        spill_metrics().deleted(len(doomed), freed)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        due = self._leftovers.due()
        if due:
            try:
                self._remove(due)
            except Exception as exc:  # noqa: BLE001 - retried after the next success
                logger.error("could not remove the keys of %d failed or deleted objects (%s); "
                             "retrying after the next successful spill, restore or delete",
                             len(due), exc)
            else:
                self._leftovers.removed(due)

    def _remove(self, objects: list[tuple[str, int]]) -> None:
        unlink_keys(self.client, [k for base, n in objects for k in K.object_keys(base, n)])

    def destroy_external_storage(self) -> None:
        """Remove this node's keys of this session (Ray calls it with a random node id when
        validating, and for the head node on ``ray.shutdown()``)."""
        pattern = K.node_pattern(self.config.prefix, self.session_name, self.node_id)
        if not self._validating:
            stop_driver_heartbeat(self.config.prefix, self.session_name)
        try:
            removed = unlink_matching(self.client, pattern)
        except Exception as exc:  # noqa: BLE001 - shutdown must not fail; gc collects leftovers
            logger.error("could not remove spilled keys %s: %s (run `ray-valkey-spill gc`)",
                         pattern, exc)
            return
        if removed:
            logger.info("removed %d spilled keys matching %s", removed, pattern)
        if self._executor is not None:
            self._executor.shutdown(wait=False)


class _LeftoverChunks:
    """Keys still to be removed: of failed spills (no manifest, never restorable) and of
    objects Ray deleted while the server did not answer (Ray does not ask twice).

    The server that failed a spill often fails the removal too, and a server that was paused
    or cut off still runs the writes it had buffered, or that TCP retransmits, when it answers
    again: after any removal sent meanwhile. So each object is removed after every later
    successful spill, restore or delete (one pipelined UNLINK) until one removal succeeds, and
    again, at most every RECHECK_EVERY_S, for RECHECK_S after that; otherwise its keys would
    stay until the session ends."""

    RECHECK_S = 600.0  # longer than Linux retransmits the data of a closed connection
    RECHECK_EVERY_S = 5.0  # restores come every few ms; their UNLINKs need not
    MAX_OBJECTS = 10_000  # beyond this the oldest are left to ray.shutdown() or gc

    def __init__(self):
        self._lock = threading.Lock()
        # (base key, chunks) -> monotonic time to stop; infinite until a removal succeeded
        self._until: dict[tuple[str, int], float] = {}
        self._last_recheck = float("-inf")

    def add(self, objects: list[tuple[str, int]]) -> None:
        with self._lock:
            for obj in objects:
                self._until[obj] = float("inf")
            while len(self._until) > self.MAX_OBJECTS:
                del self._until[next(iter(self._until))]

    def removed(self, objects: list[tuple[str, int]]) -> None:
        until = time.monotonic() + self.RECHECK_S
        with self._lock:
            for obj in objects:
                if self._until.get(obj) == float("inf"):
                    self._until[obj] = until

    def due(self) -> list[tuple[str, int]]:
        """The objects to remove now: those never removed yet, and those removed before when
        their recheck is due."""
        with self._lock:
            if not self._until:
                return []
            t = time.monotonic()
            self._until = {obj: u for obj, u in self._until.items() if u > t}
            recheck = t - self._last_recheck >= self.RECHECK_EVERY_S
            if recheck:
                self._last_recheck = t
            return [obj for obj, u in self._until.items() if recheck or u == float("inf")]


class _ObjectReader:
    """The file-like object Ray's ``put_file_like_object`` reads from (``readinto`` only)."""

    def __init__(self, storage: ValkeyStorage, base_key: str, manifest: Manifest):
        self._storage = storage
        self._base_key = base_key
        self._manifest = manifest
        self._position = 0

    def readinto(self, view) -> int:
        view = memoryview(view).cast("B")
        manifest = self._manifest
        remaining = manifest.buf_len - self._position
        if remaining <= 0:
            raise CorruptObjectError(f"{self._base_key}: read past the end of the object")
        if self._position == 0 and len(view) >= manifest.buf_len:
            # The usual case: Ray hands us the whole plasma buffer; decode straight into it.
            self._storage._fill(self._base_key, manifest, view[:manifest.buf_len])
            self._position = manifest.buf_len
            return manifest.buf_len
        # Rare: a partial buffer. Decode the chunk holding the position and copy what fits.
        index = self._position // manifest.chunk_size
        offset = self._position - index * manifest.chunk_size
        scratch = memoryview(bytearray(manifest.raw_len(index)))
        key = K.chunk_key(self._base_key, index)
        stored = self._storage.client.get(key)
        if stored is None:
            raise ObjectMissingError(f"{key}: chunk {index} of a spilled object is missing")
        ChunkCodec.decode_into(manifest.chunks[index], stored, scratch, key)
        n = min(len(view), len(scratch) - offset)
        view[:n] = scratch[offset:offset + n]
        self._position += n
        return n


__all__ = ["ValkeyStorage"]
