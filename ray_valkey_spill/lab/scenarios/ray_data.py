"""Ray Data scenario: random_shuffle, sort and a materialized map_batches pipeline read twice on
a dataset bigger than the object store, Valkey beside Ray's filesystem spilling, alternating;
seconds, spilled bytes and keys left after shutdown per workload and backend."""

from __future__ import annotations

from typing import Any, Callable

from ...config import MiB
from ...testing.embedded import EmbeddedValkey
from ..ray_data_workload import WORKLOADS, RayDataShape, run_ray_data
from .common import FS, alternate, errors_of, fmt, markdown_table, summarize

VALKEY = "valkey"
# Extra variants (--ray-data-variants): the knobs a user can set, each beside the defaults.
KNOBS: dict[str, tuple[str, dict, dict, str | None]] = {
    # label: (backend, spilling options, Ray system config, transport: None for --transport)
    "valkey, unix socket": (VALKEY, {}, {}, "unix"),
    "valkey, max_io_workers=2": (VALKEY, {}, {"max_io_workers": 2}, None),
    "valkey, max_io_workers=8": (VALKEY, {}, {"max_io_workers": 8}, None),
    "valkey, compression=none": (VALKEY, {"compression": "none"}, {}, None),
    "valkey, 1 connection": (VALKEY, {"connections": 1}, {}, None),
    "valkey, 2 connections": (VALKEY, {"connections": 2}, {}, None),
    "valkey, 1 MiB chunks": (VALKEY, {"chunk_size_bytes": MiB}, {}, None),
    "valkey, 16 MiB chunks": (VALKEY, {"chunk_size_bytes": 16 * MiB}, {}, None),
    "valkey, min_spilling_size=32 MiB": (VALKEY, {}, {"min_spilling_size": 32 * MiB}, None),
    "filesystem, max_io_workers=2": ("filesystem", {}, {"max_io_workers": 2}, None),
}


def shape_of(args) -> RayDataShape:
    """The run's sizes from the command line."""
    return RayDataShape(dataset_mib=args.ray_data_mib, row_bytes=args.ray_data_row_bytes,
                        blocks=args.ray_data_blocks, object_store_mib=args.object_store_mib,
                        payload=args.ray_data_payload)


def _flat(res) -> dict:
    return {**res.figures, "errors": res.errors}


def ray_data_table(summary: dict, labels: list[str]) -> str:
    """Workload x backend: seconds (ratio of filesystem to this backend: > 1 is faster than
    the filesystem), spilled MiB, restored MiB, CPU seconds of the spill and restore IO workers
    and of the Valkey server, and keys or files left after shutdown."""
    rows = []
    for workload in WORKLOADS:
        for label in labels:
            m = summary["medians"][label]
            if f"{workload}/seconds" not in m:
                continue
            r = summary["ratios"].get(label, {}).get(f"{workload}/seconds")
            speed = f"**{1 / r:.2f}x**" if r else ""
            rows.append([workload, label, fmt(m.get(f"{workload}/seconds"), "{:.1f}"), speed,
                         fmt(m.get(f"{workload}/spilled_bytes", 0) / MiB, "{:.0f}"),
                         fmt(m.get(f"{workload}/restored_bytes", 0) / MiB, "{:.0f}"),
                         fmt(m.get(f"{workload}/io_worker_cpu_s"), "{:.1f}"),
                         fmt(m.get(f"{workload}/server_cpu_s"), "{:.1f}"),
                         fmt(m.get("left_after_shutdown"), "{:.0f}")])
    return markdown_table(["workload", "backend", "seconds", "speed vs filesystem",
                           "spilled MiB", "restored MiB", "IO-worker CPU s", "server CPU s",
                           "left after shutdown"], rows)


def scenario_ray_data(args, server: EmbeddedValkey, env: dict) -> tuple[dict, str, list[str]]:
    """The three Ray Data workloads, Valkey (and the ``--ray-data-variants``) beside the
    filesystem, alternating."""
    shape = shape_of(args)

    def variant(backend: str, options: dict, system: dict,
                transport: str | None = None) -> Callable[[], dict]:
        url = server.url_for(transport or args.transport) if backend == VALKEY else None
        return lambda: _flat(run_ray_data(backend, shape, url, spill_options=options,
                                          system_config=system, workloads=args.ray_data_workloads,
                                          baseline_dir=args.baseline_dir))

    variants: list[tuple[str, Callable[[], dict]]] = [
        (f"{VALKEY} (defaults)", variant(VALKEY, {}, {})), (FS, variant("filesystem", {}, {}))]
    variants += [(label, variant(*KNOBS[label])) for label in args.ray_data_variants]
    runs = alternate(variants, args.repeat)
    labels = [label for label, _ in variants]
    summary: dict[str, Any] = summarize(runs, {label: FS for label in labels if label != FS})
    summary["shape"] = vars(shape) | {"rows": shape.rows}
    table = ray_data_table(summary, labels)
    table += (f"\n\n{shape.dataset_mib} MiB of {shape.row_bytes}-byte rows ({shape.payload} "
              f"payload) in {shape.blocks} blocks, object store {shape.object_store_mib} MiB; "
              "every row checked (payload, key, no row missing or twice, key order after sort, "
              "multiset checksum). Speed: filesystem seconds / this backend's, median of the "
              "per-repetition ratios. CPU: user + system seconds of the spill and restore IO "
              "workers (live and exited), and of the valkey-server.")
    return summary, table, errors_of(runs)
