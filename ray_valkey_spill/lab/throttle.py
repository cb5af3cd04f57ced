"""A disk that behaves like a cloud volume: a block-I/O throttle on the spill directory's device,
and spill files evicted from the page cache before they are read.

Linux throttles a process's reads and writes to one block device through its cgroup: ``io.max``
under cgroup v2, ``blkio.throttle.{read,write}_bps_device`` under cgroup v1. Processes inherit
the cgroup when they start, so whatever starts Ray inside ``ThrottledDisk`` (raylets, their IO
workers) is throttled, and everything started before or after is not. Needs root and a
writable cgroup hierarchy with the io (v2) or blkio (v1) controller.
"""

from __future__ import annotations

import os
import time

CGROUP_ROOT = "/sys/fs/cgroup"


class ThrottleUnavailable(RuntimeError):
    """This machine cannot throttle block I/O for us; the message says exactly why."""


def device_of(path: str) -> str:
    """``MAJOR:MINOR`` of the whole block device holding ``path`` (a partition's parent disk)."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    sys_dev = f"/sys/dev/block/{major}:{minor}"
    if not os.path.exists(sys_dev):
        raise ThrottleUnavailable(f"{path} is on device {major}:{minor}, which is not a block "
                                  "device (tmpfs or overlay): nothing to throttle")
    if os.path.exists(os.path.join(sys_dev, "partition")):
        with open(os.path.join(sys_dev, "..", "dev"), encoding="ascii") as f:
            return f.read().strip()
    return f"{major}:{minor}"


def _v2_io_available() -> str | None:
    """The cgroup v2 mount whose root offers the io controller, if any."""
    for root in (CGROUP_ROOT, os.path.join(CGROUP_ROOT, "unified")):
        controllers = os.path.join(root, "cgroup.controllers")
        if os.path.exists(controllers):
            with open(controllers, encoding="ascii") as f:
                if "io" in f.read().split():
                    return root
    return None


class ThrottledDisk:
    """Context manager: this process (and everything it starts meanwhile) reads and writes
    ``device`` at no more than ``read_bps`` / ``write_bps`` bytes per second."""

    def __init__(self, path: str, read_bps: int, write_bps: int):
        self.device = device_of(path)
        self.read_bps, self.write_bps = read_bps, write_bps
        if os.geteuid() != 0:
            raise ThrottleUnavailable("throttling block I/O needs root (a cgroup of our own)")
        self.v2_root = _v2_io_available()
        v1 = os.path.join(CGROUP_ROOT, "blkio")
        if self.v2_root is None and not os.path.exists(os.path.join(v1, "cgroup.procs")):
            raise ThrottleUnavailable("neither the cgroup v2 io controller nor a cgroup v1 blkio "
                                      f"hierarchy is mounted under {CGROUP_ROOT}")
        self.root = self.v2_root or v1
        self.group = os.path.join(self.root, f"rvs-throttle-{os.getpid()}")
        self._home: str | None = None

    @property
    def description(self) -> str:
        """The throttle in words, for result tables."""
        kind = "cgroup v2 io.max" if self.v2_root else "cgroup v1 blkio.throttle"
        return (f"{kind} on {self.device}: read {self.read_bps / 2**20:.0f} MiB/s, "
                f"write {self.write_bps / 2**20:.0f} MiB/s")

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.group, name), "w", encoding="ascii") as f:
            f.write(value)

    def __enter__(self) -> "ThrottledDisk":
        try:
            os.makedirs(self.group, exist_ok=True)
            if self.v2_root:
                self._write("io.max", f"{self.device} rbps={self.read_bps} wbps={self.write_bps}")
            else:
                self._write("blkio.throttle.read_bps_device", f"{self.device} {self.read_bps}")
                self._write("blkio.throttle.write_bps_device", f"{self.device} {self.write_bps}")
            with open(f"/proc/{os.getpid()}/cgroup", encoding="ascii") as f:
                for line in f:
                    _, controllers, path = line.rstrip("\n").split(":", 2)
                    if (self.v2_root and controllers == "") or "blkio" in controllers.split(","):
                        self._home = os.path.join(self.root, path.lstrip("/"))
            self._write("cgroup.procs", str(os.getpid()))
        except OSError as exc:
            raise ThrottleUnavailable(f"could not set up a throttled cgroup at {self.group}: "
                                      f"{exc}") from exc
        return self

    def __exit__(self, *exc) -> None:
        with open(os.path.join(self._home or self.root, "cgroup.procs"), "w", encoding="ascii") as f:
            f.write(str(os.getpid()))
        # Processes started inside may take a moment to exit; the group goes once it is empty.
        for _ in range(50):
            try:
                os.rmdir(self.group)
                return
            except OSError:
                time.sleep(0.2)


def evict_from_page_cache(directory: str) -> int:
    """Write back and drop every file under ``directory`` from the page cache (as memory
    pressure would), so that the next read comes from the device; returns the bytes evicted."""
    total = 0
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # removed meanwhile
            try:
                os.fsync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total
