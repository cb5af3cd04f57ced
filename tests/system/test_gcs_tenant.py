"""Ray's GCS fault tolerance as a tenant of the shared Valkey, with a real Ray and a real server.

One `ray start --head` whose GCS stores its tables in a valkey-server loaded with the SHIPPED
ACL (cluster_configs/base/valkey-users.acl, rendered by render-acl.sh), as user raygcs-embed,
the way KubeRay starts it (RAY_REDIS_ADDRESS, RAY_external_storage_namespace, REDIS_PASSWORD
expanded into --redis-password); the same Ray spills to the same server as its own user
raysp-embed. Then: no NOPERM in the ACL LOG; a detached actor keeps its state across a kill
and a restart of gcs_server; KubeRay's cleanup (Ray's cleanup_redis_storage, as the GCS user)
removes that namespace only; the GCS user cannot read the other tenants' keys; the password
is on no command line but those of Ray's head processes and in no file of the session; and
`ray-valkey-spill doctor` reports this GCS's real tables and finds its user right.
"""

from __future__ import annotations

import inspect
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import valkey

from conftest import MiB, wait_for
from support import render_acl, shipped_acl_users
from ray_valkey_spill import EmbeddedValkey, spilling_config
from ray_valkey_spill.keyspace import scan_keys
from ray_valkey_spill.prefixes import gcs_prefix

GCS_USER, SPILL_USER, SPILL_PREFIX = "raygcs-embed", "raysp-embed", "ray:embed:"
ACTOR_NAMESPACE = "gcs-tenant-test"

DRIVER = """
import sys, numpy as np, ray
ray.init(address=sys.argv[1], namespace=sys.argv[2])
if sys.argv[3] == "create":
    @ray.remote(num_cpus=0)
    class Counter:
        def __init__(self):
            self.n = 0
        def incr(self):
            self.n += 1
            return self.n
        def pid(self):
            import os
            return os.getpid()
    c = Counter.options(name="counter", lifetime="detached").remote()
    for _ in range(5):
        ray.get(c.incr.remote())
    refs = [ray.put(np.full(10 * 2**20 // 8, i, dtype=np.int64)) for i in range(20)]
    assert [int(ray.get(r)[0]) for r in refs] == list(range(20))
    # Counted while the refs live (the objects are deleted from Valkey when the driver exits).
    import os, valkey
    if "VALKEY_SPILL_PASSWORD" in os.environ:  # this Ray spills to Valkey
        spill = valkey.Valkey(port=int(sys.argv[4]), username="raysp-embed",
                              password=os.environ["VALKEY_SPILL_PASSWORD"])
        print("SPILLED", sum(not k.endswith(b":hb") for k in spill.scan_iter("ray:embed:*")))
    print("PID", ray.get(c.pid.remote()))
else:
    c = ray.get_actor("counter")
    print("PID", ray.get(c.pid.remote()), "N", ray.get(c.incr.remote()))
"""


def _needs_redis_username():
    from ray._private import gcs_utils

    if "username" not in inspect.signature(gcs_utils.cleanup_redis_storage).parameters:
        pytest.skip("this Ray has no redis-username (Ray >= 2.41 passes the GCS's ACL user)")


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory):
    """A valkey-server with the shipped ACL; yields (server, passwords, admin client)."""
    work = tmp_path_factory.mktemp("gcs-tenant")
    passwords = {u: "vk-" + secrets.token_hex(16) for u in shipped_acl_users()}
    aclfile = work / "users.acl"
    rendered = render_acl(aclfile, passwords)
    assert rendered.returncode == 0, rendered.stderr
    with EmbeddedValkey(config={"aclfile": str(aclfile)}) as server:
        admin = server.client(username="admin", password=passwords["admin"])
        admin.execute_command("ACL", "LOG", "RESET")
        yield server, passwords, admin


def _refusals(admin) -> list[tuple[str, str, str, int]]:
    """(user, reason, command or key, count) of every ACL LOG entry."""
    out = []
    for entry in admin.execute_command("ACL", "LOG"):
        e = dict(zip(entry[::2], entry[1::2]))
        out.append((e[b"username"].decode(), e[b"reason"].decode(), e[b"object"].decode(),
                    e[b"count"]))
    return out


def _pids_of(path: str) -> dict[int, bytes]:
    """{pid: command line} of every process whose command line names ``path``."""
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if path.encode() in cmdline:
                out[int(pid)] = cmdline
    return out


def _kill_all(path: str) -> None:
    for pid in _pids_of(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def gcs_head(shipped_server):
    """`ray start --head` with GCS fault tolerance on the shipped server; yields a dict."""
    _needs_redis_username()
    server, passwords, admin = shipped_server
    tmp = tempfile.mkdtemp(prefix="rvsgcs", dir="/tmp")  # socket paths must stay short
    namespace = f"t{uuid.uuid4().hex[:12]}"
    port = server.url.rsplit(":", 1)[1].split("/")[0]
    spill = spilling_config(server.url, username=SPILL_USER, prefix=SPILL_PREFIX,
                            password_env="VALKEY_SPILL_PASSWORD", chunk_size_bytes=MiB)
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "disabled",
           "RAY_REDIS_ADDRESS": f"127.0.0.1:{port}", "RAY_external_storage_namespace": namespace,
           "REDIS_PASSWORD": passwords[GCS_USER], "REDIS_USERNAME": GCS_USER,
           "VALKEY_SPILL_PASSWORD": passwords[SPILL_USER], "RAY_object_spilling_config": spill}
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    gcs_port = str(_free_port())
    # What KubeRay runs: rayStartParams redis-password: $REDIS_PASSWORD, expanded by the shell.
    script = (f'exec "{ray_bin}" start --head --port={gcs_port} --num-cpus=1 '
              f'--include-dashboard=false --disable-usage-stats --temp-dir={tmp} '
              f'--object-store-memory={100 * MiB} --system-config=\'{{"min_spilling_size": 0}}\' '
              '--redis-username="$REDIS_USERNAME" --redis-password="$REDIS_PASSWORD"')
    started = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True,
                             timeout=120)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        yield {"server": server, "passwords": passwords, "admin": admin, "env": env,
               "tmp": tmp, "namespace": namespace, "address": f"127.0.0.1:{gcs_port}"}
    finally:
        _kill_all(tmp)


def _free_port() -> int:
    from ray_valkey_spill.testing.embedded import free_port

    return free_port()


def _driver(head, mode: str) -> dict[str, int]:
    port = head["server"].url.rsplit(":", 1)[1].split("/")[0]
    run = subprocess.run([sys.executable, "-c", DRIVER, head["address"], ACTOR_NAMESPACE, mode,
                          port],
                         env=head["env"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    words = run.stdout.split()
    return {words[i]: int(words[i + 1]) for i in range(len(words) - 1) if words[i] in ("PID", "N", "SPILLED")}


def _gcs_server_pid(tmp: str) -> int:
    (pid,) = [p for p, cmd in _pids_of(tmp).items() if b"gcs_server\0" in cmd.split(b"--")[0]]
    return pid


def _restart_like(pid: int, tmp: str) -> subprocess.Popen:
    """Kill gcs_server and start it again with the same command line and environment (what a
    restarted head does; KubeRay restarts the whole head pod)."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    environ = dict(e.split(b"=", 1) for e in
                   Path(f"/proc/{pid}/environ").read_bytes().rstrip(b"\0").split(b"\0") if b"=" in e)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists() or
                    "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], timeout_s=10)
    log = open(os.path.join(tmp, "gcs_restarted.log"), "wb")  # noqa: SIM115 - lives with it
    return subprocess.Popen(cmdline, env=environ, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _doctor_rows(head, monkeypatch, capsys) -> dict[str, list[dict]]:
    """`ray-valkey-spill doctor` as the spill user, with the admin and the GCS user."""
    from ray_valkey_spill.tools import doctor

    for user, env in ((SPILL_USER, "RVS_T_SPILL_PW"), (GCS_USER, "RVS_T_GCS_PW"),
                      ("admin", "RVS_T_ADMIN_PW")):
        monkeypatch.setenv(env, head["passwords"][user])
    capsys.readouterr()
    doctor.main(["--url", head["server"].url, "--json", "--pings", "1", "--prefix", SPILL_PREFIX,
                 "--username", SPILL_USER, "--password-env", "RVS_T_SPILL_PW",
                 "--admin-username", "admin", "--admin-password-env", "RVS_T_ADMIN_PW",
                 "--gcs-username", GCS_USER, "--gcs-password-env", "RVS_T_GCS_PW"])
    rows: dict[str, list[dict]] = {}
    for row in json.loads(capsys.readouterr().out)["checks"]:
        rows.setdefault(row["check"], []).append(row)
    return rows


def test_gcs_as_its_acl_user_survives_a_gcs_restart_next_to_spilling(gcs_head, monkeypatch,
                                                                     capsys):
    admin, namespace, tmp = gcs_head["admin"], gcs_head["namespace"], gcs_head["tmp"]
    prefix = gcs_prefix(namespace)
    first = _driver(gcs_head, "create")
    tables = {k.decode() for k in scan_keys(admin, prefix + "*")}
    assert {prefix + "ACTOR", prefix + "JobCounter", prefix + "NODE", prefix + "KV"} <= tables
    # GCS keys never expire: under volatile-lru they are never evicted.
    assert all(admin.ttl(k) == -1 for k in tables)
    assert first["SPILLED"] > 0, "the same Ray spilled nothing to Valkey as raysp-embed"

    restarted = _restart_like(_gcs_server_pid(tmp), tmp)
    second = _driver(gcs_head, "get")
    assert second["PID"] == first["PID"], "the detached actor was restarted, not kept"
    assert second["N"] == 6, "the actor's state was lost"
    assert restarted.poll() is None
    # No NOPERM for the GCS; spilling's only refusal is the start-up check's CONFIG GET probe,
    # which falls back to INFO memory by design (server_checks.config_get).
    refused = _refusals(admin)
    assert [r for r in refused if r[0] == GCS_USER] == [], refused
    assert {r[:3] for r in refused} <= {(SPILL_USER, "command", "config|get")}, refused

    # The password: on the command lines of Ray's head processes only, never in its files.
    password = gcs_head["passwords"][GCS_USER].encode()
    holders = {cmd.split(b"\0")[0].rsplit(b"/", 1)[-1] for cmd in _pids_of(tmp).values()
               if password in cmd}
    assert holders <= {b"gcs_server", b"raylet"}, holders
    assert b"gcs_server" in holders  # what Ray requires; docs/security.md says so
    for path in Path(tmp).rglob("*"):
        if path.is_file() and path.name != "gcs_restarted.log":
            try:
                assert password not in path.read_bytes(), f"the GCS password is in {path}"
            except OSError:
                pass
    # Nor in the GCS's own tables (which any GCS tenant can read).
    for table in (t for t in tables if admin.type(t) == b"hash"):
        assert not any(password in k or password in v for k, v in admin.hgetall(table).items())
    # doctor sees this GCS's real tables and judges its user as the GCS needs it (after the ACL
    # LOG checks above: its live probes as the spill user are refused, and logged, by design).
    rows = _doctor_rows(gcs_head, monkeypatch, capsys)
    (ours,) = [r["detail"] for r in rows["gcs-namespace"] if r["detail"].startswith(prefix)]
    tables_now = len(scan_keys(admin, prefix + "*"))
    assert f"{tables_now} tables" in ours, ours
    assert rows["gcs-acl"][0]["status"] == "OK" and rows["gcs-ttl"][0]["status"] == "INFO"


def test_cleanup_removes_only_this_clusters_gcs_keys(gcs_head):
    admin, namespace, tmp = gcs_head["admin"], gcs_head["namespace"], gcs_head["tmp"]
    server, passwords = gcs_head["server"], gcs_head["passwords"]
    other = gcs_prefix(f"o{uuid.uuid4().hex[:12]}")
    tenants = {other + "KV": "gcs", "ray:batch:s:n:o.ab:m": "spill", "emb:m:x": "emb",
               "vllm:kv:m:x": "kv", "session:x": "session"}
    for key in tenants:
        admin.hset(key, "f", "v")
    # The GCS user reads none of the other tenants' keys, with any command it has.
    gcs = server.client(username=GCS_USER, password=passwords[GCS_USER])
    for key in list(tenants)[1:]:
        for command in (("HGET", key, "f"), ("HSCAN", key, "0"), ("DEL", key)):
            with pytest.raises(valkey.exceptions.NoPermissionError):
                gcs.execute_command(*command)
    gcs.close()
    admin.execute_command("ACL", "LOG", "RESET")  # the refusals above were ours
    assert scan_keys(admin, gcs_prefix(namespace) + "*")
    _kill_all(tmp)  # KubeRay waits for the head pod to be gone before its cleanup Job
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    # KubeRay's cleanup Job, as the GCS user (its env: REDIS_PASSWORD, REDIS_USERNAME).
    code = ("import os, sys; from ray._private.gcs_utils import cleanup_redis_storage; "
            "sys.exit(0 if cleanup_redis_storage(host='127.0.0.1', port=int(sys.argv[1]), "
            "username=os.environ['REDIS_USERNAME'], password=os.environ['REDIS_PASSWORD'], "
            "use_ssl=False, storage_namespace=os.environ['RAY_external_storage_namespace']) "
            "else 1)")
    done = subprocess.run([sys.executable, "-c", code, str(port)], env=gcs_head["env"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert scan_keys(admin, gcs_prefix(namespace) + "*") == []
    assert admin.exists(*tenants) == len(tenants), "cleanup reached another tenant's keys"
    assert [r for r in _refusals(admin) if r[0] == GCS_USER] == []
    admin.delete(*tenants)
    assert passwords[GCS_USER] not in done.stdout + done.stderr


def test_a_gcs_on_a_two_shard_cluster_exits_and_doctor_says_why(tmp_path, monkeypatch, capsys):
    """What deployment.md says: Ray's GCS cannot keep its tables on a 2-shard Valkey Cluster
    (its own shard check does not fire on Valkey; its tables answer MOVED and gcs_server exits),
    and doctor's gcs-layout row names the cause and the alternatives."""
    from ray_valkey_spill.testing.embedded_cluster import EmbeddedValkeyCluster
    from ray_valkey_spill.tools import doctor

    tmp = tempfile.mkdtemp(prefix="rvsgcc", dir="/tmp")
    with EmbeddedValkeyCluster(primaries=2) as cluster:
        port = int(cluster.url.rsplit(":", 1)[1].split("/")[0])
        # The GCS talks to one shard (the one it finds its "leader"); with every table it reads
        # at start on that shard by chance, it would start (a run on Ray 2.40 did). A namespace
        # whose JOB and NODE tables live on different shards makes one of them MOVED on any
        # version: the failure this test is about, every run.
        with cluster.client() as router:
            def shards_apart(ns: str) -> bool:
                slots = [router.keyslot(f"RAY{ns}@{table}") for table in ("JOB", "NODE")]
                return len({cluster.slot_owner(s) for s in slots}) == 2

            namespace = next(ns for ns in (f"t{uuid.uuid4().hex[:12]}" for _ in range(1000))
                             if shards_apart(ns))
        env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "disabled",
               "RAY_REDIS_ADDRESS": f"127.0.0.1:{port}",
               "RAY_external_storage_namespace": namespace}
        ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
        def gcs_logs() -> str:
            return "".join(p.read_text(errors="replace")
                           for p in Path(tmp).rglob("gcs_server.*") if p.is_file())

        # `ray start` itself waits ~40 s more for a GCS that is gone: watch the GCS's log.
        head = subprocess.Popen(
            [ray_bin, "start", "--head", f"--port={_free_port()}", "--num-cpus=1",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def gcs_running() -> bool:
                return any(b"gcs_server\0" in cmd.split(b"--")[0]
                           for cmd in _pids_of(tmp).values())

            # How it dies differs: "Failed to run redis cmds" after a table's MOVED, or on Ray
            # 2.40 an abort while logging a MOVED on INTERNAL_CONFIG (its binary key breaks
            # the JSON of the message). What holds on every version: MOVED, then no gcs_server.
            def gave_up() -> bool:
                logs = gcs_logs()
                return ("MOVED" in logs or "more than one shard" in logs) and not gcs_running()

            assert wait_for(gave_up, timeout_s=60), (
                "Ray's GCS did not give up on a 2-shard cluster: " + gcs_logs()[-2000:])
        finally:
            head.kill()
            head.wait()
            _kill_all(tmp)
        monkeypatch.setenv("RVS_T_GCS_PW", "unused")
        plain = cluster.url.replace("valkey+cluster", "valkey")
        doctor.main(["--url", plain, "--json", "--pings", "1", "--gcs-username", "default",
                     "--gcs-password-env", "RVS_T_GCS_PW"])
    (layout,) = [r for r in json.loads(capsys.readouterr().out)["checks"]
                 if r["check"] == "gcs-layout"]
    assert layout["status"] == "ERROR" and "more than one shard" in layout["detail"]
    assert "rocksdb" in layout["action"]


def test_a_gcs_on_a_one_shard_cluster_keeps_its_tables_and_doctor_agrees(monkeypatch, capsys):
    """What doctor's gcs-layout row promises: a one-shard Valkey Cluster, addressed by its
    node's host:port, holds a real Ray GCS's tables; a detached actor's state survives a kill
    and a restart of gcs_server."""
    from ray_valkey_spill.testing.embedded_cluster import EmbeddedValkeyCluster
    from ray_valkey_spill.tools import doctor

    tmp = tempfile.mkdtemp(prefix="rvsgc1", dir="/tmp")
    namespace = f"t{uuid.uuid4().hex[:12]}"
    with EmbeddedValkeyCluster(primaries=1) as cluster:
        port = int(cluster.url.rsplit(":", 1)[1].split("/")[0])
        env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "disabled",
               "RAY_REDIS_ADDRESS": f"127.0.0.1:{port}",
               "RAY_external_storage_namespace": namespace}
        env.pop("RAY_object_spilling_config", None)
        ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
        gcs_port = _free_port()
        started = subprocess.run(
            [ray_bin, "start", "--head", f"--port={gcs_port}", "--num-cpus=1",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp}",
             f"--object-store-memory={100 * MiB}"],
            env=env, capture_output=True, text=True, timeout=120)
        try:
            assert started.returncode == 0, started.stderr[-3000:]
            head = {"server": cluster.nodes[0], "env": env, "address": f"127.0.0.1:{gcs_port}"}
            first = _driver(head, "create")
            admin = cluster.client()
            assert {gcs_prefix(namespace) + t for t in ("ACTOR", "NODE", "KV")} <= {
                k.decode() for k in scan_keys(admin, gcs_prefix(namespace) + "*")}
            admin.close()
            _restart_like(_gcs_server_pid(tmp), tmp)
            second = _driver(head, "get")
            assert (second["PID"], second["N"]) == (first["PID"], 6), "GCS state was lost"
        finally:
            _kill_all(tmp)
        monkeypatch.setenv("RVS_T_GCS_PW", "unused")
        plain = cluster.url.replace("valkey+cluster", "valkey")
        capsys.readouterr()
        doctor.main(["--url", plain, "--json", "--pings", "1", "--gcs-username", "default",
                     "--gcs-password-env", "RVS_T_GCS_PW"])
    rows = json.loads(capsys.readouterr().out)["checks"]
    (layout,) = [r for r in rows if r["check"] == "gcs-layout"]
    assert layout["status"] == "OK" and "one-shard cluster" in layout["detail"], layout
