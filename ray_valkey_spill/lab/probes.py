"""What a lab run watches besides Ray: the Valkey server (memory, spill keys), the filesystem
spill directory, and the raylet's own spill/restore counters."""

from __future__ import annotations

import os
import threading

from ..keyspace import scan_keys
from ..spill import keys as K

class ValkeyProbe:
    """Watches the server (standalone or cluster: memory summed over the primaries)."""

    def __init__(self, url: str, prefix: str, connection_options: dict | None = None):
        """``connection_options``: credentials for the probe's own connection (it reads INFO,
        which a least-privilege spill user may not)."""
        from ..config import SpillConfig, parse_url
        from ..connection import connect

        self._cluster = parse_url(url).cluster
        self.client = connect(SpillConfig.from_params({"url": url, **connection_options})
                              if connection_options else url)
        self.prefix = prefix
        self.base_used = self.used_memory()
        self.peak_used = self.base_used
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def used_memory(self) -> int:
        """The server's ``used_memory`` in bytes (summed over the primaries of a cluster)."""
        if not self._cluster:
            return int(self.client.info("memory")["used_memory"])
        from valkey.cluster import ValkeyCluster

        per_node = self.client.info("memory", target_nodes=ValkeyCluster.PRIMARIES)
        if "used_memory" in per_node:  # one primary: valkey-py unwraps the reply
            return int(per_node["used_memory"])
        return sum(int(v["used_memory"]) for v in per_node.values())

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.peak_used = max(self.peak_used, self.used_memory())
            except Exception:  # noqa: BLE001 - the sampler must never kill the run
                continue

    def cpu_s(self) -> float | None:
        """The server's CPU seconds so far (user + system, ``INFO cpu``); None for a cluster."""
        if self._cluster:
            return None
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def keys(self) -> list[bytes]:
        """Keys of spilled objects (a node's heartbeat key, ``...:hb``, is not one)."""
        return [k for k in scan_keys(self.client, self.prefix + "*")
                if not K.is_heartbeat_key(k)]

    def stored_bytes(self) -> tuple[int, int]:
        """(number of spill keys, their total value bytes)."""
        keys = self.keys()
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.strlen(k)
        return len(keys), sum(pipe.execute()) if keys else 0

    def manifest_count(self) -> int:
        """Number of manifests under the prefix: objects completely spilled."""
        return sum(1 for k in self.keys() if K.is_manifest_key(k))

    def stop(self) -> None:
        """Stop the memory sampler and take a last sample."""
        self._stop.set()
        self._thread.join(timeout=2)
        self.peak_used = max(self.peak_used, self.used_memory())

    def close(self) -> None:
        """Close the client."""
        self.client.close()


class DirProbe:
    """Watches the spill directory of Ray's filesystem spilling."""

    def __init__(self, path: str):
        self.path = path

    def files(self) -> list[str]:
        """Paths of every file under the directory."""
        out = []
        for root, _, names in os.walk(self.path):
            out.extend(os.path.join(root, n) for n in names)
        return out

    def stored_bytes(self) -> tuple[int, int]:
        """(number of files, their total bytes); a file removed meanwhile counts 0 bytes."""
        files = self.files()
        total = 0
        for f in files:
            try:
                total += os.path.getsize(f)
            except OSError:
                pass
        return len(files), total


def raylet_stats() -> dict | None:
    """The raylet's store stats (spilled/restored bytes) or None when grpcio is missing."""
    try:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    except ImportError:
        return None
    s = reply.store_stats
    return {name: getattr(s, name) for name in (
        "spilled_bytes_total", "spilled_objects_total", "spill_time_total_s",
        "restored_bytes_total", "restored_objects_total", "restore_time_total_s",
        "object_store_bytes_used", "object_store_bytes_avail")}


# An IO worker starts as `default_worker.py ... --worker-type=SPILL_WORKER` and then renames
# itself (setproctitle) to `ray::IDLE_SpillWorker`, `ray::SPILL_SpillWorker`, ...: either form.
IO_WORKER_MARKS = ("SPILL_WORKER", "RESTORE_WORKER", "SpillWorker", "RestoreWorker")


class IOWorkerCPU:
    """CPU seconds (user + system) of the spill and restore IO workers of one Ray session: on a
    small node they compete with the tasks for cores, so this is the cost of a backend that
    wall-clock time on a shared machine hides.

    IO workers are the raylet's children, found by the raylet's command line (which names the
    session). Ray ends idle IO workers, so a thread samples every SAMPLE_S and keeps each
    worker's last reading: a worker that exits loses at most its last SAMPLE_S of CPU."""

    SAMPLE_S = 0.2

    def __init__(self, session_name: str):
        import psutil

        self._psutil = psutil
        self.session_name = session_name
        self._seen: dict[tuple[int, float], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._raylet = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _find_raylet(self):
        for proc in self._psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or ()
            if cmd and cmd[0].endswith("/raylet") and any(self.session_name in a for a in cmd):
                return proc
        return None

    def sample(self) -> None:
        """Read the CPU time of every live IO worker now."""
        psutil = self._psutil
        if self._raylet is None:
            self._raylet = self._find_raylet()
            if self._raylet is None:
                return
        try:
            children = self._raylet.children()
        except psutil.Error:  # the raylet is gone (shutdown)
            return
        for proc in children:
            try:
                cmd = " ".join(proc.cmdline())
                if not any(mark in cmd for mark in IO_WORKER_MARKS):
                    continue
                cpu = proc.cpu_times()
                key = (proc.pid, proc.create_time())
            except psutil.Error:  # exited meanwhile
                continue
            with self._lock:
                self._seen[key] = cpu.user + cpu.system

    def _run(self) -> None:
        while not self._stop.wait(self.SAMPLE_S):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - the sampler must never kill the run
                continue

    def total_s(self) -> float:
        """CPU seconds used so far by every IO worker seen, live or exited."""
        self.sample()
        with self._lock:
            return sum(self._seen.values())

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(timeout=2)
