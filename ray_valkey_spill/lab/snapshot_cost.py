"""``ray-valkey-spill snapshot-cost``: what an RDB snapshot of the deployed valkey.conf costs as
the data set grows: the fork, the snapshot's time, its copy-on-write while spill-like writes
go on, and the final snapshot of a clean shutdown (what ``terminationGracePeriodSeconds`` must
cover).

    ray-valkey-spill snapshot-cost [--gib 1,2,4] [--value-mib 4] [--json results/snapshot_cost.json]

For each size: the deployed server (``lab.deployed_server``, the shipped save rules, maxmemory
raised to hold the data) is filled as admin with ``--value-mib`` values of random bytes; then
a BGSAVE of the idle server; then a BGSAVE while a writer overwrites those keys as fast as it
can (a spill's writes: every page it touches is copied), its write rate beside the same
writer's rate just before; then SIGTERM, timed until the process is gone. The last row
extrapolates to ``--target-gib`` (the shipped maxmemory; see ``extrapolate``).
docs/deployment.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from ..config import GiB, MiB
from .deployed_server import DeployedValkey, default_configs_dir
from .environment import environment

KEY_PREFIX = "ray:snapshot-cost:"
TARGET_GIB = 12  # the shipped standalone maxmemory (cluster_configs/overlays/standalone)
WRITE_PROBE_S = 1.0  # how long the writer's rate is measured before the snapshot


def _fill(client, n_values: int, value: bytes) -> None:
    for start in range(0, n_values, 16):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + 16, n_values)):
            pipe.set(f"{KEY_PREFIX}{i}", value)
        pipe.execute()


def _wait_no_save(client) -> None:
    while client.info("persistence")["rdb_bgsave_in_progress"]:
        time.sleep(0.01)


def _bgsave(client) -> dict:
    """One BGSAVE, waited for: wall seconds, fork ms, copy-on-write MiB."""
    _wait_no_save(client)
    t0 = time.perf_counter()
    client.bgsave()
    while client.info("persistence")["rdb_bgsave_in_progress"]:
        time.sleep(0.005)
    info = {**client.info("persistence"), **client.info("stats")}
    if info["rdb_last_bgsave_status"] != "ok":
        raise RuntimeError("BGSAVE failed; see the server log")
    return {"snapshot_s": time.perf_counter() - t0, "fork_ms": info["latest_fork_usec"] / 1000,
            "cow_mib": info["rdb_last_cow_size"] / MiB}


class _Writer:
    """Overwrites the filled keys in a loop on its own connection; counts the bytes written."""

    def __init__(self, srv: DeployedValkey, n_values: int, value: bytes):
        self.client, self.n, self.value = srv.admin_client(socket_timeout=600), n_values, value
        self.written = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            self.client.set(f"{KEY_PREFIX}{i % self.n}", self.value)
            self.written += len(self.value)
            i += 1

    def rate_during(self, action) -> tuple[float, object]:
        """(GiB/s written while ``action()`` runs, its result)."""
        before, t0 = self.written, time.perf_counter()
        result = action()
        return (self.written - before) / GiB / (time.perf_counter() - t0), result


def measure(gib: float, value_mib: int, configs_dir: Path,
            overrides: dict[str, str] | None = None) -> dict:
    """The figures of one data-set size (see the module docstring); ``overrides``: valkey.conf
    settings changed from the shipped ones."""
    value = os.urandom(value_mib * MiB)
    n_values = max(1, int(gib * GiB) // len(value))
    maxmemory = f"{int(gib * 1.5 * 1024) + 256}mb"
    with DeployedValkey(configs_dir, {"maxmemory": maxmemory, **(overrides or {})}) as srv:
        client = srv.admin_client(socket_timeout=600)
        try:
            t0 = time.perf_counter()
            _fill(client, n_values, value)
            fig = {"gib": n_values * len(value) / GiB, "fill_s": time.perf_counter() - t0,
                   "used_memory_gib": client.info("memory")["used_memory"] / GiB}
            idle = _bgsave(client)
            fig.update({f"idle_{k}": v for k, v in idle.items()})
            fig["rdb_gib"] = sum(p.stat().st_size for p in (srv.work / "data").glob("*.rdb")) / GiB
            writer = _Writer(srv, n_values, os.urandom(value_mib * MiB))
            writer.thread.start()
            try:
                fig["write_gibps_before"], _ = writer.rate_during(
                    lambda: time.sleep(WRITE_PROBE_S))
                fig["write_gibps_during"], busy = writer.rate_during(lambda: _bgsave(client))
            finally:
                writer.stop.set()
                writer.thread.join()
                writer.client.close()
            fig.update({f"busy_{k}": v for k, v in busy.items()})
        finally:
            client.close()
        t0, wall0 = time.perf_counter(), time.time()
        srv.process.terminate()  # a pod's SIGTERM: the shipped save rules save once more
        srv.process.wait(timeout=900)
        fig["shutdown_s"] = time.perf_counter() - t0
        fig["shutdown_saved"] = any(p.stat().st_mtime >= wall0 - 0.01
                                    for p in (srv.work / "data").glob("*.rdb"))
    return fig


def extrapolate(rows: list[dict], target_gib: float) -> dict:
    """Fork, snapshot and shutdown times at ``target_gib``: a straight line through the measured
    sizes (least squares; through zero with one size). Copy-on-write: its upper bound there,
    what the writer wrote during the extrapolated busy snapshot, at most the whole data set."""
    import numpy as np

    sizes = np.array([r["gib"] for r in rows])
    out: dict = {"gib": target_gib}
    for key in ("idle_fork_ms", "idle_snapshot_s", "busy_snapshot_s", "shutdown_s"):
        values = np.array([r[key] for r in rows])
        if len(set(sizes.tolist())) > 1:
            slope, intercept = np.polyfit(sizes, values, 1)
            out[key] = float(max(slope * target_gib + intercept, values.max()))
        else:
            out[key] = float(values[0] / sizes[0] * target_gib)
    rate = statistics.median(r["write_gibps_during"] for r in rows)
    out["busy_cow_mib"] = min(target_gib, rate * out["busy_snapshot_s"]) * 1024
    return out


COLUMNS = (("gib", "data GiB", "{:.2f}"), ("idle_fork_ms", "fork ms", "{:.1f}"),
           ("idle_snapshot_s", "snapshot s (idle)", "{:.1f}"),
           ("busy_snapshot_s", "snapshot s (writes)", "{:.1f}"),
           ("busy_cow_mib", "copy-on-write MiB (writes)", "{:.0f}"),
           ("write_gibps_before", "writes GiB/s before", "{:.2f}"),
           ("write_gibps_during", "writes GiB/s during", "{:.2f}"),
           ("shutdown_s", "SIGTERM to exit s", "{:.1f}"))


def table(rows: list[dict], projected: dict) -> str:
    """Markdown: one row per size, then the extrapolated one."""
    lines = ["| " + " | ".join(c[1] for c in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for row, tag in [(r, "") for r in rows] + [(projected, " (extrapolated)")]:
        cells = [pattern.format(row[key]) if key in row else "" for key, _, pattern in COLUMNS]
        cells[0] += tag
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; print the table; write the JSON."""
    p = argparse.ArgumentParser(prog="ray-valkey-spill snapshot-cost",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gib", default="1,2,4", help="comma-separated data-set sizes (GiB)")
    p.add_argument("--value-mib", type=int, default=4, help="value size (the default chunk)")
    p.add_argument("--target-gib", type=float, default=TARGET_GIB,
                   help="size the last row extrapolates to")
    p.add_argument("--cluster-configs", help="cluster_configs/ of a checkout")
    p.add_argument("--conf", action="append", default=[], metavar="NAME=VALUE",
                   help="a valkey.conf setting changed from the shipped one (repeatable)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    try:
        sizes = [float(s) for s in args.gib.split(",")]
    except ValueError:
        p.error(f"--gib: {args.gib!r} is not comma-separated numbers, e.g. 1,2,4")
    if not sizes or any(s <= 0 for s in sizes) or args.value_mib < 1:
        p.error("--gib sizes must be > 0 and --value-mib >= 1")
    overrides = {}
    for item in args.conf:
        name, eq, value = item.partition("=")
        if not eq or not name or name in ("port", "bind", "dir", "aclfile", "maxmemory"):
            p.error(f"--conf {item!r}: allowed is NAME=VALUE for a valkey.conf setting other "
                    "than port, bind, dir, aclfile and maxmemory (set per size)")
        overrides[name] = value
    configs = Path(args.cluster_configs or default_configs_dir())
    rows = []
    for i, gib in enumerate(sizes, 1):
        print(f"  {i}/{len(sizes)}: {gib:g} GiB", file=sys.stderr, flush=True)
        rows.append(measure(gib, args.value_mib, configs, overrides))
    projected = extrapolate(rows, args.target_gib)
    text = table(rows, projected)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            {"command": "ray-valkey-spill snapshot-cost " + " ".join(argv or sys.argv[1:]),
             "environment": environment(None), "overrides": overrides, "rows": rows,
             "extrapolated": projected, "table": text}, indent=2) + "\n")
    return 0
