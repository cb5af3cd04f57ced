"""The typed config: every field validated, passwords refused, the JSON round-trips."""

import json

import pytest

from ray_valkey_spill import ConfigError, spilling_config
from ray_valkey_spill.config import OPTIONS, SpillConfig, parse_spilling_config, parse_url


@pytest.mark.parametrize("url,host,port,db,tls,cluster", [
    ("valkey://h:6379/0", "h", 6379, 0, False, False),
    ("redis://h/3", "h", 6379, 3, False, False),
    ("valkeys://h:6380/1", "h", 6380, 1, True, False),
    ("rediss://user@h:1", "h", 1, 0, True, False),
    ("valkey+cluster://h:7000", "h", 7000, 0, False, True),
    ("valkeys+cluster://h:7000", "h", 7000, 0, True, True),
    ("valkey://[::1]:6379/0", "::1", 6379, 0, False, False),
])
def test_url_schemes_parse(url, host, port, db, tls, cluster):
    a = parse_url(url)
    assert (a.host, a.port, a.db, a.tls, a.cluster) == (host, port, db, tls, cluster)


def test_unix_url():
    a = parse_url("unix:///run/valkey.sock?db=2")
    assert (a.unix_path, a.db, a.host) == ("/run/valkey.sock", 2, None)


@pytest.mark.parametrize("url", [
    "valkey://:secret@h:6379/0", "valkey://user:secret@h/0", "redis://h/0?password=secret",
])
def test_password_in_url_is_refused_and_not_echoed(url):
    with pytest.raises(ConfigError) as err:
        parse_url(url)
    assert "password_env" in str(err.value) and "password_file" in str(err.value)
    assert "secret" not in str(err.value)


@pytest.mark.parametrize("url,fragment", [
    ("http://h:6379", "scheme"), ("valkey://", "host"), ("valkey://h:99999/0", "well-formed"),
    ("valkey://h/x", "database"), ("valkey://h/0?foo=1", "query"), ("unix://relative", "unix"),
    ("valkey+cluster://h/2", "database 0"), ("", "URL"), (None, "URL"), ("valkey://h /0", "whitespace"),
])
def test_bad_urls_name_the_problem(url, fragment):
    with pytest.raises(ConfigError) as err:
        parse_url(url)
    assert err.value.field == "url" and fragment in str(err.value)


@pytest.mark.parametrize("params,field", [
    ({"chunk_size_bytes": 10}, "chunk_size_bytes"),
    ({"chunk_size_bytes": True}, "chunk_size_bytes"),
    ({"chunk_size_bytes": "4mb"}, "chunk_size_bytes"),
    ({"compression": "lz4"}, "compression"),
    ({"connections": 0}, "connections"),
    ({"socket_timeout_s": float("nan")}, "socket_timeout_s"),
    ({"retries": -1}, "retries"),
    ({"ssl_check_hostname": "yes"}, "ssl_check_hostname"),
    ({"prefix": "emb:"}, "ray prefix"),
    ({"prefix": "vllm:"}, "ray prefix"),
    ({"prefix": "ray"}, "ray prefix"),
    ({"prefix": "ray:*"}, "ray prefix"),
    ({"password_env": "NOT A NAME"}, "password_env"),
    ({"password_env": "A", "password_file": "/f"}, "password_file"),
    ({"ssl_certfile": "/c"}, "ssl_keyfile"),
    ({"bogus": 1}, "params"),
    ({"allow_allkeys_eviction": None}, "allow_allkeys_eviction"),
])
def test_bad_values_raise_one_config_error_naming_the_field(params, field):
    with pytest.raises(ConfigError) as err:
        SpillConfig.from_params({"url": "valkey://h:6379/0", **params})
    assert err.value.field == field
    assert repr(err.value.value) in str(err.value)


def test_unknown_option_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        SpillConfig.from_params({"url": "valkey://h", "chunk_size": 1})
    assert "chunk_size_bytes" in str(err.value)


def test_missing_url():
    with pytest.raises(ConfigError, match="required"):
        SpillConfig.from_params({})


def test_spilling_config_round_trips_and_omits_defaults():
    text = spilling_config("valkey://h:6379/0", chunk_size_bytes=1 << 20, password_env="PW")
    data = json.loads(text)
    assert data == {"type": "valkey", "params": {"url": "valkey://h:6379/0",
                                                 "chunk_size_bytes": 1 << 20,
                                                 "password_env": "PW"}}
    config = parse_spilling_config(text)
    assert config.chunk_size_bytes == 1 << 20 and config.prefix == "ray:"


def test_every_option_has_a_field_with_its_default():
    """SpillConfig has exactly one field per option (no stray field with a default of its own),
    and a config from a bare URL carries each option's default from the table."""
    import dataclasses

    fields = [f.name for f in dataclasses.fields(SpillConfig)]
    assert fields == ["url", "address"] + [o.name for o in OPTIONS[1:]]
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(SpillConfig))
    config = SpillConfig.from_params({"url": "valkey://h"})
    for option in OPTIONS[1:]:
        assert getattr(config, option.name) == option.default


def test_spilling_config_validates_before_building():
    with pytest.raises(ConfigError):
        spilling_config("valkey://h", compression="brotli")


def test_password_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("RVS_PW", "s3cret")
    assert SpillConfig.from_params({"url": "valkey://h", "password_env": "RVS_PW"}) \
        .resolve_password() == "s3cret"
    f = tmp_path / "pw"
    f.write_text("fromfile\n")
    assert SpillConfig.from_params({"url": "valkey://h", "password_file": str(f)}) \
        .resolve_password() == "fromfile"
    with pytest.raises(ConfigError, match="password_env"):
        SpillConfig.from_params({"url": "valkey://h", "password_env": "RVS_UNSET_X"}) \
            .resolve_password()
    with pytest.raises(ConfigError, match="readable"):
        SpillConfig.from_params({"url": "valkey://h", "password_file": str(tmp_path / "no")}) \
            .resolve_password()


@pytest.mark.parametrize("doc", ['{"type": "filesystem"}', "not json", '{"type": "valkey"}',
                                 '{"type": "valkey", "params": {"url": "valkey://h"}, "x": 1}'])
def test_parse_spilling_config_rejects_other_documents(doc):
    with pytest.raises(ConfigError):
        parse_spilling_config(doc)
