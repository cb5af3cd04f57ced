"""``ray-valkey-spill doctor`` reports Ray's GCS as a tenant, against a real valkey-server loaded
with the SHIPPED ACL (cluster_configs/base/valkey-users.acl) and GCS-shaped tables: one hash per
table under RAY<namespace>@<TABLE> and the RAY<namespace>@JobCounter string, as Ray's
redis_store_client.cc writes them (tests/system/test_gcs_tenant.py sees the same keys from a
real GCS). The GCS user's rights are judged with ACL DRYRUN as the admin, or probed live as the
user; a broken user, a TTL on a GCS table, a full server, a missing password and a cluster of
two shards each end in the row that names them."""

from __future__ import annotations

import json
import secrets

import pytest

from support import render_acl, shipped_acl_users
from ray_valkey_spill.acl_rules import gcs_user_rule
from ray_valkey_spill.cli.options import EXIT_FINDINGS, EXIT_OK
from ray_valkey_spill.prefixes import gcs_prefix
from ray_valkey_spill.testing.embedded import EmbeddedValkey
from ray_valkey_spill.tools import doctor

GCS_USER, SPILL_USER, SPILL_PREFIX = "raygcs-embed", "raysp-embed", "ray:embed:"
NS, OTHER_NS = "2f1c9a7e-0b3d-4c1e-9e7a-5d6f7a8b9c0d", "old-cluster-uid"
KV_BLOB = 64 * 1024  # e.g. a runtime_env package Ray keeps in its internal KV table


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A server with the shipped ACL and GCS tables of two namespaces; yields (server, admin)."""
    passwords = {u: "vk-" + secrets.token_hex(16) for u in shipped_acl_users()}
    aclfile = tmp_path / "users.acl"
    assert render_acl(aclfile, passwords).returncode == 0
    for user, env in ((SPILL_USER, "RVS_T_SPILL_PW"), (GCS_USER, "RVS_T_GCS_PW"),
                      ("admin", "RVS_T_ADMIN_PW")):
        monkeypatch.setenv(env, passwords[user])
    with EmbeddedValkey(config={"aclfile": str(aclfile), "maxmemory": "256mb"}) as server:
        admin = server.client(username="admin", password=passwords["admin"])
        prefix = gcs_prefix(NS)
        for i in range(5):
            admin.hset(prefix + "ACTOR", f"actor-{i}", secrets.token_bytes(300))
        admin.hset(prefix + "JOB", "01000000", secrets.token_bytes(200))
        admin.hset(prefix + "NODE", "node-0", secrets.token_bytes(400))
        admin.hset(prefix + "KV", "gcs://_ray_pkg_x.zip", secrets.token_bytes(KV_BLOB))
        admin.incrby(prefix + "JobCounter", 3)
        admin.hset(gcs_prefix(OTHER_NS) + "NODE", "node-0", b"x" * 100)
        admin.set(SPILL_PREFIX + "s:n:o.ab:m", b"spilled")
        admin.set("emb:m:x", b"cached", ex=600)
        yield server, admin
        admin.close()


def _doctor(capsys, server, *extra, admin=True, gcs=True):
    argv = ["--url", server.url, "--json", "--pings", "1", "--prefix", SPILL_PREFIX,
            "--username", SPILL_USER, "--password-env", "RVS_T_SPILL_PW", *extra]
    if admin:
        argv += ["--admin-username", "admin", "--admin-password-env", "RVS_T_ADMIN_PW"]
    if gcs:
        argv += ["--gcs-username", GCS_USER, "--gcs-password-env", "RVS_T_GCS_PW"]
    code = doctor.main(argv)
    out = capsys.readouterr()
    report = json.loads(out.out)
    rows: dict[str, list[dict]] = {}
    for row in report["checks"]:
        rows.setdefault(row["check"], []).append(row)
    return code, rows, out.out + out.err


def _one(rows, name) -> dict:
    (row,) = rows[name]
    return row


def test_doctor_reports_each_gcs_namespace_and_the_shipped_gcs_user(capsys, shipped):
    server, admin = shipped
    code, rows, text = _doctor(capsys, server)
    namespaces = {r["detail"].split("*")[0]: r for r in rows["gcs-namespace"]}
    assert set(namespaces) == {gcs_prefix(NS), gcs_prefix(OTHER_NS)}
    ours = namespaces[gcs_prefix(NS)]["detail"]
    assert "5 tables, 8 entries" in ours, ours
    kib = float(ours.split("entries, ")[1].split(" KiB")[0])
    exact = sum(admin.memory_usage(k, samples=0) for k in admin.scan_iter(gcs_prefix(NS) + "*"))
    assert kib * 1024 == pytest.approx(exact, abs=52) and kib * 1024 > KV_BLOB
    assert "largest KV" in ours
    ttl = _one(rows, "gcs-ttl")
    assert ttl["status"] == "INFO" and "none expires" in ttl["detail"], ttl
    assert _one(rows, "gcs-headroom")["status"] == "OK"
    assert _one(rows, "gcs-layout")["status"] == "OK"
    acl = _one(rows, "gcs-acl")
    assert acl["status"] == "OK" and "ACL DRYRUN" in acl["detail"], acl
    for tenant in ("ray:*", "emb:*", "vllm:kv:*", "session:*"):
        assert tenant in acl["detail"]
    dangerous = {r["detail"].split()[1]: r["status"] for r in rows["acl-dangerous"]}
    assert dangerous[GCS_USER] == "OK"
    assert code == EXIT_OK, [r for r in sum(rows.values(), []) if r["status"] == "ERROR"]
    assert os_password("RVS_T_GCS_PW") not in text


def os_password(env: str) -> str:
    import os

    return os.environ[env]


def test_without_admin_the_gcs_user_is_probed_live_and_nothing_is_left(capsys, shipped):
    server, admin = shipped
    before = sorted(admin.scan_iter("*"))
    admin.execute_command("ACL", "LOG", "RESET")
    _, rows, _ = _doctor(capsys, server, admin=False)
    acl = _one(rows, "gcs-acl")
    assert acl["status"] == "OK" and "live probes" in acl["detail"], acl
    # The probes touched only their own random RAY__rvs_doctor_<hex>@ keys, removed again.
    assert sorted(admin.scan_iter("*")) == before
    refused = {(e[b"username"], e[b"object"]) for e in
               (dict(zip(x[::2], x[1::2])) for x in admin.execute_command("ACL", "LOG"))}
    gcs_refused = {obj.decode() for user, obj in refused if user == GCS_USER.encode()}
    assert any(o.startswith("emb:") for o in gcs_refused) and "DUMMY" in gcs_refused
    # The spill user may SCAN names but not measure another tenant's keys: said, not hidden.
    assert _one(rows, "gcs-tables")["status"] == "WARN"


@pytest.mark.parametrize("admin", [True, False], ids=["dryrun", "probes"])
def test_a_gcs_user_missing_a_command_or_reaching_other_tenants_is_named(capsys, shipped, admin):
    server, root = shipped
    root.execute_command("ACL", "SETUSER", GCS_USER, "-hscan")
    _, rows, _ = _doctor(capsys, server, admin=admin)
    acl = _one(rows, "gcs-acl")
    assert acl["status"] == "ERROR" and "HSCAN" in acl["detail"], acl
    assert acl["action"].endswith(gcs_user_rule())
    root.execute_command("ACL", "SETUSER", GCS_USER, "+hscan", "~emb:*")
    _, rows, _ = _doctor(capsys, server, admin=admin)
    acl = _one(rows, "gcs-acl")
    assert acl["status"] == "WARN" and "emb:* (HGET/HSCAN/DEL)" in acl["detail"], acl
    assert "vllm:kv:" not in acl["detail"]


def test_a_gcs_table_with_a_ttl_is_a_warning(capsys, shipped):
    server, admin = shipped
    admin.expire(gcs_prefix(NS) + "ACTOR", 3600)
    _, rows, _ = _doctor(capsys, server)
    assert _one(rows, "gcs-ttl")["status"] == "WARN"
    assert "1 GCS table(s) have a TTL" in _one(rows, "gcs-ttl")["detail"]


def test_keys_that_never_expire_near_maxmemory_are_a_warning(capsys, shipped):
    server, admin = shipped
    limit = admin.info("memory")["used_memory"] + 16 * 2**20
    admin.config_set("maxmemory", str(limit))
    i = 0
    while admin.info("memory")["used_memory"] < limit - 2 * 2**20:  # spilled chunks: no TTL
        admin.set(f"{SPILL_PREFIX}s:n:o{i}.ab:c0", b"\0" * 2**20)
        i += 1
    _, rows, _ = _doctor(capsys, server)
    headroom = _one(rows, "gcs-headroom")
    assert headroom["status"] == "WARN" and "GCS exits" in headroom["detail"], headroom
    assert "keys without a TTL take ~" in headroom["detail"]


def test_a_missing_gcs_password_names_the_secret(capsys, shipped, monkeypatch):
    server, _ = shipped
    monkeypatch.delenv("RVS_T_GCS_PW")
    code, rows, _ = _doctor(capsys, server)
    user = _one(rows, "gcs-user")
    assert user["status"] == "ERROR" and "RVS_T_GCS_PW" in user["detail"]
    assert "valkey-gcs" in user["action"] and "CreateContainerConfigError" in user["action"]
    assert code == EXIT_FINDINGS


def test_an_empty_or_absent_gcs_password_is_an_error(capsys, shipped, monkeypatch):
    server, _ = shipped
    monkeypatch.setenv("RVS_T_GCS_PW", "")
    _, rows, _ = _doctor(capsys, server)
    assert "is empty" in _one(rows, "gcs-user")["detail"]
    _, rows, _ = _doctor(capsys, server, "--gcs-username", GCS_USER, gcs=False)
    user = _one(rows, "gcs-user")
    assert user["status"] == "ERROR" and "--gcs-password-env" in user["action"]


def test_no_gcs_tables_and_no_gcs_user_is_one_info_row(capsys):
    with EmbeddedValkey() as server:
        code = doctor.main(["--url", server.url, "--json", "--pings", "1"])
        report = json.loads(capsys.readouterr().out)
    gcs_rows = [r for r in report["checks"] if r["check"].startswith("gcs")]
    assert [(r["check"], r["status"]) for r in gcs_rows] == [("gcs-tables", "INFO")]
    assert code == EXIT_FINDINGS  # the default user may run anything (acl-dangerous)


@pytest.mark.parametrize("cluster_url", [True, False], ids=["cluster-url", "plain-url"])
def test_a_gcs_user_on_a_two_shard_cluster_gets_the_one_line_why(capsys, monkeypatch,
                                                                 cluster_url):
    from ray_valkey_spill.testing.embedded_cluster import EmbeddedValkeyCluster

    monkeypatch.setenv("RVS_T_GCS_PW", "unused")
    with EmbeddedValkeyCluster(primaries=2) as cluster:
        url = cluster.url if cluster_url else cluster.url.replace("valkey+cluster", "valkey")
        code = doctor.main(["--url", url, "--json", "--pings", "1", "--gcs-username", GCS_USER,
                            "--gcs-password-env", "RVS_T_GCS_PW"])
        report = json.loads(capsys.readouterr().out)
    (layout,) = [r for r in report["checks"] if r["check"] == "gcs-layout"]
    assert layout["status"] == "ERROR" and code == EXIT_FINDINGS
    assert "2 shards" in layout["detail"] and "more than one shard" in layout["detail"]
    assert "standalone" in layout["action"] and "rocksdb" in layout["action"]
    assert not [r for r in report["checks"] if r["check"] in ("gcs-acl", "gcs-user")]
