"""Liveness stamps that let ``gc`` tell a running Ray session from a dead one.

A stamp is ``<prefix><session>:<node>:hb`` holding the unix time of the last beat, with NO
TTL: under ``volatile-lru`` a TTL would make it evictable, and an evicted stamp would make gc
take a live session for dead. The process that started the session with ``ray.init()`` stamps
``<session>:driver:hb``, because a session whose spilling nodes died may still own restorable
objects while no IO worker runs anywhere.

An IO worker stamps its node from its first spill or restore on, and only refreshes a stamp that
exists: ``ray.shutdown()`` removes the node's keys (stamp included) while its IO workers are
still alive, and a later beat, or a worker Ray starts at shutdown to delete objects, must not
bring the stamp back with nothing left to guard. The next spill or restore writes it again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

logger = logging.getLogger("ray_valkey_spill")

HEARTBEAT_INTERVAL_S = 30.0
# Tests shorten the beat through the environment, which Ray's IO workers inherit.
INTERVAL_ENV = "RAY_VALKEY_SPILL_HEARTBEAT_INTERVAL_S"
DRIVER_NODE = "driver"


def heartbeat_interval_s() -> float:
    """Seconds between beats: ``INTERVAL_ENV`` if set to a number (at least 0.1), else
    ``HEARTBEAT_INTERVAL_S``."""
    try:
        return max(0.1, float(os.environ.get(INTERVAL_ENV, HEARTBEAT_INTERVAL_S)))
    except ValueError:
        return HEARTBEAT_INTERVAL_S


class Heartbeat:
    """A daemon thread writing ``key`` every ``interval_s`` until stopped.

    ``refresh_only``: after the first successful beat, only overwrite an existing stamp, and
    stop when it is gone (someone removed the node's keys); ``start()`` begins again."""

    def __init__(self, client: Callable[[], object], key: str, interval_s: float | None = None,
                 *, refresh_only: bool = False):
        self._client = client
        self.key = key
        self._interval_s = heartbeat_interval_s() if interval_s is None else interval_s
        self._refresh_only = refresh_only
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a beat never lands after stop_and_remove()
        self._running = False

    def start(self) -> "Heartbeat":
        """Start beating unless already running (cheap enough to call before every spill)."""
        with self._lock:
            if self._running or self._stop.is_set():
                return self
            self._running = True
        threading.Thread(target=self._run, name="valkey-spill-heartbeat", daemon=True).start()
        return self

    def _run(self) -> None:
        written = False
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    break
                try:
                    stamp = str(int(time.time()))
                    only_existing = self._refresh_only and written
                    if self._client().set(self.key, stamp, xx=only_existing):
                        written = True
                    else:  # the stamp was removed with the node's keys: do not bring it back
                        self._running = False
                        return
                except Exception as exc:  # noqa: BLE001 - the next beat retries
                    logger.debug("heartbeat %s failed: %s", self.key, exc)
            self._stop.wait(self._interval_s)
        with self._lock:
            self._running = False

    def stop_and_remove(self) -> None:
        """Stop beating and remove the stamp; never raises (a stamp left behind is removed by
        ``gc``)."""
        with self._lock:
            self._stop.set()
        try:
            self._client().unlink(self.key)
        except Exception as exc:  # noqa: BLE001 - gc removes stale stamps
            logger.debug("could not remove heartbeat %s: %s", self.key, exc)


_driver_beats: dict[tuple[str, str], Heartbeat] = {}
_driver_lock = threading.Lock()


def start_driver_heartbeat(prefix: str, session: str, client: Callable[[], object]) -> None:
    """Stamp the session from this (driver) process until ``stop_driver_heartbeat``."""
    from .keys import heartbeat_key

    with _driver_lock:
        if (prefix, session) not in _driver_beats:
            beat = Heartbeat(client, heartbeat_key(prefix, session, DRIVER_NODE))
            _driver_beats[(prefix, session)] = beat.start()


def stop_driver_heartbeat(prefix: str, session: str) -> None:
    """Stop the driver's stamp of this session and remove it; a no-op if none runs."""
    with _driver_lock:
        beat = _driver_beats.pop((prefix, session), None)
    if beat is not None:
        beat.stop_and_remove()
