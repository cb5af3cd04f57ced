"""The alerts of cluster_configs/base/prometheusrule.yaml, checked and exercised by promtool.

`promtool check rules` validates the rule group (PromQL syntax, templates); `promtool test
rules` feeds series shaped like redis_exporter's, Ray's and kube-state-metrics' and expects
each alert to fire on the bad case and stay quiet on the good one. Skipped without promtool
(Debian/Ubuntu package `prometheus`; .ci/deploy.sh installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from cluster_configs_lib import load_docs, one

RULE_FILE = "base/prometheusrule.yaml"
VALKEY = 'namespace="ai-ml", pod="valkey-0"'


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path


@pytest.fixture
def rules_file(tmp_path):
    rule = one(load_docs(RULE_FILE), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    return path


def alerts() -> dict[str, dict]:
    rule = one(load_docs(RULE_FILE), "PrometheusRule")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def alert_names() -> set[str]:
    return set(alerts())


def expected_annotations(alert: str, labels: dict) -> dict:
    """The alert's annotations with {{ $labels.x }} filled in, as promtool renders them."""
    return {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], v)
            for k, v in alerts()[alert].get("annotations", {}).items()}


def test_promtool_accepts_the_rules(rules_file):
    result = subprocess.run([promtool(), "check", "rules", str(rules_file)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_every_issue_has_an_alert():
    assert {"ValkeyMemoryNearMax", "ValkeyNonEvictableMemoryNearMax", "ValkeyRejectingWritesOOM",
            "ValkeyPersistenceFailing",
            "ValkeyEvictingKeys", "ValkeyEvictionPolicyUnsafe", "RaySpillErrors",
            "RaySpillGcJobFailed"} <= alert_names()


def _lasting(used: int, limit: int, keys: int, expiring: int) -> list[tuple[str, str]]:
    """redis_exporter's series for memory and INFO keyspace (db0), constant for 25 minutes."""
    return [(f"redis_memory_used_bytes{{{VALKEY}}}", f"{used}+0x25"),
            (f"redis_memory_max_bytes{{{VALKEY}}}", f"{limit}+0x25"),
            (f'redis_db_keys{{{VALKEY}, db="db0"}}', f"{keys}+0x25"),
            (f'redis_db_keys_expiring{{{VALKEY}, db="db0"}}', f"{expiring}+0x25")]


# (alert, input series, evaluation time, labels expected to fire; [] = must stay quiet)
CASES = [
    ("ValkeyMemoryNearMax",
     [(f"redis_memory_used_bytes{{{VALKEY}}}", "95+0x20"),
      (f"redis_memory_max_bytes{{{VALKEY}}}", "100+0x20")], "15m",
     [{"namespace": "ai-ml", "pod": "valkey-0", "severity": "warning"}]),
    ("ValkeyMemoryNearMax",
     [(f"redis_memory_used_bytes{{{VALKEY}}}", "50+0x20"),
      (f"redis_memory_max_bytes{{{VALKEY}}}", "100+0x20")], "15m", []),
    # Keys without a TTL (spilled objects, GCS tables): 90 of 100 bytes, all keys lasting.
    ("ValkeyNonEvictableMemoryNearMax", _lasting(used=90, limit=100, keys=100, expiring=0),
     "20m", [{"namespace": "ai-ml", "pod": "valkey-0", "severity": "warning"}]),
    # Same memory, but half the keys have a TTL (caches): evictable, quiet.
    ("ValkeyNonEvictableMemoryNearMax", _lasting(used=90, limit=100, keys=100, expiring=50),
     "20m", []),
    # No maxmemory: ValkeyMemoryNearMax's job is not this alert's (and the doctor warns).
    ("ValkeyNonEvictableMemoryNearMax", _lasting(used=90, limit=0, keys=100, expiring=0),
     "20m", []),
    ("ValkeyEvictionPolicyUnsafe",
     [(f'redis_instance_info{{{VALKEY}, maxmemory_policy="allkeys-lru"}}', "1+0x5")], "2m",
     [{"namespace": "ai-ml", "pod": "valkey-0", "maxmemory_policy": "allkeys-lru",
       "severity": "critical"}]),
    ("ValkeyEvictionPolicyUnsafe",
     [(f'redis_instance_info{{{VALKEY}, maxmemory_policy="volatile-lru"}}', "1+0x5")], "2m", []),
    ("ValkeyRejectingWritesOOM",
     [(f'redis_errors_total{{{VALKEY}, err="OOM"}}', "0+3x10")], "5m",
     [{"namespace": "ai-ml", "pod": "valkey-0", "severity": "critical"}]),
    ("ValkeyPersistenceFailing",
     [(f"redis_rdb_last_bgsave_status{{{VALKEY}}}", "0+0x5"),
      (f"redis_aof_last_write_status{{{VALKEY}}}", "1+0x5"),
      (f"redis_aof_last_bgrewrite_status{{{VALKEY}}}", "1+0x5")], "3m",
     [{"namespace": "ai-ml", "pod": "valkey-0", "severity": "critical"}]),
    ("ValkeyPersistenceFailing",
     [(f"redis_rdb_last_bgsave_status{{{VALKEY}}}", "1+0x5"),
      (f"redis_aof_last_write_status{{{VALKEY}}}", "0+0x5"),
      (f"redis_aof_last_bgrewrite_status{{{VALKEY}}}", "1+0x5")], "3m",
     [{"namespace": "ai-ml", "pod": "valkey-0", "severity": "critical"}]),
    ("ValkeyPersistenceFailing",
     [(f"redis_rdb_last_bgsave_status{{{VALKEY}}}", "1+0x5"),
      (f"redis_aof_last_write_status{{{VALKEY}}}", "1+0x5"),
      (f"redis_aof_last_bgrewrite_status{{{VALKEY}}}", "1+0x5")], "3m", []),
    ("ValkeyEvictingKeys",
     [(f"redis_evicted_keys_total{{{VALKEY}}}", "0+10x40")], "35m",
     [{"namespace": "ai-ml", "pod": "valkey-0", "severity": "warning"}]),
    ("RaySpillErrors",
     [('ray_valkey_spill_errors_total{namespace="ray", operation="restore", '
       'kind="ObjectMissingError", WorkerId="w1"}', "0+1x10")], "5m",
     [{"namespace": "ray", "operation": "restore", "kind": "ObjectMissingError",
       "severity": "warning"}]),
    ("RaySpillGcJobFailed",
     [('kube_job_status_failed{namespace="ray", job_name="ray-spill-gc-29000000"}', "1+0x5")],
     "2m", [{"namespace": "ray", "job_name": "ray-spill-gc-29000000", "severity": "warning"}]),
    ("RaySpillGcJobFailed",
     [('kube_job_status_failed{namespace="ray", job_name="other-job-1"}', "1+0x5")], "2m", []),
]


@pytest.mark.parametrize("alert, series, at, expected", CASES,
                         ids=[f"{c[0]}-{'fires' if c[3] else 'quiet'}" for c in CASES])
def test_alert_fires_only_on_the_bad_case(rules_file, tmp_path, alert, series, at, expected):
    tests = {"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [{"eval_time": at, "alertname": alert,
                             "exp_alerts": [{"exp_labels": labels,
                                             "exp_annotations": expected_annotations(alert, labels)}
                                            for labels in expected]}],
    }]}
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheusrule_has_the_operator_shape():
    """The Prometheus Operator's PrometheusRule: what promtool checks sits under spec.groups."""
    rule = one(load_docs(RULE_FILE), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and set(rule) == {
        "apiVersion", "kind", "metadata", "spec"}
    assert set(rule["spec"]) == {"groups"} and rule["metadata"]["labels"]["release"]
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for r in group["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
            assert r["labels"]["severity"] in ("warning", "critical")


def test_the_non_evictable_alert_and_doctor_share_one_threshold():
    """The alert and doctor's gcs-headroom row warn at the same share of maxmemory."""
    from ray_valkey_spill.tools.doctor.gcs import NON_VOLATILE_SHARE

    expr = alerts()["ValkeyNonEvictableMemoryNearMax"]["expr"]
    assert f"> {NON_VOLATILE_SHARE} * sum by (namespace, pod) (redis_memory_max_bytes" in expr
    for metric in ("redis_db_keys_expiring", "redis_db_keys{", "redis_memory_used_bytes"):
        assert metric in expr
