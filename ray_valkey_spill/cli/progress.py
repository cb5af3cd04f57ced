"""A one-line progress bar on stderr for long-running tools."""

from __future__ import annotations

import sys
import time

GiB = 1024 ** 3


class Progress:
    """A small progress bar on stderr (one line, redrawn at most 5 times a second)."""

    def __init__(self, label: str, total: int, unit_bytes: bool = True, enabled: bool = True):
        self.label, self.total, self.unit_bytes = label, max(total, 1), unit_bytes
        self.done = 0
        self.started = time.perf_counter()
        self._last = 0.0
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last_pct = -1

    def update(self, n: int) -> None:
        """Count ``n`` more units done and redraw when due."""
        self.done += n
        now = time.perf_counter()
        if not self.enabled:
            return
        if self.tty and now - self._last >= 0.2:
            self._last = now
            self._draw(now, end="\r")
        elif not self.tty:
            pct = int(100 * self.done / self.total) // 25 * 25
            if pct > self._last_pct:
                self._last_pct = pct
                self._draw(now, end="\n")

    def _draw(self, now: float, end: str) -> None:
        frac = min(self.done / self.total, 1.0)
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        elapsed = max(now - self.started, 1e-9)
        if self.unit_bytes:
            what = f"{self.done / GiB:6.2f}/{self.total / GiB:.2f} GiB {self.done / GiB / elapsed:5.2f} GiB/s"
        else:
            what = f"{self.done}/{self.total}"
        sys.stderr.write(f"  {self.label:<24} [{bar}] {frac * 100:5.1f}% {what} {elapsed:6.1f}s{end}")
        sys.stderr.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled and (self.tty or self._last_pct < 100):
            self._draw(time.perf_counter(), end="\n")
