"""Least-privilege ACL users of cluster_configs/base/valkey-users.acl, against REAL valkey-servers.

The ACL template is rendered with the very script the Kubernetes init containers run
(base/render-acl.sh), with random test passwords. Then:
- the rendered file and the manifests' valkey.conf (standalone and cluster) boot a dedicated
  server, as in the pods;
- the same rules are applied with ACL SETUSER to the session's shared test server, where the
  spill user spills and restores through the real backend code, and every user is shown to be
  confined to its own key prefix. The users are deleted again at the end.
Passwords travel through environment variables named by ``password_env``, never in URLs.
Every forbidden command sent as every user is in test_acl_shipped.py.
"""

from __future__ import annotations

import os
import secrets
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import valkey
import yaml

from support import render_acl
from ray_valkey_spill.config import SpillConfig
from ray_valkey_spill.connection import connect
from ray_valkey_spill.testing.embedded import free_port, valkey_server_binary
from ray_valkey_spill.errors import BackendUnavailableError
from ray_valkey_spill.keyspace import scan_keys
from ray_valkey_spill.prefixes import DEFAULT_PREFIXES
from ray_valkey_spill.server_checks import check_server

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "cluster_configs"
ACL_FILE = CONFIGS / "base" / "valkey-users.acl"
RENDER_SCRIPT = CONFIGS / "base" / "render-acl.sh"
MANIFESTS = {"valkey.yaml": CONFIGS / "overlays" / "standalone" / "valkey.yaml",
             "valkey-cluster.yaml": CONFIGS / "overlays" / "cluster" / "valkey-cluster.yaml"}
MiB = 1024 * 1024
CACHE_USERS = {"emb": "embcache", "vllm_kv": "vllmkv", "session": "session"}
PW_ENV = "RVS_ACL_TEST_PASSWORD_"


def _configmap(manifest: str, name: str) -> dict:
    with open(MANIFESTS[manifest], encoding="utf-8") as f:
        (cm,) = [d for d in yaml.safe_load_all(f)
                 if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    return cm["data"]


def _template_users() -> list[str]:
    return [line.split()[1] for line in ACL_FILE.read_text(encoding="utf-8").splitlines()
            if line.startswith("user ")]


@pytest.fixture(scope="module")
def passwords() -> dict[str, str]:
    """Random passwords per user, also exported as RVS_ACL_TEST_PASSWORD_<USER> for password_env."""
    pws = {u: secrets.token_urlsafe(24) for u in _template_users() if u != "default"}
    with pytest.MonkeyPatch.context() as mp:
        for user, pw in pws.items():
            mp.setenv(_env_name(user), pw)
        yield pws


@pytest.fixture(scope="module")
def rendered_acl(tmp_path_factory, passwords) -> Path:
    """valkey-users.acl rendered by the init containers' script, as in the pods."""
    out = tmp_path_factory.mktemp("acl") / "users.acl"
    result = render_acl(out, passwords)
    assert result.returncode == 0, result.stderr
    return out


def _rendered_rules(path: Path) -> dict[str, list[str]]:
    return {line.split()[1]: line.split()[2:] for line in path.read_text().splitlines()}


@pytest.fixture(scope="module")
def acl_users(valkey_server, rendered_acl):
    """The rendered users applied to the shared session server (default user left alone)."""
    admin = valkey_server.client()
    rules = _rendered_rules(rendered_acl)
    assert rules.pop("default")[0] == "off"
    existing = {u.decode() for u in admin.execute_command("ACL", "USERS")}
    assert not existing & set(rules), f"users {existing & set(rules)} already exist"
    try:
        for user, user_rules in rules.items():
            admin.execute_command("ACL", "SETUSER", user, "reset", *user_rules)
        yield sorted(rules)
    finally:
        admin.execute_command("ACL", "DELUSER", *rules)
        left = {u.decode() for u in admin.execute_command("ACL", "USERS")}
        admin.close()
        assert not left & set(rules), "test users were not removed"


def _env_name(user: str) -> str:
    return PW_ENV + user.upper().replace("-", "_")


def _config(url: str, user: str, **options) -> SpillConfig:
    return SpillConfig.from_params(
        {"url": url, "username": user, "password_env": _env_name(user), **options})


def _client(url: str, user: str):
    """The package's shared client for ``user`` (password resolved from the environment)."""
    return connect(_config(url, user))


# -- the deployment path: rendered aclfile + the manifests' valkey.conf on a real server -------
class _Server:
    """valkey-server started from a manifest's valkey.conf, paths and port made local."""

    def __init__(self, conf_text: str, work: Path, aclfile: Path, extra: dict[str, str]):
        self.port = free_port()
        while str(self.port) in extra.values():
            self.port = free_port()
        data = work / "data"
        data.mkdir()
        local = {"dir": str(data), "aclfile": str(aclfile), "port": str(self.port),
                 "bind": "127.0.0.1", **extra}
        lines, replaced = [], set()
        for line in conf_text.splitlines():
            words = line.split()
            if words and not line.startswith("#") and words[0] in local:
                line = f"{words[0]} {local[words[0]]}"
                replaced.add(words[0])
            lines.append(line)
        # Settings the manifest leaves at their defaults (e.g. cluster-port) go at the end.
        lines += [f"{k} {v}" for k, v in local.items() if k not in replaced]
        conf = work / "valkey.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.log = work / "server.log"
        self.proc = subprocess.Popen([valkey_server_binary(), str(conf), "--logfile", str(self.log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            assert self.proc.poll() is None, f"valkey-server refused the config: {self._tail()}"
            try:
                valkey.Valkey(port=self.port, socket_timeout=1).ping()
            except valkey.exceptions.AuthenticationError:
                break  # up, and the default user is off
            except valkey.exceptions.ConnectionError:
                assert time.monotonic() < deadline, self._tail()
                time.sleep(0.05)
            else:
                pytest.fail("an unauthenticated client was served: the default user is not off")
        self.url = f"valkey://127.0.0.1:{self.port}/0"

    def _tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else ""

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_rendered_acl_and_valkey_conf_boot_a_real_server(tmp_path, rendered_acl, passwords):
    conf = _configmap("valkey.yaml", "valkey-config")["valkey.conf"]
    server = _Server(conf, tmp_path, rendered_acl, {})
    try:
        anonymous = valkey.Valkey(port=server.port)
        with pytest.raises(valkey.exceptions.AuthenticationError):
            anonymous.get("ray:x")
        admin = valkey.Valkey(port=server.port, username="admin", password=passwords["admin"])
        assert {u.decode() for u in admin.execute_command("ACL", "USERS")} == set(_template_users())
        settings = admin.config_get("*")
        assert settings["maxmemory-policy"] == "volatile-lru"
        assert int(settings["maxmemory"]) == 12 * 1024**3
        assert settings["save"] == "3600 1 300 100 60 10000" and settings["appendonly"] == "no"
        assert int(settings["proto-max-bulk-len"]) == 512 * MiB
        # The spill user passes the backend's checks there, without CONFIG permission, and
        # may read the policy from INFO memory (granted explicitly).
        check_server(_config(server.url, "rayspill"))
        spill = _client(server.url, "rayspill")
        assert spill.info("memory")["maxmemory_policy"] == "volatile-lru"
        with pytest.raises(valkey.exceptions.AuthenticationError):
            valkey.Valkey(port=server.port, username="rayspill", password="wrong").ping()
        admin.close()
    finally:
        server.stop()


def test_cluster_conf_and_acl_serve_cluster_clients(tmp_path, rendered_acl, passwords):
    """A one-node cluster from valkey-cluster.yaml's conf: the spill user's rules suffice
    for a valkey+cluster:// client (CLUSTER SLOTS) and still confine it to ray:*."""
    conf = _configmap("valkey-cluster.yaml", "valkey-cluster-config")["valkey.conf"]
    runtime = tmp_path / "runtime.conf"
    runtime.write_text(f"cluster-announce-hostname localhost\nmasterauth {passwords['replication']}\n")
    # The cluster bus defaults to port + 10000, which a random free port may not allow.
    server = _Server(conf, tmp_path, rendered_acl,
                     {"include": str(runtime), "cluster-port": str(free_port())})
    try:
        admin = valkey.Valkey(port=server.port, username="admin", password=passwords["admin"])
        assert admin.config_get("cluster-enabled")["cluster-enabled"] == "yes"
        admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in admin.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "cluster did not reach cluster_state:ok"
            time.sleep(0.1)
        url = f"valkey+cluster://127.0.0.1:{server.port}"
        check_server(_config(url, "rayspill"))
        client = _client(url, "rayspill")
        key = f"ray:acl-cluster-{uuid.uuid4().hex}"
        assert client.set(key, b"v") and client.get(key) == b"v" and client.unlink(key) == 1
        with pytest.raises(valkey.exceptions.NoPermissionError):
            client.get("emb:x")
        admin.close()
    finally:
        server.stop()


# -- the spill user on the shared test server --------------------------------------------------
def test_spill_user_can_use_its_keys(valkey_server, acl_users):
    client = _client(valkey_server.url, "rayspill")
    assert client.ping()
    key = f"ray:acl-{uuid.uuid4().hex}:0"
    assert client.set(key, b"x" * 1000)
    assert client.exists(key) == 1 and client.get(key) == b"x" * 1000
    assert key.encode() in scan_keys(client, key.rsplit(":", 1)[0] + ":*")
    assert client.unlink(key) == 1 and client.exists(key) == 0


def test_spill_user_passes_server_checks_without_config_permission(valkey_server, acl_users):
    config = _config(valkey_server.url, "rayspill")
    found = check_server(config)
    # CONFIG GET is @dangerous: refused, and the backend tolerates that; INFO memory is granted.
    assert found["proto_max_bulk_len"] is None
    policy = valkey_server.client().config_get("maxmemory-policy")["maxmemory-policy"]
    assert _client(valkey_server.url, "rayspill").info("memory")["maxmemory_policy"] == policy
    wrong = SpillConfig.from_params({"url": valkey_server.url, "username": "rayspill",
                                     "password_env": "RVS_ACL_TEST_WRONG_PASSWORD"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RVS_ACL_TEST_WRONG_PASSWORD", "not-the-password")
        with pytest.raises(BackendUnavailableError, match="refused our credentials"):
            check_server(wrong)


def test_spill_user_spills_and_restores_through_the_backend(valkey_server, acl_users):
    """The spill engine as the least-privilege ``rayspill`` user: spill, restore, delete, destroy."""
    from ray_valkey_spill.spill.engine import SpillObject
    from ray_valkey_spill.testing.harness import SpillHarness

    prefix = f"ray:acl{uuid.uuid4().hex[:8]}:"
    session, node = "session_acl", "node" + uuid.uuid4().hex[:8]
    harness = SpillHarness(valkey_server.url, prefix, session=session, node_id=node,
                           username="rayspill", password_env=PW_ENV + "RAYSPILL",
                           chunk_size_bytes=1 * MiB)
    payloads = [os.urandom(3 * MiB + 123), bytes(2 * MiB)]  # raw chunks, zstd chunks
    owners = [b"owner-a", b"owner-b"]
    urls = harness.engine.spill([SpillObject(secrets.token_hex(28), memoryview(data), b"meta", owner)
                                 for data, owner in zip(payloads, owners)])
    assert len(urls) == 2

    client = _client(valkey_server.url, "rayspill")
    keys = scan_keys(client, prefix + "*")
    assert len(keys) == (4 + 1) + (2 + 1)  # chunks + manifest per object
    assert all(k.startswith(prefix.encode()) for k in keys)

    for url, data, owner in zip(urls, payloads, owners):
        target = bytearray(len(data))
        reader = harness.restore_into(url, target)
        assert (bytes(target), reader.metadata, reader.owner_address) == (data, b"meta", owner)

    harness.delete(urls[:1])
    assert len(scan_keys(client, prefix + "*")) == 3
    harness.destroy()
    assert scan_keys(client, prefix + "*") == []


@pytest.mark.parametrize("use", [u for u in DEFAULT_PREFIXES if u != "ray"])
def test_spill_user_cannot_touch_other_uses_keys(valkey_server, acl_users, use):
    admin = valkey_server.client()
    key = f"{DEFAULT_PREFIXES[use]}acl-{uuid.uuid4().hex}"
    admin.set(key, b"cached", ex=60)
    client = _client(valkey_server.url, "rayspill")
    try:
        for attempt in (lambda: client.get(key), lambda: client.set(key, b"x"),
                        lambda: client.unlink(key), lambda: client.exists(key),
                        lambda: client.expire(key, 1)):
            with pytest.raises(valkey.exceptions.NoPermissionError):
                attempt()
        assert admin.get(key) == b"cached"
    finally:
        admin.unlink(key)
        admin.close()


def test_spill_user_cannot_run_dangerous_commands(valkey_server, acl_users):
    client = _client(valkey_server.url, "rayspill")
    for command in (("KEYS", "*"), ("INFO",), ("CONFIG", "GET", "maxmemory")):
        with pytest.raises(valkey.exceptions.NoPermissionError):
            client.execute_command(*command)
    # Destructive commands are only dry-run, so a broken ACL cannot harm the shared server.
    admin = valkey_server.client()
    try:
        for command in (("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "maxmemory-policy",
                        "allkeys-lru"), ("SHUTDOWN",), ("DEBUG", "SLEEP", "0"),
                        ("CLIENT", "KILL", "ID", "1"), ("MONITOR",), ("PUBLISH", "ch", "m"),
                        ("EVAL", "return 1", "0"), ("ACL", "SETUSER", "rayspill", "~*")):
            verdict = admin.execute_command("ACL", "DRYRUN", "rayspill", *command)
            assert verdict != b"OK" and b"no permissions" in verdict, command
        assert admin.execute_command("ACL", "DRYRUN", "rayspill", "GET", "ray:k") == b"OK"
    finally:
        admin.close()


# -- the cache users and the metrics user ---------------------------------------------------------
@pytest.mark.parametrize("use", sorted(CACHE_USERS))
def test_cache_user_is_confined_to_its_prefix(valkey_server, acl_users, use):
    user = CACHE_USERS[use]
    spilled = f"ray:acl-{uuid.uuid4().hex}:m"
    spill_client = _client(valkey_server.url, "rayspill")
    spill_client.set(spilled, b"spilled object")
    cache = _client(valkey_server.url, user)
    own = f"{DEFAULT_PREFIXES[use]}acl-{uuid.uuid4().hex}"
    try:
        assert cache.set(own, b"value", ex=60) and cache.get(own) == b"value"
        assert 0 < cache.ttl(own) <= 60
        for attempt in (lambda: cache.get(spilled), lambda: cache.set(spilled, b"x"),
                        lambda: cache.unlink(spilled), lambda: cache.exists(spilled)):
            with pytest.raises(valkey.exceptions.NoPermissionError):
                attempt()
        for other_use, other_prefix in DEFAULT_PREFIXES.items():
            if other_use not in (use, "ray"):
                with pytest.raises(valkey.exceptions.NoPermissionError):
                    cache.get(other_prefix + "x")
        assert spill_client.get(spilled) == b"spilled object"
    finally:
        spill_client.unlink(spilled)
        cache.unlink(own)


def test_each_cache_module_works_as_its_own_user(valkey_server, acl_users):
    """The cache modules themselves, not just GET and SET, under the deployed rules: the
    session store needs MULTI/EXEC and WATCH, which the session user lacked."""
    import numpy as np

    from ray_valkey_spill.caches import EmbeddingCache, KVCache, SessionStore

    tag = uuid.uuid4().hex
    emb = EmbeddingCache(_client(valkey_server.url, "embcache"), f"acl-{tag}", ttl_seconds=60)
    vector = np.arange(8, dtype=np.float32)
    assert emb.put_many(["text"], [vector]) == 1
    assert np.array_equal(emb.get_many(["text"])[0], vector)

    kv = KVCache(_client(valkey_server.url, "vllmkv"), f"acl-{tag}")
    tokens = np.arange(32, dtype=np.int32)
    block = np.ones((2, 16, 4), dtype=np.float16)
    assert kv.put(tokens, [block, block]) == 2 and kv.lookup(tokens) == 32

    store = SessionStore(_client(valkey_server.url, "session"), ttl_seconds=60)
    conversation = f"acl-{tag}"
    assert store.append(conversation, "hi", "there") == 2
    store.set_result(conversation, "r", {"k": 1})
    store.trim(conversation, 1)
    assert store.last(conversation, 5) == ["there"] and store.get_result(conversation, "r") == {"k": 1}
    assert store.delete(conversation) == 2


def test_metrics_user_reads_stats_but_no_keys(valkey_server, acl_users):
    client = _client(valkey_server.url, "metrics")
    assert "used_memory" in client.info("memory")
    assert "maxmemory_policy" in client.info("memory")
    for attempt in (lambda: client.get("ray:x"), lambda: client.set("emb:x", b"1"),
                    lambda: client.config_get("masterauth"),
                    lambda: client.config_set("maxmemory-policy", "allkeys-lru")):
        with pytest.raises(valkey.exceptions.NoPermissionError):
            attempt()


def test_replication_user_can_only_replicate(valkey_server, acl_users):
    admin = valkey_server.client()
    try:
        assert admin.execute_command("ACL", "DRYRUN", "replication", "PSYNC", "?", "-1") == b"OK"
        assert admin.execute_command("ACL", "DRYRUN", "replication", "GET", "ray:x") != b"OK"
        assert admin.execute_command("ACL", "DRYRUN", "replication", "INFO") != b"OK"
    finally:
        admin.close()


def test_passwords_stay_out_of_urls_and_config(valkey_server, acl_users, passwords):
    config = _config(valkey_server.url, "rayspill")
    assert passwords["rayspill"] not in repr(config) and passwords["rayspill"] not in config.url
    assert config.resolve_password() == passwords["rayspill"]
    assert passwords["rayspill"] not in json.dumps(config.to_params())
    assert config.to_params()["password_env"] == PW_ENV + "RAYSPILL"
