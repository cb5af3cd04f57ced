"""One connection pool per process per server, shared by the spill backend and every cache.

``connect(url_or_config)`` returns the same client for the same server and user, so an IO
worker or an inference process never opens more sockets than its busiest user needs. valkey-py
is imported here only, and lazily, so that importing the package stays cheap.
"""

from __future__ import annotations

import threading
from typing import Any

from .config import SpillConfig
from .errors import BackendUnavailableError, ConfigError

_lock = threading.Lock()
_clients: dict[tuple, Any] = {}


def _as_config(target: Any, **options: Any) -> SpillConfig:
    if isinstance(target, SpillConfig):
        if options:
            raise ConfigError("options", sorted(options), "none when a SpillConfig is given")
        return target
    return SpillConfig.from_params({"url": target, **options})


# Options that only shape what is stored, not how the client connects.
_STORAGE_ONLY_OPTIONS = ("prefix", "chunk_size_bytes", "compression", "zstd_level",
                         "allow_allkeys_eviction")


def _pool_key(config: SpillConfig) -> tuple:
    """Every connection-relevant setting: a client made for one TLS or timeout setting must
    never be handed to a config that asked for another (e.g. hostname checking)."""
    params = config.to_params()
    for name in _STORAGE_ONLY_OPTIONS:
        params.pop(name, None)
    return (config.address, tuple(sorted(params.items())))


def connection_kwargs(config: SpillConfig) -> dict[str, Any]:
    """Keyword arguments for a valkey-py client of this config (password resolved now)."""
    import valkey
    from valkey.backoff import EqualJitterBackoff
    from valkey.retry import Retry

    a = config.address
    kwargs: dict[str, Any] = dict(
        username=config.user,
        password=config.resolve_password(),
        socket_timeout=config.socket_timeout_s,
        socket_connect_timeout=config.connect_timeout_s,
        socket_keepalive=True,
        # No PING health checks: in valkey-py a new connection's handshake runs one, and when
        # the server does not answer, the retry reconnects and handshakes again, recursing
        # (redis-py #2866, #3745): against a paused server a command took 63 s and ended in
        # RecursionError instead of one timeout. A dead pooled connection fails its next
        # command, which the Retry below reconnects and repeats (all our commands are
        # idempotent).
        health_check_interval=0,
        retry=Retry(EqualJitterBackoff(cap=2.0, base=0.05), config.retries),
        retry_on_error=[valkey.exceptions.ConnectionError, valkey.exceptions.TimeoutError,
                        valkey.exceptions.BusyLoadingError],
    )
    if a.unix_path:
        kwargs["unix_socket_path"] = a.unix_path
    else:
        kwargs.update(host=a.host, port=a.port)
    if not a.cluster:
        kwargs["db"] = a.db
    if a.tls:
        kwargs.update(ssl=True, ssl_cert_reqs="required", ssl_ca_certs=config.ssl_ca_certs,
                      ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile,
                      ssl_check_hostname=config.ssl_check_hostname)
    return kwargs


def _new_client(config: SpillConfig):
    import valkey

    kwargs = connection_kwargs(config)
    if config.address.cluster:
        from valkey.cluster import ValkeyCluster

        # The cluster client keeps one pool per node; each is bounded the same way.
        return ValkeyCluster(max_connections=4 * config.connections + 8, **kwargs)
    unix = kwargs.pop("unix_socket_path", None)
    if unix:
        pool = valkey.BlockingConnectionPool(
            connection_class=valkey.UnixDomainSocketConnection, path=unix,
            max_connections=4 * config.connections + 8, timeout=config.socket_timeout_s,
            **{k: v for k, v in kwargs.items() if k not in ("socket_keepalive",)})
    else:
        if kwargs.pop("ssl", False):
            kwargs["connection_class"] = valkey.SSLConnection
        pool = valkey.BlockingConnectionPool(
            max_connections=4 * config.connections + 8, timeout=config.socket_timeout_s,
            **kwargs)
    return valkey.Valkey(connection_pool=pool)


def connect(target: Any, **options: Any):
    """Return this process's shared valkey-py client for ``target`` (a URL or SpillConfig)."""
    config = _as_config(target, **options)
    key = _pool_key(config)
    with _lock:
        client = _clients.get(key)
        if client is None:
            try:
                client = _new_client(config)
            except ConfigError:
                raise
            except Exception as exc:  # bad TLS files, unknown host: say which server
                raise BackendUnavailableError(
                    f"cannot set up a client for {config.address.display()}: {exc}") from exc
            _clients[key] = client
        return client


def close_all() -> None:
    """Close every pooled client (tests and process shutdown)."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
