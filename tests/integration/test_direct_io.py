"""GET replies received straight into caller buffers, against the real server."""

import pytest

from ray_valkey_spill.connection import connect
from ray_valkey_spill.direct_io import get_into, set_from
from ray_valkey_spill.errors import ServerReplyError


@pytest.fixture
def client(valkey_url):
    return connect(valkey_url)


def test_replies_land_in_their_buffers_and_the_connection_stays_usable(client, spill_prefix):
    values = [b"", b"x" * 10, bytes(range(256)) * 4000, b"tail"]
    keys = [f"{spill_prefix}d{i}" for i in range(len(values))]
    for k, v in zip(keys, values):
        client.set(k, v)
    missing = f"{spill_prefix}missing"
    buffers = {}

    def destination(i, n):
        buffers[i] = bytearray(n)
        return memoryview(buffers[i])

    lengths = get_into(client, keys[:2] + [missing] + keys[2:], destination)
    assert lengths == [0, 10, None, len(values[2]), 4]
    assert [bytes(buffers[i]) for i in (0, 1, 3, 4)] == values
    for _ in range(5):  # every pooled connection is still in step with its replies
        assert client.get(keys[3]) == b"tail"


def test_discarded_replies_are_skipped(client, spill_prefix):
    client.set(spill_prefix + "a", b"a" * 1000)
    client.set(spill_prefix + "b", b"b" * 1000)
    got = {}

    def destination(i, n):
        if i == 0:
            return None
        got[i] = bytearray(n)
        return memoryview(got[i])

    assert get_into(client, [spill_prefix + "a", spill_prefix + "b"], destination) == [1000, 1000]
    assert bytes(got[1]) == b"b" * 1000


def test_error_reply_raises_and_pool_recovers(client, spill_prefix):
    client.rpush(spill_prefix + "list", b"x")
    client.set(spill_prefix + "ok", b"fine")
    with pytest.raises(ServerReplyError, match="WRONGTYPE"):
        get_into(client, [spill_prefix + "list", spill_prefix + "ok"],
                 lambda i, n: memoryview(bytearray(n)))
    assert client.get(spill_prefix + "ok") == b"fine"


def test_exception_in_destination_drops_the_connection_not_the_pool(client, spill_prefix):
    client.set(spill_prefix + "big", b"z" * 100_000)

    def destination(i, n):
        raise ValueError("size check failed")

    with pytest.raises(ValueError):
        get_into(client, [spill_prefix + "big"], destination)
    assert client.get(spill_prefix + "big") == b"z" * 100_000


def test_set_from_sends_buffers_as_they_are(client, spill_prefix):
    import numpy as np

    big = np.arange(1_000_000, dtype=np.int64)
    items = [(spill_prefix + "s0", memoryview(big).cast("B")), (spill_prefix + "s1", b""),
             (spill_prefix + "s2", b"small")]
    set_from(client, items)
    assert client.get(spill_prefix + "s0") == big.tobytes()
    assert client.get(spill_prefix + "s1") == b""
    assert client.get(spill_prefix + "s2") == b"small"


def test_set_from_error_reply_raises_and_pool_recovers(client, spill_prefix, valkey_client):
    from ray_valkey_spill import EmbeddedValkey
    from ray_valkey_spill.connection import connect as connect_url

    with EmbeddedValkey(config={"maxmemory": "2mb", "maxmemory-policy": "noeviction"}) as small:
        c = connect_url(small.url)
        with pytest.raises(ServerReplyError, match="OOM"):
            set_from(c, [(spill_prefix + "x", b"x" * 4_000_000), (spill_prefix + "y", b"y")])
        assert c.ping()
