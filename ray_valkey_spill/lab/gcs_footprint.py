"""``ray-valkey-spill gcs-footprint``: how many bytes Ray's GCS keeps in Valkey (never expiring).

    ray-valkey-spill gcs-footprint [--jobs 20] [--actors 20] [--working-dir-kib 1024]
                                   [--json results/gcs_footprint.json]

Starts an embedded valkey-server and ``ray start --head`` with GCS fault tolerance on it (as
KubeRay does: RAY_REDIS_ADDRESS, RAY_external_storage_namespace), then measures the memory of
the namespace's tables (MEMORY USAGE SAMPLES 0 of every RAY<ns>@* key) after each step: the
idle head; ``--jobs`` drivers that each run a few tasks and exit; ``--actors`` detached
actors; the same actors killed; one job with a ``working_dir`` of ``--working-dir-kib``
(Ray uploads it into its KV table), and the same once the job ended and the driver's pin on
the package expired (``--pin-s``, RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S; 600 s by
default in Ray). Prints a table (bytes per table after each step, and the
growth per job / per actor) and writes it as JSON. docs/deployment.md (Sizing) quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from ..prefixes import gcs_prefix
from ..testing.embedded import EmbeddedValkey, free_port
from .environment import environment

JOB = """
import sys, ray
ray.init(address=sys.argv[1])
@ray.remote(num_cpus=0)
def f(i):
    return i
assert ray.get([f.remote(i) for i in range(5)]) == list(range(5))
"""
ACTORS = """
import sys, ray
ray.init(address=sys.argv[1], namespace="footprint")
@ray.remote(num_cpus=0)
class A:
    def ping(self):
        return 1
n = int(sys.argv[3])
if sys.argv[2] == "create":
    actors = [A.options(name=f"a{i}", lifetime="detached").remote() for i in range(n)]
    assert ray.get([a.ping.remote() for a in actors]) == [1] * n
else:
    for i in range(n):
        ray.kill(ray.get_actor(f"a{i}"))
"""
WORKING_DIR_JOB = """
import sys, ray
ray.init(address=sys.argv[1], runtime_env={"working_dir": sys.argv[2]})
@ray.remote(num_cpus=0)
def f():
    return 1
assert ray.get(f.remote()) == 1
"""


def measure(client, namespace: str) -> dict[str, int]:
    """{table: bytes} of one GCS namespace (MEMORY USAGE SAMPLES 0: every field counted)."""
    prefix = gcs_prefix(namespace)
    out = {}
    for key in client.scan_iter(match=prefix + "*", count=1000):
        out[key.decode()[len(prefix):]] = int(client.memory_usage(key, samples=0) or 0)
    return dict(sorted(out.items()))


def _run(code: str, *args: str, env: dict) -> None:
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"gcs-footprint: a driver failed: {done.stderr[-2000:]}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ray-valkey-spill gcs-footprint``."""
    p = argparse.ArgumentParser(prog="ray-valkey-spill gcs-footprint",
                                description="Bytes Ray's GCS keeps in Valkey, step by step.")
    p.add_argument("--jobs", type=int, default=20, help="drivers that run 5 tasks and exit")
    p.add_argument("--actors", type=int, default=20, help="detached actors (then killed)")
    p.add_argument("--working-dir-kib", type=int, default=1024,
                   help="size of one job's working_dir (random bytes, incompressible)")
    p.add_argument("--pin-s", type=int, default=5, help="the working_dir job's temporary pin "
                   "on its package (RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S)")
    p.add_argument("--json", help="write the steps, growth rates and environment here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the steps against a fresh server and head; print the table; 0 on success."""
    args = build_parser().parse_args(argv)
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    tmp = tempfile.mkdtemp(prefix="rvsfp", dir="/tmp")  # Ray's socket paths must stay short
    namespace = f"fp{uuid.uuid4().hex[:12]}"
    steps: list[tuple[str, dict[str, int]]] = []
    with EmbeddedValkey() as server:
        client = server.client()
        env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "disabled",
               "RAY_REDIS_ADDRESS": f"127.0.0.1:{server.port}",
               "RAY_external_storage_namespace": namespace}
        gcs_port = free_port()
        address = f"127.0.0.1:{gcs_port}"
        started = subprocess.run(
            [ray_bin, "start", "--head", f"--port={gcs_port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp}"],
            env=env, capture_output=True, text=True, timeout=180)
        try:
            if started.returncode != 0:
                raise SystemExit(f"gcs-footprint: ray start failed: {started.stderr[-2000:]}")
            time.sleep(2)
            steps.append(("idle head", measure(client, namespace)))
            for _ in range(args.jobs):
                _run(JOB, address, env=env)
            steps.append((f"+{args.jobs} jobs", measure(client, namespace)))
            _run(ACTORS, address, "create", str(args.actors), env=env)
            steps.append((f"+{args.actors} detached actors", measure(client, namespace)))
            _run(ACTORS, address, "kill", str(args.actors), env=env)
            time.sleep(2)
            steps.append((f"{args.actors} actors killed", measure(client, namespace)))
            work = os.path.join(tmp, "wd")
            os.makedirs(work)
            with open(os.path.join(work, "blob.bin"), "wb") as f:
                f.write(os.urandom(args.working_dir_kib * 1024))
            _run(WORKING_DIR_JOB, address, work, env={
                **env, "RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S": str(args.pin_s)})
            steps.append((f"+1 job, working_dir {args.working_dir_kib} KiB",
                          measure(client, namespace)))
            time.sleep(args.pin_s + 10)
            steps.append(("that job's package unpinned", measure(client, namespace)))
        finally:
            subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
            shutil.rmtree(tmp, ignore_errors=True)
        server_version = client.info("server").get("valkey_version")
        client.close()
    totals = [sum(t.values()) for _, t in steps]
    growth = {"bytes_per_job": (totals[1] - totals[0]) / max(args.jobs, 1),
              "bytes_per_detached_actor": (totals[2] - totals[1]) / max(args.actors, 1),
              "bytes_per_killed_actor": (totals[3] - totals[1]) / max(args.actors, 1),
              "working_dir_job_bytes": totals[4] - totals[3],
              "working_dir_left_after_unpin_bytes": totals[5] - totals[3]}
    tables = sorted({name for _, t in steps for name in t})
    print(f"{'step':<36} {'total KiB':>10}  " + " ".join(f"{n[:14]:>14}" for n in tables))
    for (label, t), total in zip(steps, totals):
        print(f"{label:<36} {total / 1024:>10.1f}  "
              + " ".join(f"{t.get(n, 0) / 1024:>14.1f}" for n in tables))
    print("growth: " + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in growth.items()))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": vars(args), "steps": [{"step": s, "tables": t} for s, t in steps],
                       "growth": growth, "environment": {**environment(None),
                                                         "valkey_server": server_version}},
                      f, indent=2)
    return 0
