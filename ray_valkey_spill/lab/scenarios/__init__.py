"""Where a shared spill tier beats local disk: scenarios run side by side with Ray's own
filesystem spilling in one invocation, backends alternating, medians of ``--repeat`` runs.

    ray-valkey-spill scenarios cross-node [--kinds float64,int-tokens] [--total-gib 0.5]
    ray-valkey-spill scenarios lost-node  [--task-cost-s 2]
    ray-valkey-spill scenarios deployed   [--cluster-configs cluster_configs]
    ray-valkey-spill scenarios same-node
    ray-valkey-spill scenarios ray-data   [--ray-data-mib 1024] [--object-store-mib 256]
    ray-valkey-spill scenarios plot       [--out docs/scenarios.png]

cross-node  a local 3-node Ray (head with the driver, node A, node B): A makes the objects and
            spills all of them, tasks on B read them (one per ``ray.get``, then 8 per ``ray.get``).
lost-node   A spills actor outputs (no lineage) and task outputs that cost ``--task-cost-s``
            each, A's raylet is SIGKILLed, B fetches everything: recovered, lost, time until all
            back; with Ray's default failure detection and with a fast one.
deployed    the same-node spill/restore run against valkey-server started with the exact
            valkey.conf and ACL users of cluster_configs (maxmemory capped at 3gb) spilling as
            the RayService's own user and prefix: the shipped persistence beside AOF everysec,
            RDB only, a snapshot always running and none; what a clean restart and a crash keep.
same-node   restore levers (connections, chunk size, restore workers) against Ray's filesystem
            restore from the page cache and from /dev/shm, and the raw socket GET of the bytes.
ray-data    Ray Data on a dataset bigger than the object store: random_shuffle, sort on a random
            key (with a payload column), a materialized map_batches pipeline read twice; every
            row checked; Ray's spilled bytes and the keys left after shutdown per workload.
Every scenario with ``--throttle-mibps`` > 0 (and root) adds a filesystem row on a throttled
disk read cold (cgroup block-I/O limit, spill files evicted from the page cache first).

Each prints Markdown tables and writes ``<json-dir>/scenarios_<name>.json``; ``plot`` draws
them all into one picture. Every object read is checked byte for byte; exit 1 if any object
was lost (where the scenario does not expect it) or corrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ...cli.options import report_problems
from ...testing.embedded import EmbeddedValkey
from ..environment import environment
from ..multinode import ARRAY_KINDS
from ..ray_data_workload import WORKLOADS as RAY_DATA_WORKLOADS
from .deployed import scenario_deployed
from .multi_node import scenario_cross_node, scenario_lost_node
from .plot import plot
from .ray_data import KNOBS, scenario_ray_data
from .same_node import scenario_same_node

SCENARIOS = ("cross-node", "lost-node", "deployed", "same-node", "ray-data")


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
    g = p.add_argument_group("ray-data (also --object-store-mib)")
    g.add_argument("--ray-data-mib", type=int, default=1024, help="dataset size (MiB)")
    g.add_argument("--ray-data-row-bytes", type=int, default=8192, help="payload bytes per row")
    g.add_argument("--ray-data-blocks", type=int, default=64)
    g.add_argument("--ray-data-payload", choices=("random", "tokens"), default="random")
    g.add_argument("--ray-data-workloads", default=",".join(RAY_DATA_WORKLOADS),
                   help=f"comma-separated, of {', '.join(RAY_DATA_WORKLOADS)}")
    g.add_argument("--ray-data-variants", default="",
                   help=f"semicolon-separated extra rows, of: {'; '.join(KNOBS)}".replace("%", "%%"))
    args = p.parse_args(argv)
    args.ray_data_variants = [v.strip() for v in args.ray_data_variants.split(";") if v.strip()]
    unknown = [v for v in args.ray_data_variants if v not in KNOBS]
    if unknown:
        p.error(f"--ray-data-variants: {unknown[0]!r} is not one of {'; '.join(KNOBS)}")
    args.ray_data_workloads = tuple(w for w in args.ray_data_workloads.split(",") if w)
    bad = [w for w in args.ray_data_workloads if w not in RAY_DATA_WORKLOADS] or (
        [""] if not args.ray_data_workloads else [])
    if bad:
        p.error(f"--ray-data-workloads: {bad[0]!r} is not one of {', '.join(RAY_DATA_WORKLOADS)}")
    if args.ray_data_mib < 1 or args.ray_data_row_bytes < 64 or args.ray_data_blocks < 1:
        p.error("--ray-data-mib and --ray-data-blocks must be positive, --ray-data-row-bytes "
                ">= 64")
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
           "deployed": scenario_deployed, "same-node": scenario_same_node,
           "ray-data": scenario_ray_data}


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

