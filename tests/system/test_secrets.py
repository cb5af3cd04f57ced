"""Secrets: the password reaches IO workers through the environment (or a file), never
through the spilling config, which Ray puts on every IO worker's command line and in the GCS.

The embedded server starts without a password (its readiness check is a plain PING); the test
then locks it: an ACL user limited to the spill prefix, and a password on the default user.
"""

from __future__ import annotations

import base64
import binascii
import glob
import os
import re
import uuid

import pytest

from conftest import MiB, spill_and_restore
from ray_valkey_spill import EmbeddedValkey, spilling_config
from ray_valkey_spill.config import SpillConfig, parse_spilling_config
from ray_valkey_spill.connection import close_all, connect
from ray_valkey_spill.errors import BackendUnavailableError, ConfigError
from ray_valkey_spill.keyspace import scan_keys
from ray_valkey_spill.server_checks import check_server

ENV_NAME = "RVS_TEST_SPILL_PASSWORD"


@pytest.fixture(scope="module")
def locked_server():
    """(server, admin client, spill user, spill password, spill prefix)."""
    spill_password = "spillpw-" + uuid.uuid4().hex
    admin_password = "adminpw-" + uuid.uuid4().hex
    prefix = f"ray:sec{uuid.uuid4().hex[:8]}:"
    with EmbeddedValkey() as server:
        admin = server.client()
        admin.execute_command(
            "ACL", "SETUSER", "rayspill", "reset", "on", f">{spill_password}", f"~{prefix}*",
            "+@read", "+@write", "+@keyspace", "+@connection", "-@dangerous", "+config|get")
        admin.config_set("requirepass", admin_password)  # the default user needs it now
        admin.close()
        admin = server.client(password=admin_password)
        yield server, admin, "rayspill", spill_password, prefix
        admin.close()
    close_all()


@pytest.fixture(autouse=True)
def fresh_clients():
    close_all()
    yield
    close_all()


def _all_cmdlines() -> dict[int, list[str]]:
    out = {}
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError:
            continue  # the process exited meanwhile
        out[int(path.split("/")[2])] = raw.decode(errors="replace").split("\0")
    return out


def _decoded_variants(arg: str):
    """The argument, and any base64 payload in it decoded (Ray base64-encodes configs)."""
    yield arg
    for candidate in re.findall(r"[A-Za-z0-9+/=_-]{16,}", arg):
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                yield decode(candidate + "=" * (-len(candidate) % 4)).decode(errors="replace")
            except (binascii.Error, ValueError):
                pass


def _files_containing(root: str, needle: bytes) -> list[str]:
    hits = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(path)
            except OSError:
                pass
    return hits


def test_ray_spills_with_password_env_and_leaks_it_nowhere(locked_server, monkeypatch):
    import ray

    server, admin, user, password, prefix = locked_server
    monkeypatch.setenv(ENV_NAME, password)  # the raylet and its IO workers inherit it
    config_json = spilling_config(server.url, prefix=prefix, username=user,
                                  password_env=ENV_NAME, chunk_size_bytes=1 * MiB)
    assert password not in config_json
    ray.init(address="local", num_cpus=1, object_store_memory=100 * MiB,
             include_dashboard=False,
             _system_config={"object_spilling_config": config_json, "min_spilling_size": 0})
    try:
        logs_dir = ray._private.worker._global_node.get_logs_dir_path()
        session_dir = ray._private.worker._global_node.get_session_dir_path()
        spill_and_restore(ray, admin, prefix, "with the ACL user", seed=5)

        # While Ray (and its spill/restore workers) run: no command line shows the password.
        cmdlines = _all_cmdlines()
        assert any("default_worker.py" in " ".join(c) for c in cmdlines.values())
        leaks = [(pid, " ".join(c)[:200]) for pid, c in cmdlines.items()
                 if any(password in v for arg in c for v in _decoded_variants(arg))]
        assert not leaks, f"password on a command line: {leaks}"
        # The config Ray carries (command lines, GCS) names only the variable.
        spill_workers = [c for c in cmdlines.values()
                         if any("default_worker.py" in a for a in c)
                         and any(ENV_NAME in v for a in c for v in _decoded_variants(a))]
        assert spill_workers, "IO workers should carry password_env (the NAME) in their config"
    finally:
        ray.shutdown()
    # No log file of the run, nor anything else in the session dir, holds the password.
    assert not _files_containing(logs_dir, password.encode()), "password in Ray's logs"
    assert not _files_containing(session_dir, password.encode())
    with open(server.logfile, "rb") as f:
        assert password.encode() not in f.read()
    for k in scan_keys(admin, prefix + "*"):
        admin.unlink(k)


def test_password_file_works_and_wrong_password_is_a_clean_error(locked_server, tmp_path):
    server, admin, user, password, prefix = locked_server
    secret = tmp_path / "password"
    secret.write_text(password + "\n")  # a trailing newline (as editors and Secrets add)
    config = SpillConfig.from_params({"url": server.url, "username": user,
                                      "password_file": str(secret), "prefix": prefix})
    check_server(config)
    client = connect(config)
    client.set(prefix + "k", b"v")
    assert client.get(prefix + "k") == b"v"
    client.unlink(prefix + "k")

    close_all()
    secret.write_text("not-the-password")
    with pytest.raises(BackendUnavailableError) as info:
        check_server(config)
    assert "not-the-password" not in str(info.value)
    assert user in str(info.value)


def test_acl_user_cannot_touch_other_tenants(locked_server, monkeypatch):
    import valkey

    server, admin, user, password, prefix = locked_server
    admin.set("emb:secret-embedding", b"e")
    monkeypatch.setenv(ENV_NAME, password)
    client = connect(SpillConfig.from_params({"url": server.url, "username": user,
                                              "password_env": ENV_NAME, "prefix": prefix}))
    for command in (("GET", "emb:secret-embedding"), ("UNLINK", "emb:secret-embedding"),
                    ("SET", "session:x", "1"), ("GET", "vllm:kv:x"), ("FLUSHALL",)):
        with pytest.raises(valkey.exceptions.ResponseError, match="(?i)NOPERM|no permissions"):
            client.execute_command(*command)
    assert admin.get("emb:secret-embedding") == b"e"
    admin.unlink("emb:secret-embedding")


def test_missing_env_variable_names_the_variable_not_a_value(locked_server, monkeypatch):
    server, *_ = locked_server
    monkeypatch.delenv("RVS_TEST_UNSET_VARIABLE", raising=False)
    config = SpillConfig.from_params({"url": server.url, "password_env": "RVS_TEST_UNSET_VARIABLE"})
    with pytest.raises(ConfigError, match="RVS_TEST_UNSET_VARIABLE"):
        config.resolve_password()


@pytest.mark.parametrize("url", [
    "valkey://rayspill:hunter2secret@127.0.0.1:6379/0",
    "valkey://:hunter2secret@127.0.0.1:6379/0",
    "rediss://rayspill:hunter2secret@valkey.example:6380/0",
    "valkey://127.0.0.1:6379/0?password=hunter2secret",
])
def test_url_with_password_is_refused_pointing_to_password_env(url):
    for attempt in (lambda: spilling_config(url),
                    lambda: parse_spilling_config({"type": "valkey", "params": {"url": url}}),
                    lambda: SpillConfig.from_params({"url": url})):
        with pytest.raises(ConfigError) as info:
            attempt()
        message = str(info.value)
        assert "password_env" in message and "password_file" in message
        assert "hunter2secret" not in message, "the refusal echoes the password"


def test_url_with_password_is_refused_by_ray_init():
    """The head's validation refuses it before any process gets the config."""
    import ray

    config = '{"type": "valkey", "params": {"url": "valkey://u:hunter2secret@127.0.0.1:1/0"}}'
    with pytest.raises(Exception) as info:
        ray.init(address="local", num_cpus=1, object_store_memory=80 * MiB,
                 include_dashboard=False,
                 _system_config={"object_spilling_config": config})
    try:
        assert "password_env" in str(info.value)
        assert "hunter2secret" not in str(info.value)
    finally:
        if ray.is_initialized():
            ray.shutdown()


# -- doctor: permissions and settings, as an operator would run it before a cluster ---------
def _doctor(argv, capsys):
    import json

    from ray_valkey_spill.cli import main as cli_main

    capsys.readouterr()
    rc = cli_main(["doctor", "--json", "--pings", "5", *argv])
    report = json.loads(capsys.readouterr().out)
    return rc, {c["check"]: c for c in report["checks"]}


def test_doctor_least_privilege_user_passes_the_acl_check(locked_server, monkeypatch, capsys):
    server, admin, user, password, prefix = locked_server
    monkeypatch.setenv(ENV_NAME, password)
    rc, checks = _doctor(["--url", server.url, "--prefix", prefix, "--username", user,
                          "--password-env", ENV_NAME], capsys)
    assert checks["acl"]["status"] == "OK", checks["acl"]
    assert "live probes" in checks["acl"]["detail"]  # this user may not run ACL DRYRUN
    assert checks["authentication"]["status"] == "OK"
    assert rc == 0, checks
    assert not scan_keys(admin, prefix + "__doctor__*"), "doctor left its probe key behind"
    # the admin (default user) passes what spilling needs but reaches other tenants' keys
    monkeypatch.setenv("RVS_TEST_ADMIN_PASSWORD", admin.connection_pool.connection_kwargs[
        "password"])
    rc, checks = _doctor(["--url", server.url, "--prefix", prefix,
                          "--password-env", "RVS_TEST_ADMIN_PASSWORD"], capsys)
    assert checks["acl"]["status"] == "WARN" and "emb:" in checks["acl"]["detail"]
    assert "ACL DRYRUN" in checks["acl"]["detail"]
    assert "ACL SETUSER" in checks["acl"]["action"]


def test_doctor_reads_settings_as_admin_when_the_spill_user_may_not(locked_server, monkeypatch,
                                                                    capsys):
    server, admin, _, _, prefix = locked_server
    password = "noconfig-" + uuid.uuid4().hex
    admin.execute_command("ACL", "SETUSER", "noconfig", "reset", "on", f">{password}",
                          f"~{prefix}*", "+@read", "+@write", "+@keyspace", "+@connection",
                          "-@dangerous")
    monkeypatch.setenv("RVS_TEST_NOCONFIG_PASSWORD", password)
    monkeypatch.setenv("RVS_TEST_ADMIN_PASSWORD",
                       admin.connection_pool.connection_kwargs["password"])
    spill_user = ["--url", server.url, "--prefix", prefix, "--username", "noconfig",
                  "--password-env", "RVS_TEST_NOCONFIG_PASSWORD"]
    _, checks = _doctor(spill_user, capsys)
    assert checks["maxmemory"]["status"] == "WARN"
    assert "no permission to run CONFIG GET" in checks["maxmemory"]["detail"]
    _, checks = _doctor(spill_user + ["--admin-password-env", "RVS_TEST_ADMIN_PASSWORD"], capsys)
    assert checks["admin"]["status"] == "OK" and "default" in checks["admin"]["detail"]
    assert checks["maxmemory-policy"]["status"] == "OK"
    assert "volatile-lru" in checks["maxmemory-policy"]["detail"]
    assert checks["acl"]["status"] == "OK", checks["acl"]  # permissions: still the spill user
    _, checks = _doctor(spill_user + ["--admin-password-env", "RVS_TEST_NOCONFIG_PASSWORD"],
                        capsys)
    assert checks["admin"]["status"] == "WARN"  # wrong admin password: said, not fatal


def test_doctor_errors_on_missing_permissions(locked_server, monkeypatch, capsys):
    server, admin, _, _, prefix = locked_server
    weak_password = "weakpw-" + uuid.uuid4().hex
    admin.execute_command("ACL", "SETUSER", "weak", "reset", "on", f">{weak_password}",
                          f"~{prefix}*", "+get", "+ping")
    monkeypatch.setenv("RVS_TEST_WEAK_PASSWORD", weak_password)
    rc, checks = _doctor(["--url", server.url, "--prefix", prefix, "--username", "weak",
                          "--password-env", "RVS_TEST_WEAK_PASSWORD"], capsys)
    assert rc == 1
    assert checks["acl"]["status"] == "ERROR" and "SET" in checks["acl"]["detail"]
    rc, checks = _doctor(["--url", server.url, "--username", "weak",
                          "--password-env", "RVS_TEST_UNSET_VARIABLE"], capsys)
    assert rc == 2 or checks["reachable"]["status"] == "ERROR"


def test_doctor_flags_unsafe_server_settings(capsys):
    with EmbeddedValkey(config={"maxmemory-policy": "allkeys-lru",
                                "proto-max-bulk-len": "1mb"}) as server:
        rc, checks = _doctor(["--url", server.url, "--chunk-size-bytes", str(2 * MiB)], capsys)
        assert rc == 1
        assert checks["maxmemory-policy"]["status"] == "ERROR"
        assert "volatile-lru" in checks["maxmemory-policy"]["action"]
        assert checks["proto-max-bulk-len"]["status"] == "ERROR"
        assert checks["maxmemory"]["status"] == "WARN"  # maxmemory 0
        assert checks["persistence"]["status"] == "WARN"  # no AOF, no RDB
        assert checks["authentication"]["status"] == "WARN"  # no password at all
        assert checks["tls"]["status"] == "OK"  # plaintext, but loopback
    with EmbeddedValkey(config={"maxmemory": "100mb", "appendonly": "yes"}) as server:
        rc, checks = _doctor(["--url", server.url], capsys)
        assert checks["maxmemory-policy"]["status"] == "OK"
        assert checks["maxmemory"]["status"] == "OK"
        assert checks["persistence"]["status"] == "OK"
        assert checks["latency"]["status"] == "OK" and "p50" in checks["latency"]["detail"]
        # Settings give warnings only (no password, other tenants reachable); the one ERROR is
        # the embedded server's all-powerful default user (FLUSHALL, SELECT, FUNCTION ...).
        errors = [name for name, c in checks.items() if c["status"] == "ERROR"]
        assert rc == 1 and errors == ["acl-dangerous"], errors
    # plaintext to a non-loopback host is a warning even before anything answers
    from ray_valkey_spill.testing.embedded import free_port

    rc, checks = _doctor(["--url", f"valkey://192.0.2.123:{free_port()}/0",
                          "--connect-timeout-s", "0.3"], capsys)
    assert rc == 1 and checks["tls"]["status"] == "WARN"
    assert checks["reachable"]["status"] == "ERROR"
