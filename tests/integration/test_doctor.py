"""``ray-valkey-spill doctor`` against real servers: a healthy one passes, an unsafe one fails
with exit code 1, bad input ends in one line and exit code 2."""

from __future__ import annotations

import json

import pytest

from ray_valkey_spill.testing.embedded import EmbeddedValkey
from ray_valkey_spill.tools import doctor
from ray_valkey_spill.tools.cli_options import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE


def _run(capsys, argv):
    code = doctor.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_spill_safe_server_passes(capsys, valkey_server):
    code, out, _ = _run(capsys, ["--url", valkey_server.url, "--json", "--pings", "3"])
    report = json.loads(out)
    rows = {c["check"]: c["status"] for c in report["checks"]}
    assert code == EXIT_OK and report["errors"] == 0, report
    assert rows["reachable"] == "OK" and rows["maxmemory-policy"] == "OK"


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
