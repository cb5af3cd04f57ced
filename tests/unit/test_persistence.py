"""The shipped persistence (docs/deployment.md, "Persistence"): RDB snapshots with
valkey-server's own save rules and no AOF, in both layouts; doctor's persistence check says
what each setting loses and suggests the shipped one; the deployed scenario measures the
shipped conf beside AOF everysec, RDB only and none.

A restart of a server with the shipped conf really keeping sessions, caches and spilled
objects is tests/integration/test_shipped_persistence.py's.
"""

from __future__ import annotations

import pytest

from cluster_configs_lib import CLUSTER, CONFIGS, STANDALONE, load_docs, one, valkey_parts
from ray_valkey_spill.config import SpillConfig
from ray_valkey_spill.errors import ConfigError
from ray_valkey_spill.lab.deployed_server import deployed_settings
from ray_valkey_spill.lab.scenarios.deployed import conf_persistence, persistence_variants
from ray_valkey_spill.tools.doctor.report import OK, WARN
from ray_valkey_spill.tools.doctor.runner import Doctor
from ray_valkey_spill.tools.doctor.server import SHIPPED_SAVE_RULES

LAYOUTS = [STANDALONE, CLUSTER]
PROMETHEUS_RULES = "base/prometheusrule.yaml"


def persistence_check(**settings) -> tuple[str, str, str]:
    """(status, detail, action) of doctor's persistence check on ``settings`` as CONFIG GET
    returns them."""
    doctor = Doctor(SpillConfig.from_params({"url": "valkey://127.0.0.1:1/0"}))
    doctor.check_persistence({"appendfsync": "everysec", **settings})
    (check,) = doctor.checks
    assert check.check == "persistence"
    return check.status, check.detail, check.action


@pytest.mark.parametrize("name", LAYOUTS)
def test_shipped_conf_snapshots_without_aof(name):
    *_, conf = valkey_parts(name)
    assert conf["appendonly"] == ["no"], "AOF writes every spilled byte a second time"
    assert conf["save"] == SHIPPED_SAVE_RULES.split(), "sessions and caches need snapshots"
    # A failed snapshot must not stop spilling; the alert below makes it loud instead.
    assert conf["stop-writes-on-bgsave-error"] == ["no"]
    # LZF cannot shrink zstd or random chunks and made snapshots 5.7x longer.
    assert conf["rdbcompression"] == ["no"]


def test_a_failing_snapshot_alerts():
    (rule,) = [r for g in one(load_docs(PROMETHEUS_RULES), "PrometheusRule")["spec"]["groups"]
               for r in g["rules"] if r.get("alert") == "ValkeyPersistenceFailing"]
    assert "redis_rdb_last_bgsave_status" in rule["expr"]
    assert rule["labels"]["severity"] == "critical"


@pytest.mark.parametrize("name", LAYOUTS)
def test_doctor_passes_the_shipped_conf(name):
    *_, conf = valkey_parts(name)
    # CONFIG GET answers the rules as one space-separated string.
    status, detail, _ = persistence_check(appendonly=conf["appendonly"][0],
                                          save=" ".join(conf["save"]))
    assert status == OK
    assert f"RDB snapshots (save {SHIPPED_SAVE_RULES})" in detail
    assert "sessions" in detail and "ObjectLostError" in detail


def test_doctor_warns_without_persistence_and_suggests_the_shipped_rules():
    status, detail, action = persistence_check(appendonly="no", save="")
    assert status == WARN
    assert "ObjectLostError" in detail and "every session and cache entry" in detail
    assert f'save "{SHIPPED_SAVE_RULES}"' in action and "appendonly no" in action
    assert "accept re-running work" in action


def test_doctor_names_what_aof_costs():
    status, detail, _ = persistence_check(appendonly="yes", save="")
    assert status == OK and "appendfsync everysec" in detail
    assert "second time" in detail and "docs/deployment.md" in detail


def test_doctor_cannot_read_the_settings():
    status, detail, _ = persistence_check(appendonly=None, save=None)
    assert status == WARN and "cannot read" in detail


def test_conf_persistence_reads_what_valkey_server_would():
    assert conf_persistence('save ""\nappendonly yes\n') == {
        "appendonly": "yes", "appendfsync": "everysec", "save": ""}
    assert conf_persistence("save 900 1\nsave 60 10\n# save 1 1\n")["save"] == "900 1 60 10"
    assert conf_persistence("port 1\n")["save"] == "3600 1 300 100 60 10000"  # the default
    assert conf_persistence('save 900 1\nsave ""\n')["save"] == ""


def test_deployed_scenario_measures_the_shipped_conf_and_every_other_setting():
    variants = persistence_variants(deployed_settings(CONFIGS)[0])
    labels = list(variants)
    assert labels[0] == ("valkey deployed: shipped valkey.conf = RDB only "
                         f"(save {SHIPPED_SAVE_RULES})") and variants[labels[0]] == {}
    assert variants["valkey deployed: AOF everysec"] == {
        "appendonly": "yes", "appendfsync": "everysec", "save": '""'}
    assert variants["valkey deployed: no persistence"] == {"appendonly": "no", "save": '""'}
    assert variants["valkey deployed: RDB, a snapshot always running (BGSAVE loop)"] == {
        "appendonly": "no", "save": f'"{SHIPPED_SAVE_RULES}"'}
    assert len(variants) == 4  # RDB only is the shipped row, not run twice
    aof_shipped = persistence_variants('save ""\nappendonly yes\nappendfsync everysec\n')
    assert list(aof_shipped)[0] == "valkey deployed: shipped valkey.conf = AOF everysec"
    assert aof_shipped["valkey deployed: RDB only (save 3600 1 300 100 60 10000)"] == {
        "appendonly": "no", "save": '"3600 1 300 100 60 10000"'}


def test_an_installed_package_without_cluster_configs_gets_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match=r"cluster_configs=.*no overlays/standalone/valkey.yaml "
                                          r"there.*--cluster-configs"):
        deployed_settings(tmp_path)
