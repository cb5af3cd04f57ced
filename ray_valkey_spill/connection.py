"""One connection pool per process per server, shared by the spill backend and every cache.

``connect(url_or_config)`` returns the same client for the same server and user, so an IO
worker or an inference process never opens more sockets than its busiest user needs. valkey-py
is imported here only, and lazily, so that importing the package stays cheap.

``connect_async`` is its asyncio twin: a valkey.asyncio connection belongs to the event loop
that opened it, so there is one pool per event loop per server config, built from the same
keyword arguments (user, password source, TLS files, timeouts, retries) and the same pool
bound as the sync client. A cluster URL gives valkey-py's ``ValkeyCluster`` in both worlds
(``valkey.cluster`` or ``valkey.asyncio.cluster``), with one bounded set of connections per node.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

from .config import SpillConfig
from .errors import BackendUnavailableError, ConfigError
from .node_groups import is_cluster

_lock = threading.Lock()
_clients: dict[tuple, Any] = {}
# event loop -> {pool key -> valkey.asyncio client}; a closed, collected loop drops its pools.
_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, Any]]" = \
    weakref.WeakKeyDictionary()


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


def connection_kwargs(config: SpillConfig, *, for_asyncio: bool = False) -> dict[str, Any]:
    """Keyword arguments for a valkey-py client of this config (password resolved now); with
    ``for_asyncio`` the Retry is valkey.asyncio's (same backoff, same count)."""
    import valkey
    from valkey.backoff import EqualJitterBackoff

    if for_asyncio:
        from valkey.asyncio.retry import Retry
    else:
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


def _max_connections(config: SpillConfig) -> int:
    """The pool bound of every client of ``config`` (per node on a cluster)."""
    return 4 * config.connections + 8


def _new_client(config: SpillConfig, for_asyncio: bool = False):
    if for_asyncio:
        import valkey.asyncio as valkey
    else:
        import valkey

    kwargs = connection_kwargs(config, for_asyncio=for_asyncio)
    if config.address.cluster:
        if for_asyncio:
            from valkey.asyncio.cluster import ValkeyCluster
        else:
            from valkey.cluster import ValkeyCluster

        # The cluster client keeps one pool per node; each is bounded the same way (a node
        # whose pool is exhausted raises instead of waiting, in both clients).
        return ValkeyCluster(max_connections=_max_connections(config), **kwargs)
    unix = kwargs.pop("unix_socket_path", None)
    if unix:
        pool = valkey.BlockingConnectionPool(
            connection_class=valkey.UnixDomainSocketConnection, path=unix,
            max_connections=_max_connections(config), timeout=config.socket_timeout_s,
            **{k: v for k, v in kwargs.items() if k not in ("socket_keepalive",)})
    else:
        if kwargs.pop("ssl", False):
            kwargs["connection_class"] = valkey.SSLConnection
        pool = valkey.BlockingConnectionPool(
            max_connections=_max_connections(config), timeout=config.socket_timeout_s,
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


def connect_async(target: Any, **options: Any):
    """Return the running event loop's shared valkey.asyncio client for ``target`` (a URL or
    SpillConfig): a ``valkey.asyncio.Valkey``, or for a cluster URL a
    ``valkey.asyncio.cluster.ValkeyCluster`` (it discovers the nodes on its first command).
    Call it from a coroutine; creating the client does no I/O.

    Raises:
        ConfigError: bad options, or no running event loop.
        BackendUnavailableError: the client cannot be set up (bad TLS files, ...).
    """
    config = _as_config(target, **options)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError as exc:
        raise ConfigError("event loop", None, "connect_async() called from a coroutine "
                          "(a running asyncio event loop)") from exc
    key = _pool_key(config)
    with _lock:
        clients = _async_clients.setdefault(loop, {})
        client = clients.get(key)
        if client is None:
            try:
                client = _new_client(config, for_asyncio=True)
            except ConfigError:
                raise
            except Exception as exc:
                raise BackendUnavailableError(
                    f"cannot set up a client for {config.address.display()}: {exc}") from exc
            clients[key] = client
        return client


async def aclose_loop_clients() -> int:
    """Close and forget the running event loop's shared valkey.asyncio clients; call it before
    the loop ends (e.g. last thing in the coroutine ``asyncio.run`` runs). Without it their
    sockets close when the loop is collected, and a cluster client warns that it was never
    closed. Returns how many clients were closed."""
    loop = asyncio.get_running_loop()
    with _lock:
        clients = list(_async_clients.pop(loop, {}).values())
    for client in clients:
        try:
            if is_cluster(client):  # a cluster client closes its nodes' connections
                await client.aclose()
            else:  # the pool was handed in, so the client does not close it unless told to
                await client.aclose(close_connection_pool=True)
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
    return len(clients)


def close_all() -> None:
    """Close every pooled sync client and forget the asyncio ones (their connections belong to
    their event loops and close with them)."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
        _async_clients.clear()
    for client in clients:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
