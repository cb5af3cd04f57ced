"""The LMCache plug-in's key escaping, chunk header and options; no lmcache, no server."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, strategies as st

from ray_valkey_spill.errors import ConfigError
from ray_valkey_spill.integrations.lmcache._format import (HEADER_BYTES, ChunkLayout, check,
                                                           escape_key, header, unescape_key)
from ray_valkey_spill.integrations.lmcache._options import PluginOptions

LAYOUT = ChunkLayout(fmt=1, dtype="bfloat16", full_shape=(2, 4, 16, 32), token_dim=2, itemsize=2)


@given(st.text(), st.text())
def test_key_escaping_is_injective_and_never_a_pattern(a, b):
    ea, eb = escape_key(a), escape_key(b)
    assert unescape_key(ea) == a
    assert (ea == eb) == (a == b)
    assert not set(ea) & set(":*?[]{} \\") and ea.isascii()


def test_header_detects_every_kind_of_damage():
    key, payload = b"vllm:kv:m@1@0@abc@bfloat16", os.urandom(LAYOUT.full_bytes)
    head = header(key, LAYOUT, LAYOUT.full_shape, payload)
    assert len(head) == HEADER_BYTES and check(key, LAYOUT, head, payload) is None
    flipped = bytearray(payload)
    flipped[123] ^= 0x80
    assert check(key, LAYOUT, head, flipped) == "checksum mismatch"
    assert check(b"vllm:kv:other", LAYOUT, head, payload) == "checksum mismatch"
    assert "payload is" in check(key, LAYOUT, head, payload[:-512])
    assert "magic" in check(key, LAYOUT, b"X" + head[1:], payload)
    for other in (ChunkLayout(1, "float16", (2, 4, 16, 32), 2, 2),
                  ChunkLayout(6, "bfloat16", (2, 4, 16, 32), 2, 2)):
        assert "layout mismatch" in check(key, other, head, payload)


def test_partial_chunks_have_whole_tokens_only():
    assert LAYOUT.shape_of(LAYOUT.full_bytes) == (2, 4, 16, 32)
    assert LAYOUT.shape_of(5 * LAYOUT.token_bytes) == (2, 4, 5, 32)
    for bad in (0, LAYOUT.token_bytes - 2, LAYOUT.full_bytes + LAYOUT.token_bytes):
        assert LAYOUT.shape_of(bad) is None


def _extra(**options):
    return {f"remote_storage_plugin.rvs.{k}": v for k, v in options.items()}


def test_options_require_url_and_ttl_and_name_the_bad_field():
    ok = PluginOptions.from_extra_config(_extra(url="valkey://h:6379/0", ttl_seconds="3600",
                                                module_path="m", class_name="C"), "rvs")
    assert ok.ttl_seconds == 3600 and ok.prefix == "vllm:kv:" and ok.read_timeout_s == 1.0
    for options, field in (({"ttl_seconds": 60}, "url"), ({"url": "valkey://h:1/0"}, "ttl_seconds"),
                           ({"url": "valkey://h:1/0", "ttl_seconds": -5}, "ttl_seconds"),
                           ({"url": "valkey://h:1/0", "ttl_seconds": 5, "prefix": "emb:"}, "prefix"),
                           ({"url": "valkey://h:1/0", "ttl_seconds": 5, "password_env": "a b"},
                            "password_env"),
                           ({"url": "valkey://h:1/0", "ttl_seconds": 5, "io_threads": 0},
                            "io_threads")):
        with pytest.raises(ConfigError, match=field):
            PluginOptions.from_extra_config(_extra(**options), "rvs")
    # options of another plug-in instance are not ours
    other = {"remote_storage_plugin.rvs.b.url": "x", **_extra(url="valkey://h:1/0", ttl_seconds=5)}
    assert PluginOptions.from_extra_config(other, "rvs").url == "valkey://h:1/0"


def test_importing_the_package_and_the_plugin_module_stays_light():
    import subprocess
    import sys

    code = ("import sys, ray_valkey_spill, ray_valkey_spill.caches, "
            "ray_valkey_spill.integrations, ray_valkey_spill.integrations.lmcache; "
            "heavy = {'torch', 'lmcache', 'ray'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
