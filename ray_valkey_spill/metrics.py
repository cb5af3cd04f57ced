"""Prometheus metrics of the spill backend and the caches, through Ray's metrics system.

Metrics are ``ray.util.metrics`` objects, so they travel the way Ray's own do: each process
(spill/restore IO worker, task worker, actor, driver) exports them to its node's metrics agent,
which serves them on the node's metrics export port (``ray start --metrics-export-port``), where
KubeRay's PodMonitor already scrapes. The agent only runs with ``ray[default]``; under a minimal
``ray`` install the calls below cost almost nothing and export nothing.

Rules, because this runs inside Ray's IO workers:

* Nothing is created at import or in ``ValkeyStorage.__init__``: IO workers build the storage
  BEFORE they connect to Ray. Metric objects are created on the first record after the process
  is connected (``ray.is_initialized()``), and never in a process that has not imported Ray
  (the caches must not import Ray).
* Recording never raises: metrics must never break spilling. A failure is logged once at debug.

Ray prefixes every custom metric with ``ray_`` on export, and the Prometheus exporter appends
``_total`` to counters, so ``valkey_spill_spilled_bytes`` is scraped as
``ray_valkey_spill_spilled_bytes_total``. See README "Metrics" for the list.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Callable

logger = logging.getLogger("ray_valkey_spill")

# Ray adds "ray_" on export: the scraped names start with ray_valkey_spill_.
PREFIX = "valkey_spill_"
# Latency buckets, seconds: 1 ms .. 60 s in roughly 1-2.5-5 steps (Prometheus adds +Inf).
LATENCY_BOUNDARIES_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                        1.0, 2.5, 5.0, 10.0, 25.0, 60.0]
# name (without PREFIX) -> (kind, description, tag keys)
_DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "spilled_objects": ("counter", "Objects spilled to Valkey", ()),
    "spilled_bytes": ("counter", "Bytes of objects spilled (Ray's object size, as in the URL)",
                      ()),
    "spilled_stored_bytes": ("counter", "Bytes written to Valkey for spilled objects (chunks "
                             "after compression, plus manifests)", ()),
    "restored_objects": ("counter", "Objects restored from Valkey", ()),
    "restored_bytes": ("counter", "Bytes of objects restored (Ray's object size)", ()),
    "deleted_objects": ("counter", "Spilled objects deleted from Valkey", ()),
    "deleted_bytes": ("counter", "Bytes of spilled objects deleted (Ray's object size)", ()),
    "errors": ("counter", "Failed spill/restore/delete operations, by exception class",
               ("operation", "kind")),
    "spill_seconds": ("histogram", "Duration of one spill call (a batch of fused objects)", ()),
    "restore_seconds": ("histogram", "Duration of restoring one object", ()),
    "cache_hits": ("counter", "Cache lookups that found an entry", ("cache",)),
    "cache_misses": ("counter", "Cache lookups that found nothing (or an undecodable entry)",
                     ("cache",)),
    "cache_read_bytes": ("counter", "Bytes of cache values read from Valkey", ("cache",)),
    "cache_written_bytes": ("counter", "Bytes of cache values written to Valkey", ("cache",)),
}


class _Registry:
    """The process's Ray metric objects, created on first use once Ray is connected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, Any] | None = None
        self._broken = False
        self._warned = False

    def _ray_connected(self) -> bool:
        ray = sys.modules.get("ray")  # never import Ray here (the caches run without it)
        if ray is None:
            return False
        try:
            return bool(ray.is_initialized())
        except Exception:  # noqa: BLE001 - a half-imported or shut-down Ray
            return False

    def get(self) -> dict[str, Any] | None:
        metrics = self._metrics
        if metrics is not None or self._broken:
            return metrics
        if not self._ray_connected():
            return None
        with self._lock:
            if self._metrics is None and not self._broken:
                try:
                    self._metrics = _create()
                except Exception as exc:  # noqa: BLE001 - metrics must never break spilling
                    self._broken = True
                    logger.debug("ray-valkey-spill metrics unavailable: %r", exc)
            return self._metrics

    def failed(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            logger.debug("recording a ray-valkey-spill metric failed: %r", exc)

    def reset(self) -> None:
        """Forget the metric objects (tests; a new ray.init in the same process)."""
        with self._lock:
            self._metrics = None
            self._broken = False


_registry = _Registry()


def _create() -> dict[str, Any]:
    from ray.util.metrics import Counter, Histogram

    out: dict[str, Any] = {}
    for name, (kind, description, tags) in _DEFINITIONS.items():
        if kind == "counter":
            out[name] = Counter(PREFIX + name, description, tag_keys=tags)
        else:
            out[name] = Histogram(PREFIX + name, description + " (seconds)",
                                  boundaries=LATENCY_BOUNDARIES_S, tag_keys=tags)
    return out


def _inc(metrics: dict[str, Any], name: str, value: float, tags: dict | None = None) -> None:
    if value > 0:  # Ray's Counter.inc refuses 0
        metrics[name].inc(value, tags=tags)


def _record(update: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``update`` to the metric objects; a no-op until Ray is connected, and a failing
    update switches metrics off (logged once) instead of failing a spill or a cache call."""
    metrics = _registry.get()
    if metrics is None:
        return
    try:
        update(metrics)
    except Exception as exc:  # noqa: BLE001
        _registry.failed(exc)


class SpillMetrics:
    """What ``ValkeyStorage`` records. Every method is a cheap no-op until Ray is connected."""

    def spilled(self, objects: int, original_bytes: int, stored_bytes: int,
                seconds: float) -> None:
        """One successful spill call: ``objects`` spilled, their size as Ray counts it
        (``original_bytes``), the bytes written to Valkey for them (``stored_bytes``)."""
        def update(metrics):
            _inc(metrics, "spilled_objects", objects)
            _inc(metrics, "spilled_bytes", original_bytes)
            _inc(metrics, "spilled_stored_bytes", stored_bytes)
            metrics["spill_seconds"].observe(max(0.0, float(seconds)))
        _record(update)

    def restored(self, objects: int, original_bytes: int, seconds: float) -> None:
        """Objects restored in ``seconds`` (one per call from Ray: one histogram sample)."""
        def update(metrics):
            _inc(metrics, "restored_objects", objects)
            _inc(metrics, "restored_bytes", original_bytes)
            metrics["restore_seconds"].observe(max(0.0, float(seconds)))
        _record(update)

    def deleted(self, objects: int, original_bytes: int = 0) -> None:
        """Objects removed at Ray's request; ``original_bytes`` is their size as Ray counts it."""
        def update(metrics):
            _inc(metrics, "deleted_objects", objects)
            _inc(metrics, "deleted_bytes", original_bytes)
        _record(update)

    def error(self, operation: str, kind: str | BaseException) -> None:
        """A failed ``operation`` (spill/restore/delete); ``kind`` is the exception (class name
        is used) or its class name. Keep kinds to class names: each is one Prometheus series."""
        name = type(kind).__name__ if isinstance(kind, BaseException) else str(kind)
        _record(lambda metrics: metrics["errors"].inc(
            1, tags={"operation": str(operation), "kind": name}))


class CacheMetrics:
    """Hit/miss and byte counters of one cache kind (``emb``, ``vllm_kv`` or ``session``)."""

    __slots__ = ("_tags",)

    def __init__(self, cache: str):
        self._tags = {"cache": str(cache)}

    def _add(self, name: str, n: int) -> None:
        if n > 0:
            _record(lambda metrics: metrics[name].inc(n, tags=self._tags))

    def hit(self, n: int = 1) -> None:
        """Count ``n`` cache hits."""
        self._add("cache_hits", n)

    def miss(self, n: int = 1) -> None:
        """Count ``n`` cache misses."""
        self._add("cache_misses", n)

    def bytes_written(self, n: int) -> None:
        """Count ``n`` bytes written to the cache."""
        self._add("cache_written_bytes", n)

    def bytes_read(self, n: int) -> None:
        """Count ``n`` bytes read from the cache."""
        self._add("cache_read_bytes", n)


_spill_metrics = SpillMetrics()


def spill_metrics() -> SpillMetrics:
    """The process-wide SpillMetrics (stateless; metric objects are created on first use)."""
    return _spill_metrics


def exported_name(name: str) -> str:
    """The name Prometheus scrapes for one of our metrics, e.g. ``spilled_bytes`` ->
    ``ray_valkey_spill_spilled_bytes_total``."""
    kind = _DEFINITIONS[name][0]
    return "ray_" + PREFIX + name + ("_total" if kind == "counter" else "")


__all__ = ["CacheMetrics", "SpillMetrics", "spill_metrics", "exported_name",
           "LATENCY_BOUNDARIES_S"]
