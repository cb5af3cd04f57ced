"""Spill stress test: push more data than the object store holds through Ray, read it all back.

    ray-valkey-spill stress [--url URL] [--total-gib 2] [--object-mib 64] [--data KIND]
                            [--baseline filesystem] [--repeat N] [--json PATH]

Starts its own local Ray (and, without ``--url``, its own embedded valkey-server), puts
``--total-gib`` of objects so that most of them spill, then reads every object back in order,
in random order and some concurrently from Ray tasks, checking every byte against an xxh3-64
digest taken when the object was made. With ``--baseline filesystem`` the identical workload
runs with Ray's built-in filesystem spilling in the same invocation, backends alternating,
and both are printed side by side with ratios (only ratios from one run mean anything on a
shared machine). Exit status: 0 when nothing was lost, corrupted or leaked, 1 otherwise.

Spill throughput = original bytes / (time of the ``ray.put`` calls + the wait until the raylet
reports the spilling done), data generation excluded. Restore throughput = bytes read / time
of the ``ray.get`` calls of the in-order pass (checksumming excluded). Spilled bytes come from
the raylet's stats (``get_memory_info_reply``, needs ``grpcio``); without grpcio the storage
itself is watched instead (keys in Valkey, files in the directory).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

from ..testing.embedded import EmbeddedValkey, add_transport_argument
from ..cli.options import EXIT_OK, report_problems
from .environment import environment
from .workload import RunResult, add_workload_options, run_once


ROWS = [  # (figure, label, format, higher is better?)
    ("spill_gibps", "spill GiB/s (put + wait)", "{:.3f}", True),
    ("restore_gibps", "restore GiB/s (in order)", "{:.3f}", True),
    ("random_restore_gibps", "restore GiB/s (random)", "{:.3f}", True),
    ("concurrent_gibps", "restore GiB/s (tasks)", "{:.3f}", True),
    ("latency_p50_ms", "get latency p50 ms", "{:.1f}", False),
    ("latency_p99_ms", "get latency p99 ms", "{:.1f}", False),
    ("raylet_spill_gibps", "raylet spill GiB/s", "{:.3f}", True),
    ("raylet_restore_gibps", "raylet restore GiB/s", "{:.3f}", True),
    ("spilled_bytes_total", "spilled bytes (raylet)", "{:,.0f}", None),
    ("stored_bytes_after_put", "stored bytes after put", "{:,.0f}", None),
    ("stored_per_spilled_byte", "stored / spilled bytes", "{:.3f}", False),
    ("valkey_memory_per_spilled_byte", "used_memory / spilled", "{:.3f}", False),
    ("compression_ratio_peak", "peak used_memory / spilled", "{:.3f}", False),
    ("valkey_used_memory_peak", "valkey used_memory peak", "{:,.0f}", None),
    ("left_after_drop", "keys/files left (refs dropped)", "{:.0f}", None),
    ("left_after_shutdown", "keys/files left (shutdown)", "{:.0f}", None),
    ("lost", "objects lost", "{:.0f}", None),
    ("corrupted", "objects corrupted", "{:.0f}", None),
]


def _median(results: list[RunResult], name: str) -> float | None:
    vals = [r.figures[name] for r in results if isinstance(r.figures.get(name), (int, float))]
    return statistics.median(vals) if vals else None


def summarize(runs: dict[str, list[RunResult]]) -> dict[str, Any]:
    """Medians of every figure per backend, each run's figures and errors, and with two
    backends the median per-run ratio valkey/baseline."""
    out: dict[str, Any] = {}
    for backend, results in runs.items():
        out[backend] = {name: _median(results, name) for name, *_ in ROWS}
        out[backend]["runs"] = [r.figures for r in results]
        out[backend]["errors"] = [e for r in results for e in r.errors]
    if len(runs) == 2:
        a, b = runs["valkey"], runs[next(k for k in runs if k != "valkey")]
        ratios = {}
        for name, _, _, better in ROWS:
            if better is None:
                continue
            per_rep = [x.figures[name] / y.figures[name] for x, y in zip(a, b)
                       if x.figures.get(name) and y.figures.get(name)]
            if per_rep:
                ratios[name] = statistics.median(per_rep)
        out["ratios_valkey_over_baseline"] = ratios
    return out


def print_table(summary: dict[str, Any], backends: list[str], repeat: int) -> None:
    """Print the summary as a table, one column per backend (rows without figures left out)."""
    ratios = summary.get("ratios_valkey_over_baseline", {})
    head = f"{'median of ' + str(repeat) + ' run(s)':<32}" + "".join(f"{b:>16}" for b in backends)
    if ratios:
        head += f"{'valkey/baseline':>17}"
    print(head)
    print("-" * len(head))
    for name, label, fmt, _ in ROWS:
        cells = []
        for b in backends:
            v = summary[b].get(name)
            cells.append(f"{fmt.format(v) if v is not None else '-':>16}")
        if not any(c.strip() != "-" for c in cells):
            continue
        line = f"{label:<32}" + "".join(cells)
        if ratios:
            r = ratios.get(name)
            line += f"{(f'{r:.2f}x' if r is not None else ''):>17}"
        print(line)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line; exits with a usage error on a non-positive size or count."""
    p = argparse.ArgumentParser(prog="ray-valkey-spill stress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="Valkey server URL (default: start an embedded valkey-server)")
    add_transport_argument(p)
    add_workload_options(p)
    p.add_argument("--baseline", choices=("filesystem",), help="also run Ray's filesystem spilling")
    p.add_argument("--repeat", type=int, default=1, help="runs per backend (alternating); medians")
    p.add_argument("--json", help="write every figure, the configuration and versions here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.total_gib <= 0 or args.object_mib < 1:
        p.error("--repeat, --total-gib and --object-mib must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the stress test (on an embedded server without ``--url``) and print the table; 1 if
    any run reported a problem (an object lost, corrupted or left behind), else 0."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    backends = ["valkey"] + ([args.baseline] if args.baseline else [])
    server = None
    url = args.url
    if url is None:
        server = EmbeddedValkey()
        url = server.url_for(args.transport)
    try:
        env = environment(url)
        runs: dict[str, list[RunResult]] = {b: [] for b in backends}
        for rep in range(args.repeat):
            for backend in backends:
                print(f"[{rep + 1}/{args.repeat}] {backend}: {args.total_gib} GiB of {args.data} "
                      f"in {args.object_mib} MiB objects through a {args.object_store_mib} MiB "
                      "object store", file=sys.stderr)
                runs[backend].append(run_once(backend, args, url if backend == "valkey" else None,
                                              progress=not args.no_progress))
                for err in runs[backend][-1].errors[:10]:
                    print(f"  ERROR: {err}", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    summary = summarize(runs)
    print()
    print(f"data={args.data} total={args.total_gib} GiB object={args.object_mib} MiB "
          f"store={args.object_store_mib} MiB  ray {env['ray']}  valkey {env.get('valkey_server')} "
          f"({env.get('transport')})"
          f"  {env['cpus']} CPUs  commit {env['git_commit']}")
    print_table(summary, backends, args.repeat)
    failures = [e for b in backends for e in summary[b]["errors"]]
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        config = {k: v for k, v in vars(args).items() if k != "json"}
        config["url"] = "embedded" if server is not None else args.url
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": config, "environment": env, "summary": summary,
                       "ok": not failures}, f, indent=2, default=str)
    if failures:
        return report_problems(failures)
    print("OK: no object lost or corrupted, no key left behind")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
