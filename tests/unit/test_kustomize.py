"""The kustomize layout of cluster_configs/: what each apply deploys, and what it never does.

`kubectl kustomize` renders each overlay (skipped without kubectl); the rendered objects are
validated like the source files, and checked to hold exactly one Valkey layout in an explicit
namespace, the generated ACL ConfigMap wired into the pods, and no Secret or placeholder.
"""

from __future__ import annotations

import pytest
import yaml

from cluster_configs_lib import (
    ACL_FILE, CONFIGS, K8S_VERSION, OVERLAYS, RAY_KUSTOMIZATION, RENDER_SCRIPT, SECRET_TEMPLATES,
    kubectl_kustomize)

CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "RayService"}
LAYOUT_STATEFULSETS = {"standalone": "valkey", "cluster": "valkey-cluster"}


def kustomization_dirs() -> list:
    return sorted(p.parent for p in CONFIGS.rglob("kustomization.yaml"))


def referenced_files() -> set:
    """Every file a kustomization of cluster_configs/ pulls in (resources, generators)."""
    out = set()
    for folder in kustomization_dirs():
        spec = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
        for entry in spec.get("resources", []):
            path = (folder / entry).resolve()
            out.add(path / "kustomization.yaml" if path.is_dir() else path)
        for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
            for item in generator.get("files", []):
                out.add((folder / item.split("=")[-1]).resolve())
    return out


def test_secret_templates_are_applied_by_no_kustomization():
    applied = referenced_files()
    assert applied, "no kustomization found"
    for path in applied:
        assert SECRET_TEMPLATES not in path.parents, f"{path} is applied"
        text = path.read_text(encoding="utf-8")
        assert "REPLACE_ME" not in text or path == RENDER_SCRIPT, f"{path} holds a placeholder"
        for doc in (yaml.safe_load_all(text) if path.suffix == ".yaml" else []):
            assert not doc or doc.get("kind") != "Secret", f"{path} applies a Secret"
    # Every YAML manifest under cluster_configs/ is either applied or a template.
    for path in CONFIGS.rglob("*.yaml"):
        if path.name != "kustomization.yaml":
            assert path.resolve() in applied or SECRET_TEMPLATES in path.parents, path


@pytest.mark.parametrize("layout", sorted(OVERLAYS))
def test_each_overlay_renders_exactly_one_valkey_layout(layout):
    docs = kubectl_kustomize(OVERLAYS[layout])
    statefulsets = [d["metadata"]["name"] for d in docs if d["kind"] == "StatefulSet"]
    assert statefulsets == [LAYOUT_STATEFULSETS[layout]]
    assert all(d["metadata"].get("namespace") == "ai-ml" for d in docs), "explicit namespace"
    assert not [d for d in docs if d["kind"] in ("Secret", "Namespace")]
    # Only render-acl.sh names the placeholder (to refuse it).
    scripts = [d["data"].pop("render-acl.sh") for d in docs if d["kind"] == "ConfigMap"
               and "render-acl.sh" in d.get("data", {})]
    assert len(scripts) == 1 and "REPLACE_ME" not in yaml.safe_dump_all(docs)
    kinds = {d["kind"] for d in docs}
    assert {"NetworkPolicy", "PrometheusRule", "ServiceMonitor", "ConfigMap"} <= kinds


@pytest.mark.parametrize("layout", sorted(OVERLAYS))
def test_rendered_overlay_validates_and_mounts_the_generated_acl(layout):
    import kubernetes_validate

    docs = kubectl_kustomize(OVERLAYS[layout])
    for doc in docs:
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (acl,) = [d for d in docs if d["kind"] == "ConfigMap"
              and d["metadata"]["name"].startswith("valkey-acl-")]
    assert acl["data"]["users.acl"] == ACL_FILE.read_text(encoding="utf-8")
    assert acl["data"]["render-acl.sh"] == RENDER_SCRIPT.read_text(encoding="utf-8")
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    # The hashed name: an edited ACL file rolls the pods.
    assert volumes["acl"]["configMap"]["name"] == acl["metadata"]["name"]


def test_ray_kustomization_renders_into_namespace_ray():
    docs = kubectl_kustomize(RAY_KUSTOMIZATION)
    assert sorted(d["kind"] for d in docs) == ["CronJob", "RayService"]
    assert all(d["metadata"]["namespace"] == "ray" for d in docs)
    assert "REPLACE_ME" not in yaml.safe_dump_all(docs)
