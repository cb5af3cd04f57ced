"""Same-node scenario (d): restore levers beside Ray's filesystem restore (page cache and
/dev/shm) and the raw socket GET of the same bytes; its run and table are shared with the
deployed scenario."""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable

from ...config import GiB, MiB
from ...testing.embedded import EmbeddedValkey
from ..data import make_data
from ..rawclient import RawClient
from ..workload import add_workload_options, run_once
from .common import (FS, FS_THROTTLED, PREFAULTED, alternate, errors_of, evict, fmt, is_number,
                     markdown_table, summarize, throttle_factory)

# -- same-node runs (scenarios c and d) -------------------------------------------------------
def workload_args(args, **overrides) -> argparse.Namespace:
    """The same-node workload's options from the scenario's, with ``overrides``."""
    p = argparse.ArgumentParser()
    add_workload_options(p)
    ns = p.parse_args([])
    ns.total_gib, ns.object_mib, ns.object_store_mib = (args.same_node_gib, args.same_node_object_mib,
                                                        args.object_store_mib)
    ns.data, ns.baseline_dir = args.same_node_kind, args.baseline_dir
    for k, v in overrides.items():
        setattr(ns, k, v)
    return ns


def same_node(backend: str, wargs, url=None, **kw) -> dict:
    """One same-node run on ``backend``: its figures and errors as one flat dict."""
    res = run_once(backend, wargs, url, progress=False, **kw)
    return {**res.figures, "errors": res.errors}


SAME_NODE_COLUMNS = [("spill_gibps", "spill GiB/s"), ("restore_gibps", "restore in order GiB/s"),
                     ("random_restore_gibps", "restore random GiB/s"),
                     ("concurrent_gibps", "restore from 4 tasks GiB/s"),
                     ("latency_p50_ms", "p50 ms"), ("latency_p99_ms", "p99 ms")]


def same_node_table(summary: dict, runs: dict, base: str) -> str:
    """The Markdown table of same-node runs, ratios against ``base``."""
    rows = []
    for label in runs:
        m = summary["medians"][label]
        row: list[Any] = [label]
        for key, _ in SAME_NODE_COLUMNS:
            pattern = "{:.0f}" if key.endswith("_ms") else "{:.2f}"
            cell = fmt(m.get(key), pattern)
            r = summary["ratios"].get(label, {}).get(key)
            if is_number(r) and not key.endswith("_ms"):
                cell += f" ({r:.2f}x)"
            row.append(cell)
        row.append(f"{fmt(m.get('lost'), '{:.0f}')} / {fmt(m.get('corrupted'), '{:.0f}')}")
        rows.append(row)
    return markdown_table(["backend"] + [c for _, c in SAME_NODE_COLUMNS] + ["lost / corrupted"],
                          rows) + f"\n\nRatios: against `{base}` of the same repetition."


def raw_get_gibps(server: EmbeddedValkey, args) -> dict:
    """The raw server limit: pipelined SET then GET of the same bytes over plain sockets (the
    same 4 MiB values and 4 connections as the backend), no checksums or manifests."""
    from ...spill.transport import BATCH_BYTES, BATCH_COMMANDS

    nbytes = args.same_node_object_mib * MiB
    buf = memoryview(make_data("float64", nbytes))
    target = memoryview(bytearray(nbytes))
    n_objects = max(1, int(args.same_node_gib * GiB) // nbytes)
    raw = RawClient(4, unix_path=server.unix_socket) if args.transport == "unix" else \
        RawClient(4, server.host, server.port)
    set_s = get_s = 0.0
    try:
        for i in range(n_objects):
            prefix = f"ray:rawscen{os.getpid()}:{i}:"
            set_s += raw.set_all(prefix, buf, 4 * MiB, BATCH_BYTES, BATCH_COMMANDS)
            get_s += raw.get_all(prefix, target, 4 * MiB, BATCH_BYTES, BATCH_COMMANDS)
    finally:
        raw.close()
    client = server.client()
    from ...keyspace import unlink_matching

    unlink_matching(client, f"ray:rawscen{os.getpid()}:*")
    client.close()
    ok = bytes(target) == bytes(buf)
    total = n_objects * nbytes / GiB
    return {"raw_set_gibps": total / set_s, "raw_get_gibps": total / get_s,
            "errors": [] if ok else ["raw GET returned other bytes than SET"]}


def scenario_same_node(args, server: EmbeddedValkey, env: dict) -> tuple[dict, str, list[str]]:
    """Restore levers against the filesystem's page cache and /dev/shm, and the raw limit."""
    url = server.url_for(args.transport)
    variants: list[tuple[str, Callable[[], dict]]] = [
        ("valkey (defaults: 4 MiB chunks, 4 connections)",
         lambda: same_node("valkey", workload_args(args), url)),
        ("valkey, 2 connections", lambda: same_node("valkey", workload_args(args, connections=2),
                                                     url)),
        ("valkey, 16 MiB chunks", lambda: same_node(
            "valkey", workload_args(args, chunk_size_bytes=16 * MiB), url)),
        ("valkey, 8 restore workers (max_io_workers)", lambda: same_node(
            "valkey", workload_args(args), url, system_config={"max_io_workers": 8})),
        ("valkey, pre-faulted object store", lambda: same_node(
            "valkey", workload_args(args), url, system_config=PREFAULTED)),
        (FS, lambda: same_node("filesystem", workload_args(args))),
        ("filesystem, pre-faulted object store", lambda: same_node(
            "filesystem", workload_args(args), system_config=PREFAULTED)),
        ("filesystem in /dev/shm", lambda: same_node(
            "filesystem", workload_args(args, baseline_dir="/dev/shm"))),
        ("raw socket SET/GET of the same bytes", lambda: raw_get_gibps(server, args)),
    ]
    throttle, throttle_text = throttle_factory(args)
    if throttle is not None:
        def throttled() -> dict:
            with throttle():
                return same_node("filesystem", workload_args(args), before_read=evict)
        variants.append((FS_THROTTLED, throttled))
    runs = alternate(variants, args.repeat)
    labels = [label for label, _ in variants]
    summary = summarize(runs, {label: FS for label in labels if label != FS})
    summary["throttle"] = throttle_text
    raw_label = "raw socket SET/GET of the same bytes"
    table = same_node_table(summary, {k: v for k, v in runs.items() if k != raw_label}, FS)
    rm = summary["medians"][raw_label]
    table += (f"\n\nRaw limit (4 MiB values, 4 connections, {args.transport} socket, no Ray): "
              f"SET {fmt(rm.get('raw_set_gibps'))} GiB/s, GET {fmt(rm.get('raw_get_gibps'))} GiB/s."
              f"\nThrottled row: {throttle_text}.")
    return summary, table, errors_of(runs)
