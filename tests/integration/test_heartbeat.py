"""Heartbeat stamps against a real server: written, refreshed, never brought back once removed."""

from __future__ import annotations

import time

from conftest import wait_for
from ray_valkey_spill.spill.heartbeat import Heartbeat


def test_a_stamp_is_written_and_refreshed(valkey_client, spill_prefix):
    key = f"{spill_prefix}sess:node:hb"
    beat = Heartbeat(lambda: valkey_client, key, interval_s=0.1).start()
    try:
        assert wait_for(lambda: valkey_client.get(key) is not None, timeout_s=5)
        assert valkey_client.ttl(key) == -1  # no TTL: a volatile-* server must never evict it
        first = int(valkey_client.get(key))
        assert abs(first - time.time()) < 5
    finally:
        beat.stop_and_remove()
    assert valkey_client.get(key) is None


def test_a_refresh_only_stamp_stops_when_its_key_is_removed(valkey_client, spill_prefix):
    key = f"{spill_prefix}sess:node:hb"
    beat = Heartbeat(lambda: valkey_client, key, interval_s=0.05, refresh_only=True).start()
    assert wait_for(lambda: valkey_client.get(key) is not None, timeout_s=5)
    valkey_client.unlink(key)  # what ray.shutdown() does with the node's keys
    time.sleep(0.5)  # ten beats
    assert valkey_client.get(key) is None
    beat.start()  # the next spill or restore starts it again
    assert wait_for(lambda: valkey_client.get(key) is not None, timeout_s=5)
    beat.stop_and_remove()
