"""Walking and clearing key ranges without blocking the server (SCAN, never KEYS/FLUSHALL)."""

from __future__ import annotations

SCAN_COUNT = 1000


def scan_keys(client, pattern: str, count: int = SCAN_COUNT) -> list[bytes]:
    """Every key matching ``pattern`` (works for standalone and cluster clients)."""
    return list(client.scan_iter(match=pattern, count=count))


def unlink_keys(client, keys: list) -> int:
    """UNLINK keys one command each in one pipeline (cross-slot safe in cluster mode)."""
    removed = 0
    for start in range(0, len(keys), SCAN_COUNT):
        pipe = client.pipeline(transaction=False)
        for key in keys[start:start + SCAN_COUNT]:
            pipe.unlink(key)
        removed += sum(pipe.execute())
    return removed


def unlink_matching(client, pattern: str) -> int:
    """UNLINK every key matching ``pattern``, a batch at a time."""
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
        batch.append(key)
        if len(batch) >= SCAN_COUNT:
            removed += unlink_keys(client, batch)
            batch = []
    return removed + (unlink_keys(client, batch) if batch else 0)
