"""The spill engine: objects in, keys on Valkey, objects back out byte for byte. No Ray here.

Write path: each object's buffer is cut into ``chunk_size_bytes`` views (no copy); I/O
threads, one connection each, encode batches of chunks (checksum, zstd when the probe says it
pays; pyarrow and xxhash release the GIL) and send each batch as one pipeline of SETs. An
object's manifest is written only after all its chunks are stored, so a partly written object
is never restorable; on a failure the complete objects' URLs are returned (the caller keeps and
retries the rest) and the partial keys are removed.

Read path: the manifest is fetched, the caller allocates the destination buffer, and the I/O
threads fetch the chunks with pipelined GETs and decode each one straight into its slice of
that buffer, verifying its checksum there.

``ray_storage.ValkeyStorage`` adapts Ray's ``ExternalStorage`` calls to this class;
``testing.harness.SpillHarness`` drives it without Ray.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from valkey.exceptions import OutOfMemoryError

from ..config import SpillConfig
from ..connection import connect
from ..errors import (BackendUnavailableError, CorruptObjectError, ObjectMissingError,
                      RayValkeySpillError, ServerReplyError, SpillError)
from ..keyspace import unlink_keys, unlink_matching
from ..metrics import spill_metrics
from ..server_checks import check_server
from ..shedding import shed_cache_entries
from . import keys as K
from .codec import CODEC_RAW, ChunkCodec, ChunkInfo, Manifest
from .codec import scratch as codec_scratch
from .heartbeat import Heartbeat
from .leftovers import LeftoverObjects
from .transport import (BATCH_COMMANDS, IN_DESTINATION, ChunkJob, Transport, plan_jobs,
                        read_batch_bytes)

logger = logging.getLogger("ray_valkey_spill")

# Chunks of one object reuse its codec verdict; every REPROBE_EVERY-th chunk is probed again
# (32 MiB at the default chunk size), so a mixed object still gets each region's codec.
REPROBE_EVERY = 8
# Shedding costs a SCAN round (~40 ms), so free generously rather than once per chunk.
SHED_MIN_BYTES = 32 * 1024 * 1024
# The URL's size is the object's size in Ray's own framing (three u64 lengths + owner address +
# metadata + data), so Ray's spilled-bytes accounting is the same as with its filesystem.
FRAME_HEADER_BYTES = 24
# ray.shutdown() destroys the storage BEFORE it stops the node's IO workers, so a spill still in
# flight can write after destroy's first sweep. destroy() sweeps again every
# DESTROY_SETTLE_INTERVAL_S until a sweep finds nothing (at most DESTROY_SETTLE_BOUND_S): the
# driver has disconnected by then, so the raylet starts no new spills of its objects.
DESTROY_SETTLE_INTERVAL_S = 0.25
DESTROY_SETTLE_BOUND_S = 5.0


@dataclass(frozen=True)
class SpillObject:
    """One object to spill: its id, its data (None for a metadata-only object, such as a
    stored error) and what a restore must hand back with it."""

    object_id: str
    data: memoryview | None
    metadata: bytes
    owner_address: bytes

    def framed_size(self) -> int:
        """The object's size in Ray's framing: what the URL carries and Ray counts as spilled
        bytes."""
        data_len = 0 if self.data is None else len(self.data)
        return FRAME_HEADER_BYTES + len(self.owner_address) + len(self.metadata) + data_len


class SpillEngine:
    """Spills, restores and deletes objects under ``<prefix><session>:<node>:`` keys.

    Thread-safe. Connects lazily: nothing touches the network until the first operation (or
    ``check()``), because a Ray IO worker must register within 60 s of starting.
    """

    def __init__(self, config: SpillConfig, session_name: str, node_id: str, *,
                 heartbeat: Heartbeat | None = None):
        """``heartbeat``: a node stamp started by the first spill or restore (IO workers)."""
        K.node_pattern(config.prefix, session_name, node_id)  # validates both names
        self.config = config
        self.session_name = session_name
        self.node_id = node_id
        self._heartbeat = heartbeat
        self._codec = ChunkCodec(config.compression, config.zstd_level)
        self._transport = Transport(config, lambda: self.client)
        self._leftovers = LeftoverObjects()
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._client = None
        self._checked = False

    # -- connection -------------------------------------------------------------------------
    @property
    def client(self):
        """The process-wide pooled client for this config (remembered: hot path)."""
        if self._client is None:
            self._client = connect(self.config)
        return self._client

    def check(self) -> None:
        """Check the server once (reachable, credentials, eviction policy); raises
        ``BackendUnavailableError`` or ``UnsafeServerError``."""
        if not self._checked:
            check_server(self.config)
            self._checked = True

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self.check()
                self._executor = ThreadPoolExecutor(self.config.connections,
                                                    thread_name_prefix="valkey-spill")
            return self._executor

    def _stamp_node(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.start()

    def close(self) -> None:
        """Stop the I/O threads after the running batches finish."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    # -- spill ------------------------------------------------------------------------------
    def spill(self, objects: Sequence[SpillObject]) -> list[bytes]:
        """Store ``objects``; return one URL per object stored, in order.

        Returns a prefix of the objects' URLs when a batch fails after some objects are
        complete (the caller retries the rest); raises ``SpillError`` when none is stored.
        Nothing partial stays on the server."""
        try:
            return self._spill(objects)
        except Exception as exc:
            spill_metrics().error("spill", exc.__cause__ or exc)
            raise

    def _spill(self, objects: Sequence[SpillObject]) -> list[bytes]:
        if len(objects) == 0:
            return []
        started = time.perf_counter()
        pool = self._pool()
        self._stamp_node()
        bases, views = [], []
        for obj in objects:
            if obj.data is None and len(obj.metadata) == 0:
                raise ValueError(f"Object {obj.object_id} does not exist.")
            view = memoryview(obj.data).cast("B") if obj.data is not None else memoryview(b"")
            base = K.new_base_key(self.config.prefix, self.session_name, self.node_id,
                                  obj.object_id)
            bases.append(base)
            views.append((base, view))
        chunk_size = self.config.chunk_size_bytes
        infos: list[list[ChunkInfo | None]] = [[None] * -(-len(v) // chunk_size) for _, v in views]
        failed_at = len(views)
        error: BaseException | None = None
        choices: dict[int, int] = {}
        write = functools.partial(self._write_job, choices=choices)
        with closing(self._run_bounded(pool, write, plan_jobs(views, chunk_size))) as done:
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
            obj = objects[i]
            manifest = Manifest(chunk_size, len(views[i][1]), bytes(obj.owner_address),
                                bytes(obj.metadata), tuple(infos[i]))
            manifests.append((K.manifest_key(bases[i]), manifest.encode()))
            urls.append(K.SpillURL(bases[i], obj.framed_size(), len(infos[i])).encode())
        try:
            self._set_many(manifests)
        except Exception as exc:  # noqa: BLE001
            failed_at, error, urls = 0, exc, []
        if error is not None:
            self._leftovers.add([(bases[i], len(infos[i])) for i in range(failed_at, len(views))])
            self._remove_leftovers()
            logger.error("spill to %s failed at object %d of %d (%s); %d objects spilled, "
                         "the rest stay in memory and are retried",
                         self.config.address.display(), failed_at, len(views), error, len(urls))
            if not urls:
                raise SpillError(f"spilling {len(views)} objects to "
                                 f"{self.config.address.display()} failed: {error}") from error
            spill_metrics().error("spill", error)
        else:  # the server answers: remove what earlier failed spills left
            self._remove_leftovers()
        stored = sum(i.stored_len for obj in infos[:len(urls)] for i in obj)
        spill_metrics().spilled(len(urls), sum(o.framed_size() for o in objects[:len(urls)]),
                                stored + sum(len(m) for _, m in manifests),
                                time.perf_counter() - started)
        logger.debug("spilled %d objects in %.3fs", len(urls), time.perf_counter() - started)
        return urls

    def _run_bounded(self, pool, fn, jobs: list[ChunkJob]) -> Iterator[tuple[ChunkJob, Future]]:
        """Run jobs on the pool, yielding them finished and in order, with at most 2 per
        connection in flight (bounded memory). Closing the generator early cancels the jobs
        not started and waits for the running ones (they use buffers the caller owns)."""
        limit = 2 * self.config.connections
        pending: deque[tuple[ChunkJob, Future]] = deque()
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

    def _write_job(self, job: ChunkJob, choices: dict[int, int]) -> list[ChunkInfo]:
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
                self._transport.set_batch(batch)
            except OutOfMemoryError as oom:
                nbytes = sum(len(v) for _, v in batch)
                try:
                    freed = shed_cache_entries(self.client, max(nbytes, SHED_MIN_BYTES),
                                               protected_prefixes=(self.config.prefix,))
                except ServerReplyError as denied:
                    raise SpillError(f"{self.config.address.display()} is out of memory; "
                                     f"{denied}. Raise maxmemory or add shards (the objects "
                                     "stay in memory and are retried)") from oom
                logger.warning("%s is full: shed %d bytes of cache entries to store %d bytes "
                               "of spilled data", self.config.address.display(), freed, nbytes)
                if not freed:
                    raise SpillError(f"{self.config.address.display()} is out of memory and "
                                     "holds no cache entries to shed; raise maxmemory or add "
                                     "shards (the objects stay in memory and are retried)") from oom
                self._transport.set_batch(batch)  # SET is idempotent: the batch may repeat

    # -- restore ----------------------------------------------------------------------------
    def restore(self, urls: Sequence[bytes], deliver: Callable[[int, "ObjectReader"], None],
                on_lost: Callable[[int, RayValkeySpillError], None] | None = None) -> int:
        """Restore each URL: ``deliver(i, reader)`` must read the whole object from ``reader``
        (``reader.size`` bytes, through ``readinto``) into its destination. Returns the bytes
        restored. Errors are logged with the key and cause, and are always
        ``RayValkeySpillError``s.

        ``on_lost(i, exc)``: called instead of raising when object ``i`` is gone for good (a
        server that answers says its manifest does not exist, or it is corrupt); the other
        objects are still restored. A server that does not answer always raises (it may come
        back with the data)."""
        self._stamp_node()
        total = 0
        for i, url in enumerate(urls):
            started = time.perf_counter()
            try:
                reader = self.open(url)
                deliver(i, reader)
            except (ObjectMissingError, CorruptObjectError) as exc:
                logger.error("restore from %r failed: %s", url, exc)
                spill_metrics().error("restore", exc)
                if on_lost is None:
                    raise
                on_lost(i, exc)
                continue
            except RayValkeySpillError as exc:
                logger.error("restore from %r failed: %s", url, exc)
                spill_metrics().error("restore", exc)
                raise
            except Exception as exc:
                logger.error("restore from %r failed: %s", url, exc)
                spill_metrics().error("restore", exc)
                raise BackendUnavailableError(
                    f"restore of {url!r} from {self.config.address.display()} failed: "
                    f"{exc}") from exc
            total += reader.size
            spill_metrics().restored(1, reader.url.size, time.perf_counter() - started)
        self._remove_leftovers()
        return total

    def open(self, url: bytes | str) -> "ObjectReader":
        """A reader of the object behind ``url``; fetches and checks its manifest."""
        spill_url = K.parse_spill_url(url, self.config.prefix)
        key = K.manifest_key(spill_url.base_key)
        self._pool()
        data = self._transport.get(key)
        if data is None:
            raise ObjectMissingError(f"{key}: spilled object is missing from "
                                     f"{self.config.address.display()} (server restarted "
                                     "without persistence, evicted, or deleted)")
        manifest = Manifest.decode(data, key)
        if len(manifest.chunks) != spill_url.n_chunks:
            raise CorruptObjectError(f"{key}: manifest has {len(manifest.chunks)} chunks, "
                                     f"the URL {spill_url.n_chunks}")
        return ObjectReader(self, spill_url, manifest)

    def _fill(self, base_key: str, manifest: Manifest, target: memoryview) -> None:
        """Fetch every chunk and decode it into its slice of ``target`` (the whole object)."""
        read = functools.partial(self._read_job, manifest)
        batch = read_batch_bytes(len(target), manifest.chunk_size, self.config.connections)
        jobs = plan_jobs([(base_key, target)], manifest.chunk_size, batch)
        with closing(self._run_bounded(self._pool(), read, jobs)) as done:
            for _, future in done:
                future.result()

    def _read_job(self, manifest: Manifest, job: ChunkJob) -> None:
        """Raw chunks land in the target straight from the socket; zstd ones via one scratch
        copy; every chunk is verified against its checksum where it lands."""
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

        def check(i: int, stored) -> None:
            _, chunk, key, view = job.items[i]
            info = manifest.chunks[chunk]
            if stored is None:
                raise ObjectMissingError(f"{key}: chunk {chunk} of a spilled object is missing")
            if stored is not IN_DESTINATION:
                ChunkCodec.decode_into(info, stored, view, key)
            elif info.codec == CODEC_RAW:
                ChunkCodec.verify(info, view, key)
            else:
                ChunkCodec.decode_into(info, scratch[i], view, key)

        self._transport.read_batch([key for _, _, key, _ in job.items], destination, check)

    def _read_chunk(self, key: str) -> bytes | None:
        return self._transport.get(key)

    # -- delete -----------------------------------------------------------------------------
    def delete(self, urls: Sequence[bytes]) -> None:
        """Remove the objects behind ``urls``. A malformed URL is logged and skipped (it must
        not leak the others); if the server fails, the objects are kept and removed after the
        next successful operation, and the error is raised."""
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
            self._leftovers.add(doomed)  # nobody asks again
            spill_metrics().error("delete", exc)
            raise BackendUnavailableError(
                f"deleting {len(doomed)} spilled objects from {self.config.address.display()} "
                f"failed ({exc}); they are removed after the next successful operation") from exc
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

    def destroy(self) -> None:
        """Remove every key of this node in this session, sweeping again until a sweep finds
        nothing (see DESTROY_SETTLE_INTERVAL_S). Never raises: a failure is logged
        (``ray-valkey-spill gc`` collects what is left)."""
        pattern = K.node_pattern(self.config.prefix, self.session_name, self.node_id)
        try:
            removed = unlink_matching(self.client, pattern)
            deadline = time.monotonic() + DESTROY_SETTLE_BOUND_S
            while time.monotonic() < deadline:
                time.sleep(DESTROY_SETTLE_INTERVAL_S)
                late = unlink_matching(self.client, pattern)
                removed += late
                if not late:
                    break
            else:
                logger.warning("keys matching %s were still being written %.0f s after "
                               "destroy began; `ray-valkey-spill gc` collects any left",
                               pattern, DESTROY_SETTLE_BOUND_S)
        except Exception as exc:  # noqa: BLE001 - shutdown must not fail; gc collects leftovers
            logger.error("could not remove spilled keys %s: %s (run `ray-valkey-spill gc`)",
                         pattern, exc)
            return
        if removed:
            logger.info("removed %d spilled keys matching %s", removed, pattern)
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)


class ObjectReader:
    """A file-like view of one spilled object: ``readinto`` only, as Ray's
    ``put_file_like_object`` uses it; ``metadata``, ``owner_address`` and ``size`` describe it."""

    def __init__(self, engine: SpillEngine, url: K.SpillURL, manifest: Manifest):
        self._engine = engine
        self.url = url
        self._manifest = manifest
        self._position = 0

    @property
    def size(self) -> int:
        """Bytes of object data (what ``readinto`` delivers in all)."""
        return self._manifest.buf_len

    @property
    def metadata(self) -> bytes:
        """The object's Ray metadata."""
        return self._manifest.metadata

    @property
    def owner_address(self) -> bytes:
        """The serialized address of the object's owner."""
        return self._manifest.owner_address

    def readinto(self, view) -> int:
        """Fill ``view`` from the current position; returns the bytes written (never 0 before
        the end: a short or missing chunk raises)."""
        view = memoryview(view).cast("B")
        manifest = self._manifest
        base_key = self.url.base_key
        remaining = manifest.buf_len - self._position
        if remaining <= 0:
            raise CorruptObjectError(f"{base_key}: read past the end of the object")
        if self._position == 0 and len(view) >= manifest.buf_len:
            # The usual case: the whole destination at once; decode straight into it.
            self._engine._fill(base_key, manifest, view[:manifest.buf_len])
            self._position = manifest.buf_len
            return manifest.buf_len
        # Rare: a partial buffer. Decode the chunk holding the position and copy what fits.
        index = self._position // manifest.chunk_size
        offset = self._position - index * manifest.chunk_size
        scratch = memoryview(bytearray(manifest.raw_len(index)))
        key = K.chunk_key(base_key, index)
        stored = self._engine._read_chunk(key)
        if stored is None:
            raise ObjectMissingError(f"{key}: chunk {index} of a spilled object is missing")
        ChunkCodec.decode_into(manifest.chunks[index], stored, scratch, key)
        n = min(len(view), len(scratch) - offset)
        view[:n] = scratch[offset:offset + n]
        self._position += n
        return n
