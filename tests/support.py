"""Test helpers that every tier and every extra's tests share (importable as ``support``: the
extras have a conftest of their own, so these cannot live in tests/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import types
import uuid
from pathlib import Path
from typing import Iterator


# -- the shipped ACL (cluster_configs/base), rendered as the Valkey pods' init containers do ----
REPO = Path(__file__).resolve().parents[1]
SHIPPED_ACL = REPO / "cluster_configs" / "base" / "valkey-users.acl"
RENDER_ACL_SCRIPT = REPO / "cluster_configs" / "base" / "render-acl.sh"


def shipped_acl_users() -> list[str]:
    """The users of the shipped ACL template that log in with a password (all but default)."""
    return [line.split()[1] for line in SHIPPED_ACL.read_text(encoding="utf-8").splitlines()
            if line.startswith("user ") and line.split()[1] != "default"]


def render_acl(output: Path, passwords: dict[str, str], off_users: str | None = None,
               template: Path = SHIPPED_ACL) -> subprocess.CompletedProcess:
    """Run render-acl.sh on ``template`` into ``output`` (passwords as VALKEY_PASSWORD_<USER>)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VALKEY_PASSWORD_") and k != "VALKEY_ACL_OFF_USERS"}
    if off_users is not None:
        env["VALKEY_ACL_OFF_USERS"] = off_users
    env.update({f"VALKEY_PASSWORD_{u.upper().replace('-', '_')}": pw
                for u, pw in passwords.items()})
    return subprocess.run(["sh", str(RENDER_ACL_SCRIPT), str(template), str(output)], env=env,
                          capture_output=True, text=True, timeout=30)


# -- counting the commands a server ran (tests that promise N round trips) -------------------
def commandstats(client) -> dict[str, int]:
    """{command: calls} from INFO commandstats, without INFO itself."""
    stats = {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}
    stats.pop("info", None)
    return stats


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The commands run between two ``commandstats`` readings, with how often."""
    out = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    out.pop("info", None)
    return out


class AsyncSends:
    """Counts packed sends of valkey.asyncio connections (standalone or cluster nodes): one per
    round trip. Install with a pytest ``monkeypatch``."""

    def __init__(self, monkeypatch):
        import valkey.asyncio.connection as conn_mod

        self.count = 0
        original = conn_mod.AbstractConnection.send_packed_command

        async def counting(conn, command, check_health=True):
            self.count += 1
            return await original(conn, command, check_health)

        monkeypatch.setattr(conn_mod.AbstractConnection, "send_packed_command", counting)


# -- Valkey Cluster ---------------------------------------------------------------------------
def keys_per_primary(cluster, prefix: str) -> dict[int, list[bytes]]:
    """{primary index: its keys under ``prefix``} of an EmbeddedValkeyCluster, by SCAN on each
    primary itself (never only through a cluster client)."""
    out = {}
    for i in cluster.primary_indexes():
        with cluster.nodes[i].client(socket_timeout=10) as c:
            out[i] = list(c.scan_iter(match=prefix + "*", count=1000))
    return out


# -- per-test key ranges on a shared server ----------------------------------------------------
@contextlib.contextmanager
def unique_prefixes(client, **bases: str) -> Iterator[dict[str, str]]:
    """``{name: "<base>t<uid>:"}`` for one test; every key under them is removed afterwards
    with SCAN (never FLUSHALL: the server may be shared, see RVS_TEST_URL)."""
    from ray_valkey_spill.keyspace import unlink_matching

    uid = uuid.uuid4().hex[:10]
    out = {name: f"{base}t{uid}:" for name, base in bases.items()}
    try:
        yield out
    finally:
        for prefix in out.values():
            unlink_matching(client, prefix + "*")


# -- a stand-in for ray._private.external_storage (the plug-in's shape checks) ----------------
def fake_external_storage(base: type = object, signature_ok: bool = True) -> types.ModuleType:
    """A module shaped like Ray's ``external_storage``: ``setup_external_storage`` (with Ray's
    signature, or one parameter short) returning ``("original", type)``, and ``base`` as its
    ``ExternalStorage``."""
    module = types.ModuleType("fake_external_storage")
    if signature_ok:
        def setup_external_storage(config, node_id, session_name):
            return ("original", config["type"])
    else:
        def setup_external_storage(config, node_id):
            return ("original", config["type"])
    module.setup_external_storage = setup_external_storage
    module.ExternalStorage = base
    module._external_storage = None
    return module
