"""Which node serves which key: a batch split into one group per primary, for ``direct_io``.

``direct_io`` pipelines a batch on ONE connection pool. On Valkey Cluster a batch of keys is
split here by the primary that serves each key's slot (valkey-py's ``ValkeyCluster`` slot map),
and each group carries that node's own pooled client, so a caller sends one ``direct_io``
pipeline per node involved. A standalone client is one group holding every key.

The slot map can be stale (a resharding, a failover): the node then answers MOVED or ASK, or a
cluster fault (TRYAGAIN, CLUSTERDOWN). What to do with such a group is the caller's choice (the
spill transport re-reads it through valkey-py's cluster pipeline, which follows redirects;
the LMCache plug-in counts misses and dropped writes); ``refresh_slot_map`` re-reads the map
so that the next batch goes to the right nodes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import ServerReplyError

logger = logging.getLogger("ray_valkey_spill")

# Error replies that mean "not here, not now": the slot map moved on or the cluster is failing
# over. Retrying elsewhere or later can succeed; they say nothing about the data.
ROUTING_REPLIES = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a valkey-py ``ValkeyCluster`` client, sync or valkey.asyncio."""
    return hasattr(client, "mget_nonatomic")


def is_routing_reply(exc: BaseException) -> bool:
    """Whether ``exc`` is an error reply of ROUTING_REPLIES (MOVED, ASK, ...)."""
    return isinstance(exc, ServerReplyError) and str(exc).startswith(ROUTING_REPLIES)


@dataclass
class NodeGroup:
    """The keys of a batch that one node serves."""

    name: str  # the primary's "host:port"; "" for a standalone client
    client: Any  # a valkey-py client on that node's own connection pool
    indexes: list[int] = field(default_factory=list)  # positions in the caller's batch

    def pick(self, items: Sequence) -> list:
        """The group's elements of ``items``, a sequence parallel to the batch."""
        return [items[i] for i in self.indexes]


def group_by_node(client: Any, keys: Sequence[str]) -> list[NodeGroup]:
    """``keys`` grouped by the primary serving their slot, in first-seen order (one group for a
    standalone client). Raises valkey-py's SlotNotCoveredError when the slot map has a hole."""
    if not is_cluster(client):
        return [NodeGroup("", client, list(range(len(keys))))]
    groups: dict[str, NodeGroup] = {}
    for i, key in enumerate(keys):
        node = client.get_node_from_key(key)
        group = groups.get(node.name)
        if group is None:
            group = groups[node.name] = NodeGroup(node.name, client.get_valkey_connection(node))
        group.indexes.append(i)
    return list(groups.values())


def refresh_slot_map(client: Any) -> None:
    """Re-read a cluster client's slot map (one CLUSTER SLOTS) after a redirect or a node
    fault; best effort (a failure is logged: valkey-py's next command retries it)."""
    if not is_cluster(client):
        return
    try:
        client.nodes_manager.initialize()
    except Exception as exc:  # noqa: BLE001 - the next batch meets the same fault and says so
        logger.info("Valkey Cluster slot map not refreshed: %s", exc)


__all__ = ["NodeGroup", "ROUTING_REPLIES", "group_by_node", "is_cluster", "is_routing_reply",
           "refresh_slot_map"]
