"""Fixtures for the framework adapters (extras ``langchain`` and ``llamaindex``)."""

from __future__ import annotations


import pytest

from support import unique_prefixes


@pytest.fixture
def key_prefixes(valkey_client):
    """Unique emb/session prefixes for one test, cleaned with SCAN afterwards."""
    with unique_prefixes(valkey_client, emb="emb:", session="session:") as out:
        yield out
