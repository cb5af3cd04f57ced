"""Spilled objects whose keys must still be removed, retried until the server takes it."""

from __future__ import annotations

import threading
import time


class LeftoverObjects:
    """Keys still to be removed: of failed spills (no manifest, never restorable) and of
    objects Ray deleted while the server did not answer (Ray does not ask twice).

    The server that failed a spill often fails the removal too, and a server that was paused
    or cut off still runs the writes it had buffered, or that TCP retransmits, when it answers
    again: after any removal sent meanwhile. So each object is removed after every later
    successful spill, restore or delete (one pipelined UNLINK) until one removal succeeds, and
    again, at most every RECHECK_EVERY_S, for RECHECK_S after that; otherwise its keys would
    stay until the session ends."""

    RECHECK_S = 600.0  # longer than Linux retransmits the data of a closed connection
    RECHECK_EVERY_S = 5.0  # restores come every few ms; their UNLINKs need not
    MAX_OBJECTS = 10_000  # beyond this the oldest are left to ray.shutdown() or gc

    def __init__(self):
        self._lock = threading.Lock()
        # (base key, chunks) -> monotonic time to stop; infinite until a removal succeeded
        self._until: dict[tuple[str, int], float] = {}
        self._last_recheck = float("-inf")

    def add(self, objects: list[tuple[str, int]]) -> None:
        """Remember objects to remove until a removal succeeds (the oldest beyond MAX_OBJECTS
        are dropped)."""
        with self._lock:
            for obj in objects:
                self._until[obj] = float("inf")
            while len(self._until) > self.MAX_OBJECTS:
                del self._until[next(iter(self._until))]

    def removed(self, objects: list[tuple[str, int]]) -> None:
        """Record a successful removal of ``objects``: they are removed again until RECHECK_S from
        now, then forgotten."""
        until = time.monotonic() + self.RECHECK_S
        with self._lock:
            for obj in objects:
                if self._until.get(obj) == float("inf"):
                    self._until[obj] = until

    def due(self) -> list[tuple[str, int]]:
        """The objects to remove now: those never removed yet, and those removed before when
        their recheck is due."""
        with self._lock:
            if not self._until:
                return []
            t = time.monotonic()
            self._until = {obj: u for obj, u in self._until.items() if u > t}
            recheck = t - self._last_recheck >= self.RECHECK_EVERY_S
            if recheck:
                self._last_recheck = t
            return [obj for obj, u in self._until.items() if recheck or u == float("inf")]
