"""Scenarios on a local 3-node Ray: consumers on another node (a) and a lost node (b)."""

from __future__ import annotations

from ...testing.embedded import EmbeddedValkey
from typing import Callable

from ..multinode import FAST_DETECTION, ClusterShape, SpillTarget, cross_node_run, lost_node_run
from .common import (FS, FS_THROTTLED, alternate, errors_of, evict, flat, fmt, markdown_table,
                     ratio_cell, summarize, throttle_factory)

# -- scenario a: cross-node consumers ---------------------------------------------------------
def scenario_cross_node(args, server: EmbeddedValkey, env: dict) -> tuple[dict, str, list[str]]:
    """Node A spills, node B consumes; GiB/s and latency per kind and backend."""
    kinds = args.kinds
    shape = ClusterShape(store_a_mib=args.store_a_mib, store_b_mib=args.store_b_mib)
    url = server.url_for(args.transport)
    variants: list[tuple[str, Callable[[], dict]]] = [
        ("valkey", lambda: flat(cross_node_run(SpillTarget("valkey", url=url,
                                                            server_pid=server.process.pid), kinds,
                                                args.total_gib, args.object_mib, shape))),
        (FS, lambda: flat(cross_node_run(SpillTarget(FS, fs_parent=args.baseline_dir), kinds,
                                          args.total_gib, args.object_mib, shape)))]
    throttle, throttle_text = throttle_factory(args)
    if throttle is not None:
        def throttled() -> dict:
            with throttle():
                return flat(cross_node_run(SpillTarget(FS_THROTTLED, fs_parent=args.baseline_dir,
                                                        before_read=evict),
                                            kinds, args.total_gib, args.object_mib, shape))
        variants.append((FS_THROTTLED, throttled))
    runs = alternate(variants, args.repeat)
    summary = summarize(runs, {"valkey": FS, FS_THROTTLED: FS})
    summary["throttle"] = throttle_text
    med = summary["medians"]
    rows = []
    for kind in kinds:
        for label in runs:
            m = med[label]
            rows.append([kind, label, fmt(m.get(f"{kind}/seq_gibps")),
                         ratio_cell(summary, "valkey", f"{kind}/seq_gibps") if label == "valkey" else "",
                         fmt(m.get(f"{kind}/batch_gibps")),
                         ratio_cell(summary, "valkey", f"{kind}/batch_gibps") if label == "valkey" else "",
                         fmt(m.get(f"{kind}/latency_p50_ms"), "{:.0f}"),
                         fmt(m.get(f"{kind}/latency_p99_ms"), "{:.0f}"),
                         f"{fmt(m.get(f'{kind}/spilled_on_a'), '{:.0f}')} / "
                         f"{fmt(m.get(f'{kind}/objects'), '{:.0f}')}",
                         f"{fmt(m.get(f'{kind}/lost'), '{:.0f}')} / "
                         f"{fmt(m.get(f'{kind}/corrupted'), '{:.0f}')}",
                         " / ".join(fmt(m.get(f"{kind}/{w}_cpu_s_per_gib"))
                                    for w in ("a", "b", "server"))])
    table = markdown_table(
        ["data", "backend", "B reads GiB/s, 1 per get", "valkey / fs", "B reads GiB/s, "
         f"{8} per get", "valkey / fs", "p50 ms", "p99 ms", "spilled on A / objects",
         "lost / corrupted", "CPU s per GiB read: node A / node B / valkey-server"], rows)
    table += f"\n\nThrottled row: {throttle_text}."
    return summary, table, errors_of(runs)


# -- scenario b: a lost node ------------------------------------------------------------------
def scenario_lost_node(args, server: EmbeddedValkey, env: dict) -> tuple[dict, str, list[str]]:
    """Node A crashes after spilling; what B gets back, and when."""
    url = server.url_for(args.transport)
    variants = []
    for setting, system_config in (("Ray defaults", {}), ("fast failure detection",
                                                          FAST_DETECTION)):
        shape = ClusterShape(store_a_mib=args.store_a_mib, store_b_mib=args.store_b_mib,
                             system_config=system_config)
        for label, target in (("valkey", lambda: SpillTarget("valkey", url=url)),
                              (FS, lambda: SpillTarget(FS, fs_parent=args.baseline_dir))):
            def run(target=target, shape=shape) -> dict:
                res = lost_node_run(target(), args.lost_kind, args.actor_objects,
                                    args.task_objects, args.lost_object_mib, args.task_cost_s,
                                    shape)
                # Objects lost with the filesystem are what the scenario measures; corruption,
                # and any loss from Valkey, are errors.
                errors = [e for e in res.errors if "corrupted" in e]
                if target().is_valkey and res.figures.get("lost"):
                    errors.append(f"{res.figures['lost']} objects lost from Valkey")
                return {**res.figures, "errors": errors}
            variants.append((f"{label} ({setting})", run))
    runs = alternate(variants, args.repeat)
    summary = summarize(runs, {f"valkey ({s})": f"{FS} ({s})"
                               for s in ("Ray defaults", "fast failure detection")})
    summary["system_config_fast"] = FAST_DETECTION
    rows = []
    for label, rs in runs.items():
        m = summary["medians"][label]
        errs = sorted({e for r in rs for e in r.get("actor_errors", []) + r.get("task_errors", [])})
        rows.append([label,
                     f"{fmt(m.get('actor_recovered'), '{:.0f}')} / {args.actor_objects}",
                     f"{fmt(m.get('actor_lost'), '{:.0f}')}",
                     f"{fmt(m.get('task_recovered'), '{:.0f}')} / {args.task_objects}",
                     f"{fmt(m.get('task_lost'), '{:.0f}')}",
                     fmt(m.get("corrupted"), "{:.0f}"),
                     fmt(m.get("all_back_s"), "{:.1f}"),
                     fmt(m.get("left_for_gc"), "{:.0f}"), ", ".join(errs) or "-"])
    table = markdown_table(
        ["backend (failure detection)", "actor outputs back", "lost", "task outputs back",
         "lost", "corrupted", "s from crash until all that came back is on B",
         "keys/files left for gc", "errors seen"], rows)
    return summary, table, errors_of(runs)
