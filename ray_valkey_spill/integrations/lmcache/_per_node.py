"""A batch of the LMCache plug-in, sent node by node: which failures cost only a node's keys
(an outage or a redirect), which are raised (a misconfiguration), and the slot map re-read in
the background after a redirect or a refused connection."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List

from ...caches._base import backend_errors
from ...errors import BackendUnavailableError
from ...node_groups import NodeGroup, group_by_node, is_routing_reply, refresh_slot_map

logger = logging.getLogger("ray_valkey_spill")

# What a read treats as "the server is not there": a miss, never an error for LMCache.
_OUTAGES = (BackendUnavailableError, ConnectionError, TimeoutError, OSError)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the server or node is not there (timeout, reset, unreachable)."""
    import valkey

    return isinstance(exc, _OUTAGES + (valkey.exceptions.ConnectionError,
                                       valkey.exceptions.TimeoutError,
                                       valkey.exceptions.ClusterError,  # e.g. CLUSTERDOWN
                                       valkey.exceptions.ValkeyClusterException))


def map_may_be_stale(exc: BaseException) -> bool:
    """Whether a failed exchange hints at a changed slot map: a redirect, or a node that
    refused or dropped the connection (it may have failed over). A timeout does not: a slow
    or paused node usually comes back, and re-reading the map would cost another wait."""
    import valkey

    if is_routing_reply(exc):
        return True
    cause = exc.__cause__ if isinstance(exc, BackendUnavailableError) else exc
    return not isinstance(cause, (TimeoutError, valkey.exceptions.TimeoutError))


class PerNodeExchange:
    """Runs one exchange per node serving a batch's keys (one on a standalone server)."""

    def __init__(self, client: Any, prefix: str):
        self.client = client
        self.prefix = prefix
        self._refreshing = threading.Lock()  # held while the slot map is being re-read

    def run(self, what: str, names: List[str],
            exchange: Callable[[NodeGroup], None]) -> list[NodeGroup]:
        """Run ``exchange(group)`` once per node serving ``names``, one after the other.
        Returns the groups that failed with an outage (timeout, reset, unreachable node) or a
        routing reply (MOVED, ASK, TRYAGAIN, CLUSTERDOWN): their keys are the caller's misses
        or dropped writes, the other groups' results stand. Any other error (NOPERM,
        WRONGTYPE: a misconfiguration) is raised."""
        try:
            groups = group_by_node(self.client, names)
        except Exception as exc:
            if not is_outage(exc):
                raise
            logger.warning("KV cache: %s %d chunks failed: %s", what, len(names), exc)
            return [NodeGroup("", None, list(range(len(names))))]
        failed, stale = [], False
        for group in groups:
            try:
                with backend_errors(f"{what} {len(group.indexes)} KV chunks under {self.prefix}"
                                    + (f" on {group.name}" if group.name else "")):
                    exchange(group)
            except Exception as exc:
                if not (is_outage(exc) or is_routing_reply(exc)):
                    raise
                failed.append(group)
                stale = stale or (bool(group.name) and map_may_be_stale(exc))
                logger.warning("KV cache: %s", exc)
        if stale:
            self.refresh_slot_map_soon()
        return failed

    def refresh_slot_map_soon(self) -> None:
        """Re-read the cluster's slot map on a thread of its own, one at a time: the request
        that met the stale map returns now (its bound holds even when CLUSTER SLOTS is slow)."""
        if not self._refreshing.acquire(blocking=False):
            return  # already under way

        def run() -> None:
            try:
                refresh_slot_map(self.client)
            finally:
                self._refreshing.release()

        threading.Thread(target=run, name="rvs-lmcache-slots", daemon=True).start()
