"""Deployed scenario (c): the same-node run against valkey-server started with the exact
valkey.conf and ACL users of cluster_configs, spilling as the RayService's own user and prefix,
with the shipped persistence and its variants."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ...testing.embedded import EmbeddedValkey
from ..deployed_server import DeployedValkey, default_configs_dir
from .common import FS, alternate, errors_of, fmt, markdown_table, summarize
from .same_node import same_node, same_node_table, workload_args

# The user and prefix the shipped RayService (cluster_configs/ray/rayservice.yaml) spills as.
DEPLOYED_SPILL_USER, DEPLOYED_SPILL_PREFIX = "raysp-embed", "ray:embed:"
DEPLOYED_MAXMEMORY = {"maxmemory": "3gb"}  # shipped: 12gb; capped on a shared test machine
PERSISTENCE = {  # label -> overrides of the deployed valkey.conf
    "valkey deployed: AOF everysec (shipped)": {},
    # The fork and the whole data set written while the spill runs (the worst case of RDB).
    "valkey deployed: RDB, a snapshot every 20 s": {"appendonly": "no", "save": '"20 1"'},
    "valkey deployed: RDB only": {"appendonly": "no", "save": '"3600 1 300 100 60 10000"'},
    "valkey deployed: no persistence": {"appendonly": "no"},
}


def scenario_deployed(args, server: EmbeddedValkey, env: dict) -> tuple[dict, str, list[str]]:
    """The same-node run against the deployed valkey.conf and its persistence variants."""
    configs = Path(args.cluster_configs or default_configs_dir())
    wargs = workload_args(args)
    variants: list[tuple[str, Callable[[], dict]]] = []
    for label, overrides in PERSISTENCE.items():
        def run(overrides=overrides) -> dict:
            with DeployedValkey(configs, {**DEPLOYED_MAXMEMORY, **overrides}) as srv:
                # As the shipped RayService spills: its own user, under its own prefix.
                figures = same_node("valkey", wargs, srv.url,
                                     spill_options={**srv.options(DEPLOYED_SPILL_USER),
                                                    "prefix": DEPLOYED_SPILL_PREFIX},
                                     probe_options=srv.options("admin"))
                import valkey

                from ..deployed_server import password_env

                admin = valkey.Valkey(port=srv.port, username="admin",
                                      password=os.environ[password_env("admin")])
                info = admin.info("persistence")
                admin.close()
                figures.update(aof_current_size=info.get("aof_current_size", 0),
                               rdb_saves=info.get("rdb_saves", 0))
                return figures
        variants.append((label, run))
    variants.append((FS, lambda: same_node("filesystem", wargs)))
    runs = alternate(variants, args.repeat)
    summary = summarize(runs, {label: FS for label in PERSISTENCE})
    table = same_node_table(summary, runs, FS)
    aof = markdown_table(["server", "AOF bytes at the end of a run (median)", "RDB saves"],
                         [[label, fmt(summary["medians"][label].get("aof_current_size"), "{:,.0f}"),
                           fmt(summary["medians"][label].get("rdb_saves"), "{:.0f}")]
                          for label in PERSISTENCE])
    return summary, table + "\n\n" + aof, errors_of(runs)
