"""Fixtures for the framework adapters (extras ``langchain`` and ``llamaindex``)."""

from __future__ import annotations

import uuid

import pytest

from ray_valkey_spill.keyspace import scan_keys, unlink_keys


@pytest.fixture
def key_prefixes(valkey_client):
    """Unique emb/session prefixes for one test, cleaned with SCAN afterwards."""
    uid = uuid.uuid4().hex[:10]
    out = {"emb": f"emb:f{uid}:", "session": f"session:f{uid}:"}
    yield out
    for prefix in out.values():
        keys = scan_keys(valkey_client, prefix + "*")
        if keys:
            unlink_keys(valkey_client, keys)
