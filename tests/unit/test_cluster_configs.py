"""Offline checks of the deployment files in cluster_configs/.

Core Kubernetes kinds are validated (strictly: unknown fields fail) against the schemas that
PyPI ``kubernetes-validate`` bundles, for one pinned Kubernetes version; RayService against the
KubeRay CRD schema in shared/schemas/kuberay/ (beside the clone in CI); ServiceMonitors
structurally. The spilling config embedded in rayservice.yaml and produced by ray-start-vm.sh is
parsed with the package's own parser, and the Valkey settings and ACL rules are checked against
the rules spilling depends on (volatile-* eviction, one ACL user per key prefix, no secrets).
The kustomize layout, NetworkPolicies, alerts, sizing and the image have test modules of their own.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from support import render_acl
from cluster_configs_lib import (
    ACL_FILE, CLUSTER, CONFIGS, DOCKERFILE, GC_CRONJOB, K8S_VERSION, NAMESPACE, RAYSERVICE,
    SECRET_TEMPLATES, STANDALONE, VM_SCRIPT, acl_rules, crd_errors, crd_schema,
    env_of, k8s_bytes, k8s_validate, key_patterns, leading_comment, load_docs, one,
    ray_containers, ray_pod_templates, valkey_bytes, valkey_parts)
from ray_valkey_spill.acl_rules import data_user_rule, gcs_user_rule, setuser_command
from ray_valkey_spill.config import option_default, parse_spilling_config, parse_url
from ray_valkey_spill.errors import ConfigError
from ray_valkey_spill.prefixes import DEFAULT_PREFIXES

VALKEY_HOST = "valkey.ai-ml.svc.cluster.local"
EXPECTED_FILES = [RAYSERVICE, STANDALONE, "base/valkey-users.acl", "base/render-acl.sh", CLUSTER,
                  "ray-start-vm.sh", GC_CRONJOB, "ray/Dockerfile",
                  "secrets-templates/valkey-users.yaml", "secrets-templates/ray-secrets.yaml"]
WORKLOADS = [RAYSERVICE, STANDALONE, CLUSTER, GC_CRONJOB]
MANIFESTS = WORKLOADS + ["base/networkpolicies.yaml", "base/prometheusrule.yaml",
                         "overlays/cluster/networkpolicies.yaml"]
VALKEY_MANIFESTS = [STANDALONE, CLUSTER]
# Kinds validated elsewhere (CRDs); anything else must be a core kind kubernetes-validate knows.
CUSTOM_KINDS = {("ray.io/v1", "RayService"), ("ray.io/v1", "RayCluster"),
                ("monitoring.coreos.com/v1", "ServiceMonitor"),
                ("monitoring.coreos.com/v1", "PrometheusRule")}
SPILL_ENV = "RAY_object_spilling_config"
DEFAULT_CHUNK = option_default("chunk_size_bytes")
# Users of the ACL file that are not data users (data users: one key prefix each).
SERVICE_USERS = {"default", "admin", "platform", "replication", "metrics"}
# Ray GCS fault-tolerance users: no data user (exact commands on RAY<ns>@ keys, acl_rules).
GCS_USERS = {"raygcs-embed"}
# redis_exporter v1.83.0 added --disable-scrape-endpoint (oliver006/redis_exporter #1104, #1106).
EXPORTER_MIN_VERSION = (1, 83, 0)


# -- files and headers ------------------------------------------------------------------------
@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_every_file_is_documented_at_its_top(name):
    header = "\n".join(leading_comment(CONFIGS / name))
    assert len(header.splitlines()) >= 10, f"{name}: no comment header"
    for section in ("what it is", "how to", "what to change"):
        assert section in header.lower(), f"{name}: header lacks a '{section}' section"


def env_entries(node):
    """Every container env entry ({name, value|valueFrom}) anywhere in a manifest."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield from value
            else:
                yield from env_entries(value)
    elif isinstance(node, list):
        for value in node:
            yield from env_entries(value)


@pytest.mark.parametrize("name", WORKLOADS)
def test_manifests_hold_no_plain_secret_values(name):
    entries = [e for doc in load_docs(name) for e in env_entries(doc)]
    assert entries
    for entry in entries:
        if re.search(r"PASSWORD|SECRET|AUTH|TOKEN", entry["name"]):
            assert "value" not in entry, (
                f"{name}: env {entry['name']} has an inline value; use valueFrom.secretKeyRef")
            assert "secretKeyRef" in entry["valueFrom"], entry["name"]


# -- Kubernetes schemas -----------------------------------------------------------------------
def test_pinned_kubernetes_version_is_bundled():
    assert kubernetes_validate.utils.major_minor(K8S_VERSION) in (
        kubernetes_validate.utils.major_minor(v) for v in kubernetes_validate.utils.all_versions())


@pytest.mark.parametrize("name", MANIFESTS)
def test_core_kinds_validate_against_kubernetes_schemas(name):
    docs = load_docs(name)
    validated = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        k8s_validate(doc)  # raises on an invalid or unknown field, or an unknown kind
        validated += 1
    if name in VALKEY_MANIFESTS:
        assert validated >= 4


def test_kubernetes_validation_is_strict():
    sts = copy.deepcopy(one(load_docs(STANDALONE), "StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(sts)


def test_ray_pod_templates_are_valid_pods():
    for group, _, template in ray_pod_templates():
        k8s_validate({"apiVersion": "v1", "kind": "PodTemplate",
                      "metadata": {"name": f"ray-{group}"}, "template": template})


def test_rayservice_validates_against_kuberay_crd():
    schema = crd_schema("ray.io_rayservices.yaml")
    doc = one(load_docs(RAYSERVICE), "RayService")
    assert doc["apiVersion"] == "ray.io/v1"
    assert crd_errors(doc, schema) == []


def test_ray_cluster_config_is_also_a_valid_raycluster():
    """The same cluster spec deployed as a plain RayCluster (batch jobs, no Serve)."""
    schema = crd_schema("ray.io_rayclusters.yaml")
    svc = one(load_docs(RAYSERVICE), "RayService")
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
               "metadata": {"name": "spill-to-valkey"},
               "spec": copy.deepcopy(svc["spec"]["rayClusterConfig"])}
    assert crd_errors(cluster, schema) == []


def test_kuberay_crd_check_catches_typos_and_bad_types():
    schema = crd_schema("ray.io_rayservices.yaml")
    doc = copy.deepcopy(one(load_docs(RAYSERVICE), "RayService"))
    head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    errors = crd_errors(doc, schema)
    assert any("rayStartParam: unknown" in e for e in errors), errors
    assert any("replicas" in e for e in errors), errors


@pytest.mark.parametrize("name", VALKEY_MANIFESTS)
def test_servicemonitor_scrapes_the_exporter_sidecar(name):
    docs = load_docs(name)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    selector = spec["selector"]["matchLabels"]
    assert NAMESPACE in spec["namespaceSelector"]["matchNames"]
    services = [s for s in docs if s["kind"] == "Service"
                and selector.items() <= s["metadata"].get("labels", {}).items()]
    assert len(services) == 1, "the ServiceMonitor must select exactly one Service"
    service = services[0]
    sts = one(docs, "StatefulSet")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"]: (c, p) for c in sts["spec"]["template"]["spec"]["containers"]
                       for p in c.get("ports", [])}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        (svc_port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        container, port = container_ports[svc_port["targetPort"]]
        assert container["name"] != "valkey" and "redis_exporter" in container["image"]
        assert port["containerPort"] == 9121
        assert endpoint.get("path", "/metrics") == "/metrics"
        assert re.fullmatch(r"\d+s", endpoint["interval"])
        env = {e["name"]: e for e in container["env"]}
        assert env["REDIS_USER"]["value"] == "metrics"
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "METRICS"
    # The exporter has a Service of its own; no other Service of the layout exposes 9121.
    for other in docs:
        if other["kind"] == "Service" and other is not service:
            assert all(p["port"] != 9121 for p in other["spec"]["ports"]), other["metadata"]
    assert [p["port"] for p in service["spec"]["ports"]] == [9121]


@pytest.mark.parametrize("name", VALKEY_MANIFESTS)
def test_exporter_cannot_be_pointed_at_other_hosts(name):
    """redis_exporter serves /scrape?target=ANY-HOST and logs in there with its password
    (oliver006/redis_exporter #1104) unless told not to: the flag came in v1.83.0 (#1106)."""
    sts = one(load_docs(name), "StatefulSet")
    (exporter,) = [c for c in sts["spec"]["template"]["spec"]["containers"]
                   if "redis_exporter" in c["image"]]
    version = re.fullmatch(r"oliver006/redis_exporter:v(\d+)\.(\d+)\.(\d+)", exporter["image"])
    assert version, f"pin an exact exporter version, not {exporter['image']}"
    assert tuple(map(int, version.groups())) >= EXPORTER_MIN_VERSION
    env = {e["name"]: e.get("value") for e in exporter["env"]}
    assert env["REDIS_EXPORTER_DISABLE_SCRAPE_ENDPOINT"] == "true"
    assert env["REDIS_ADDR"] == "redis://localhost:6379"
    # No CONFIG GET: the metrics user may not run it (it would return masterauth).
    assert env["REDIS_EXPORTER_CONFIG_COMMAND"] == "-"
    assert "args" not in exporter and "command" not in exporter


# -- RayService: spilling config, image, sizes ----------------------------------------------
_env = env_of


def test_every_ray_node_gets_the_valkey_spilling_config():
    configs = []
    for group, _, container in ray_containers():
        env = _env(container)
        assert SPILL_ENV in env, f"{group}: no {SPILL_ENV}"
        raw = env[SPILL_ENV]["value"]
        config = parse_spilling_config(raw)
        configs.append(raw)
        assert config.address.host == VALKEY_HOST and config.address.port == 6379
        assert config.address.scheme == "valkey" and config.address.db == 0
        # Its own prefix ray:<cluster>: and the one ACL user confined to exactly that prefix.
        assert re.fullmatch(r"ray:[a-z0-9-]+:", config.prefix), config.prefix
        users = acl_rules(ACL_FILE.read_text(encoding="utf-8"))
        assert key_patterns(users[config.user]) == [config.prefix + "*"], config.user
        assert config.password_env, f"{group}: the password must come from password_env"
        assert config.password_file is None
        assert "password" not in json.loads(raw)["params"]
        # The named variable is set on the same container, from a Secret.
        source = env[config.password_env]
        assert "value" not in source
        ref = source["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"]
        assert config.chunk_size_bytes == DEFAULT_CHUNK
    assert len(configs) >= 2 and len(set(configs)) == 1, "head and workers must agree"


def test_gc_cronjob_cleans_what_the_rayservice_spills():
    """gc's arguments parse, name the same server, user, prefix and password Secret as the Ray
    pods, and --ray-address points at the GCS port of the head Service KubeRay makes for this
    RayService (<name>-head-svc)."""
    from ray_valkey_spill.cli.options import config_from_args
    from ray_valkey_spill.tools.gc import build_parser

    job = one(load_docs(GC_CRONJOB), "CronJob")
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:2] == ["ray-valkey-spill", "gc"]
    args = build_parser().parse_args(container["command"][2:])
    assert args.yes and args.grace_s >= 90
    gc_config = config_from_args(args)
    _, _, ray_container = next(iter(ray_containers()))
    ray_env = _env(ray_container)
    spill_config = parse_spilling_config(ray_env[SPILL_ENV]["value"])
    assert gc_config.address == spill_config.address
    assert (gc_config.user, gc_config.prefix, gc_config.password_env) == \
        (spill_config.user, spill_config.prefix, spill_config.password_env)
    env = _env(container)
    assert env[args.password_env]["valueFrom"] == ray_env[args.password_env]["valueFrom"]
    service = one(load_docs(RAYSERVICE), "RayService")
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    gcs_port = next(p["containerPort"] for p in head["ports"] if p["name"] == "gcs-server")
    assert args.ray_address == [f"{service['metadata']['name']}-head-svc:{gcs_port}"]
    assert job["spec"]["concurrencyPolicy"] == "Forbid"


def test_spilling_config_parser_refuses_an_inline_password():
    _, _, container = ray_containers()[0]
    data = json.loads(_env(container)[SPILL_ENV]["value"])
    data["params"]["url"] = data["params"]["url"].replace("valkey://", "valkey://rayspill:pw@")
    with pytest.raises(ConfigError):
        parse_spilling_config(json.dumps(data))


def test_ray_image_carries_the_package_and_matches_ray_version():
    svc = one(load_docs(RAYSERVICE), "RayService")
    ray_version = svc["spec"]["rayClusterConfig"]["rayVersion"]
    assert ray_version.startswith("2.60."), "ray-valkey-spill supports Ray 2.60.x"
    header = "\n".join(leading_comment(CONFIGS / RAYSERVICE))
    assert "Dockerfile" in header and "ray-valkey-spill" in header
    assert "runtime_env" in header, "must say that runtime_env pip does not reach IO workers"
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    (base,) = re.findall(r"^ARG RAY_IMAGE=(\S+)$", dockerfile, re.M)
    # ray-llm: Ray with vLLM, which the llm app needs on every node (Serve builds it anywhere).
    assert base == f"rayproject/ray-llm:{ray_version}-py311-cu128"
    assert re.search(r'^RUN pip install --no-cache-dir "/tmp/rvs\[\$\{RVS_EXTRAS\}\]" ',
                     dockerfile, re.M)
    assert re.search(r"^ARG RVS_EXTRAS=lmcache$", dockerfile, re.M)
    assert " -e " not in dockerfile and "--editable" not in dockerfile
    for group, _, container in ray_containers():
        image = container["image"]
        # The stock image lacks the .pth hook: IO workers would not know the "valkey" type.
        assert not image.startswith("rayproject/ray"), f"{group}: stock Ray image"
        assert ray_version in image, f"{group}: image tag does not name Ray {ray_version}"


def test_object_store_is_sized_explicitly_and_fits():
    for group, params, container in ray_containers():
        store = int(params["object-store-memory"])
        limit = k8s_bytes(container["resources"]["limits"]["memory"])
        assert 0 < store <= limit * 0.4, f"{group}: object store too large for the container"
        assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "/dev/shm" in mounts, f"{group}: no /dev/shm volume (object store would use /tmp)"
    for _group, params, template in ray_pod_templates():
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        shm = volumes["dshm"]["emptyDir"]
        assert shm["medium"] == "Memory"
        assert k8s_bytes(shm["sizeLimit"]) >= int(params["object-store-memory"])


def test_realistic_resources():
    sizes = {group: c["resources"]["limits"] for group, _, c in ray_containers()}
    assert k8s_bytes(sizes["head"]["memory"]) == 16 * 2**30 and str(sizes["head"]["cpu"]) == "4"
    workers = [v for k, v in sizes.items() if k not in ("head", "gpu-workers")]
    assert workers and all(k8s_bytes(w["memory"]) == 32 * 2**30 and str(w["cpu"]) == "8"
                           for w in workers)
    # The llm app's nodes: one GPU each (a 7B model in bf16 on a 24 GB L4), and host memory
    # for model loading and LMCache's 5 GB CPU buffer beside the object store.
    gpu = sizes["gpu-workers"]
    assert gpu["nvidia.com/gpu"] == "1" and str(gpu["cpu"]) == "8"
    assert k8s_bytes(gpu["memory"]) == 64 * 2**30


def test_serve_config_is_a_small_valid_application_list():
    svc = one(load_docs(RAYSERVICE), "RayService")
    serve = yaml.safe_load(svc["spec"]["serveConfigV2"])
    apps = serve["applications"]
    assert apps and all(re.fullmatch(r"[\w.]+:\w+", a["import_path"]) for a in apps)
    assert all(a["route_prefix"].startswith("/") for a in apps)
    # The application is shipped: its module exists beside the Dockerfile, which copies it.
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    for app in apps:
        module = app["import_path"].partition(":")[0]
        if module.startswith("ray."):
            continue  # Ray's own builder (ray.serve.llm), in the ray-llm base image
        path = CONFIGS / "ray" / (module.replace(".", "/") + ".py")
        assert path.is_file(), f"{app['import_path']}: no {path.relative_to(CONFIGS)}"
        package = module.split(".")[0]
        assert f"COPY --chown=ray:users cluster_configs/ray/{package} " in dockerfile


def llm_plugin_options() -> tuple[dict, dict]:
    """(kv_transfer_config, LMCache plug-in options) of the RayService's llm app."""
    svc = one(load_docs(RAYSERVICE), "RayService")
    (app,) = [a for a in yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
              if a["name"] == "llm"]
    (llm,) = app["args"]["llm_configs"]
    transfer = llm["engine_kwargs"]["kv_transfer_config"]
    extra = transfer["kv_connector_extra_config"]["lmcache.extra_config"]
    return transfer, {k.removeprefix("remote_storage_plugin.rvs."): v for k, v in extra.items()
                      if k.startswith("remote_storage_plugin.rvs.")}


def test_llm_app_offloads_kv_to_valkey_as_vllmkv():
    """Statically (the build through Serve, vLLM and LMCache is tests/extras/lmcache/
    test_llm_rayservice.py): the plug-in, as the one ACL user of vllm:kv:, password from the
    Secret mounted on the GPU workers, the class check_image.py checks at build time."""
    check_image = (CONFIGS / "ray" / "check_image.py").read_text(encoding="utf-8")
    transfer, options = llm_plugin_options()
    assert transfer["kv_connector"] == "LMCacheConnectorV1"
    assert f'PLUGIN_MODULE = "{options["module_path"]}"' in check_image
    assert f'PLUGIN_CLASS = "{options["class_name"]}"' in check_image
    assert options["prefix"] == DEFAULT_PREFIXES["vllm_kv"]
    users = acl_rules(ACL_FILE.read_text(encoding="utf-8"))
    assert key_patterns(users[options["username"]]) == [options["prefix"] + "*"]
    assert parse_url(options["url"]).host == VALKEY_HOST
    assert 60 <= options["ttl_seconds"] <= 86400
    assert "password" not in options and "password_env" not in options
    (gpu,) = [(p, t) for g, p, t in ray_pod_templates() if g == "gpu-workers"]
    template = gpu[1]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in template["containers"][0]["volumeMounts"]}
    directory, _, filename = options["password_file"].rpartition("/")
    secret = {v["name"]: v for v in template["volumes"]}[mounts[directory]]["secret"]
    assert {"key": "vllmkv", "path": filename} in secret["items"]
    assert secret["defaultMode"] == 0o440


def test_rayservice_sets_no_field_kuberay_ignores():
    """KubeRay >= 1.1 no longer reads these (kuberay #1665 removed the Serve health checks that
    used them, #1688 deprecated them): setting them only suggests a protection that is gone."""
    spec = one(load_docs(RAYSERVICE), "RayService")["spec"]
    assert not {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"} & set(spec)



# -- the VM example ---------------------------------------------------------------------------
def run_vm_script(*args, password: str | None = "vm-test-password-1"):
    env = {k: v for k, v in os.environ.items() if k != "VALKEY_SPILL_PASSWORD"}
    env.update(DRY_RUN="1", PYTHON=sys.executable,
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    if password is not None:
        env["VALKEY_SPILL_PASSWORD"] = password
    return subprocess.run(["bash", str(VM_SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_vm_script_is_valid_bash():
    assert shutil.which("bash")
    subprocess.run(["bash", "-n", str(VM_SCRIPT)], check=True)


def test_vm_script_head_and_worker_commands():
    head = run_vm_script("head")
    assert head.returncode == 0, head.stderr
    worker = run_vm_script("worker", "10.0.0.10:6379")
    assert worker.returncode == 0, worker.stderr
    for result in (head, worker):
        assert "vm-test-password-1" not in result.stdout + result.stderr
    head_argv = shlex.split(head.stdout)
    worker_argv = shlex.split(worker.stdout)
    assert head_argv[0] == "env" and head_argv[2:5] == ["ray", "start", "--head"]
    assert worker_argv[2:4] == ["ray", "start"] and "--address=10.0.0.10:6379" in worker_argv

    def env_config(argv):
        name, _, value = argv[1].partition("=")
        assert name == SPILL_ENV
        return value

    (system,) = [a.split("=", 1)[1] for a in head_argv if a.startswith("--system-config=")]
    from_system = json.loads(system)["object_spilling_config"]
    assert from_system == env_config(head_argv) == env_config(worker_argv)
    config = parse_spilling_config(from_system)
    assert config.password_env == "VALKEY_SPILL_PASSWORD" and config.user == "rayspill"
    assert "password" not in json.loads(from_system)["params"]
    assert any(a.startswith("--object-store-memory=") for a in worker_argv)


def test_vm_script_refuses_to_start_without_password():
    result = run_vm_script("head", password=None)
    assert result.returncode != 0 and "VALKEY_SPILL_PASSWORD" in result.stderr
    assert result.stdout == ""


# -- Valkey settings -------------------------------------------------------------------------
@pytest.mark.parametrize("name", VALKEY_MANIFESTS)
def test_valkey_eviction_never_touches_spilled_objects(name):
    *_, conf = valkey_parts(name)
    policy = conf["maxmemory-policy"][0]
    assert policy.startswith("volatile-"), f"{policy}: only keys with a TTL may be evicted"
    assert not policy.startswith("allkeys-")


@pytest.mark.parametrize("name", VALKEY_MANIFESTS)
def test_valkey_memory_leaves_headroom_under_the_limit(name):
    _, _, _, server, conf = valkey_parts(name)
    limit = k8s_bytes(server["resources"]["limits"]["memory"])
    maxmemory = valkey_bytes(conf["maxmemory"][0])
    assert 0 < maxmemory <= 0.65 * limit, "snapshot fork + fragmentation need headroom"
    assert server["resources"]["requests"]["memory"] == server["resources"]["limits"]["memory"]
    assert re.fullmatch(r"\d+%|\d+(mb|gb)", conf["maxmemory-clients"][0])


@pytest.mark.parametrize("name", VALKEY_MANIFESTS)
def test_valkey_accepts_the_spill_chunk_size(name):
    *_, conf = valkey_parts(name)
    bulk = valkey_bytes(conf.get("proto-max-bulk-len", ["512mb"])[0])
    assert bulk >= 2**20 and bulk > DEFAULT_CHUNK


@pytest.mark.parametrize("name", VALKEY_MANIFESTS)
def test_valkey_persistence_fits_the_volume(name):
    _, sts, _, _, conf = valkey_parts(name)
    # Which persistence is shipped, and why, is tests/unit/test_persistence.py's.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    disk = k8s_bytes(claim["spec"]["resources"]["requests"]["storage"])
    base = valkey_bytes(conf["maxmemory"][0])
    assert 2 * base <= 0.9 * disk, "the snapshot and the next one being written do not fit"
    # Room to turn AOF on (the full rule, one RDB file on top, is test_sizing.py's).
    growth = int(conf["auto-aof-rewrite-percentage"][0]) / 100
    assert base * (2 + growth) <= 0.9 * disk, "AOF rewrite peak does not fit the PVC"
    data_mount = next(m for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                      if m["name"] == claim["metadata"]["name"])
    assert conf["dir"] == [data_mount["mountPath"]]


@pytest.mark.parametrize("name", VALKEY_MANIFESTS)
def test_valkey_statefulset_wiring(name):
    docs, sts, cm, server, conf = valkey_parts(name)
    pod = sts["spec"]["template"]["spec"]
    assert sts["metadata"]["namespace"] == NAMESPACE
    # Valkey >= 9.1: the ACL file's db=0 rules.
    assert re.fullmatch(r"valkey/valkey:(9\.[1-9]\d*|[1-9]\d+\.\d+)(\.\d+)?", server["image"])
    assert server["command"] == ["valkey-server", "/etc/valkey/valkey.conf"]
    (init,) = pod["initContainers"]
    assert init["envFrom"] == [{"prefix": "VALKEY_PASSWORD_", "secretRef": {"name": "valkey-users"}}]
    init_cmd = " ".join(init["command"])
    # Both layouts run the one script of base/, from the generated ConfigMap valkey-acl.
    assert "/etc/valkey-acl/render-acl.sh /etc/valkey-acl/users.acl /run/valkey/users.acl" in init_cmd
    assert init["image"] == server["image"]
    assert conf["aclfile"] == ["/run/valkey/users.acl"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["acl"]["configMap"]["name"] == "valkey-acl"
    assert volumes["acl"]["configMap"]["items"] == [{"key": "users.acl", "path": "users.acl"},
                                                    {"key": "render-acl.sh", "path": "render-acl.sh"}]
    assert volumes["run"]["emptyDir"]["medium"] == "Memory"
    server_mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert server_mounts["/run/valkey"]["name"] == "run"
    assert server_mounts["/etc/valkey"]["name"] == "config"
    assert "render-acl.sh" not in cm["data"], "one copy of the script: base/render-acl.sh"
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app.kubernetes.io/part-of"] == "shared-valkey", "NetworkPolicies select it"
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_valkey_service_is_where_ray_spills():
    docs = load_docs(STANDALONE)
    service = one(docs, "Service", "valkey")
    assert service["metadata"]["namespace"] == NAMESPACE
    assert any(p["port"] == 6379 for p in service["spec"]["ports"])
    sts = one(docs, "StatefulSet")
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert host == VALKEY_HOST


def test_valkey_cluster_layout():
    docs, sts, _, server, conf = valkey_parts(CLUSTER)
    assert sts["spec"]["replicas"] == 6
    assert conf["cluster-enabled"] == ["yes"]
    assert conf["masteruser"] == ["replication"]
    ports = {p["containerPort"] for p in server["ports"]}
    assert {6379, 16379} <= ports
    job = one(docs, "Job")
    script = " ".join(job["spec"]["template"]["spec"]["containers"][0]["command"])
    assert "--cluster create" in script and "--cluster-replicas 1" in script
    assert "--user admin" in script
    assert one(docs, "Service", "valkey-cluster-headless")["spec"]["clusterIP"] == "None"
    header = "\n".join(leading_comment(CONFIGS / CLUSTER))
    (config_json,) = re.findall(r'(\{"type": "valkey".*?\}\})', header.replace("\n#     ", " "))
    config = parse_spilling_config(config_json)
    assert config.address.cluster and config.address.host == "valkey-cluster.ai-ml.svc.cluster.local"
    assert key_patterns(acl_rules(ACL_FILE.read_text())[config.user]) == [config.prefix + "*"]
    assert parse_url("valkeys+cluster://valkey-cluster.ai-ml.svc.cluster.local:6379").tls


# -- ACL rules and Secrets --------------------------------------------------------------------
def test_acl_file_holds_no_password():
    users = acl_rules(ACL_FILE.read_text(encoding="utf-8"))
    for user, rules in users.items():
        for rule in rules:
            assert not rule.startswith((">", "<", "#", "!")) and rule != "nopass", (
                f"{user}: password rule {rule[:1]}... in the template")


def test_default_user_is_off():
    rules = acl_rules(ACL_FILE.read_text(encoding="utf-8"))["default"]
    assert "off" in rules and "on" not in rules
    assert not key_patterns(rules) and rules[-1] == "-@all"


def test_acl_patterns_cover_every_prefix_with_its_own_user():
    users = acl_rules(ACL_FILE.read_text(encoding="utf-8"))
    # admin reaches everything; platform reads everything and writes nothing.
    assert key_patterns(users["platform"]) == ["*"] and "%R~*" in users["platform"]
    assert not {"+@write", "+@all", "allcommands", "+@admin"} & set(users["platform"])
    data_users = {u: r for u, r in users.items() if u not in ("admin", "platform")}
    owners = {}
    for use, prefix in DEFAULT_PREFIXES.items():
        probe = prefix + "x:1"
        matching = [u for u, r in data_users.items()
                    if any(fnmatch.fnmatchcase(probe, p) for p in key_patterns(r))]
        assert len(matching) == 1, f"{prefix}: users {matching} (need exactly one)"
        owners[use] = matching[0]
        for other_use, other in DEFAULT_PREFIXES.items():
            if other_use != use:
                assert not any(fnmatch.fnmatchcase(other + "x:1", p)
                               for p in key_patterns(data_users[matching[0]])), (
                    f"user {matching[0]} of {prefix} also reaches {other}")
    assert owners["ray"] == "rayspill"
    assert len(set(owners.values())) == len(owners)


def test_data_users_drop_dangerous_commands_last():
    users = acl_rules(ACL_FILE.read_text(encoding="utf-8"))
    data_users = sorted(set(users) - SERVICE_USERS - GCS_USERS)
    assert {"rayspill", "raysp-embed", "raysp-batch", "embcache", "vllmkv", "session"} <= set(data_users)
    for user in data_users:
        rules = users[user]
        assert "on" in rules and "-@all" in rules and "-@dangerous" in rules
        assert "-@scripting" in rules and "db=0" in rules and "-select" in rules, user
        assert "resetchannels" in rules and not any(r.startswith("&") for r in rules)
        after = rules[rules.index("-@dangerous") + 1:]
        # After -@dangerous: more removals, or single commands back, never a category back.
        assert all(r.startswith("-") or (r.startswith("+") and "@" not in r) for r in after), (
            user, after)
        assert {r for r in after if r.startswith("+")} <= {"+info|memory", "+cluster|slots"}
        assert not {"+@all", "allcommands", "+@admin", "+@dangerous", "+@scripting"} & set(rules)
    for user in ("metrics", "replication"):
        rules = users[user]
        assert rules[:4] == ["on", "resetkeys", "resetchannels", "-@all"], user
        # Single commands only, and never CONFIG (CONFIG GET would return masterauth).
        assert all(r.startswith("+") and "@" not in r for r in rules[4:]), (user, rules)
        assert not any(r.startswith("+config") for r in rules), user
    assert key_patterns(users["metrics"]) == [] and key_patterns(users["replication"]) == []


def test_every_data_user_has_exactly_the_rule_doctor_suggests():
    # One home for the data-user rule (acl_rules): the shipped file writes it out, doctor
    # suggests it; a user whose line drifts from it fails here.
    users = acl_rules(ACL_FILE.read_text(encoding="utf-8"))
    for user in sorted(set(users) - SERVICE_USERS - GCS_USERS):
        (prefix,) = [p[:-1] for p in key_patterns(users[user])]
        expected = data_user_rule(prefix, transactions=user == "session").split()
        assert users[user] == expected, user
    assert setuser_command("raysp-x", "ray:x:").split()[5:] == data_user_rule("ray:x:").split()


def test_gcs_user_has_exactly_the_gcs_rule_and_no_tenants_keys():
    users = acl_rules(ACL_FILE.read_text(encoding="utf-8"))
    assert GCS_USERS <= set(users)
    for user in GCS_USERS:
        rules = users[user]
        assert rules == gcs_user_rule().split(), user
        # Single commands only after -@all: no category could bring back GET, SET or FLUSHALL.
        after = rules[rules.index("-@all") + 1:]
        assert after and all(r.startswith("+") and "@" not in r for r in after), after
        assert key_patterns(rules) == ["RAY*@*", "DUMMY"] and "%W~DUMMY" in rules
        assert "db=0" in rules and "resetchannels" in rules
        for prefix in DEFAULT_PREFIXES.values():
            assert not any(fnmatch.fnmatchcase(prefix + "x:1", p) for p in key_patterns(rules))
        assert fnmatch.fnmatchcase("RAY2f1c9a7e-uid@KV", "RAY*@*")


def test_secret_template_has_placeholders_for_every_user():
    secret = one(load_docs("secrets-templates/valkey-users.yaml"), "Secret", "valkey-users")
    assert "data" not in secret and secret["metadata"]["namespace"] == NAMESPACE
    values = secret["stringData"]
    users = acl_rules(ACL_FILE.read_text(encoding="utf-8"))
    assert set(values) == {u.upper().replace("-", "_") for u in users if u != "default"}
    assert all(v.startswith("REPLACE_ME") for v in values.values())


def test_every_secret_a_manifest_uses_has_a_template():
    templates = {(d["metadata"]["namespace"], d["metadata"]["name"]): d
                 for f in sorted(SECRET_TEMPLATES.glob("*.yaml"))
                 for d in load_docs(f"secrets-templates/{f.name}")}
    for name, namespace in ((STANDALONE, NAMESPACE), (CLUSTER, NAMESPACE),
                            (RAYSERVICE, "ray"), (GC_CRONJOB, "ray")):
        refs = list(_secret_refs(load_docs(name)))
        assert refs, name
        for secret_name, key in refs:
            assert (namespace, secret_name) in templates, f"{name}: no template for {secret_name}"
            assert key in templates[(namespace, secret_name)]["stringData"], (name, key)


def _secret_refs(node):
    """(Secret name, key) of every secretKeyRef, envFrom secretRef and secret volume item."""
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            yield node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]
        if "secretName" in node:
            for item in node.get("items", []):
                yield node["secretName"], item["key"]
        for key, value in node.items():
            if key != "secretKeyRef":
                yield from _secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _secret_refs(value)


def test_render_acl_appends_hashes_and_drops_comments(tmp_path):
    users = [u for u in acl_rules(ACL_FILE.read_text(encoding="utf-8")) if u != "default"]
    passwords = {u: f"pw-{u}-0123456789" for u in users}
    out = tmp_path / "users.acl"
    result = render_acl(out, passwords)
    assert result.returncode == 0, result.stderr
    assert not any(pw in result.stdout + result.stderr for pw in passwords.values())
    text = out.read_text()
    assert "pw-" not in text and not any(line.startswith("#") for line in text.splitlines())
    rendered = acl_rules(text)
    template = acl_rules(ACL_FILE.read_text(encoding="utf-8"))
    for user, rules in rendered.items():
        if user == "default":
            assert rules == template["default"]
            continue
        assert rules[:-1] == template[user]
        assert rules[-1] == "#" + hashlib.sha256(passwords[user].encode()).hexdigest()
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_render_acl_refuses_missing_or_placeholder_passwords(tmp_path):
    users = [u for u in acl_rules(ACL_FILE.read_text(encoding="utf-8")) if u != "default"]
    good = {u: "x" * 20 for u in users}
    out = tmp_path / "users.acl"
    missing = dict(good)
    missing.pop("rayspill")
    result = render_acl(out, missing)
    assert result.returncode != 0 and "VALKEY_PASSWORD_RAYSPILL" in result.stderr
    placeholder = dict(good, rayspill="REPLACE_ME-rayspill-password")
    result = render_acl(out, placeholder)
    assert result.returncode != 0 and "placeholder" in result.stderr
    assert not out.exists()
    bad_template = tmp_path / "bad.acl"
    bad_template.write_text(ACL_FILE.read_text() + "user extra on >inline ~x:*\n")
    result = render_acl(out, dict(good, extra="y" * 20), template=bad_template)
    assert result.returncode != 0 and "do not belong" in result.stderr


def test_render_acl_turns_off_users_a_layout_does_not_need(tmp_path):
    """Both layouts render rayspill (ray:*, every Ray cluster's objects) "off"; the standalone
    layout, which has no replicas, also replication. An off user needs no password and admits
    nobody."""
    users = [u for u in acl_rules(ACL_FILE.read_text(encoding="utf-8")) if u != "default"]
    off = {STANDALONE: ["replication", "rayspill"], CLUSTER: ["rayspill"]}
    template = acl_rules(ACL_FILE.read_text(encoding="utf-8"))
    for manifest, off_users in off.items():
        sts = one(load_docs(manifest), "StatefulSet")
        (init,) = sts["spec"]["template"]["spec"]["initContainers"]
        (value,) = [e["value"] for e in init["env"] if e["name"] == "VALKEY_ACL_OFF_USERS"]
        assert value.split() == off_users, manifest
        passwords = {u: f"pw-{u}-0123456789" for u in users if u not in off_users}
        out = tmp_path / "users.acl"
        result = render_acl(out, passwords, off_users=value)
        assert result.returncode == 0, result.stderr
        rendered = acl_rules(out.read_text())
        for user in users:
            if user in off_users:
                assert rendered[user] == ["off"] + template[user][1:], user
            else:
                assert rendered[user][:-1] == template[user] and rendered[user][0] == "on"
