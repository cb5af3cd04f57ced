"""``ray-valkey-spill doctor`` against real servers: a healthy one passes, an unsafe one fails
with exit code 1, bad input ends in one line and exit code 2."""

from __future__ import annotations

import json

import pytest

from ray_valkey_spill.acl_rules import setuser_command
from ray_valkey_spill.testing.embedded import EmbeddedValkey
from ray_valkey_spill.tools import doctor
from ray_valkey_spill.cli.options import EXIT_FINDINGS, EXIT_USAGE


def _run(capsys, argv):
    code = doctor.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_settings_pass_but_an_all_powerful_user_is_an_error(capsys, valkey_server):
    """The embedded server's settings are spill-safe; its default user may run anything
    (FLUSHALL, SELECT, FUNCTION LOAD, ...), which doctor reports as an ERROR (exit 1)."""
    code, out, _ = _run(capsys, ["--url", valkey_server.url, "--json", "--pings", "3"])
    report = json.loads(out)
    rows = {c["check"]: c for c in report["checks"]}
    assert rows["reachable"]["status"] == "OK" and rows["maxmemory-policy"]["status"] == "OK"
    assert rows["acl-dangerous"]["status"] == "ERROR"
    assert "FLUSHALL" in rows["acl-dangerous"]["detail"]
    assert "FUNCTION LOAD" in rows["acl-dangerous"]["detail"]
    assert code == EXIT_FINDINGS and report["errors"] == 1, report


def test_cache_keys_without_a_ttl_are_reported(capsys):
    with EmbeddedValkey() as s:
        client = s.client()
        client.set("emb:forgot-ttl", b"1")
        client.set("emb:fine", b"1", ex=60)
        code, out, _ = _run(capsys, ["--url", s.url, "--json", "--pings", "1"])
    rows = {c["check"]: c for c in json.loads(out)["checks"]}
    assert rows["cache-ttl"]["status"] == "WARN" and "emb:* 1" in rows["cache-ttl"]["detail"]


def test_an_allkeys_server_is_an_error(capsys):
    with EmbeddedValkey(config={"maxmemory": "64mb", "maxmemory-policy": "allkeys-lru"}) as s:
        code, out, _ = _run(capsys, ["--url", s.url, "--pings", "2"])
    assert code == EXIT_FINDINGS
    line = next(line for line in out.splitlines() if line.startswith("maxmemory-policy"))
    assert "ERROR" in line and "allkeys-lru" in line


@pytest.mark.parametrize("argv, says", [
    (["--url", "ftp://h:1/0"], "url"),
    (["--url", "valkey://127.0.0.1:1/0", "--password-env", "A-B"], "password_env"),
    (["--url", "valkey://127.0.0.1:1/0", "--pings", "0"], "--pings"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, says):
    code, out, err = _run(capsys, argv)
    assert code == EXIT_USAGE and out == ""
    assert err.count("\n") == 1 and says in err and "Traceback" not in err


def test_the_acl_line_doctor_suggests_is_the_shipped_rule_and_fixes_the_user(capsys, monkeypatch):
    """A spill user that reaches every tenant gets a WARN whose fix is the shipped data-user
    rule (acl_rules); applied as printed, the same user then passes every ACL check."""
    monkeypatch.setenv("RVS_DOCTOR_PW", "pw-doctor-test")
    argv = ["--url", None, "--json", "--pings", "1", "--prefix", "ray:x:",
            "--username", "raysp-x", "--password-env", "RVS_DOCTOR_PW", "--admin-username", "default"]
    with EmbeddedValkey() as s:
        admin = s.client()
        admin.execute_command("ACL", "SETUSER", "raysp-x", "on", ">pw-doctor-test", "~*",
                              "-@all", "+@read", "+@write", "+@keyspace", "+@connection")
        argv[1] = s.url
        _, out, _ = _run(capsys, argv)
        rows = {c["check"]: c for c in json.loads(out)["checks"]}
        assert rows["acl"]["status"] == "WARN", rows["acl"]
        fix = rows["acl"]["action"].split(": ", 1)[1]
        assert fix == setuser_command("raysp-x", "ray:x:")
        assert rows["acl-optional"]["status"] == "WARN"  # no INFO memory yet
        admin.execute_command(*fix.replace(">PASSWORD", ">pw-doctor-test").split())
        _, out, _ = _run(capsys, argv)
        rows = {c["check"]: c for c in json.loads(out)["checks"]}
    assert rows["acl"]["status"] == "OK", rows["acl"]
    assert "acl-optional" not in rows and rows["acl-dangerous"]["status"] == "OK", rows
