"""Offline checks of Ray's GCS as a tenant of the shared Valkey (KubeRay gcsFaultToleranceOptions).

The RayService's gcsFaultToleranceOptions must pass the KubeRay CRD schema and the rules
KubeRay's own validation enforces (ray-project/kuberay ray-operator/controllers/ray/utils/
validation.go: no redis-password/redis-username in rayStartParams, no REDIS_PASSWORD or
RAY_REDIS_ADDRESS in the head's env when the options are set), point at the standalone server
as the GCS ACL user, and leave the namespace to KubeRay (the RayCluster UID). The GCS key
grammar lives in prefixes.py; its validation is checked here.
"""

from __future__ import annotations

import copy
import json
import fnmatch

import pytest

from cluster_configs_lib import (ACL_FILE, RAYSERVICE, acl_rules, crd_errors, crd_schema,
                                 key_patterns, load_docs, one, ray_containers)
from ray_valkey_spill.acl_rules import gcs_user_rule
from ray_valkey_spill.config import parse_url
from ray_valkey_spill.errors import ConfigError
from ray_valkey_spill.gcs_storage import gcs_storage_address
from ray_valkey_spill.prefixes import (DEFAULT_PREFIXES, GCS_KEY_PATTERN, gcs_namespace_of,
                                       gcs_prefix)

VALKEY_ADDRESS = "valkey.ai-ml.svc.cluster.local:6379"
SPILL_ENV = "RAY_object_spilling_config"


def gcs_options() -> dict:
    return one(load_docs(RAYSERVICE), "RayService")["spec"]["rayClusterConfig"][
        "gcsFaultToleranceOptions"]


def test_gcs_options_pass_the_kuberay_crd_and_a_typo_does_not():
    schema = crd_schema("ray.io_rayservices.yaml")
    doc = copy.deepcopy(one(load_docs(RAYSERVICE), "RayService"))
    assert crd_errors(doc, schema) == []
    options = doc["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    options["redisPasword"] = options.pop("redisPassword")
    options["backend"] = "etcd"
    errors = crd_errors(doc, schema)
    assert any("redisPasword: unknown" in e for e in errors), errors
    assert any("etcd" in e for e in errors), errors


def test_gcs_runs_on_the_standalone_server_as_the_gcs_user():
    options = gcs_options()
    assert options.get("backend", "redis") == "redis"
    assert options["redisAddress"] == VALKEY_ADDRESS  # the standalone Service, never the cluster
    user = options["redisUsername"]["value"]
    rules = acl_rules(ACL_FILE.read_text(encoding="utf-8"))[user]
    assert rules == gcs_user_rule().split()
    ref = options["redisPassword"]["valueFrom"]["secretKeyRef"]
    assert set(options["redisPassword"]) == {"valueFrom"}  # never an inline value
    assert ref == {"name": "valkey-gcs", "key": "password"}
    # The spill config of the same cluster names the same server, as another user.
    for _, _, container in ray_containers():
        (spill,) = [e["value"] for e in container["env"] if e["name"] == SPILL_ENV]
        address = parse_url(json.loads(spill)["params"]["url"])
        assert f"{address.host}:{address.port}" == VALKEY_ADDRESS


def test_namespace_is_left_to_kuberay_and_kuberay_validation_passes():
    # One namespace per RayCluster (its UID): an upgrade's new cluster never shares the old
    # one's tables, and the old one's cleanup Job deletes only RAY<old UID>@*.
    assert "externalStorageNamespace" not in gcs_options()
    svc = one(load_docs(RAYSERVICE), "RayService")
    assert "ray.io/external-storage-namespace" not in svc["metadata"].get("annotations", {})
    assert "ray.io/ft-enabled" not in svc["metadata"].get("annotations", {})
    version = tuple(int(x) for x in svc["spec"]["rayClusterConfig"]["rayVersion"].split(".")[:2])
    assert version >= (2, 41), "redis-username (the GCS ACL user) needs Ray >= 2.41"
    for group, params, container in ray_containers():
        assert not {"redis-password", "redis-username"} & set(params), group
        names = {e["name"] for e in container.get("env", [])}
        assert not {"REDIS_PASSWORD", "REDIS_USERNAME", "RAY_REDIS_ADDRESS",
                    "RAY_external_storage_namespace"} & names, group


def test_gcs_key_grammar():
    assert gcs_prefix("2f1c9a7e-0b3d-4c1e-9e7a-5d6f7a8b9c0d") == (
        "RAY2f1c9a7e-0b3d-4c1e-9e7a-5d6f7a8b9c0d@")
    assert gcs_namespace_of(b"RAYabc@JobCounter") == "abc"
    assert gcs_namespace_of("RAYabc@KV") == "abc"
    for key in ("ray:embed:s:n:o", "RAY@KV", "RAYabc", "emb:x", b"DUMMY"):
        assert gcs_namespace_of(key) is None, key
    for prefix in DEFAULT_PREFIXES.values():
        assert not fnmatch.fnmatchcase(prefix + "x", GCS_KEY_PATTERN)
        assert not fnmatch.fnmatchcase(prefix + "x", gcs_prefix("ns") + "*")


@pytest.mark.parametrize("bad", ["", "a@b", "a*", "a b", "ns?", "{x}", "é", 7, None, "x" * 65])
def test_bad_gcs_namespace_gets_one_clear_error(bad):
    with pytest.raises(ConfigError) as info:
        gcs_prefix(bad)
    message = str(info.value)
    assert "GCS external storage namespace" in message and "\n" not in message
    assert key_patterns(["~" + GCS_KEY_PATTERN]) == ["RAY*@*"]


def test_gcs_storage_address_is_the_shipped_redis_address():
    (spill,) = {json.loads(e["value"])["params"]["url"] for _, _, c in ray_containers()
                for e in c["env"] if e["name"] == SPILL_ENV}
    assert gcs_storage_address(spill) == gcs_options()["redisAddress"]
    assert gcs_storage_address("valkeys://v.example:6380/0") == "rediss://v.example:6380"


@pytest.mark.parametrize("url, says", [
    ("valkey+cluster://valkey-cluster.ai-ml.svc.cluster.local:6379", "more than one shard"),
    ("unix:///run/valkey.sock", "TCP only"),
    ("valkey://h:6379/1", "database 0"),
])
def test_a_gcs_address_ray_cannot_use_gets_one_clear_line(url, says):
    with pytest.raises(ConfigError) as info:
        gcs_storage_address(url)
    message = str(info.value)
    assert says in message and "GCS storage url" in message and "\n" not in message
    if "cluster" in url:
        assert "standalone" in message and "rocksdb" in message
