"""Where a shared spill tier beats local disk: scenarios run side by side with Ray's own
filesystem spilling in one invocation, backends alternating, medians of ``--repeat`` runs.

    ray-valkey-spill scenarios cross-node [--kinds float64,int-tokens] [--total-gib 0.5]
    ray-valkey-spill scenarios lost-node  [--task-cost-s 2]
    ray-valkey-spill scenarios deployed   [--cluster-configs cluster_configs]
    ray-valkey-spill scenarios same-node
    ray-valkey-spill scenarios plot       [--out docs/scenarios.png]

cross-node  a local 3-node Ray (head with the driver, node A, node B): A makes the objects and
            spills all of them, tasks on B read them (one per ``ray.get``, then 8 per ``ray.get``).
lost-node   A spills actor outputs (no lineage) and task outputs that cost ``--task-cost-s``
            each, A's raylet is SIGKILLed, B fetches everything: recovered, lost, time until all
            back; with Ray's default failure detection and with a fast one.
deployed    the same-node spill/restore run against valkey-server started with the exact
            valkey.conf and ACL users of cluster_configs (AOF as shipped; maxmemory capped at 3gb)
            spilling as the RayService's own user and prefix, and with
            persistence variants (appendfsync no, RDB only, none).
same-node   restore levers (connections, chunk size, restore workers) against Ray's filesystem
            restore from the page cache and from /dev/shm, and the raw socket GET of the bytes.
Every scenario with ``--throttle-mibps`` > 0 (and root) adds a filesystem row on a throttled
disk read cold (cgroup block-I/O limit, spill files evicted from the page cache first).

Each prints Markdown tables and writes ``<json-dir>/scenarios_<name>.json``; ``plot`` draws
them all into one picture. Every object read is checked byte for byte; exit 1 if any object
was lost (where the scenario does not expect it) or corrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ..testing.embedded import EmbeddedValkey
from ..cli.options import report_problems
from .deployed_server import DeployedValkey, default_configs_dir
from .multinode import ARRAY_KINDS, FAST_DETECTION, ClusterShape, SpillTarget, cross_node_run, lost_node_run
from .rawclient import RawClient
from .throttle import ThrottledDisk, ThrottleUnavailable, evict_from_page_cache
from ..config import GiB, MiB
from .data import make_data
from .environment import environment
from .workload import add_workload_options, run_once

SCENARIOS = ("cross-node", "lost-node", "deployed", "same-node")
# The user and prefix the shipped RayService (cluster_configs/ray/rayservice.yaml) spills as.
DEPLOYED_SPILL_USER, DEPLOYED_SPILL_PREFIX = "raysp-embed", "ray:embed:"
DEPLOYED_MAXMEMORY = {"maxmemory": "3gb"}  # shipped: 12gb; capped on a shared test machine
PERSISTENCE = {  # label -> overrides of the deployed valkey.conf
    "valkey deployed: AOF everysec (shipped)": {},
    "valkey deployed: AOF appendfsync no": {"appendfsync": "no"},
    "valkey deployed: RDB only": {"appendonly": "no", "save": '"3600 1 300 100 60 10000"'},
    "valkey deployed: no persistence": {"appendonly": "no"},
}
FS = "filesystem"
PREFAULTED = {"preallocate_plasma_memory": True}
FS_THROTTLED = "filesystem, throttled disk, cold cache"


# -- running and summarizing ---------------------------------------------------------------
def alternate(variants: list[tuple[str, Callable[[], dict]]], repeat: int) -> dict[str, list[dict]]:
    """Run every variant ``repeat`` times, alternating; each returns a flat dict of figures
    (and ``errors``)."""
    runs: dict[str, list[dict]] = {label: [] for label, _ in variants}
    for rep in range(repeat):
        for label, fn in variants:
            print(f"[{rep + 1}/{repeat}] {label}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            figures = fn()
            figures["run_s"] = time.perf_counter() - t0
            runs[label].append(figures)
            for err in figures.get("errors", [])[:5]:
                print(f"  ERROR: {err}", file=sys.stderr)
    return runs


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def summarize(runs: dict[str, list[dict]], baseline: dict[str, str]) -> dict[str, Any]:
    """Medians per label and figure; per label with a baseline (``baseline[label]``), the median
    of the per-repetition ratios label/baseline of every figure."""
    medians = {label: {k: statistics.median([r[k] for r in rs if _num(r.get(k))])
                       for k in {k for r in rs for k in r if _num(r.get(k))}}
               for label, rs in runs.items()}
    ratios: dict[str, dict[str, float]] = {}
    for label, base in baseline.items():
        if label not in runs or base not in runs:
            continue
        out = {}
        for k in medians[label]:
            per = [a[k] / b[k] for a, b in zip(runs[label], runs[base])
                   if _num(a.get(k)) and _num(b.get(k)) and b[k]]
            if per:
                out[k] = statistics.median(per)
        ratios[label] = out
    return {"medians": medians, "ratios": ratios, "baseline": baseline, "runs": runs}


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return fmt.format(v) if _num(v) else "-"


def _ratio(summary: dict, label: str, key: str) -> str:
    r = summary["ratios"].get(label, {}).get(key)
    return f"**{r:.2f}x**" if _num(r) else ""


def _errors(runs: dict[str, list[dict]]) -> list[str]:
    return [f"{label}: {e}" for label, rs in runs.items() for r in rs for e in r.get("errors", [])]


# -- targets --------------------------------------------------------------------------------
def _throttle(args) -> tuple[Callable[[], Any] | None, str]:
    """A factory of the throttle context for the cold-disk row and its description, or
    (None, why not)."""
    if args.throttle_mibps <= 0:
        return None, "not asked for (--throttle-mibps 0)"
    rate = int(args.throttle_mibps * MiB)
    parent = args.baseline_dir or tempfile.gettempdir()
    try:
        probe = ThrottledDisk(parent, rate, rate)
    except ThrottleUnavailable as exc:
        return None, str(exc)
    return (lambda: ThrottledDisk(parent, rate, rate)), probe.description


def _evict(spill_dir: str | None) -> None:
    if spill_dir:
        evict_from_page_cache(spill_dir)


def _flat(results: dict[str, Any]) -> dict:
    """Per-kind RunResults as one flat dict: ``<kind>/<figure>`` and ``errors``."""
    out: dict[str, Any] = {"errors": []}
    for kind, res in results.items():
        out.update({f"{kind}/{k}": v for k, v in res.figures.items()})
        out["errors"] += [f"{kind}: {e}" for e in res.errors]
    return out


# -- scenario a: cross-node consumers ---------------------------------------------------------
def scenario_cross_node(args, server: EmbeddedValkey, env: dict) -> tuple[dict, str, list[str]]:
    """Node A spills, node B consumes; GiB/s and latency per kind and backend."""
    kinds = args.kinds
    shape = ClusterShape(store_a_mib=args.store_a_mib, store_b_mib=args.store_b_mib)
    url = server.url_for(args.transport)
    variants: list[tuple[str, Callable[[], dict]]] = [
        ("valkey", lambda: _flat(cross_node_run(SpillTarget("valkey", url=url,
                                                            server_pid=server.process.pid), kinds,
                                                args.total_gib, args.object_mib, shape))),
        (FS, lambda: _flat(cross_node_run(SpillTarget(FS, fs_parent=args.baseline_dir), kinds,
                                          args.total_gib, args.object_mib, shape)))]
    throttle, throttle_text = _throttle(args)
    if throttle is not None:
        def throttled() -> dict:
            with throttle():
                return _flat(cross_node_run(SpillTarget(FS_THROTTLED, fs_parent=args.baseline_dir,
                                                        before_read=_evict),
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
            rows.append([kind, label, _f(m.get(f"{kind}/seq_gibps")),
                         _ratio(summary, "valkey", f"{kind}/seq_gibps") if label == "valkey" else "",
                         _f(m.get(f"{kind}/batch_gibps")),
                         _ratio(summary, "valkey", f"{kind}/batch_gibps") if label == "valkey" else "",
                         _f(m.get(f"{kind}/latency_p50_ms"), "{:.0f}"),
                         _f(m.get(f"{kind}/latency_p99_ms"), "{:.0f}"),
                         f"{_f(m.get(f'{kind}/spilled_on_a'), '{:.0f}')} / "
                         f"{_f(m.get(f'{kind}/objects'), '{:.0f}')}",
                         f"{_f(m.get(f'{kind}/lost'), '{:.0f}')} / "
                         f"{_f(m.get(f'{kind}/corrupted'), '{:.0f}')}",
                         " / ".join(_f(m.get(f"{kind}/{w}_cpu_s_per_gib"))
                                    for w in ("a", "b", "server"))])
    table = markdown_table(
        ["data", "backend", "B reads GiB/s, 1 per get", "valkey / fs", "B reads GiB/s, "
         f"{8} per get", "valkey / fs", "p50 ms", "p99 ms", "spilled on A / objects",
         "lost / corrupted", "CPU s per GiB read: node A / node B / valkey-server"], rows)
    table += f"\n\nThrottled row: {throttle_text}."
    return summary, table, _errors(runs)


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
                     f"{_f(m.get('actor_recovered'), '{:.0f}')} / {args.actor_objects}",
                     f"{_f(m.get('actor_lost'), '{:.0f}')}",
                     f"{_f(m.get('task_recovered'), '{:.0f}')} / {args.task_objects}",
                     f"{_f(m.get('task_lost'), '{:.0f}')}",
                     _f(m.get("corrupted"), "{:.0f}"),
                     _f(m.get("all_back_s"), "{:.1f}"),
                     _f(m.get("left_for_gc"), "{:.0f}"), ", ".join(errs) or "-"])
    table = markdown_table(
        ["backend (failure detection)", "actor outputs back", "lost", "task outputs back",
         "lost", "corrupted", "s from crash until all that came back is on B",
         "keys/files left for gc", "errors seen"], rows)
    return summary, table, _errors(runs)


# -- same-node runs (scenarios c and d) -------------------------------------------------------
def _workload_args(args, **overrides) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_workload_options(p)
    ns = p.parse_args([])
    ns.total_gib, ns.object_mib, ns.object_store_mib = (args.same_node_gib, args.same_node_object_mib,
                                                        args.object_store_mib)
    ns.data, ns.baseline_dir = args.same_node_kind, args.baseline_dir
    for k, v in overrides.items():
        setattr(ns, k, v)
    return ns


def _same_node(backend: str, wargs, url=None, **kw) -> dict:
    res = run_once(backend, wargs, url, progress=False, **kw)
    return {**res.figures, "errors": res.errors}


SAME_NODE_COLUMNS = [("spill_gibps", "spill GiB/s"), ("restore_gibps", "restore in order GiB/s"),
                     ("random_restore_gibps", "restore random GiB/s"),
                     ("concurrent_gibps", "restore from 4 tasks GiB/s"),
                     ("latency_p50_ms", "p50 ms"), ("latency_p99_ms", "p99 ms")]


def _same_node_table(summary: dict, runs: dict, base: str) -> str:
    rows = []
    for label in runs:
        m = summary["medians"][label]
        row: list[Any] = [label]
        for key, _ in SAME_NODE_COLUMNS:
            fmt = "{:.0f}" if key.endswith("_ms") else "{:.2f}"
            cell = _f(m.get(key), fmt)
            r = summary["ratios"].get(label, {}).get(key)
            if _num(r) and not key.endswith("_ms"):
                cell += f" ({r:.2f}x)"
            row.append(cell)
        row.append(f"{_f(m.get('lost'), '{:.0f}')} / {_f(m.get('corrupted'), '{:.0f}')}")
        rows.append(row)
    return markdown_table(["backend"] + [c for _, c in SAME_NODE_COLUMNS] + ["lost / corrupted"],
                          rows) + f"\n\nRatios: against `{base}` of the same repetition."


def scenario_deployed(args, server: EmbeddedValkey, env: dict) -> tuple[dict, str, list[str]]:
    """The same-node run against the deployed valkey.conf and its persistence variants."""
    configs = Path(args.cluster_configs or default_configs_dir())
    wargs = _workload_args(args)
    variants: list[tuple[str, Callable[[], dict]]] = []
    for label, overrides in PERSISTENCE.items():
        def run(overrides=overrides) -> dict:
            with DeployedValkey(configs, {**DEPLOYED_MAXMEMORY, **overrides}) as srv:
                # As the shipped RayService spills: its own user, under its own prefix.
                figures = _same_node("valkey", wargs, srv.url,
                                     spill_options={**srv.options(DEPLOYED_SPILL_USER),
                                                    "prefix": DEPLOYED_SPILL_PREFIX},
                                     probe_options=srv.options("admin"))
                import valkey

                from .deployed_server import password_env

                admin = valkey.Valkey(port=srv.port, username="admin",
                                      password=os.environ[password_env("admin")])
                info = admin.info("persistence")
                admin.close()
                figures.update(aof_current_size=info.get("aof_current_size", 0),
                               rdb_saves=info.get("rdb_saves", 0))
                return figures
        variants.append((label, run))
    variants.append((FS, lambda: _same_node("filesystem", wargs)))
    runs = alternate(variants, args.repeat)
    summary = summarize(runs, {label: FS for label in PERSISTENCE})
    table = _same_node_table(summary, runs, FS)
    aof = markdown_table(["server", "AOF bytes at the end of a run (median)", "RDB saves"],
                         [[label, _f(summary["medians"][label].get("aof_current_size"), "{:,.0f}"),
                           _f(summary["medians"][label].get("rdb_saves"), "{:.0f}")]
                          for label in PERSISTENCE])
    return summary, table + "\n\n" + aof, _errors(runs)


def _raw_get_gibps(server: EmbeddedValkey, args) -> dict:
    """The raw server limit: pipelined SET then GET of the same bytes over plain sockets (the
    same 4 MiB values and 4 connections as the backend), no checksums or manifests."""
    from ..spill.transport import BATCH_BYTES, BATCH_COMMANDS

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
    from ..keyspace import unlink_matching

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
         lambda: _same_node("valkey", _workload_args(args), url)),
        ("valkey, 2 connections", lambda: _same_node("valkey", _workload_args(args, connections=2),
                                                     url)),
        ("valkey, 16 MiB chunks", lambda: _same_node(
            "valkey", _workload_args(args, chunk_size_bytes=16 * MiB), url)),
        ("valkey, 8 restore workers (max_io_workers)", lambda: _same_node(
            "valkey", _workload_args(args), url, system_config={"max_io_workers": 8})),
        ("valkey, pre-faulted object store", lambda: _same_node(
            "valkey", _workload_args(args), url, system_config=PREFAULTED)),
        (FS, lambda: _same_node("filesystem", _workload_args(args))),
        ("filesystem, pre-faulted object store", lambda: _same_node(
            "filesystem", _workload_args(args), system_config=PREFAULTED)),
        ("filesystem in /dev/shm", lambda: _same_node(
            "filesystem", _workload_args(args, baseline_dir="/dev/shm"))),
        ("raw socket SET/GET of the same bytes", lambda: _raw_get_gibps(server, args)),
    ]
    throttle, throttle_text = _throttle(args)
    if throttle is not None:
        def throttled() -> dict:
            with throttle():
                return _same_node("filesystem", _workload_args(args), before_read=_evict)
        variants.append((FS_THROTTLED, throttled))
    runs = alternate(variants, args.repeat)
    labels = [label for label, _ in variants]
    summary = summarize(runs, {label: FS for label in labels if label != FS})
    summary["throttle"] = throttle_text
    raw_label = "raw socket SET/GET of the same bytes"
    table = _same_node_table(summary, {k: v for k, v in runs.items() if k != raw_label}, FS)
    rm = summary["medians"][raw_label]
    table += (f"\n\nRaw limit (4 MiB values, 4 connections, {args.transport} socket, no Ray): "
              f"SET {_f(rm.get('raw_set_gibps'))} GiB/s, GET {_f(rm.get('raw_get_gibps'))} GiB/s."
              f"\nThrottled row: {throttle_text}.")
    return summary, table, _errors(runs)


# -- plot -------------------------------------------------------------------------------------
def plot(json_dir: Path, out: Path) -> None:
    """One picture of every scenarios_*.json in ``json_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = {p.stem.removeprefix("scenarios_"): json.loads(p.read_text())
             for p in sorted(json_dir.glob("scenarios_*.json"))}
    panels = [name for name in ("cross-node", "lost-node", "deployed", "same-node") if name in found]
    if not panels:
        raise SystemExit(f"no scenarios_*.json in {json_dir}")
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(13, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, panels):
        med = found[name]["summary"]["medians"]
        if name == "cross-node":
            kinds = found[name]["config"]["kinds"]
            labels = list(med)
            width = 0.8 / len(labels)
            for j, label in enumerate(labels):
                xs = [i + j * width for i in range(len(kinds))]
                ax.bar(xs, [med[label].get(f"{k}/seq_gibps", 0) for k in kinds], width,
                       label=label)
            ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(kinds))], kinds)
            ax.set_ylabel("GiB/s read on node B (1 object per get)")
            ax.set_title("a. spilled on A, consumed on B")
        elif name == "lost-node":
            labels = list(med)
            ax.barh(labels, [med[lb].get("all_back_s", 0) for lb in labels],
                    color=["tab:blue" if lb.startswith("valkey") else "tab:orange" for lb in labels])
            for i, lb in enumerate(labels):
                ax.text(med[lb].get("all_back_s", 0), i, f"  {med[lb].get('recovered', 0):.0f} back,"
                        f" {med[lb].get('lost', 0):.0f} lost", va="center", fontsize=8)
            ax.set_xlim(0, 1.4 * max(med[lb].get("all_back_s", 0) for lb in labels))
            ax.set_xlabel("s from crash until all that came back is on B")
            ax.set_title("b. node A crashes")
            continue
        else:
            labels = [lb for lb in med if "spill_gibps" in med[lb]]
            short = [lb.replace("valkey deployed: ", "").replace(" (max_io_workers)", "")
                     .replace("(defaults: 4 MiB chunks, 4 connections)", "(defaults)")[:40]
                     for lb in labels]
            ys = range(len(labels))
            ax.barh([y + 0.2 for y in ys], [med[lb].get("spill_gibps", 0) for lb in labels], 0.4,
                    label="spill")
            ax.barh([y - 0.2 for y in ys], [med[lb].get("restore_gibps", 0) for lb in labels], 0.4,
                    label="restore in order")
            ax.set_yticks(list(ys), short, fontsize=7)
            ax.set_xlabel("GiB/s (same node)")
            raw = [m["raw_get_gibps"] for m in med.values() if "raw_get_gibps" in m]
            ax.set_title("c. deployed valkey.conf" if name == "deployed" else
                         "d. same-node levers" + (f" (raw socket GET: {raw[0]:.2f} GiB/s)"
                                                  if raw else ""))
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


# -- command line ---------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line; usage errors for bad sizes and kinds."""
    p = argparse.ArgumentParser(prog="ray-valkey-spill scenarios", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=SCENARIOS + ("plot",))
    p.add_argument("--repeat", type=int, default=3, help="runs per backend, alternating")
    p.add_argument("--json-dir", default="docs/results", help="where scenarios_<name>.json goes")
    p.add_argument("--out", default="docs/scenarios.png", help="plot: the picture")
    p.add_argument("--transport", choices=("tcp", "unix"), default=None,
                   help="how Ray reaches the embedded server (default: tcp across nodes, unix "
                        "on one node)")
    p.add_argument("--maxmemory", default="3gb", help="maxmemory of the embedded server")
    p.add_argument("--baseline-dir", help="parent of the filesystem spill directories")
    p.add_argument("--throttle-mibps", type=float, default=250.0,
                   help="read/write limit of the throttled-disk row (0: no such row)")
    g = p.add_argument_group("cross-node")
    g.add_argument("--kinds", default="float64,int-tokens",
                   help=f"comma-separated, of {', '.join(ARRAY_KINDS)}")
    g.add_argument("--total-gib", type=float, default=0.5, help="per kind and read pass")
    g.add_argument("--object-mib", type=int, default=32)
    g.add_argument("--store-a-mib", type=int, default=128, help="object store of node A")
    g.add_argument("--store-b-mib", type=int, default=512, help="object store of node B")
    g = p.add_argument_group("lost-node")
    g.add_argument("--lost-kind", choices=ARRAY_KINDS, default="float64")
    g.add_argument("--actor-objects", type=int, default=6)
    g.add_argument("--task-objects", type=int, default=6)
    g.add_argument("--lost-object-mib", type=int, default=16)
    g.add_argument("--task-cost-s", type=float, default=2.0, help="work of one task output")
    g = p.add_argument_group("deployed and same-node")
    g.add_argument("--cluster-configs", help="directory of valkey.yaml and valkey-users.acl")
    g.add_argument("--same-node-gib", type=float, default=0.75)
    g.add_argument("--same-node-object-mib", type=int, default=64)
    g.add_argument("--same-node-kind", default="float64")
    g.add_argument("--object-store-mib", type=int, default=256)
    args = p.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in args.kinds if k not in ARRAY_KINDS]
    if bad:
        p.error(f"--kinds: {bad[0]!r} is not one of {', '.join(ARRAY_KINDS)}")
    if args.repeat < 1 or args.total_gib <= 0 or args.object_mib < 1 or args.same_node_gib <= 0:
        p.error("--repeat, --total-gib, --object-mib and --same-node-gib must be positive")
    if args.transport is None:
        args.transport = "unix" if args.scenario == "same-node" else "tcp"
    return args


RUNNERS = {"cross-node": scenario_cross_node, "lost-node": scenario_lost_node,
           "deployed": scenario_deployed, "same-node": scenario_same_node}


def main(argv: list[str] | None = None) -> int:
    """Run one scenario (or draw the plot); 1 if an object came back corrupted or lost where
    the scenario does not expect losses, else 0."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.scenario == "plot":
        plot(Path(args.json_dir), Path(args.out))
        print(f"wrote {args.out}")
        return 0
    server = EmbeddedValkey(config={"maxmemory": args.maxmemory})
    try:
        env = environment(server.url_for(args.transport))
        summary, table, errors = RUNNERS[args.scenario](args, server, env)
    finally:
        server.stop()
    command = "ray-valkey-spill scenarios " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\n{args.scenario}: `{command}` at commit {env['git_commit']}, {env['cpus']} CPUs, "
          f"Ray {env['ray']}, valkey {env.get('valkey_server')} ({args.transport}), "
          f"median of {args.repeat}\n")
    print(table)
    path = Path(args.json_dir) / f"scenarios_{args.scenario}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items()}
    path.write_text(json.dumps({"command": command, "config": config, "environment": env,
                                "summary": summary, "table": table, "errors": errors,
                                "ok": not errors}, indent=2, default=str))
    return report_problems(errors)


if __name__ == "__main__":
    sys.exit(main())
