"""Fixtures for the framework adapters (extras ``langchain`` and ``llamaindex``)."""

from __future__ import annotations


import pytest

from support import unique_prefixes


@pytest.fixture(scope="session")
def valkey_cluster():
    """A private 3-primary embedded Valkey Cluster (small maxmemory) for the cluster cases."""
    from ray_valkey_spill.testing.embedded_cluster import EmbeddedValkeyCluster

    with EmbeddedValkeyCluster(primaries=3, config={"maxmemory": "32mb"}) as cluster:
        yield cluster


@pytest.fixture
def key_prefixes(valkey_client):
    """Unique emb/session prefixes for one test, cleaned with SCAN afterwards."""
    with unique_prefixes(valkey_client, emb="emb:", session="session:") as out:
        yield out
