"""No password, token or query value appears in any error, repr or CLI output: a property test
over generated URLs and option values, and every subcommand run with hostile input ends in one
line and exit code 2, never a traceback."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stderr, redirect_stdout

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_valkey_spill.config import SpillConfig, parse_url, redact_url, spilling_config
from ray_valkey_spill.errors import RayValkeySpillError
from ray_valkey_spill import cli

# Secrets long and random enough that they cannot appear in a message by accident.
secrets_ = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                   min_size=12, max_size=40)
URL_SHAPES = [
    "valkey://user:{s}@host:6379/0",          # a password in the userinfo
    "valkey://:{s}@host:6379/0",
    "ftp://user:{s}@host:6379/0",             # and an unknown scheme
    "valkey://user:{s}@host:99999/0",         # and a bad port
    "valkey://user:{s}@host:6379/0 ",         # and trailing whitespace
    "valkey://user:{s}@a..b:6379/0",          # and a bad host
    "valkey://host:6379/0?password={s}",      # a password as a query argument
    "valkey://host:6379/0?token={s}",         # an unknown query argument
    "valkey://host:6379/0?db=0&x={s}",
    "valkey://user:{s}@host:6379/notadb",
    "valkey+cluster://user:{s}@host:6379/3",
    "unix://user:{s}@/tmp/sock",
]


def _outputs_of(fn) -> str:
    """Everything ``fn`` prints, logs, raises (message and repr)."""
    out, err, logs = io.StringIO(), io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(logs)
    logging.getLogger().addHandler(handler)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                fn()
            except SystemExit as exc:
                err.write(f"exit {exc.code}")
            except RayValkeySpillError as exc:
                err.write(f"{exc}\n{exc!r}\n{getattr(exc, 'value', '')!r}")
    finally:
        logging.getLogger().removeHandler(handler)
    return out.getvalue() + err.getvalue() + logs.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(secret=secrets_, shape=st.sampled_from(URL_SHAPES))
def test_no_url_secret_is_echoed_anywhere(secret, shape):
    url = shape.format(s=secret)
    assert secret not in redact_url(url)
    for call in (lambda: parse_url(url),
                 lambda: SpillConfig.from_params({"url": url}),
                 lambda: spilling_config(url, chunk_size_bytes=1 << 20),
                 lambda: cli.main(["config", url]),
                 lambda: cli.main(["gc", "--url", url]),
                 lambda: cli.main(["stats", "--url", url]),
                 lambda: cli.main(["doctor", "--url", url])):
        assert secret not in _outputs_of(call), (shape, call)


@settings(max_examples=40, deadline=None)
@given(secret=st.one_of(secrets_, st.text(min_size=8, max_size=30).filter(lambda s: s.strip())))
def test_a_password_given_as_password_env_is_refused_without_echo(secret):
    """A value that is not an environment variable's NAME (a pasted password, lower-case hex
    from `openssl rand -hex`, anything with other characters) is refused, and never shown."""
    import re

    if re.fullmatch(r"[A-Z_][A-Z0-9_]*", secret) and not re.fullmatch(r"[0-9A-F]{16,}", secret):
        return  # a plausible variable name: accepted by design
    for call in (lambda: SpillConfig.from_params({"url": "valkey://h:6379/0",
                                                   "password_env": secret}),
                 lambda: cli.main(["doctor", "--url", "valkey://127.0.0.1:1/0",
                                   f"--password-env={secret}"]),
                 lambda: cli.main(["config", "valkey://h:6379/0", f"password_env={secret}"])):
        text = _outputs_of(call)
        assert "password_env" in text and secret not in text


def test_the_config_repr_holds_no_secret(monkeypatch):
    monkeypatch.setenv("RVS_SECRET_PW", "hunter2-is-the-password")
    config = SpillConfig.from_params({"url": "valkey://u@h:6379/0", "password_env": "RVS_SECRET_PW"})
    assert config.resolve_password() == "hunter2-is-the-password"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.to_params())


HOSTILE = [
    ["config"], ["config", "valkey://h:6379/0", "url="], ["config", "valkey://h", "novalue"],
    ["config", "valkey://a..b:6379/0"], ["config", "valkey://h:0/0"],
    ["config", "valkey://h", "chunk_size_bytes=-1"], ["config", "valkey://h", "nosuch=1"],
    ["gc", "--url", "valkey://a..b:6379/0"], ["gc", "--url", "valkey://h", "--grace-s", "nan"],
    ["gc", "--url", "valkey://h", "--sample-keys", "0"],
    ["stats", "--url", "valkey://a..b:6379/0"], ["stats", "--url", "redis://h:1/x"],
    ["doctor", "--url", "valkey://a..b:6379/0"], ["doctor", "--url", "valkey://h", "--pings", "-3"],
    ["doctor", "--url", "valkeys://h", "--ssl-certfile", "c.pem"],
    ["gc", "--url", "valkey://127.0.0.1:1/0", "--yes", "--allow-short-grace", "--grace-s", "1"],
    ["stats", "--url", "valkey://127.0.0.1:1/0", "--connect-timeout-s", "0.2"],
]


@pytest.mark.parametrize("argv", HOSTILE, ids=[" ".join(a) for a in HOSTILE])
def test_hostile_input_ends_in_one_line_and_exit_2(argv, capfd):
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own usage errors also exit 2
        code = exc.code
    out, err = capfd.readouterr()
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    assert err.strip() and (len(err.strip().splitlines()) == 1 or err.startswith("usage:")), err
