"""Offline checks of the deployment files in cluster_configs/.

Core Kubernetes kinds are validated (strictly: unknown fields fail) against the schemas that
PyPI ``kubernetes-validate`` bundles, for one pinned Kubernetes version; RayService against the
KubeRay CRD schema in shared/schemas/kuberay/ (beside the clone in CI); ServiceMonitors
structurally. The spilling config embedded in rayservice.yaml and produced by ray-start-vm.sh is
parsed with the package's own parser, and the Valkey settings and ACL rules are checked against
the rules spilling depends on (volatile-* eviction, one ACL user per key prefix, no secrets).
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ray_valkey_spill.config import option_default, parse_spilling_config, parse_url
from ray_valkey_spill.errors import ConfigError
from ray_valkey_spill.prefixes import DEFAULT_PREFIXES

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "cluster_configs"
KUBERAY_SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"
ACL_FILE = CONFIGS / "valkey-users.acl"
VM_SCRIPT = CONFIGS / "ray-start-vm.sh"

# One recent Kubernetes version bundled by kubernetes-validate 1.37.x.
K8S_VERSION = "1.35.0"
VALKEY_HOST = "valkey.ai-ml.svc.cluster.local"
NAMESPACE = "ai-ml"
EXPECTED_FILES = ["rayservice.yaml", "valkey.yaml", "valkey-users.acl", "valkey-cluster.yaml",
                  "ray-start-vm.sh", "spill-gc-cronjob.yaml"]
MANIFESTS = ["rayservice.yaml", "valkey.yaml", "valkey-cluster.yaml", "spill-gc-cronjob.yaml"]
VALKEY_MANIFESTS = ["valkey.yaml", "valkey-cluster.yaml"]
# Kinds validated elsewhere (CRDs); anything else must be a core kind kubernetes-validate knows.
CUSTOM_KINDS = {("ray.io/v1", "RayService"), ("ray.io/v1", "RayCluster"),
                ("monitoring.coreos.com/v1", "ServiceMonitor")}
SPILL_ENV = "RAY_object_spilling_config"
DEFAULT_CHUNK = option_default("chunk_size_bytes")


# -- helpers --------------------------------------------------------------------------------
def load_docs(name: str) -> list[dict]:
    with open(CONFIGS / name, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


_K8S_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
              "G": 10**9, "T": 10**12}


def k8s_bytes(quantity) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(quantity))
    assert m, f"unsupported quantity {quantity!r}"
    return int(m.group(1)) * _K8S_UNITS.get(m.group(2) or "", 1)


_VALKEY_UNITS = {"": 1, "k": 10**3, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}


def valkey_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+)(k|kb|m|mb|g|gb)?", text.lower())
    assert m, f"not a Valkey memory value: {text!r}"
    return int(m.group(1)) * _VALKEY_UNITS[m.group(2) or ""]


def conf_directives(text: str) -> dict[str, list[str]]:
    """valkey.conf as {directive: args} (last one wins, as in the server)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            parts = shlex.split(line)
            out[parts[0].lower()] = parts[1:]
    return out


def acl_rules(text: str) -> dict[str, list[str]]:
    """{user: rules} of the user lines of an ACL file (comments and blank lines skipped)."""
    users = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        assert parts[0] == "user" and len(parts) >= 3, f"not a user line: {line!r}"
        assert parts[1] not in users, f"user {parts[1]} defined twice"
        users[parts[1]] = parts[2:]
    return users


def key_patterns(rules: list[str]) -> list[str]:
    out = []
    for rule in rules:
        if rule == "allkeys":
            out.append("*")
        elif rule.startswith("~"):
            out.append(rule[1:])
        elif rule.startswith("%") and "~" in rule:
            out.append(rule.split("~", 1)[1])
    return out


def leading_comment(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    return header


def containers_of(pod_spec: dict) -> list[dict]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec["containers"])


def ray_pod_templates() -> list[tuple[str, dict, dict]]:
    """(group, rayStartParams, pod template) of the head and of every worker group."""
    svc = one(load_docs("rayservice.yaml"), "RayService")
    cluster = svc["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    groups = [("head", head["rayStartParams"], head["template"])]
    for group in cluster["workerGroupSpecs"]:
        groups.append((group["groupName"], group["rayStartParams"], group["template"]))
    return groups


def unknown_fields(instance, schema: dict, path: str = "") -> list[str]:
    """Fields the structural CRD schema does not declare (the API server would silently prune
    them, so a typo such as ``rayStartParam`` would be lost without an error)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out = []
    if isinstance(instance, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            if props is not None and key in props:
                out += unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += unknown_fields(value, extra, f"{path}.{key}")
            elif props is not None and extra is None:
                out.append(f"{path}.{key}")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(instance):
            out += unknown_fields(value, schema["items"], f"{path}[{i}]")
    return out


def crd_schema(kind_file: str) -> dict:
    if not KUBERAY_SCHEMAS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {KUBERAY_SCHEMAS} (shared/ must sit "
                    "beside the repository clone)")
    return copy.deepcopy(_load_crd_schema(kind_file))


@functools.lru_cache(maxsize=None)
def _load_crd_schema(kind_file: str) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are large
    with open(KUBERAY_SCHEMAS / kind_file, encoding="utf-8") as f:
        crd = yaml.load(f, Loader=loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def crd_errors(doc: dict, schema: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(doc)]
    return errors + [f"{p}: unknown field" for p in unknown_fields(doc, schema)]


def k8s_validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def render_acl(script: Path, template: Path, output: Path, passwords: dict[str, str]):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VALKEY_PASSWORD_")}
    env.update({f"VALKEY_PASSWORD_{u.upper()}": pw for u, pw in passwords.items()})
    return subprocess.run(["sh", str(script), str(template), str(output)], env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def render_script(tmp_path_factory) -> Path:
    cm = one(load_docs("valkey.yaml"), "ConfigMap", "valkey-config")
    path = tmp_path_factory.mktemp("render") / "render-acl.sh"
    path.write_text(cm["data"]["render-acl.sh"], encoding="utf-8")
    return path


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


@pytest.mark.parametrize("name", MANIFESTS)
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
    sts = copy.deepcopy(one(load_docs("valkey.yaml"), "StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(sts)


def test_ray_pod_templates_are_valid_pods():
    for group, _, template in ray_pod_templates():
        k8s_validate({"apiVersion": "v1", "kind": "PodTemplate",
                      "metadata": {"name": f"ray-{group}"}, "template": template})


def test_rayservice_validates_against_kuberay_crd():
    schema = crd_schema("ray.io_rayservices.yaml")
    doc = one(load_docs("rayservice.yaml"), "RayService")
    assert doc["apiVersion"] == "ray.io/v1"
    assert crd_errors(doc, schema) == []


def test_ray_cluster_config_is_also_a_valid_raycluster():
    """The same cluster spec deployed as a plain RayCluster (batch jobs, no Serve)."""
    schema = crd_schema("ray.io_rayclusters.yaml")
    svc = one(load_docs("rayservice.yaml"), "RayService")
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
               "metadata": {"name": "spill-to-valkey"},
               "spec": copy.deepcopy(svc["spec"]["rayClusterConfig"])}
    assert crd_errors(cluster, schema) == []


def test_kuberay_crd_check_catches_typos_and_bad_types():
    schema = crd_schema("ray.io_rayservices.yaml")
    doc = copy.deepcopy(one(load_docs("rayservice.yaml"), "RayService"))
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
        assert "redis_exporter" in container["image"]
        assert port["containerPort"] == 9121
        assert endpoint.get("path", "/metrics") == "/metrics"
        assert re.fullmatch(r"\d+s", endpoint["interval"])
        env = {e["name"]: e for e in container["env"]}
        assert env["REDIS_USER"]["value"] == "metrics"
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "METRICS"


# -- RayService: spilling config, image, sizes ----------------------------------------------
def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def ray_containers() -> list[tuple[str, dict, dict]]:
    out = []
    for group, params, template in ray_pod_templates():
        (container,) = [c for c in template["spec"]["containers"]
                        if c["name"] in ("ray-head", "ray-worker")]
        out.append((group, params, container))
    return out


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
        assert config.prefix == DEFAULT_PREFIXES["ray"]
        assert config.user == "rayspill"
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
    from ray_valkey_spill.tools.gc import build_parser, config_from_args

    job = one(load_docs("spill-gc-cronjob.yaml"), "CronJob")
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
    service = one(load_docs("rayservice.yaml"), "RayService")
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
    svc = one(load_docs("rayservice.yaml"), "RayService")
    ray_version = svc["spec"]["rayClusterConfig"]["rayVersion"]
    assert ray_version.startswith("2.60."), "ray-valkey-spill supports Ray 2.60.x"
    header = "\n".join(leading_comment(CONFIGS / "rayservice.yaml"))
    assert "pip install" in header and "ray-valkey-spill" in header
    assert "runtime_env" in header, "must say that runtime_env pip does not reach IO workers"
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
    workers = [v for k, v in sizes.items() if k != "head"]
    assert workers and all(k8s_bytes(w["memory"]) == 32 * 2**30 and str(w["cpu"]) == "8"
                           for w in workers)


def test_serve_config_is_a_small_valid_application_list():
    svc = one(load_docs("rayservice.yaml"), "RayService")
    serve = yaml.safe_load(svc["spec"]["serveConfigV2"])
    apps = serve["applications"]
    assert apps and all(re.fullmatch(r"[\w.]+:\w+", a["import_path"]) for a in apps)
    assert all(a["route_prefix"].startswith("/") for a in apps)


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
def valkey_parts(name: str):
    docs = load_docs(name)
    sts = one(docs, "StatefulSet")
    cm_name = next(v["configMap"]["name"] for v in sts["spec"]["template"]["spec"]["volumes"]
                   if v["name"] == "config")
    cm = one(docs, "ConfigMap", cm_name)
    (server,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "valkey"]
    return docs, sts, cm, server, conf_directives(cm["data"]["valkey.conf"])


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
    assert 0 < maxmemory <= 0.65 * limit, "AOF rewrite fork + fragmentation need headroom"
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
    assert conf["save"] == [""], "RDB snapshots fork and can double memory"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    disk = k8s_bytes(claim["spec"]["resources"]["requests"]["storage"])
    assert disk == 10 * 2**30
    if conf["appendonly"] == ["yes"]:
        assert conf["appendfsync"] == ["everysec"]
        growth = int(conf["auto-aof-rewrite-percentage"][0]) / 100
        base = valkey_bytes(conf["maxmemory"][0])
        assert base * (2 + growth) <= 0.9 * disk, "AOF rewrite peak does not fit the PVC"
    data_mount = next(m for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                      if m["name"] == claim["metadata"]["name"])
    assert conf["dir"] == [data_mount["mountPath"]]


@pytest.mark.parametrize("name", VALKEY_MANIFESTS)
def test_valkey_statefulset_wiring(name):
    docs, sts, cm, server, conf = valkey_parts(name)
    pod = sts["spec"]["template"]["spec"]
    assert sts["metadata"]["namespace"] == NAMESPACE
    assert re.fullmatch(r"valkey/valkey:(9|[1-9]\d)(\.\d+)*", server["image"])
    assert server["command"] == ["valkey-server", "/etc/valkey/valkey.conf"]
    (init,) = pod["initContainers"]
    assert init["envFrom"] == [{"prefix": "VALKEY_PASSWORD_", "secretRef": {"name": "valkey-users"}}]
    init_cmd = " ".join(init["command"])
    assert "render-acl.sh /etc/valkey-acl/users.acl /run/valkey/users.acl" in init_cmd
    assert conf["aclfile"] == ["/run/valkey/users.acl"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["acl"]["configMap"]["name"] == "valkey-acl"
    assert volumes["acl"]["configMap"]["items"] == [{"key": "users.acl", "path": "users.acl"}]
    assert volumes["run"]["emptyDir"]["medium"] == "Memory"
    server_mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert server_mounts["/run/valkey"]["name"] == "run"
    assert server_mounts["/etc/valkey"]["name"] == "config"
    # Both manifests render with the same script.
    standalone = one(load_docs("valkey.yaml"), "ConfigMap", "valkey-config")
    assert cm["data"]["render-acl.sh"] == standalone["data"]["render-acl.sh"]


def test_valkey_service_is_where_ray_spills():
    docs = load_docs("valkey.yaml")
    service = one(docs, "Service", "valkey")
    assert service["metadata"]["namespace"] == NAMESPACE
    assert any(p["port"] == 6379 for p in service["spec"]["ports"])
    sts = one(docs, "StatefulSet")
    assert service["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert host == VALKEY_HOST


def test_valkey_cluster_layout():
    docs, sts, _, server, conf = valkey_parts("valkey-cluster.yaml")
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
    header = "\n".join(leading_comment(CONFIGS / "valkey-cluster.yaml"))
    (config_json,) = re.findall(r'(\{"type": "valkey".*?\}\})', header.replace("\n#     ", " "))
    config = parse_spilling_config(config_json)
    assert config.address.cluster and config.address.host == "valkey-cluster.ai-ml.svc.cluster.local"
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
    data_users = {u: r for u, r in users.items() if u != "admin"}
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
    for user in ("rayspill", "embcache", "vllmkv", "session", "metrics"):
        rules = users[user]
        assert "on" in rules and "-@all" in rules and "-@dangerous" in rules
        assert "resetchannels" in rules and not any(r.startswith("&") for r in rules)
        after = rules[rules.index("-@dangerous") + 1:]
        # Only single commands may follow -@dangerous, never a whole category back.
        assert all(r.startswith("+") and "@" not in r for r in after), (user, after)
        assert not {"+@all", "allcommands", "+@admin", "+@dangerous"} & set(rules)
    assert key_patterns(users["metrics"]) == [] and key_patterns(users["replication"]) == []


@pytest.mark.parametrize("name", VALKEY_MANIFESTS)
def test_secret_template_has_placeholders_for_every_user(name):
    secret = one(load_docs(name), "Secret", "valkey-users")
    assert "data" not in secret
    values = secret["stringData"]
    users = acl_rules(ACL_FILE.read_text(encoding="utf-8"))
    assert set(values) == {u.upper() for u in users if u != "default"}
    assert all(v.startswith("REPLACE_ME") for v in values.values())


def test_render_acl_appends_hashes_and_drops_comments(render_script, tmp_path):
    users = [u for u in acl_rules(ACL_FILE.read_text(encoding="utf-8")) if u != "default"]
    passwords = {u: f"pw-{u}-0123456789" for u in users}
    out = tmp_path / "users.acl"
    result = render_acl(render_script, ACL_FILE, out, passwords)
    assert result.returncode == 0, result.stderr
    assert not any(pw in result.stdout + result.stderr for pw in passwords.values())
    text = out.read_text()
    assert "pw-" not in text and not any(line.startswith("#") for line in text.splitlines())
    rendered = acl_rules(text)
    template = acl_rules(ACL_FILE.read_text(encoding="utf-8"))
    import hashlib

    for user, rules in rendered.items():
        if user == "default":
            assert rules == template["default"]
            continue
        assert rules[:-1] == template[user]
        assert rules[-1] == "#" + hashlib.sha256(passwords[user].encode()).hexdigest()
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_render_acl_refuses_missing_or_placeholder_passwords(render_script, tmp_path):
    users = [u for u in acl_rules(ACL_FILE.read_text(encoding="utf-8")) if u != "default"]
    good = {u: "x" * 20 for u in users}
    out = tmp_path / "users.acl"
    missing = dict(good)
    missing.pop("rayspill")
    result = render_acl(render_script, ACL_FILE, out, missing)
    assert result.returncode != 0 and "VALKEY_PASSWORD_RAYSPILL" in result.stderr
    placeholder = dict(good, rayspill="REPLACE_ME-rayspill-password")
    result = render_acl(render_script, ACL_FILE, out, placeholder)
    assert result.returncode != 0 and "placeholder" in result.stderr
    assert not out.exists()
    bad_template = tmp_path / "bad.acl"
    bad_template.write_text(ACL_FILE.read_text() + "user extra on >inline ~x:*\n")
    result = render_acl(render_script, bad_template, out, dict(good, extra="y" * 20))
    assert result.returncode != 0 and "do not belong" in result.stderr
