"""Deployed scenario (c): the same-node run against valkey-server started with the exact
valkey.conf and ACL users of cluster_configs, spilling as the RayService's own user and prefix,
with the shipped persistence beside the other persistence settings (AOF everysec, RDB only,
a snapshot always running, none)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Callable

from ...config import GiB, MiB
from ...testing.embedded import EmbeddedValkey
from ..deployed_server import DeployedValkey, default_configs_dir, deployed_settings
from .common import FS, alternate, errors_of, fmt, markdown_table, summarize
from .same_node import same_node, same_node_table, workload_args

# The user and prefix the shipped RayService (cluster_configs/ray/rayservice.yaml) spills as.
DEPLOYED_SPILL_USER, DEPLOYED_SPILL_PREFIX = "raysp-embed", "ray:embed:"
DEPLOYED_MAXMEMORY = {"maxmemory": "3gb"}  # shipped: 12gb; capped on a shared test machine
# valkey-server's own save rules (its valkey.conf template): the RDB row uses them when the
# shipped conf has none.
VALKEY_DEFAULT_SAVE = "3600 1 300 100 60 10000"
# The shipped save rules, plus a BGSAVE as soon as the last snapshot ended, all through the
# run: the upper bound of what any save rule costs a spill (fork, copy-on-write, disk). (A
# rule such as "save 1 1" fires from serverCron only, and missed the 2-3 s spill phase.)
SNAPSHOT_LOOP = "RDB, a snapshot always running (BGSAVE loop)"
LABEL = "valkey deployed: "
# Written after the spill run, then the server restarted cleanly and crashed: what each
# setting keeps, and how long a clean restart takes (its final snapshot, loading).
RESTART_PROBE_BYTES, RESTART_PROBE_VALUE = 256 * MiB, 4 * MiB
RESTART_PROBE_PREFIX = "restart-probe:"


def conf_persistence(conf_text: str) -> dict[str, str]:
    """``appendonly``, ``appendfsync`` and ``save`` (its rules, unquoted; "" for none) as a
    valkey.conf text sets them, with valkey-server's defaults for what it leaves out."""
    found = {"appendonly": "no", "appendfsync": "everysec"}
    save: list[str] | None = None  # None: no save line, valkey-server's default rules apply
    for line in conf_text.splitlines():
        words = line.split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        value = words[1].strip().strip('"') if len(words) > 1 else ""
        if words[0] == "save":  # save "" clears the rules, each other save line adds some
            save = [] if not value else (save or []) + [value]
        elif words[0] in found:
            found[words[0]] = value
    return {**found, "save": VALKEY_DEFAULT_SAVE if save is None else " ".join(save)}


def _same(a: dict[str, str], b: dict[str, str]) -> bool:
    aof = a["appendonly"] == b["appendonly"]
    return aof and a["save"] == b["save"] and (a["appendonly"] == "no"
                                               or a["appendfsync"] == b["appendfsync"])


def persistence_variants(conf_text: str) -> dict[str, dict[str, str]]:
    """Label -> overrides of the deployed valkey.conf: the shipped conf as is first, then AOF
    everysec, RDB only (the shipped save rules, else valkey-server's), RDB snapshots back to
    back and no persistence, each unless it is what the shipped conf already does (its label
    then says so)."""
    shipped = conf_persistence(conf_text)
    rules = shipped["save"] or VALKEY_DEFAULT_SAVE
    candidates = {
        "AOF everysec": {"appendonly": "yes", "appendfsync": "everysec", "save": ""},
        f"RDB only (save {rules})": {"appendonly": "no", "save": rules},
        SNAPSHOT_LOOP: {"appendonly": "no", "save": rules},
        "no persistence": {"appendonly": "no", "save": ""},
    }
    same = [name for name, p in candidates.items()
            if name != SNAPSHOT_LOOP and _same(shipped, {**shipped, **p})]
    described = " = ".join(same) or (f"appendonly {shipped['appendonly']}, "
                                     f"save \"{shipped['save']}\"")
    variants = {f"{LABEL}shipped valkey.conf = {described}": {}}
    for name, p in candidates.items():
        if name not in same:
            variants[LABEL + name] = {k: f'"{v}"' if k == "save" else v for k, v in p.items()}
    return variants


def server_figures(srv: DeployedValkey) -> dict:
    """What persistence did during a run: AOF size, snapshots and forks (INFO), and the bytes
    the server and its fork children sent to the disk (``write_bytes`` of ``/proc/<pid>/io``,
    which counts reaped children too; ``wchar`` would count socket replies as well)."""
    admin = srv.admin_client()
    try:
        info = {**admin.info("persistence"), **admin.info("stats")}
    finally:
        admin.close()
    figures = {"aof_current_size": info.get("aof_current_size", 0),
               "rdb_saves": info.get("rdb_saves", 0), "aof_rewrites": info.get("aof_rewrites", 0),
               "total_forks": info.get("total_forks", 0),
               "latest_fork_ms": info.get("latest_fork_usec", 0) / 1000,
               "cow_peak_mib": max(info.get("rdb_last_cow_size", 0),
                                   info.get("aof_last_cow_size", 0)) / MiB}
    try:
        io = dict(line.split(": ") for line in
                  Path(f"/proc/{srv.process.pid}/io").read_text().splitlines())
        figures["disk_written_gib"] = int(io["write_bytes"]) / GiB
    except (OSError, KeyError, ValueError, AttributeError):
        pass  # not Linux, or not readable: the INFO figures remain
    return figures


class SnapshotLoop:
    """Context manager: a thread that starts a BGSAVE (as admin) whenever none is running."""

    def __init__(self, srv: DeployedValkey):
        self.client = srv.admin_client()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import valkey

        while not self.stop.is_set():
            try:
                if not self.client.info("persistence")["rdb_bgsave_in_progress"]:
                    self.client.bgsave()
            except valkey.exceptions.ResponseError:
                pass  # "Background save already in progress": the next check catches up
            self.stop.wait(0.02)

    def __enter__(self) -> "SnapshotLoop":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.client.close()


def restart_figures(srv: DeployedValkey) -> dict:
    """Write ``RESTART_PROBE_BYTES`` as admin, restart the server cleanly (SIGTERM, timed from
    the signal until it serves again) and count the probe keys kept; write them again and
    crash it (SIGKILL 1.5 s later: AOF everysec has fsynced them) and count again."""
    n = RESTART_PROBE_BYTES // RESTART_PROBE_VALUE
    value = os.urandom(RESTART_PROBE_VALUE)

    def write(tag: str) -> None:
        with srv.admin_client() as client:
            for i in range(n):
                client.set(f"{RESTART_PROBE_PREFIX}{tag}:{i}", value)

    def kept(tag: str) -> float:
        with srv.admin_client() as client:
            return sum(client.exists(f"{RESTART_PROBE_PREFIX}{tag}:{i}") for i in range(n)) / n

    write("clean")
    t0 = time.perf_counter()
    srv.restart()
    figures = {"clean_restart_s": time.perf_counter() - t0,
               "kept_after_clean_restart": kept("clean")}
    write("crash")
    time.sleep(1.5)
    srv.restart(crash=True)
    figures["kept_after_crash"] = kept("crash")
    return figures


def scenario_deployed(args, server: EmbeddedValkey, env: dict) -> tuple[dict, str, list[str]]:
    """The same-node run against the deployed valkey.conf and its persistence variants."""
    configs = Path(args.cluster_configs or default_configs_dir())
    wargs = workload_args(args)
    persistence = persistence_variants(deployed_settings(configs)[0])
    variants: list[tuple[str, Callable[[], dict]]] = []
    for label, overrides in persistence.items():
        def run(overrides=overrides, loop=label == LABEL + SNAPSHOT_LOOP) -> dict:
            with DeployedValkey(configs, {**DEPLOYED_MAXMEMORY, **overrides}) as srv:
                with SnapshotLoop(srv) if loop else contextlib.nullcontext():
                    # As the shipped RayService spills: its own user, under its own prefix.
                    figures = same_node("valkey", wargs, srv.url,
                                         spill_options={**srv.options(DEPLOYED_SPILL_USER),
                                                        "prefix": DEPLOYED_SPILL_PREFIX},
                                         probe_options=srv.options("admin"))
                figures.update(server_figures(srv))
                figures.update(restart_figures(srv))
                return figures
        variants.append((label, run))
    variants.append((FS, lambda: same_node("filesystem", wargs)))
    runs = alternate(variants, args.repeat)
    summary = summarize(runs, {label: FS for label in persistence})
    summary["persistence_overrides"] = persistence
    table = same_node_table(summary, runs, FS)
    columns = {"aof_current_size": ("AOF MiB at the end", "{:,.0f}", 1 / MiB),
               "disk_written_gib": ("GiB written to disk", "{:.2f}", 1),
               "rdb_saves": ("RDB snapshots", "{:.0f}", 1),
               "total_forks": ("forks", "{:.0f}", 1),
               "latest_fork_ms": ("last fork ms", "{:.1f}", 1),
               "cow_peak_mib": ("last copy-on-write MiB", "{:.0f}", 1),
               "clean_restart_s": (f"clean restart s ({RESTART_PROBE_BYTES // MiB} MiB)",
                                   "{:.1f}", 1),
               "kept_after_clean_restart": ("kept after it", "{:.0%}", 1),
               "kept_after_crash": ("kept after a crash", "{:.0%}", 1)}

    def cell(label: str, key: str) -> str:
        _, pattern, scale = columns[key]
        v = summary["medians"][label].get(key)
        return fmt(v * scale if v is not None else None, pattern)

    io = markdown_table(["server (medians)"] + [c[0] for c in columns.values()],
                        [[label] + [cell(label, key) for key in columns] for label in persistence])
    return summary, table + "\n\n" + io, errors_of(runs)
