"""connect_async on a cluster URL: the valkey.asyncio ValkeyCluster carries every connection
setting of the config (the same ``connection_kwargs`` as the sync client) and the same per-node
pool bound. Creating it does no I/O, so no server is needed; the clients talking to a real
cluster are tested in tests/integration/test_caches_async_cluster.py."""

from __future__ import annotations

import asyncio

from ray_valkey_spill.config import SpillConfig
from ray_valkey_spill.connection import connect_async


def _client_of(config: SpillConfig):
    async def build():
        return connect_async(config)

    return asyncio.run(build())


def test_an_async_cluster_client_carries_tls_credentials_timeouts_and_bounds(monkeypatch,
                                                                              tmp_path):
    from valkey.asyncio.cluster import ValkeyCluster
    from valkey.asyncio.connection import SSLConnection

    monkeypatch.setenv("RVS_UNIT_CLUSTER_PASSWORD", "s3cret-from-env")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    config = SpillConfig.from_params({
        "url": "valkeys+cluster://cacheuser@127.0.0.1:7000",
        "password_env": "RVS_UNIT_CLUSTER_PASSWORD", "ssl_ca_certs": str(files["ca"]),
        "ssl_certfile": str(files["cert"]), "ssl_keyfile": str(files["key"]),
        "ssl_check_hostname": True, "socket_timeout_s": 2.5, "connect_timeout_s": 1.5,
        "retries": 4, "connections": 5})
    client = _client_of(config)
    assert isinstance(client, ValkeyCluster)
    kwargs = client.get_connection_kwargs()
    assert kwargs["connection_class"] is SSLConnection
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == tuple(
        str(files[n]) for n in ("ca", "cert", "key"))
    assert kwargs["ssl_cert_reqs"] == "required" and kwargs["ssl_check_hostname"] is True
    assert (kwargs["username"], kwargs["password"]) == ("cacheuser", "s3cret-from-env")
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.5, 1.5)
    assert kwargs["health_check_interval"] == 0 and kwargs["socket_keepalive"] is True
    assert client.get_retry()._retries == 4  # valkey-py has no public getter
    assert kwargs["max_connections"] == 4 * 5 + 8  # per node, as the sync cluster client
    assert "s3cret" not in repr(client)


def test_a_plain_cluster_url_gives_a_plain_connection_class():
    from valkey.asyncio.connection import Connection

    client = _client_of(SpillConfig.from_params({"url": "valkey+cluster://127.0.0.1:7000"}))
    assert client.get_connection_kwargs()["connection_class"] is Connection
    assert client.get_connection_kwargs()["password"] is None
