"""The plug-in's I/O threads: a fixed pool whose busy threads turn further requests into misses
at once (never a queue behind a dead server), and waits bounded by a time limit."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable


class Abandonable:
    """Hand-over of a read's results between its I/O thread and the waiting coroutine: if the
    waiter gave up, the thread releases the memory objects itself when it is done with them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.results: list | None = None


class IOThreads:
    """``threads`` I/O threads; :meth:`submit` refuses work while all of them are busy."""

    def __init__(self, threads: int):
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="rvs-lmcache-io")
        self._slots = threading.BoundedSemaphore(threads)

    def submit(self, fn: Callable[[], Any]) -> Future | None:
        """Run ``fn`` on an I/O thread; None if every thread is busy (the caller then misses).
        Waiters shield the returned future: a submitted job is never cancelled, because the
        job itself gives back its slot and its buffers."""
        if not self._slots.acquire(blocking=False):
            return None

        def run():
            try:
                return fn()
            finally:
                self._slots.release()

        return self.executor.submit(run)

    @staticmethod
    async def wait(future: Future, timeout_s: float) -> Any:
        """The future's result, awaited at most ``timeout_s`` (asyncio.TimeoutError after);
        the job itself runs on."""
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout_s)

    def shutdown(self) -> None:
        """Stop taking work; queued jobs finish."""
        self.executor.shutdown(wait=False)
