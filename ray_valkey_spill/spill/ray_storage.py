"""The Ray ``ExternalStorage`` that spills to Valkey: a thin adapter over ``SpillEngine``.

Imports Ray (through ``ray_compat``, the one home of what differs between supported Ray
versions); loaded by the plug-in (``_plugin.py``) in the head's validation and in every
spill/restore IO worker. It turns Ray's calls into engine calls: plasma buffers become
``SpillObject``s, and a restore hands the engine's reader to Ray's ``_put_object_to_store``,
which allocates the plasma buffer and reads the object straight into it.
"""

from __future__ import annotations

import io
import logging
import os
import sys

from ..config import SpillConfig
from . import keys as K
from . import ray_compat
from .engine import ObjectReader, SpillEngine, SpillObject
from .heartbeat import Heartbeat, start_driver_heartbeat, stop_driver_heartbeat

logger = logging.getLogger("ray_valkey_spill")


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


class ValkeyStorage(ray_compat.external_storage_base()):
    """Spills Ray objects to Valkey under ``<prefix><session>:<node>:`` keys."""

    def __init__(self, node_id: str, session_name: str, *, check_server_now: bool = False,
                 **params):
        """``params`` are the spilling config's options (see ``config.OPTIONS``).

        ``check_server_now``: PING and check the server in the constructor. The plug-in sets
        it only for Ray's head validation; ``ray.shutdown()`` also builds a storage (to
        destroy), and that must not fail because the server is down."""
        super().__init__()
        config = SpillConfig.from_params(params)
        heartbeat = None
        if _in_io_worker():
            _log_like_ray()
            # A node that spills or restores keeps its session alive for gc; stamped from the
            # first spill or restore: Ray also starts IO workers at shutdown (to delete).
            heartbeat = Heartbeat(lambda: self.engine.client,
                                  K.heartbeat_key(config.prefix, session_name, node_id),
                                  refresh_only=True)
        self.engine = SpillEngine(config, session_name, node_id, heartbeat=heartbeat)
        # Ray validates by building a storage and destroying it at once; that destroy must not
        # stop the session's driver heartbeat, the one at ray.shutdown() must.
        self._validating = check_server_now
        if check_server_now:
            self.engine.check()
            if not _is_ray_start_cli():  # `ray start --head` exits at once: nothing to stamp
                start_driver_heartbeat(config.prefix, session_name, lambda: self.engine.client)

    @property
    def config(self) -> SpillConfig:
        """The validated spilling options."""
        return self.engine.config

    def spill_objects(self, object_refs, owner_addresses) -> list[bytes]:
        """Ray contract: spill the objects (zero-copy plasma buffers) and return one URL per
        object spilled, in order; a shorter list means the rest stay in memory for a retry."""
        if len(object_refs) == 0:
            return []
        objects = ray_compat.objects_from_store(self, object_refs)
        return self.engine.spill([
            SpillObject(ref.hex(), None if buf is None else memoryview(buf), metadata, owner)
            for ref, (buf, metadata), owner in zip(object_refs, objects, owner_addresses)])

    def restore_spilled_objects(self, object_refs, url_with_offset_list) -> int:
        """Ray contract: restore each object into a new plasma buffer; returns bytes restored.

        An object that is gone for good (its manifest missing: a server restarted without
        persistence, FLUSHDB, eviction, deletion; or corrupt) becomes an ``ObjectLostError``
        for every ``ray.get``: Ray itself would retry the restore forever (see
        :meth:`_declare_lost`). Any other failure raises, and Ray retries after 10 s, 20 s, ..."""
        def deliver(i: int, reader: ObjectReader) -> None:
            self._put_object_to_store(reader.metadata, reader.size, reader, object_refs[i],
                                      reader.owner_address)

        def lost(i: int, exc: Exception) -> None:
            self._declare_lost(object_refs[i], exc)

        return self.engine.restore(url_with_offset_list, deliver, on_lost=lost)

    def _declare_lost(self, object_ref, exc: Exception) -> None:
        """Seal an error object under ``object_ref`` in the local plasma store, as Ray's raylet
        does for a pull that timed out: every ``ray.get`` of it (and every task taking it)
        then raises ``ObjectLostError`` at once. Without it the IO worker's failed restore
        only returns 0 bytes (``_raylet.pyx`` swallows the exception), the pull manager
        retries at 10 s x 2^n for ever (``pull_manager.cc``), and no owner ever learns of
        it: Ray recovers only objects that are neither pinned nor spilled
        (``object_recovery_manager.cc``), so no lineage re-execution either. The marker is
        an unpinned copy: evicted, the next get restores, fails and marks it again."""
        message = (f"spilled object {object_ref.hex()} is lost: {exc}. Its ray.get raises "
                   "ObjectLostError; re-run the work that produced it (Ray does not "
                   "re-execute lineage of spilled objects). Check the server's restarts, "
                   "FLUSHDB/FLUSHALL and evictions: `ray-valkey-spill doctor`.")
        logger.error("%s", message)
        self._put_object_to_store(ray_compat.lost_object_metadata(), 0, io.BytesIO(b""),
                                  object_ref, b"")
        ray_compat.tell_drivers("spilled_object_lost", message)

    def delete_spilled_objects(self, urls) -> None:
        """Ray contract: the objects behind ``urls`` are no longer needed (Ray asks once)."""
        self.engine.delete(urls)

    def destroy_external_storage(self) -> None:
        """Ray contract: remove this node's keys of this session (Ray calls it with a random
        node id when validating, and for the head node on ``ray.shutdown()``)."""
        if not self._validating:
            stop_driver_heartbeat(self.config.prefix, self.engine.session_name)
        self.engine.destroy()


__all__ = ["ValkeyStorage"]
