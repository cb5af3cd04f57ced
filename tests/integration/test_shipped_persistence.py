"""The shipped valkey.conf's persistence (RDB snapshots, no AOF) on a real valkey-server
started with the exact conf and ACL users of cluster_configs (lab/deployed_server.py):
- a clean restart (the pod's SIGTERM) keeps every session, cache entry and spilled object:
  the server writes a final snapshot;
- a crash (SIGKILL) keeps what the last snapshot holds and loses what came after it: the
  session turns written later are gone, and a later spilled object's restore fails at once
  with ObjectMissingError (Ray then raises ObjectLostError, tests/system/test_lost_spill.py).
With AOF back on, the crash half fails (nothing would be lost); without persistence, the clean
restart half fails.
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest
import valkey

from conftest import make_storage, restore, spill
from support import REPO
from ray_valkey_spill.caches.embedding import EmbeddingCache
from ray_valkey_spill.caches.session import SessionStore
from ray_valkey_spill.connection import close_all
from ray_valkey_spill.errors import ObjectMissingError
from ray_valkey_spill.lab.deployed_server import DeployedValkey, password_env

SPILL_USER, SPILL_PREFIX = "raysp-embed", "ray:embed:"  # as the shipped RayService


def _client(srv: DeployedValkey, user: str) -> valkey.Valkey:
    return valkey.Valkey(port=srv.port, username=user, password=os.environ[password_env(user)])


def _stores(srv: DeployedValkey) -> tuple[SessionStore, EmbeddingCache]:
    """A session store and an embedding cache as their deployed users, on new connections."""
    return (SessionStore(_client(srv, "session"), ttl_seconds=3600),
            EmbeddingCache(_client(srv, "embcache"), "test-model", dimension=4, ttl_seconds=3600))


@pytest.fixture
def shipped():
    with DeployedValkey(REPO / "cluster_configs", overrides={"maxmemory": "256mb"}) as srv:
        yield srv
    close_all()


def _wait_for_snapshot(admin: valkey.Valkey, before: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        info = admin.info("persistence")
        if info["rdb_bgsave_in_progress"] == 0 and info["rdb_last_save_time"] > before:
            assert info["rdb_last_bgsave_status"] == "ok"
            return
        assert time.monotonic() < deadline, "the snapshot did not finish within 20 s"
        time.sleep(0.05)


def test_clean_restart_keeps_everything_and_a_crash_keeps_the_last_snapshot(shipped):
    sid = uuid.uuid4().hex
    sessions, cache = _stores(shipped)
    vector = np.arange(4, dtype=np.float32)
    storage = make_storage(shipped.url, f"{SPILL_PREFIX}{uuid.uuid4().hex[:8]}:",
                           username=SPILL_USER, password_env=password_env(SPILL_USER),
                           retries=5)
    before = {"o001": os.urandom(3 * 2**20)}
    sessions.append(sid, "turn 1", "turn 2")
    cache.put("hello", vector)
    urls = spill(storage, before)

    shipped.restart()  # SIGTERM: the final snapshot
    sessions, cache = _stores(shipped)
    assert sessions.last(sid, 10) == ["turn 1", "turn 2"]
    assert np.array_equal(cache.get("hello"), vector)
    ttls = [sessions.client.ttl(k) for k in sessions.client.scan_iter("session:*")]
    assert ttls and all(t > 3000 for t in ttls), f"the TTLs were not kept: {ttls}"
    assert restore(storage, "o001", urls["o001"]) == before["o001"]

    admin = _client(shipped, "admin")
    t0 = int(time.time())
    time.sleep(1.1)  # rdb_last_save_time has a resolution of 1 s
    admin.bgsave()
    _wait_for_snapshot(admin, t0)
    sessions.append(sid, "turn 3")  # after the snapshot
    later = {"o002": os.urandom(2**20)}
    later_urls = spill(storage, later)
    admin.close()

    shipped.restart(crash=True)  # SIGKILL: nothing more is written
    sessions, _ = _stores(shipped)
    assert sessions.last(sid, 10) == ["turn 1", "turn 2"], "not the snapshot's state"
    assert restore(storage, "o001", urls["o001"]) == before["o001"]
    with pytest.raises(ObjectMissingError):
        restore(storage, "o002", later_urls["o002"])
