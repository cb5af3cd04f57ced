"""Shared helpers of the offline checks of cluster_configs/ (tests/unit/test_*.py).

Paths of the deployment files, YAML/ACL/valkey.conf parsers, Kubernetes and KubeRay schema
validation, and the quantities the sizing rule of docs/deployment.md is written in.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "cluster_configs"
KUBERAY_SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"
ACL_FILE = CONFIGS / "base" / "valkey-users.acl"
RENDER_SCRIPT = CONFIGS / "base" / "render-acl.sh"
VM_SCRIPT = CONFIGS / "ray-start-vm.sh"
SECRET_TEMPLATES = CONFIGS / "secrets-templates"
OVERLAYS = {"standalone": CONFIGS / "overlays" / "standalone",
            "cluster": CONFIGS / "overlays" / "cluster"}
RAY_KUSTOMIZATION = CONFIGS / "ray"
# Paths relative to cluster_configs/.
STANDALONE = "overlays/standalone/valkey.yaml"
CLUSTER = "overlays/cluster/valkey-cluster.yaml"
RAYSERVICE = "ray/rayservice.yaml"
GC_CRONJOB = "ray/spill-gc-cronjob.yaml"
DOCKERFILE = CONFIGS / "ray" / "Dockerfile"

# One recent Kubernetes version bundled by kubernetes-validate 1.37.x.
K8S_VERSION = "1.35.0"
NAMESPACE = "ai-ml"


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
    svc = one(load_docs(RAYSERVICE), "RayService")
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


def env_of(container: dict) -> dict[str, dict]:
    """{name: env entry} of a container."""
    return {e["name"]: e for e in container.get("env", [])}


def ray_containers() -> list[tuple[str, dict, dict]]:
    """(group, rayStartParams, Ray container) of the head and of every worker group."""
    out = []
    for group, params, template in ray_pod_templates():
        (container,) = [c for c in template["spec"]["containers"]
                        if c["name"] in ("ray-head", "ray-worker")]
        out.append((group, params, container))
    return out


def valkey_parts(name: str):
    """(docs, StatefulSet, its config ConfigMap, the valkey container, valkey.conf directives)."""
    docs = load_docs(name)
    sts = one(docs, "StatefulSet")
    cm_name = next(v["configMap"]["name"] for v in sts["spec"]["template"]["spec"]["volumes"]
                   if v["name"] == "config")
    cm = one(docs, "ConfigMap", cm_name)
    (server,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "valkey"]
    return docs, sts, cm, server, conf_directives(cm["data"]["valkey.conf"])


def kubectl_kustomize(path: Path) -> list[dict]:
    """The objects `kubectl kustomize` renders from ``path`` (skips without kubectl)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomizations cannot be rendered here")
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]
