"""The sizing rule of docs/deployment.md, checked against the shipped manifests.

For each Valkey layout, on the source files and on what `kubectl kustomize` renders:
- memory: maxmemory <= MEMORY_SHARE x the container's memory limit;
- spill capacity: the spill memory of the primaries (maxmemory x (1 - maxmemory-clients))
  holds at least the largest node object store of every Ray cluster sharing the server;
- GCS: each Ray cluster whose GCS keeps its tables on the server (gcsFaultToleranceOptions)
  adds GCS_BUDGET to what the spill memory must hold: its keys never expire, so they are never
  evicted (figures: `ray-valkey-spill gcs-footprint`, docs/deployment.md);
- disk: the PVC holds the AOF peak (base + growth + the new base of a rewrite) plus one RDB
  file, with DISK_FREE of the volume left free: the shipped RDB snapshots need less (the
  snapshot and the next one being written), the rest is room to turn AOF on.
"""

from __future__ import annotations

import re

import pytest

from cluster_configs_lib import (
    CLUSTER, OVERLAYS, RAY_KUSTOMIZATION, RAYSERVICE, REPO, STANDALONE, conf_directives,
    k8s_bytes, kubectl_kustomize, load_docs, valkey_bytes)

MEMORY_SHARE = 0.6
DISK_FREE = 0.1
# Per Ray cluster with GCS fault tolerance on the server: Ray's cap of 100 000 destroyed actors
# kept (x ~1.3 KiB measured) plus nodes, jobs, workers; not runtime_env packages (see docs).
GCS_BUDGET = 256 * 2**20
RDB_FILES = 1
DOC = REPO / "docs" / "deployment.md"
LAYOUTS = {"standalone": STANDALONE, "cluster": CLUSTER}


def valkey_size(docs: list[dict]) -> dict:
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and "valkey.conf" in d.get("data", {})]
    conf = conf_directives(cm["data"]["valkey.conf"])
    (server,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "valkey"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    cluster = conf.get("cluster-enabled") == ["yes"]
    replicas_per_primary = 1 if cluster else 0  # valkey-cli --cluster-replicas 1
    clients = conf["maxmemory-clients"][0]
    assert clients.endswith("%"), "the rule is written for a percentage"
    return {"maxmemory": valkey_bytes(conf["maxmemory"][0]),
            "clients_share": int(clients[:-1]) / 100,
            "limit": k8s_bytes(server["resources"]["limits"]["memory"]),
            "disk": k8s_bytes(claim["spec"]["resources"]["requests"]["storage"]),
            "growth": int(conf["auto-aof-rewrite-percentage"][0]) / 100,
            "primaries": sts["spec"]["replicas"] // (1 + replicas_per_primary)}


def largest_object_stores(docs: list[dict]) -> list[int]:
    """Per Ray cluster (RayService), the largest object store of one of its nodes."""
    out = []
    for svc in (d for d in docs if d["kind"] == "RayService"):
        spec = svc["spec"]["rayClusterConfig"]
        groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
        out.append(max(int(g["rayStartParams"]["object-store-memory"]) for g in groups))
    return out


def gcs_tenants(docs: list[dict]) -> int:
    """Ray clusters (RayServices) whose GCS keeps its tables in an external Redis/Valkey."""
    return sum(bool(d["spec"]["rayClusterConfig"].get("gcsFaultToleranceOptions", {})
                    .get("redisAddress")) for d in docs if d["kind"] == "RayService")


def check_rule(valkey: dict, stores: list[int], gcs_clusters: int = 0) -> None:
    assert stores, "no Ray cluster to size for"
    assert valkey["maxmemory"] <= MEMORY_SHARE * valkey["limit"], "no headroom above maxmemory"
    spill_memory = valkey["primaries"] * valkey["maxmemory"] * (1 - valkey["clients_share"])
    assert spill_memory >= sum(stores) + gcs_clusters * GCS_BUDGET, (
        f"spill memory {spill_memory / 2**30:.1f} GiB < the largest object stores "
        f"{[s / 2**30 for s in stores]} GiB of the clusters sharing the server + "
        f"{gcs_clusters} x {GCS_BUDGET / 2**20:.0f} MiB of GCS tables that never expire")
    peak = valkey["maxmemory"] * (2 + valkey["growth"] + RDB_FILES)
    assert peak <= (1 - DISK_FREE) * valkey["disk"], (
        f"AOF rewrite peak + RDB {peak / 2**30:.1f} GiB does not fit {valkey['disk'] / 2**30} GiB")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_shipped_source_files_satisfy_the_sizing_rule(layout):
    ray = load_docs(RAYSERVICE)
    # Ray's GCS cannot use the cluster layout (more than one shard): it counts on standalone only.
    gcs = gcs_tenants(ray) if layout == "standalone" else 0
    check_rule(valkey_size(load_docs(LAYOUTS[layout])), largest_object_stores(ray), gcs)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_rendered_overlays_satisfy_the_sizing_rule(layout):
    ray = kubectl_kustomize(RAY_KUSTOMIZATION)
    gcs = gcs_tenants(ray) if layout == "standalone" else 0
    check_rule(valkey_size(kubectl_kustomize(OVERLAYS[layout])), largest_object_stores(ray), gcs)


def test_the_rule_catches_an_undersized_server():
    valkey = valkey_size(load_docs(STANDALONE))
    stores = largest_object_stores(load_docs(RAYSERVICE))
    with pytest.raises(AssertionError, match="spill memory"):
        check_rule(valkey, stores + stores)  # a second cluster of the same size
    assert gcs_tenants(load_docs(RAYSERVICE)) == 1  # the shipped RayService keeps its GCS here
    with pytest.raises(AssertionError, match="GCS tables that never expire"):
        check_rule(valkey, stores, gcs_clusters=4)  # four GCS tenants eat the margin
    with pytest.raises(AssertionError, match="does not fit"):
        check_rule(dict(valkey, disk=valkey["disk"] // 2), stores)
    with pytest.raises(AssertionError, match="headroom"):
        check_rule(dict(valkey, limit=valkey["maxmemory"]), stores)


def test_docs_state_the_same_rule():
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Sizing"):]
    for number in (f"{MEMORY_SHARE:.0%}", f"{1 - DISK_FREE:.1f}", "3.5",
                   f"{GCS_BUDGET // 2**20} MiB"):
        assert number in section, f"docs/deployment.md, Sizing, does not state {number}"
    assert re.search(r"largest .*object store", section)
    assert "ray-valkey-spill gcs-footprint" in section
