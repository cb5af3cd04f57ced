"""Moving chunk batches to and from Valkey: pipelines, zero-copy I/O, and the one retry policy.

The engine hands this module batches of ``(key, buffer)`` pairs. On a standalone server a
batch of SETs is one ``sendmsg`` gather list and a batch of GETs lands in the caller's buffers
straight from the socket (``direct_io``). On Valkey Cluster the same batches are grouped by the
primary that serves each slot (``node_groups``); a redirect or a dead node sends a group through valkey-py's
cluster pipeline, which follows MOVED/ASK and refreshes the slot map.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, Sequence

from valkey.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError
from valkey.exceptions import ClusterError as ValkeyClusterError
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import OutOfMemoryError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

from ..config import SpillConfig
from ..direct_io import get_into, set_from
from ..errors import ServerReplyError
from ..node_groups import ROUTING_REPLIES, group_by_node
from . import keys as K

logger = logging.getLogger("ray_valkey_spill")

# A pipeline carries at most this many bytes or commands: big enough to amortise round trips,
# small enough that in-flight buffers stay bounded (connections x 2 batches) and that one
# batch never monopolises the server for long.
BATCH_BYTES = 16 * 1024 * 1024
BATCH_COMMANDS = 256
# In cluster mode a dead primary is replaced by its replica only after cluster-node-timeout
# (default 15 s) plus an election: transient cluster faults are retried for about this long.
CLUSTER_FAILOVER_BUDGET_S = 30.0
_CLUSTER_TRANSIENT = (ClusterDownError, TryAgainError, ValkeyClusterError, SlotNotCoveredError)
# Error replies that a retry can outlast (a loading server, a slot in migration).
_TRANSIENT_REPLIES = (*ROUTING_REPLIES, "LOADING")


class ChunkJob:
    """Chunks (of one or more objects) written or read together in one pipeline."""

    __slots__ = ("items", "nbytes")

    def __init__(self, items: list[tuple[int, int, str, memoryview]] | None = None):
        self.items: list[tuple[int, int, str, memoryview]] = items or []  # (object, chunk, key, view)
        self.nbytes = sum(len(view) for *_, view in self.items)


def plan_jobs(views: Sequence[tuple[str, memoryview]], chunk_size: int,
              batch_bytes: int = BATCH_BYTES) -> list[ChunkJob]:
    """Cut each ``(base key, buffer)`` into ``chunk_size`` views (no copy) and group them into
    batches of at most ``batch_bytes`` (never less than one chunk) and BATCH_COMMANDS."""
    jobs, job = [], ChunkJob()
    for obj_index, (base_key, buf) in enumerate(views):
        for chunk_index, start in enumerate(range(0, len(buf), chunk_size)):
            piece = buf[start:start + chunk_size]
            if job.items and (job.nbytes + len(piece) > batch_bytes
                              or len(job.items) >= BATCH_COMMANDS):
                jobs.append(job)
                job = ChunkJob()
            job.items.append((obj_index, chunk_index, K.chunk_key(base_key, chunk_index), piece))
            job.nbytes += len(piece)
    if job.items:
        jobs.append(job)
    return jobs


def read_batch_bytes(object_len: int, chunk_size: int, connections: int) -> int:
    """Batch size for restoring one object: its chunks spread over every connection (Ray
    restores one object per call; in one batch a 16 MiB object would ride one connection,
    and split four ways it restored 1.2x faster, `docs/performance.md`), whole chunks, at most
    BATCH_BYTES."""
    share = -(-object_len // connections)
    return min(BATCH_BYTES, max(chunk_size, -(-share // chunk_size) * chunk_size))


# destination(i, n) -> the buffer that receives reply i of n bytes (see direct_io.get_into)
Destination = Callable[[int, int], memoryview]
# check(i, stored) verifies item i once read: stored is None (no such key), IN_DESTINATION
# (its bytes are where destination said), or the value as bytes (read through valkey-py).
Check = Callable[[int, object], None]
IN_DESTINATION = object()


class Transport:
    """Pipelined SET/GET batches for one ``SpillConfig``, standalone or cluster."""

    def __init__(self, config: SpillConfig, client: Callable[[], object]):
        """``client`` returns the process's pooled valkey-py client (connected lazily)."""
        self.config = config
        self._client = client

    @property
    def cluster(self) -> bool:
        """Whether the server is a cluster (from the URL)."""
        return self.config.address.cluster

    def set_batch(self, batch: Sequence[tuple[str, object]]) -> None:
        """SET every (key, buffer) pair; raises ``OutOfMemoryError`` when the server is full.
        SET is idempotent, so a retried batch may repeat."""
        if self.cluster:
            return self.with_retries(self._set_batch_cluster, batch)
        return self.with_retries(self._set_batch_direct, batch)

    def _set_batch_direct(self, batch) -> None:
        try:
            set_from(self._client(), batch)
        except ServerReplyError as exc:
            if exc.out_of_memory:
                raise OutOfMemoryError(str(exc)) from exc
            raise

    def _set_batch_cluster(self, batch) -> None:
        pipe = self._client().pipeline(transaction=False)
        for key, value in batch:
            pipe.set(key, value)
        pipe.execute()

    def get(self, key: str) -> bytes | None:
        """One GET (a manifest); on a cluster it rides out a failover, standalone valkey-py
        retries itself."""
        if self.cluster:
            return self.with_retries(self._client().get, key)
        return self._client().get(key)

    def read_batch(self, keys: Sequence[str], destination: Destination, check: Check) -> None:
        """GET ``keys`` into the buffers ``destination`` picks, then ``check`` each one.

        A missing key reaches ``check`` as None. Retries transient faults; a whole batch is
        read again (reads are idempotent)."""
        if self.cluster:
            return self.with_retries(self._read_batch_cluster, keys, destination, check)
        return self.with_retries(self._read_batch_direct, keys, destination, check, None)

    def _read_batch_direct(self, keys, destination, check, client) -> None:
        lengths = get_into(client or self._client(), keys, destination)
        for i, n in enumerate(lengths):
            check(i, None if n is None else IN_DESTINATION)

    def _read_batch_cluster(self, keys, destination, check) -> None:
        """Keys grouped by the primary serving their slot, each group read zero-copy on that
        node's own pool; a redirect or node fault reads the group through the cluster
        pipeline instead."""
        client = self._client()
        for group in group_by_node(client, keys):
            sub_keys = group.pick(keys)

            def sub_destination(j: int, n: int, _idx=group.indexes) -> memoryview:
                return destination(_idx[j], n)

            def sub_check(j: int, stored, _idx=group.indexes) -> None:
                check(_idx[j], stored)

            try:
                self._read_batch_direct(sub_keys, sub_destination, sub_check, group.client)
            except (ServerReplyError, OSError, ValkeyConnectionError, ValkeyTimeoutError) as exc:
                if isinstance(exc, ServerReplyError) and not str(exc).startswith(
                        _TRANSIENT_REPLIES):
                    raise
                logger.info("direct read from %s: %s; reading through the cluster client",
                            group.name, exc)
                pipe = client.pipeline(transaction=False)
                for key in sub_keys:
                    pipe.get(key)
                for j, stored in enumerate(pipe.execute()):
                    sub_check(j, stored)

    def with_retries(self, fn, *args):
        """Retry transient faults (reset, timeout, LOADING, cluster failover) with jittered
        exponential backoff: ``retries`` times standalone, for CLUSTER_FAILOVER_BUDGET_S on a
        cluster. Error replies other than transient ones are raised at once."""
        attempt = 0
        deadline = time.monotonic() + CLUSTER_FAILOVER_BUDGET_S
        while True:
            try:
                return fn(*args)
            except (OSError, ValkeyConnectionError, ValkeyTimeoutError, ServerReplyError,
                    *_CLUSTER_TRANSIENT) as exc:
                transient = (not isinstance(exc, ServerReplyError) or str(exc).startswith("LOADING")
                             or isinstance(exc, _CLUSTER_TRANSIENT))
                exhausted = (time.monotonic() >= deadline if self.cluster
                             else attempt >= self.config.retries)
                if not transient or exhausted:
                    raise
                attempt += 1
                delay = min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random() / 2)
                logger.warning("request to %s failed (%s); retry %d of %d in %.2fs",
                               self.config.address.display(), exc, attempt,
                               self.config.retries, delay)
                time.sleep(delay)
