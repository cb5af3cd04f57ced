"""Spill and restore through each supported Ray, against that Ray's own filesystem spilling.

    ray-valkey-spill stress-versions --venv .ci/venvs/ray-2.40.0 --venv .ci/venvs/ray-2.50.1 \\
        --venv .venv --rounds 3 --json docs/results/stress_ray_versions.json -- \\
        --data float64 --total-gib 1 --object-mib 64 --object-store-mib 512

Each venv has this package and one Ray installed. Every round runs ``ray-valkey-spill stress
--baseline filesystem --repeat 1`` once per venv, venvs in turn, each round starting with the
next one (so a noisy minute on a shared machine hits every version alike); within one stress
run the two backends run side by side.
A version's ratio is the median over rounds of (valkey / filesystem) of the same run. Prints
one markdown row per Ray version and writes every run's figures to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

FIGURES = ("spill_gibps", "restore_gibps", "random_restore_gibps", "concurrent_gibps")


def _run(venv: str, stress_args: list[str]) -> dict:
    cli = os.path.join(venv, "bin", "ray-valkey-spill")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "stress.json")
        cmd = [cli, "stress", "--baseline", "filesystem", "--repeat", "1", "--no-progress",
               "--json", out, *stress_args]
        started = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not os.path.exists(out):
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
            raise SystemExit(f"stress failed in {venv} (exit {done.returncode})")
        with open(out) as f:
            result = json.load(f)
    result["wall_s"] = time.monotonic() - started
    return result


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print one row per Ray version; exit 1 if any run lost or leaked data."""
    parser = argparse.ArgumentParser(prog="ray-valkey-spill stress-versions",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", action="append", required=True,
                        help="a virtualenv with this package and one Ray (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write every run and the medians here")
    parser.add_argument("stress_args", nargs=argparse.REMAINDER,
                        help="after --: arguments for `ray-valkey-spill stress`")
    args = parser.parse_args(argv)
    stress_args = [a for a in args.stress_args if a != "--"]
    runs: dict[str, list[dict]] = {venv: [] for venv in args.venv}
    for round_index in range(args.rounds):
        # Each round starts with the next venv: none is always the one run after the others.
        shift = round_index % len(args.venv)
        for venv in args.venv[shift:] + args.venv[:shift]:
            result = _run(venv, stress_args)
            runs[venv].append(result)
            ray_version = result["environment"]["ray"]
            ratios = result["summary"]["ratios_valkey_over_baseline"]
            print(f"round {round_index + 1}: Ray {ray_version}: spill {ratios['spill_gibps']:.2f}x"
                  f" restore {ratios['restore_gibps']:.2f}x ({result['wall_s']:.0f} s)",
                  flush=True)
    rows = []
    for results in runs.values():
        env = results[0]["environment"]
        row = {"ray": env["ray"], "git_commit": env.get("git_commit"), "runs": len(results),
               "ok": all(r["ok"] for r in results)}
        for name in FIGURES:
            row[f"valkey_{name}"] = _median([r["summary"]["valkey"][name] for r in results])
            row[f"filesystem_{name}"] = _median([r["summary"]["filesystem"][name]
                                                 for r in results])
            row[f"ratio_{name}"] = _median([r["summary"]["ratios_valkey_over_baseline"][name]
                                            for r in results])
        rows.append(row)
    print("\n| Ray | spill GiB/s valkey / fs | restore in order | restore random "
          "| restore from tasks | runs | lost / corrupt / leaked |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        cells = [f"{row[f'valkey_{n}']:.2f} / {row[f'filesystem_{n}']:.2f} "
                 f"(**{row[f'ratio_{n}']:.2f}x**)" for n in FIGURES]
        print(f"| {row['ray']} | " + " | ".join(cells)
              + f" | {row['runs']} | {'none' if row['ok'] else 'SOME'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "ray-valkey-spill stress-versions --rounds "
                                  f"{args.rounds} -- " + " ".join(stress_args),
                       "rows": rows,
                       "runs": {r[0]["environment"]["ray"]: r for r in runs.values()}},
                      f, indent=1)
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
