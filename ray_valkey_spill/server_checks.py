"""Checks a server must pass before objects are spilled to it.

Run once per process: eagerly by the head's validation (so a bad server fails ``ray.init``
within about ``connect_timeout_s``), lazily by IO workers on their first spill or restore.
"""

from __future__ import annotations

import logging

from .config import SpillConfig
from .connection import connection_kwargs
from .errors import BackendUnavailableError, ConfigError, UnsafeServerError

logger = logging.getLogger("ray_valkey_spill")


def config_get(client, name: str) -> str | None:
    """CONFIG GET, or None when the ACL user may not run it (a least-privilege spill user)."""
    import valkey

    try:
        reply = client.config_get(name)
    except valkey.exceptions.NoPermissionError:
        return None
    except valkey.exceptions.ResponseError as exc:
        if "NOPERM" in str(exc) or "unknown command" in str(exc).lower():
            return None
        raise
    value = reply.get(name)
    return value.decode() if isinstance(value, bytes) else value


def eviction_policy(client) -> str | None:
    """The server's maxmemory-policy, read as a least-privilege user can: CONFIG GET, else
    ``INFO memory`` (grant ``+info|memory``); None when the user may run neither."""
    import valkey

    policy = config_get(client, "maxmemory-policy")
    if policy is not None:
        return policy
    try:
        info = client.info("memory")
    except valkey.exceptions.ResponseError as exc:  # NOPERM: INFO is not granted
        logger.debug("cannot run INFO memory: %s", exc)
        return None
    value = info.get("maxmemory_policy")
    return value.decode() if isinstance(value, bytes) else value


def each_node(client, primaries_only: bool = False) -> list[tuple[str, object]]:
    """``(host:port, client)`` of every node behind a cluster client (valkey-py sends CONFIG
    GET and INFO to one node only), or ``[("", client)]`` for a standalone client. Settings
    checks look at replicas too: a replica becomes a primary on failover."""
    from valkey.cluster import ValkeyCluster

    if not isinstance(client, ValkeyCluster):
        return [("", client)]
    return [(node.name, client.get_valkey_connection(node)) for node in client.get_nodes()
            if not primaries_only or node.server_type == "primary"]


def eviction_risk(policy: str | None) -> bool:
    """Whether ``policy`` may evict keys without a TTL (the ``allkeys-*`` policies), which
    would lose spilled objects."""
    return policy is not None and policy.startswith("allkeys-")


def check_server(config: SpillConfig) -> dict:
    """PING the server and check the settings spilling relies on; return what was found."""
    import valkey

    kwargs = connection_kwargs(config)
    kwargs.pop("retry", None)
    kwargs.pop("retry_on_error", None)
    kwargs["socket_timeout"] = config.connect_timeout_s
    where = config.address.display()
    try:
        if config.address.cluster:
            from valkey.cluster import ValkeyCluster

            client = ValkeyCluster(**kwargs)
        else:
            client = valkey.Valkey(**kwargs)
        client.ping()
    except valkey.exceptions.AuthenticationError as exc:
        raise BackendUnavailableError(f"{where} refused our credentials (user "
                                      f"{config.user or 'default'}): {exc}") from exc
    except (valkey.exceptions.ValkeyError, OSError) as exc:
        raise BackendUnavailableError(f"cannot reach Valkey at {where} within "
                                      f"{config.connect_timeout_s}s: {exc}") from exc
    try:
        # Every node of a cluster; keep the worst answer.
        nodes = each_node(client)
        policies = [eviction_policy(c) for _, c in nodes]
        bulks = [config_get(c, "proto-max-bulk-len") for _, c in nodes]
        risky = [p for p in policies if eviction_risk(p)]
        policy = risky[0] if risky else (None if None in policies else policies[0])
        known = [int(b) for b in bulks if b is not None]
        bulk = str(min(known)) if known else None
    finally:
        client.close()
    if eviction_risk(policy) and not config.allow_allkeys_eviction:
        raise UnsafeServerError(
            f"{where} runs maxmemory-policy {policy}, which can evict spilled objects (silent "
            "data loss). Set maxmemory-policy volatile-lru (only keys with a TTL, i.e. cache "
            "keys, are evicted), or pass allow_allkeys_eviction=true to accept the risk.")
    if policy is None and not config.allow_allkeys_eviction:
        raise UnsafeServerError(
            f"cannot read the maxmemory-policy of {where} as user {config.user or 'default'} "
            "(neither CONFIG GET nor INFO memory is allowed), so an allkeys-* policy that evicts "
            "spilled objects would go unnoticed. Grant the user +info|memory (the shipped ACL "
            "does), or pass allow_allkeys_eviction=true to start without this check.")
    if bulk is not None and config.chunk_size_bytes >= int(bulk):
        raise ConfigError("chunk_size_bytes", config.chunk_size_bytes,
                          f"below the server's proto-max-bulk-len ({bulk} bytes)")
    return {"maxmemory_policy": policy, "proto_max_bulk_len": bulk}
