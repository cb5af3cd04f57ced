"""Who may reach what in namespace ai-ml, by evaluating the shipped NetworkPolicies.

A small evaluator of the NetworkPolicy rules (pod and namespace selectors with matchLabels and
matchExpressions, numeric ports, Ingress and Egress isolation) is run on the policies of base/
plus each overlay, for pods labelled exactly as the shipped manifests label them: the Valkey
pods, the cluster-create Job, the Ray pods and gc job of cluster_configs/ray, Prometheus, and
pods that lack the client label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cluster_configs_lib import CLUSTER, GC_CRONJOB, RAYSERVICE, STANDALONE, load_docs, one

CLIENT_LABEL = {"ray-valkey-spill/valkey-client": "true"}


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict
    namespace_labels: dict = field(default_factory=dict)

    def __hash__(self):
        return hash((self.namespace, tuple(sorted(self.labels.items()))))


def namespace(name: str, **labels) -> dict:
    return {"kubernetes.io/metadata.name": name, **labels}


def selects(selector: dict, labels: dict) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if not {"In": key in labels and labels[key] in values,
                "NotIn": key not in labels or labels[key] not in values,
                "Exists": key in labels, "DoesNotExist": key not in labels}[op]:
            return False
    return True


def peer_matches(peer: dict, policy_namespace: str, other: Pod) -> bool:
    assert "ipBlock" not in peer, "the evaluator does not model ipBlock"
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector", {}), other.labels)


def port_matches(rule_ports: list | None, port: int, protocol: str) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        assert isinstance(p["port"], int), "named ports are not used by the shipped policies"
        if p["port"] == port and p.get("protocol", "TCP") == protocol:
            return True
    return False


def allowed_one_way(policies, subject: Pod, other: Pod, port: int, protocol: str,
                    direction: str) -> bool:
    """Does ``subject``'s side admit the connection (ingress: other -> subject)?"""
    kind, peers_key = ("Ingress", "from") if direction == "ingress" else ("Egress", "to")
    applying = [p for p in policies if p["metadata"]["namespace"] == subject.namespace
                and kind in p["spec"].get("policyTypes", ["Ingress"])
                and selects(p["spec"]["podSelector"], subject.labels)]
    if not applying:
        return True  # not isolated in this direction
    for policy in applying:
        for rule in policy["spec"].get(direction, []):
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(peer, subject.namespace, other) for peer in peers)) \
                    and port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(policies, source: Pod, dest: Pod, port: int, protocol: str = "TCP") -> bool:
    """Both the source's egress and the destination's ingress must admit it."""
    return (allowed_one_way(policies, source, dest, port, protocol, "egress")
            and allowed_one_way(policies, dest, source, port, protocol, "ingress"))


def policies_of(layout: str) -> list[dict]:
    files = ["base/networkpolicies.yaml"]
    if layout == "cluster":
        files.append("overlays/cluster/networkpolicies.yaml")
    return [d for f in files for d in load_docs(f) if d["kind"] == "NetworkPolicy"]


def template_labels(manifest: str, kind: str) -> dict:
    doc = one(load_docs(manifest), kind)
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return doc["spec"]["template"]["metadata"]["labels"]


AI_ML = namespace("ai-ml")
RAY_NS = namespace("ray", **CLIENT_LABEL)
PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}, namespace("monitoring"))
KUBE_DNS = Pod("kube-system", {"k8s-app": "kube-dns"}, namespace("kube-system"))


def ray_pods() -> list[Pod]:
    service = one(load_docs(RAYSERVICE), "RayService")["spec"]["rayClusterConfig"]
    groups = [service["headGroupSpec"]] + service["workerGroupSpecs"]
    pods = [Pod("ray", g["template"]["metadata"]["labels"], RAY_NS) for g in groups]
    return pods + [Pod("ray", template_labels(GC_CRONJOB, "CronJob"), RAY_NS)]


UNLABELLED_IN_RAY = Pod("ray", {"app": "notebook"}, RAY_NS)
LABELLED_ELSEWHERE = Pod("other", dict(CLIENT_LABEL), namespace("other"))
STRANGER_IN_AI_ML = Pod("ai-ml", {"app": "debug"}, AI_ML)


@pytest.fixture(params=["standalone", "cluster"])
def layout(request):
    manifest = STANDALONE if request.param == "standalone" else CLUSTER
    server = Pod("ai-ml", template_labels(manifest, "StatefulSet"), AI_ML)
    return request.param, policies_of(request.param), server


def test_default_deny_covers_every_pod_of_the_namespace(layout):
    _, policies, _ = layout
    (deny,) = [p for p in policies if p["metadata"]["name"] == "default-deny"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert not allowed(policies, PROMETHEUS, STRANGER_IN_AI_ML, 8080)
    assert not allowed(policies, STRANGER_IN_AI_ML, KUBE_DNS, 53, "UDP")


def test_valkey_port_only_from_labelled_pods_in_labelled_namespaces(layout):
    _, policies, server = layout
    for pod in ray_pods():
        assert allowed(policies, pod, server, 6379), pod.labels
        assert not allowed(policies, pod, server, 9121)
        assert not allowed(policies, pod, server, 16379)
    for outsider in (UNLABELLED_IN_RAY, LABELLED_ELSEWHERE, STRANGER_IN_AI_ML, PROMETHEUS):
        assert not allowed(policies, outsider, server, 6379), outsider


def test_metrics_port_only_from_the_monitoring_namespace(layout):
    _, policies, server = layout
    assert allowed(policies, PROMETHEUS, server, 9121)
    for outsider in ray_pods() + [UNLABELLED_IN_RAY, STRANGER_IN_AI_ML]:
        assert not allowed(policies, outsider, server, 9121)


def test_standalone_server_opens_no_connection():
    policies = policies_of("standalone")
    server = Pod("ai-ml", template_labels(STANDALONE, "StatefulSet"), AI_ML)
    for dest, port, protocol in ((KUBE_DNS, 53, "UDP"), (ray_pods()[0], 6379, "TCP"),
                                 (PROMETHEUS, 9090, "TCP")):
        assert not allowed(policies, server, dest, port, protocol)


def test_cluster_bus_only_between_valkey_cluster_pods():
    policies = policies_of("cluster")
    node = Pod("ai-ml", template_labels(CLUSTER, "StatefulSet"), AI_ML)
    create = Pod("ai-ml", template_labels(CLUSTER, "Job"), AI_ML)
    assert allowed(policies, node, node, 16379) and allowed(policies, node, node, 6379)
    for outsider in ray_pods() + [create, PROMETHEUS, STRANGER_IN_AI_ML, UNLABELLED_IN_RAY]:
        assert not allowed(policies, outsider, node, 16379), outsider
    # The cluster-create Job reaches the nodes' client port, and resolves their names.
    assert allowed(policies, create, node, 6379)
    assert allowed(policies, node, KUBE_DNS, 53, "UDP") and allowed(policies, create, KUBE_DNS, 53)
    # Nothing else leaves the cluster pods.
    assert not allowed(policies, node, ray_pods()[0], 6379)
    assert not allowed(policies, node, PROMETHEUS, 9090)
