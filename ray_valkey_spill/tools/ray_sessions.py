"""The session names of running Ray clusters, read from their GCS, so that gc never deletes
what a live cluster may still restore.

Heartbeats cover a session while some node that spilled or restored lives, and the driver of
``ray.init()`` stamps its own session; a cluster started with ``ray start --head`` has no such
driver. If every node that spilled has died, its objects are still restorable while their
owners live, and only the cluster itself can say it is running.
"""

from __future__ import annotations

import socket

from ..errors import BackendUnavailableError, ConfigError

CONNECT_CHECK_TIMEOUT_S = 5.0


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("--ray-address", address, "the GCS address as HOST:PORT, e.g. "
                          "raycluster-head-svc:6379 (what `ray start --head` prints)")
    return host.strip("[]"), int(port)


def live_session(address: str) -> str:
    """The current session name of the Ray cluster whose GCS listens at ``address``."""
    host, port = _host_port(address)
    # GcsClient retries a dead address for about 40 s; a plain connect says it at once.
    try:
        socket.create_connection((host, port), timeout=CONNECT_CHECK_TIMEOUT_S).close()
    except OSError as exc:
        raise BackendUnavailableError(f"no Ray GCS answers at {address}: {exc}; gc deletes "
                                      "nothing while it cannot tell which sessions live") from exc
    from ray._private import ray_constants
    from ray._raylet import GcsClient

    try:
        name = GcsClient(address=address).internal_kv_get(
            b"session_name", ray_constants.KV_NAMESPACE_SESSION, timeout=CONNECT_CHECK_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - ray raises several RPC error types
        raise BackendUnavailableError(f"could not read the session name from the Ray GCS at "
                                      f"{address}: {exc}") from exc
    if not name:
        raise BackendUnavailableError(f"the Ray GCS at {address} has no session name")
    return name.decode()
