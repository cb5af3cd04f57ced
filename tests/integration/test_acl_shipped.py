"""The shipped ACL file, loaded into a real valkey-server, as every one of its users.

cluster_configs/base/valkey-users.acl is rendered by base/render-acl.sh (the init containers'
script) with random passwords and loaded, with the standalone overlay's valkey.conf, into a
dedicated valkey-server. Then every forbidden command is SENT (not dry-run: this server is
ours alone) as every user and must come back NOPERM; every user does its own job; one Ray
cluster's spill user can neither read nor delete another's keys, and gc runs per prefix; a real
replica replicates as user replication, which the standalone layout renders off.
"""

from __future__ import annotations

import secrets
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import valkey

from support import render_acl, shipped_acl_users
from ray_valkey_spill import EmbeddedValkey, SessionStore, connect
from ray_valkey_spill.caches import EmbeddingCache, KVCache
from ray_valkey_spill.config import SpillConfig
from ray_valkey_spill.testing.embedded import free_port
from ray_valkey_spill.server_checks import check_server

CONFIGS = Path(__file__).resolve().parents[2] / "cluster_configs"
ACL_FILE = CONFIGS / "base" / "valkey-users.acl"
RENDER_SCRIPT = CONFIGS / "base" / "render-acl.sh"
STANDALONE = CONFIGS / "overlays" / "standalone" / "valkey.yaml"
PW_ENV = "RVS_SHIPPED_ACL_PASSWORD_"

# A key of each data user's own prefix: a refusal below is about the command, not the key.
OWN_KEY = {"rayspill": "ray:t:k", "raysp-embed": "ray:embed:t:k", "raysp-batch": "ray:batch:t:k",
           "embcache": "emb:t:k", "vllmkv": "vllm:kv:t:k", "session": "session:t:k"}
DATA_USERS = sorted(OWN_KEY)
# Ray's GCS user: exact commands on RAY<namespace>@ keys (acl_rules.gcs_user_rule).
GCS_USER, GCS_KEY = "raygcs-embed", "RAYt@KV"
# What the GCS user may not do although the GCS's own keys are in its pattern, and every other
# tenant's keys with the very commands it may run.
GCS_REFUSED = [
    ("GET", GCS_KEY), ("SET", GCS_KEY, "x"), ("HGETALL", GCS_KEY), ("HKEYS", GCS_KEY),
    ("EXPIRE", GCS_KEY, "1"), ("UNLINK", GCS_KEY), ("RENAME", GCS_KEY, "RAYt@KV2"),
    ("DUMP", GCS_KEY), ("GET", "DUMMY"), ("HGET", "DUMMY", "f"), ("INFO", "memory"),
    ("CLUSTER", "SLOTS"), ("DBSIZE",), ("MULTI",),
    *[(cmd, key, *args) for key in ("ray:embed:t:k", "ray:t:k", "emb:t:k", "vllm:kv:t:k",
                                    "session:t:k")
      for cmd, *args in (("HGET", "f"), ("HSET", "f", "v"), ("DEL",), ("HSCAN", "0"),
                         ("INCRBY", "1"), ("HEXISTS", "f"))],
]
PLANTED_LIBRARY = ("#!lua name=planted\n"
                   "server.register_function('wipe', function() return server.call('FLUSHALL') end)")

# Refused to every user but admin. {k} is the user's own key (or ray:t:k), {u} the user.
ADMIN_ONLY = [
    ("FUNCTION", "LOAD", PLANTED_LIBRARY), ("FUNCTION", "DELETE", "planted"), ("FUNCTION", "FLUSH"),
    ("FUNCTION", "RESTORE", "x"), ("FCALL", "wipe", "0"), ("FCALL_RO", "wipe", "0"),
    ("EVAL", "return 1", "1", "{k}"), ("EVAL_RO", "return 1", "1", "{k}"),
    ("EVALSHA", "0" * 40, "1", "{k}"), ("EVALSHA_RO", "0" * 40, "1", "{k}"),
    ("SCRIPT", "LOAD", "return 1"), ("SCRIPT", "FLUSH"), ("SCRIPT", "KILL"),
    ("SWAPDB", "0", "1"), ("MOVE", "{k}", "1"), ("FLUSHALL",), ("FLUSHDB",),
    ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"), ("CONFIG", "REWRITE"),
    ("CONFIG", "RESETSTAT"), ("KEYS", "*"), ("DEBUG", "SLEEP", "0"), ("DEBUG", "OBJECT", "{k}"),
    ("MODULE", "LIST"), ("MODULE", "LOAD", "/nonexistent.so"), ("SHUTDOWN", "NOSAVE"),
    ("REPLICAOF", "127.0.0.1", "1"), ("SLAVEOF", "NO", "ONE"), ("FAILOVER",), ("SYNC",),
    ("MIGRATE", "127.0.0.1", "1", "{k}", "0", "1000"), ("RESTORE", "{k}", "0", "x"),
    ("SORT", "{k}"), ("SORT_RO", "{k}"), ("MONITOR",), ("CLIENT", "KILL", "ID", "1"),
    ("CLIENT", "LIST"), ("CLIENT", "PAUSE", "1"), ("CLIENT", "NO-EVICT", "on"),
    ("ACL", "SETUSER", "{u}", "~*", "+@all"), ("ACL", "LIST"), ("ACL", "GETUSER", "{u}"),
    ("ACL", "LOG"), ("ACL", "DELUSER", "admin"), ("BGSAVE",), ("SAVE",), ("BGREWRITEAOF",),
    ("PUBLISH", "ch", "m"), ("SUBSCRIBE", "ch"), ("CLUSTER", "RESET"),
    ("CLUSTER", "ADDSLOTS", "1"), ("LATENCY", "RESET"), ("SLOWLOG", "RESET"),
    ("MEMORY", "PURGE"), ("LASTSAVE",),
]
# What only admin and platform (the read-only operator user) may run.
OPERATOR_ONLY = [
    ("INFO",), ("INFO", "server"), ("SLOWLOG", "GET"), ("CONFIG", "GET", "maxmemory-policy"),
    ("CONFIG", "GET", "masterauth"), ("CONFIG", "GET", "requirepass"), ("CONFIG", "GET", "*"),
    ("SELECT", "0"), ("SELECT", "1"), ("COPY", "{k}", "{k}:copy", "DB", "1"),
    ("ACL", "DRYRUN", "rayspill", "GET", "ray:x"), ("CLUSTER", "NODES"), ("PSYNC", "?", "-1"),
]
NO_KEYS = [("GET", "ray:t:k"), ("SET", "emb:t:k", "1"), ("SCAN", "0"), ("DBSIZE",),
           ("MEMORY", "USAGE", "ray:t:k"), ("OBJECT", "IDLETIME", "ray:t:k"), ("UNLINK", "session:t:k")]
WRITES = [("SET", "ray:t:k", "1"), ("UNLINK", "emb:t:k"), ("EXPIRE", "ray:t:k", "1"),
          ("HSET", "session:t:k", "f", "v"), ("FUNCTION", "LOAD", PLANTED_LIBRARY)]

FORBIDDEN = {
    **{user: ADMIN_ONLY + OPERATOR_ONLY for user in DATA_USERS},
    "metrics": ADMIN_ONLY + [c for c in OPERATOR_ONLY if c[:1] not in (("INFO",), ("SLOWLOG",))]
    + NO_KEYS,
    "replication": ADMIN_ONLY + [c for c in OPERATOR_ONLY if c[0] != "PSYNC"] + NO_KEYS,
    "platform": ADMIN_ONLY + WRITES + [("PSYNC", "?", "-1")],
    GCS_USER: ADMIN_ONLY + OPERATOR_ONLY + GCS_REFUSED,
}


def _env_name(user: str) -> str:
    return PW_ENV + user.upper().replace("-", "_")


def _render(passwords: dict[str, str], output: Path, off_users: str = "") -> None:
    result = render_acl(output, passwords, off_users)
    assert result.returncode == 0, result.stderr


def _shipped_server(work: Path, aclfile: Path) -> EmbeddedValkey:
    """A server running the standalone overlay's valkey.conf, its paths and port made local."""
    import yaml

    with open(STANDALONE, encoding="utf-8") as f:
        (cm,) = [d for d in yaml.safe_load_all(f)
                 if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "valkey-config"]
    port = free_port()
    data = work / "data"
    data.mkdir()
    local = {"dir": str(data), "aclfile": str(aclfile), "port": str(port), "bind": "127.0.0.1"}
    lines = []
    for line in cm["data"]["valkey.conf"].splitlines():
        words = line.split()
        if words and words[0] in local:
            line = f"{words[0]} {local[words[0]]}"
        lines.append(line)
    conf = work / "manifest.conf"
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # DEBUG and MODULE are off in the server's defaults too; "local" here leaves the ACL as the
    # only thing between a user and them, so the refusals below are the ACL's.
    return EmbeddedValkey(port=port, data_dir=str(data), config={
        "include": str(conf), "enable-debug-command": "local", "enable-module-command": "local"})


@pytest.fixture(scope="module")
def passwords():
    pws = {u: secrets.token_urlsafe(24) for u in shipped_acl_users()}
    with pytest.MonkeyPatch.context() as mp:
        for user, pw in pws.items():
            mp.setenv(_env_name(user), pw)
        yield pws


@pytest.fixture(scope="module")
def server(tmp_path_factory, passwords):
    """A dedicated server with the shipped ACL (replication on, as in the cluster layout)."""
    work = tmp_path_factory.mktemp("shipped-acl")
    aclfile = work / "users.acl"
    _render(passwords, aclfile)
    srv = _shipped_server(work, aclfile)
    try:
        yield srv
    finally:
        srv.stop()


def _as(server, passwords, user: str, **kwargs) -> valkey.Valkey:
    return server.client(username=user, password=passwords[user], socket_timeout=10, **kwargs)


def _config(server, user: str, **options) -> SpillConfig:
    return SpillConfig.from_params({"url": server.url, "username": user,
                                    "password_env": _env_name(user), **options})


def test_default_user_is_refused(server):
    with pytest.raises(valkey.exceptions.AuthenticationError):
        server.client(socket_timeout=5).get("ray:x")


@pytest.mark.parametrize("user", sorted(FORBIDDEN))
def test_every_forbidden_command_is_refused_to_every_user(server, passwords, user):
    client = _as(server, passwords, user)
    key = {**OWN_KEY, GCS_USER: GCS_KEY}.get(user, "ray:t:k")
    refused, ran = 0, []
    for command in FORBIDDEN[user]:
        args = [a.format(k=key, u=user) for a in command]
        try:
            client.execute_command(*args)
        except valkey.exceptions.NoPermissionError:
            refused += 1
        except valkey.exceptions.ResponseError as exc:
            ran.append(f"{' '.join(args)[:60]} -> {exc}")
        else:
            ran.append(f"{' '.join(args)[:60]} -> ran")
    assert not ran, f"{user} was not refused (NOPERM) for: {ran}"
    assert refused == len(FORBIDDEN[user])
    admin = _as(server, passwords, "admin")
    assert admin.execute_command("FUNCTION", "LIST") == [], "a library was planted"
    assert admin.ping()


@pytest.mark.parametrize("user", DATA_USERS)
def test_each_data_user_works_on_its_own_prefix(server, passwords, user):
    client = _as(server, passwords, user)
    key = f"{OWN_KEY[user]}:{uuid.uuid4().hex}"
    assert client.set(key, b"v", ex=60) and client.get(key) == b"v"
    assert 0 < client.ttl(key) <= 60 and client.exists(key) == 1
    assert client.object("idletime", key) is not None and client.memory_usage(key) > 0
    assert key.encode() in client.scan(0, match=key, count=1000)[1] or client.exists(key)
    assert client.unlink(key) == 1
    # INFO memory is granted explicitly: the eviction-policy check can run as this user.
    assert client.info("memory")["maxmemory_policy"] == "volatile-lru"


@pytest.mark.parametrize("user", ["rayspill", "raysp-embed", "raysp-batch"])
def test_spill_users_pass_the_start_up_check(server, passwords, user):
    prefix = OWN_KEY[user].rsplit("t:k", 1)[0]
    check_server(_config(server, user, prefix=prefix))


def test_cache_modules_work_as_their_users(server, passwords):
    import numpy as np

    tag = uuid.uuid4().hex
    emb = EmbeddingCache(connect(_config(server, "embcache")), f"shipped-{tag}", ttl_seconds=60)
    vector = np.arange(8, dtype=np.float32)
    assert emb.put_many(["text"], [vector]) == 1
    assert np.array_equal(emb.get_many(["text"])[0], vector)
    kv = KVCache(connect(_config(server, "vllmkv")), f"shipped-{tag}")
    tokens = np.arange(32, dtype=np.int32)
    block = np.ones((2, 16, 4), dtype=np.float16)
    assert kv.put(tokens, [block, block]) == 2 and kv.lookup(tokens) == 32
    store = SessionStore(connect(_config(server, "session")), ttl_seconds=60)
    assert store.append(f"shipped-{tag}", "hi", "there") == 2  # MULTI/EXEC
    assert store.last(f"shipped-{tag}", 5) == ["hi", "there"]


def test_gcs_user_runs_what_rays_gcs_and_kuberays_cleanup_send(server, passwords):
    """Ray 2.60's GCS: INFO CLUSTER, INFO SENTINEL and DEL DUMMY on connect, then hash tables
    and the job counter; KubeRay's cleanup: SCAN MATCH RAY<ns>@* and DEL."""
    client = _as(server, passwords, GCS_USER)
    ns = f"RAY{uuid.uuid4().hex}@"
    assert client.execute_command("INFO", "CLUSTER")["cluster_enabled"] == 0
    client.execute_command("INFO", "SENTINEL")
    assert client.execute_command("DEL", "DUMMY") == 0 and client.ping()
    table, counter = ns + "ACTOR", ns + "JobCounter"
    assert client.hset(table, "a1", b"spec") == 1 and client.hsetnx(table, "a1", b"x") == 0
    assert client.hget(table, "a1") == b"spec" and client.hmget(table, ["a1", "zz"]) == [b"spec", None]
    assert client.hexists(table, "a1") and client.hscan(table, 0)[1] == {b"a1": b"spec"}
    assert client.incrby(counter, 1) == 1 and client.hdel(table, "a1") == 1
    client.hset(table, "a2", b"spec")
    found = client.scan(0, match=ns + "*", count=1000)[1]
    assert sorted(found) == sorted(k.encode() for k in (table, counter))
    assert client.delete(*found) == 2
    assert _as(server, passwords, "admin").exists(table, counter, "DUMMY") == 0


def test_metrics_user_runs_what_the_exporter_sends(server, passwords):
    """redis_exporter v1.88 with REDIS_EXPORTER_CONFIG_COMMAND=- sends these and no CONFIG."""
    client = _as(server, passwords, "metrics")
    assert client.ping() and client.client_setname("redis_exporter")
    info = client.info("all")
    assert info["maxmemory"] == 12 * 2**30 and info["maxmemory_policy"] == "volatile-lru"
    assert "evicted_keys" in info and info["aof_last_write_status"] == "ok"
    client.execute_command("SLOWLOG", "LEN")
    client.execute_command("SLOWLOG", "GET", "10")
    client.execute_command("LATENCY", "LATEST")
    client.execute_command("LATENCY", "HISTOGRAM")
    client.execute_command("COMMANDLOG", "LEN", "slow")
    admin = _as(server, passwords, "admin")
    assert admin.execute_command("ACL", "DRYRUN", "metrics", "CLUSTER", "INFO") == b"OK"


def test_platform_user_reads_everything_and_writes_nothing(server, passwords):
    admin = _as(server, passwords, "admin")
    admin.set("emb:platform:k", b"cached", ex=60)
    client = _as(server, passwords, "platform")
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "volatile-lru"}
    verdict = client.execute_command("ACL", "DRYRUN", "rayspill", "FLUSHALL")
    assert b"no permissions" in verdict
    assert client.get("emb:platform:k") == b"cached" and client.pttl("emb:platform:k") > 0
    assert client.memory_usage("emb:platform:k") > 0 and "used_memory" in client.info()
    assert b"emb:platform:k" in client.scan(0, match="emb:platform:*", count=1000)[1]
    # `ray-valkey-spill stats` needs no admin: the platform user runs all of it.
    from ray_valkey_spill.tools.stats import collect

    report = collect(client)
    assert report["dbsize"] >= 1 and report["scanned_keys"] >= 1
    with pytest.raises(valkey.exceptions.NoPermissionError):
        client.set("emb:platform:k", b"overwritten")
    assert admin.get("emb:platform:k") == b"cached"
    admin.unlink("emb:platform:k")


def test_one_clusters_spill_user_cannot_touch_anothers_keys(server, passwords):
    admin = _as(server, passwords, "admin")
    embed_key, batch_key = "ray:embed:s1:n1:obj.ab:m", "ray:batch:s1:n1:obj.ab:m"
    admin.set(embed_key, b"embed object")
    admin.set(batch_key, b"batch object")
    for user, own, other in (("raysp-embed", embed_key, batch_key),
                             ("raysp-batch", batch_key, embed_key)):
        client = _as(server, passwords, user)
        assert client.get(own)
        for method, *args in (("get", other), ("set", other, b"x"), ("unlink", other),
                              ("delete", other), ("exists", other), ("expire", other, 1),
                              ("rename", other, own + ":stolen"), ("copy", other, own + ":copy"),
                              ("dump", other), ("memory_usage", other),
                              ("object", "idletime", other)):
            with pytest.raises(valkey.exceptions.NoPermissionError):
                getattr(client, method)(*args)
    assert admin.get(embed_key) == b"embed object" and admin.get(batch_key) == b"batch object"
    # rayspill (ray:*) spans every cluster: it is for a Valkey used by ONE Ray cluster.
    assert _as(server, passwords, "rayspill").get(embed_key) == b"embed object"
    admin.unlink(embed_key, batch_key)


def _gc(server, user: str, prefix: str) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "ray_valkey_spill.cli", "gc", "--url", server.url,
         "--prefix", prefix, "--username", user, "--password-env", _env_name(user),
         "--grace-s", "0", "--orphan-grace-s", "0", "--allow-short-grace", "--yes", "--quiet"],
        capture_output=True, text=True, timeout=120)


def test_gc_runs_per_prefix_as_the_clusters_own_user(server, passwords):
    admin = _as(server, passwords, "admin")
    old = str(time.time() - 7200)
    keys = {}
    for cluster in ("embed", "batch"):
        base = f"ray:{cluster}:session_gone:node1:"
        keys[cluster] = [base + "hb", base + "obj1.ab:0", base + "obj1.ab:m"]
        admin.set(keys[cluster][0], old)
        admin.set(keys[cluster][1], b"chunk")
        admin.set(keys[cluster][2], b"manifest")
    time.sleep(1.1)  # OBJECT IDLETIME counts whole seconds
    result = _gc(server, "raysp-batch", "ray:batch:")
    assert result.returncode == 0, result.stdout + result.stderr
    assert admin.exists(*keys["batch"]) == 0, "gc kept a gone session of its own prefix"
    assert admin.exists(*keys["embed"]) == 3
    # Another cluster's prefix: refused, nothing deleted, no password in the output.
    result = _gc(server, "raysp-batch", "ray:embed:")
    assert result.returncode != 0
    assert admin.exists(*keys["embed"]) == 3
    assert passwords["raysp-batch"] not in result.stdout + result.stderr
    admin.unlink(*keys["embed"])


def test_replica_replicates_as_user_replication(server, passwords, tmp_path):
    """The replication user's three commands are enough for a real replica (cluster layout)."""
    admin = _as(server, passwords, "admin")
    admin.set("session:replicated", b"yes", ex=600)
    replica = EmbeddedValkey(data_dir=str(tmp_path), config={
        "replicaof": f"127.0.0.1 {server.port}", "masteruser": "replication",
        "masterauth": passwords["replication"]})
    try:
        client = replica.client()
        deadline = time.monotonic() + 20
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never synced as user replication"
            time.sleep(0.1)
        assert client.get("session:replicated") == b"yes"
    finally:
        replica.stop()
        admin.unlink("session:replicated")


def test_standalone_layout_renders_replication_and_rayspill_off(tmp_path, passwords):
    """No replicas in the standalone layout, and one user per Ray cluster: nobody can log in
    as the PSYNC user or as rayspill (ray:*, every cluster's objects) there."""
    aclfile = tmp_path / "users.acl"
    off = ["replication", "rayspill"]
    _render({u: p for u, p in passwords.items() if u not in off}, aclfile, off_users=" ".join(off))
    srv = _shipped_server(tmp_path, aclfile)
    try:
        for user in off:
            with pytest.raises(valkey.exceptions.AuthenticationError):
                srv.client(username=user, password=passwords[user]).ping()
        assert srv.client(username="raysp-embed", password=passwords["raysp-embed"]).ping()
    finally:
        srv.stop()


def test_config_get_cannot_be_granted_per_parameter(server, passwords):
    """Why metrics gets no CONFIG at all: Valkey refuses a rule for CONFIG GET of one
    parameter, so granting config|get would also grant masterauth and requirepass. A first
    argument rule for a command without subcommands (INFO memory) is accepted."""
    admin = _as(server, passwords, "admin")
    with pytest.raises(valkey.exceptions.ResponseError, match="first-arg of a subcommand"):
        admin.execute_command("ACL", "SETUSER", "probe-config", "+config|get|maxmemory")
    try:
        assert admin.execute_command("ACL", "SETUSER", "probe-config", "+info|memory") == b"OK"
    finally:
        admin.execute_command("ACL", "DELUSER", "probe-config")
