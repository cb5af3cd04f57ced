"""Every Secret key the RENDERED manifests read exists, and a missing one is named in one line.

`kubectl kustomize` renders cluster_configs/ray (RayService, gc CronJob) and both Valkey
overlays; every secretKeyRef (env, KubeRay's gcsFaultToleranceOptions.redisPassword), secret
volume item and envFrom secretRef must name a Secret of secrets-templates/ with that key. On a
cluster the same mistake would leave the head pod in CreateContainerConfigError ("couldn't find
key password in Secret ray/valkey-gcs") or, for KubeRay's GCS options, fail the cleanup Job too;
here it is one line naming the object, the field path, the Secret and the key.
"""

from __future__ import annotations

import copy

import pytest

from cluster_configs_lib import (NAMESPACE, OVERLAYS, RAY_KUSTOMIZATION, SECRET_TEMPLATES,
                                 kubectl_kustomize, load_docs)


def secret_templates() -> dict[tuple[str, str], set[str]]:
    """{(namespace, Secret name): its keys} of every template in secrets-templates/."""
    return {(d["metadata"]["namespace"], d["metadata"]["name"]): set(d["stringData"])
            for f in sorted(SECRET_TEMPLATES.glob("*.yaml"))
            for d in load_docs(f"secrets-templates/{f.name}") if d["kind"] == "Secret"}


def _refs(node, path: str):
    """(field path, Secret name, key or None for a whole-Secret envFrom) under ``node``."""
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            ref = node["secretKeyRef"]
            yield f"{path}.secretKeyRef", ref.get("name"), ref.get("key")
        if "secretName" in node:
            for item in node.get("items", []):
                yield f"{path}.items", node["secretName"], item.get("key")
        if "secretRef" in node:
            yield f"{path}.secretRef", node["secretRef"].get("name"), None
        for key, value in node.items():
            if key not in ("secretKeyRef", "secretRef"):
                yield from _refs(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            name = value.get("name") if isinstance(value, dict) else None
            yield from _refs(value, f"{path}[{name or i}]")


def missing_secret_keys(docs: list[dict], templates: dict[tuple[str, str], set[str]],
                        default_namespace: str) -> list[str]:
    """One line per Secret or key a manifest reads that no template provides."""
    problems = []
    for doc in docs:
        namespace = doc["metadata"].get("namespace", default_namespace)
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        for path, name, key in _refs(doc, ""):
            keys = templates.get((namespace, name))
            if keys is None:
                known = sorted(n for ns, n in templates if ns == namespace)
                problems.append(f"{where} {path}: Secret {namespace}/{name} does not exist "
                                f"(secrets-templates/ has {known})")
            elif key is not None and key not in keys:
                problems.append(f"{where} {path}: Secret {namespace}/{name} has no key {key!r} "
                                f"(it has {sorted(keys)})")
    return problems


RENDERED = {"ray": (RAY_KUSTOMIZATION, "ray"), **{f"valkey-{k}": (v, NAMESPACE)
                                                   for k, v in OVERLAYS.items()}}


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_every_secret_key_the_rendered_manifests_read_exists(name):
    path, namespace = RENDERED[name]
    docs = kubectl_kustomize(path)
    assert list(_refs(docs, "")), f"{name}: no Secret reference found (the walk is broken)"
    assert missing_secret_keys(docs, secret_templates(), namespace) == []


def test_the_gcs_password_secret_is_among_the_references():
    docs = kubectl_kustomize(RAY_KUSTOMIZATION)
    refs = {(p, n, k) for d in docs for p, n, k in _refs(d, "")}
    assert ("spec.rayClusterConfig.gcsFaultToleranceOptions.redisPassword.valueFrom.secretKeyRef",
            "valkey-gcs", "password") in refs


def test_a_misnamed_gcs_secret_key_or_secret_is_one_line_naming_both():
    docs = kubectl_kustomize(RAY_KUSTOMIZATION)
    (svc,) = [d for d in docs if d["kind"] == "RayService"]
    ref = svc["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["redisPassword"][
        "valueFrom"]["secretKeyRef"]
    wrong_key = copy.deepcopy(docs)
    next(d for d in wrong_key if d["kind"] == "RayService")["spec"]["rayClusterConfig"][
        "gcsFaultToleranceOptions"]["redisPassword"]["valueFrom"]["secretKeyRef"]["key"] = "pasword"
    (line,) = missing_secret_keys(wrong_key, secret_templates(), "ray")
    assert line.startswith("RayService/embed-service spec.rayClusterConfig."
                           "gcsFaultToleranceOptions.redisPassword")
    assert f"Secret ray/{ref['name']} has no key 'pasword'" in line and "'password'" in line
    templates = secret_templates()
    del templates[("ray", "valkey-gcs")]
    (line,) = missing_secret_keys(docs, templates, "ray")
    assert "Secret ray/valkey-gcs does not exist" in line and "\n" not in line
