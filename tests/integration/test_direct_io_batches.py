"""direct_io's batch forms used by the LMCache plug-in, against real servers: SET ... EX with a
value sent as several buffers, one error reply per item, scatter reads, EXISTS pipelines, a
per-exchange timeout."""

from __future__ import annotations

import time

import pytest

from ray_valkey_spill import EmbeddedValkey
from ray_valkey_spill.connection import connect
from ray_valkey_spill.direct_io import exists_many, get_into, set_many


def test_set_many_with_ttl_and_gathered_values(valkey_url, valkey_client, spill_prefix):
    client = connect(valkey_url)
    items = [(spill_prefix + "a", (b"head", memoryview(b"payload" * 1000))),
             (spill_prefix + "b", b"single")]
    assert set_many(client, items, ex_seconds=77) == [None, None]
    assert valkey_client.get(spill_prefix + "a") == b"head" + b"payload" * 1000
    assert 0 < valkey_client.ttl(spill_prefix + "a") <= 77
    assert 0 < valkey_client.ttl(spill_prefix + "b") <= 77
    assert set_many(client, [(spill_prefix + "c", b"x")]) == [None]
    assert valkey_client.ttl(spill_prefix + "c") == -1  # no EX asked, none set


def test_scatter_reads_and_skipped_replies(valkey_url, valkey_client, spill_prefix):
    client = connect(valkey_url)
    valkey_client.set(spill_prefix + "a", b"HEAD" + b"p" * 5000)
    valkey_client.set(spill_prefix + "b", b"z" * 3_000_000)
    head, body = bytearray(4), bytearray(5000)

    def destination(i, n):
        return [memoryview(head), memoryview(body)] if i == 0 else None  # skip the big one

    assert get_into(client, [spill_prefix + "a", spill_prefix + "b"], destination) == \
        [5004, 3_000_000]
    assert bytes(head) == b"HEAD" and bytes(body) == b"p" * 5000
    assert client.get(spill_prefix + "a")[:4] == b"HEAD"  # the connection stayed in step


def test_one_error_reply_per_item_and_a_bounded_wait(monkeypatch):
    with EmbeddedValkey() as server:
        server.client().acl_setuser("okonly", enabled=True, passwords=["+pw"], keys=["ok:*"],
                                    commands=["+@all"])
        monkeypatch.setenv("RVS_TEST_OKONLY_PW", "pw")
        client = connect(server.url, username="okonly", password_env="RVS_TEST_OKONLY_PW",
                         retries=0)
        errors = set_many(client, [("ok:a", b"x"), ("no:b", b"y" * 100_000), ("ok:c", b"z")],
                          ex_seconds=60)
        assert errors[0] is None and errors[2] is None and str(errors[1]).startswith("NOPERM")
        assert client.get("ok:a") == b"x" and client.get("ok:c") == b"z"
        assert exists_many(client, ["ok:a", "ok:zz", "ok:c"]) == [True, False, True]
        with pytest.raises(Exception, match="NOPERM"):
            exists_many(client, ["ok:a", "no:x"])
        assert exists_many(client, ["ok:a"]) == [True]  # the connection stayed in step
        # a paused server: each exchange on a connected connection gives up after timeout_s
        # (a NEW connection's handshake is bounded by the pool's socket_timeout_s instead)
        for call in (lambda: exists_many(client, ["ok:a"], timeout_s=0.3),
                     lambda: get_into(client, ["ok:a"], lambda i, n: memoryview(bytearray(n)),
                                      timeout_s=0.3)):
            assert client.get("ok:a") == b"x"  # a connected connection in the pool
            server.pause()
            try:
                start = time.monotonic()
                with pytest.raises(TimeoutError):
                    call()
                assert time.monotonic() - start < 1.5
            finally:
                server.resume()
        assert client.get("ok:a") == b"x"
