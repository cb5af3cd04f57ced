"""Fuzzing the parsers and decoders that see untrusted input.

Every input must give either a valid result or one of the package's own errors (a subclass of
``RayValkeySpillError``): never another exception, a crash or a hang. No server, no Ray.
"""

from __future__ import annotations

import json
import string
import struct

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ray_valkey_spill.spill.codec import (CODEC_RAW, CODEC_ZSTD, ChunkCodec, ChunkInfo, Manifest,
                                    checksum)
from ray_valkey_spill.config import (OPTIONS, SCHEMES, ServerAddress, SpillConfig,
                                     parse_spilling_config, parse_url)
from ray_valkey_spill.errors import (ConfigError, CorruptObjectError, InvalidSpillURLError,
                                     RayValkeySpillError)
from ray_valkey_spill.spill.keys import SpillURL, new_base_key, parse_spill_url

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
PREFIX = "ray:"


def ours_or_valid(fn, *args):
    """Call fn; return (True, result) or (False, error) for the package's own errors only."""
    try:
        return True, fn(*args)
    except RayValkeySpillError as exc:
        return False, exc


# -- strategies ---------------------------------------------------------------------------
url_alphabet = st.sampled_from(string.ascii_letters + string.digits + ":/@?&=#[]%._-+~ \t²١")
hosts = st.sampled_from(["127.0.0.1", "localhost", "[::1]", "h", "valkey.example", "", "[::1",
                         "a b", "x" * 300])
ports = st.one_of(st.none(), st.integers(-5, 70000).map(str), st.sampled_from(["", "abc", "٣"]))
paths = st.one_of(st.just(""), st.sampled_from(["/0", "/15", "/-1", "/x", "/²", "/0/1",
                                                 "/99999999999"]),
                  st.text(url_alphabet, max_size=8).map(lambda t: "/" + t))
queries = st.one_of(st.just(""), st.sampled_from(["?db=1", "?db=²", "?password=x", "?a=b",
                                                  "?db=", "?db=1&db=2", "#frag"]))
userinfo = st.sampled_from(["", "u@", "u:p@", ":p@", "u:@", "%75@", "u%3Ap@"])


@st.composite
def server_urls(draw):
    scheme = draw(st.one_of(st.sampled_from(SCHEMES + ("http", "VALKEY", "valkey+unix", "")),
                            st.text(string.ascii_lowercase + "+", max_size=8)))
    port = draw(ports)
    host = draw(hosts)
    netloc = draw(userinfo) + host + ("" if port is None else ":" + port)
    return f"{scheme}://{netloc}{draw(paths)}{draw(queries)}"


any_text = st.one_of(server_urls(), st.text(max_size=60),
                     st.text(url_alphabet, max_size=60))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
option_names = st.sampled_from([o.name for o in OPTIONS] + ["bogus", "", "URL"])


def option_values(name):
    return st.one_of(json_scalars, st.lists(json_scalars, max_size=2),
                     st.sampled_from(["ray:", "ray:x:", "emb:", "vllm:", "ray", "r*y:", "ray:{a}:",
                                      "PASS_ENV", "1BAD", "/etc/hostname", "auto", "zstd",
                                      "none", 4096, 1 << 20, 0.05, 31.0]))


@st.composite
def param_dicts(draw):
    params = {}
    if draw(st.booleans()):
        params["url"] = draw(st.one_of(server_urls(), st.just("valkey://127.0.0.1:6379/0"),
                                       json_scalars))
    for name in draw(st.lists(option_names, max_size=5, unique=True)):
        params[name] = draw(option_values(name))
    return params


# -- config ---------------------------------------------------------------------------------
@FUZZ
@given(any_text)
@example("valkey://h:1/²")          # a Unicode digit: str.isdigit() is True, int() fails
@example("valkey://h:1/?db=²")
@example("valkey://h:1/?db=١")
@example("valkeys://[::1]:6380/3")
@example("unix:///tmp/v.sock?db=2")
def test_parse_url_gives_address_or_config_error(url):
    ok, out = ours_or_valid(parse_url, url)
    if ok:
        assert isinstance(out, ServerAddress)
        assert out.scheme in SCHEMES
        assert 0 <= out.db < 2**31
        assert (out.unix_path is None) != (out.host is None)
        assert "@" not in out.display()  # never echoes credentials
    else:
        assert isinstance(out, ConfigError)


@FUZZ
@given(st.sampled_from(["valkey", "redis", "valkeys", "rediss", "valkey+cluster"]),
       st.text(string.ascii_letters + string.digits + "!$&'()*+,;=-._~%", min_size=1,
               max_size=20))
def test_password_in_url_is_refused_and_never_echoed(scheme, password):
    password = "Zx9" + password  # distinctive: never a substring of the message's own text
    url = f"{scheme}://user:{password}@127.0.0.1:6379/0"
    try:
        parsed_password = __import__("urllib.parse").parse.urlsplit(url).password
    except ValueError:
        parsed_password = None
    assume(parsed_password)
    with pytest.raises(ConfigError) as info:
        parse_url(url)
    message = str(info.value)
    assert "password_env" in message and "password_file" in message
    assert password not in message


def test_password_query_argument_is_refused():
    with pytest.raises(ConfigError, match="password_env"):
        parse_url("valkey://127.0.0.1:6379/0?password=hunter2")


@FUZZ
@given(param_dicts())
def test_from_params_gives_config_or_config_error(params):
    ok, out = ours_or_valid(SpillConfig.from_params, params)
    if ok:
        assert isinstance(out, SpillConfig)
        # What was accepted round-trips through to_params and JSON (the form Ray carries).
        again = SpillConfig.from_params(json.loads(json.dumps(out.to_params())))
        assert again == out
    else:
        assert isinstance(out, ConfigError)


@FUZZ
@given(st.one_of(
    param_dicts().map(lambda p: json.dumps({"type": "valkey", "params": p})),
    param_dicts().map(lambda p: {"type": "valkey", "params": p}),
    st.text(max_size=80), st.binary(max_size=80), json_scalars,
    st.dictionaries(st.sampled_from(["type", "params", "x"]), json_scalars, max_size=3),
    st.integers(1, 5000).map(lambda n: "[" * n),
    st.integers(1, 5000).map(lambda n: '{"a":' * n),
))
@example("[" * 3000)                 # deep nesting: json raises RecursionError
@example('{"type": "valkey", "params": ' + "[" * 3000)
@example(b"\xff\xfe")
def test_parse_spilling_config_gives_config_or_config_error(data):
    ok, out = ours_or_valid(parse_spilling_config, data)
    assert isinstance(out, SpillConfig) if ok else isinstance(out, ConfigError)


# -- spill URLs -------------------------------------------------------------------------------
names = st.from_regex(r"\A[A-Za-z0-9_.\-]{1,40}\Z", fullmatch=True)


@FUZZ
@given(names, names, names, st.integers(0, 2**40), st.integers(0, 1 << 24))
def test_spill_url_round_trip(session, node, obj, size, chunks):
    base = new_base_key(PREFIX, session, node, obj)
    url = SpillURL(base, size, chunks)
    assert parse_spill_url(url.encode(), PREFIX) == url
    assert parse_spill_url(url.encode().decode(), PREFIX) == url


def _mutations():
    good = SpillURL(f"{PREFIX}sess:node:obj.0a1b2c3d", 100, 1).encode().decode()
    return st.one_of(
        st.text(max_size=120),
        st.binary(max_size=120),
        st.builds(lambda i, c: good[:i] + c + good[i:], st.integers(0, len(good)),
                  st.text(max_size=3)),
        st.builds(lambda i: good[:i] + good[i + 1:], st.integers(0, len(good) - 1)),
        st.builds(lambda i, c: (good[:i] + c + good[i + 1:]), st.integers(0, len(good) - 1),
                  st.sampled_from(list("?&=:/%.#*- ²١") + ["\x00", "\n", "é"])),
        st.sampled_from([
            good.replace(PREFIX, "emb:"), good.replace(PREFIX, "session:"),
            good.replace(PREFIX, "vllm:kv:"), good.replace(PREFIX, "ray:x:"),
            good.replace("obj.0a1b2c3d", "hb"), good.replace("sess:", ""),
            good.replace("sess:node:", "sess:node:../"), good.replace("offset=0", "offset=1"),
            good.replace("size=100", "size=-1"), good.replace("chunks=1", "chunks=99999999999"),
            good.replace("chunks=1", "chunks=1&chunks=2"), good + "&x=1", good + "?",
            good.replace("spill", ""), good.replace("valkey://", "file://"),
            good.replace("size=100", "size=" + "9" * 5000),
        ]),
    ).map(lambda u: u.encode("utf-8", "surrogatepass") if isinstance(u, str) and u[:1] == "b"
          else u)


@FUZZ
@given(_mutations())
def test_parse_spill_url_gives_url_or_invalid_url_error(url):
    ok, out = ours_or_valid(parse_spill_url, url, PREFIX)
    if ok:
        assert isinstance(out, SpillURL)
        # accepted URLs stay inside the prefix and name an object key, never a heartbeat
        assert out.base_key.startswith(PREFIX)
        assert not out.base_key.endswith(":hb")
        assert out.size >= 0 and 0 <= out.n_chunks <= 1 << 24
    else:
        assert isinstance(out, InvalidSpillURLError)


@pytest.mark.parametrize("url", [
    b"valkey://spill/emb:sess:node:obj.1?offset=0&size=1&chunks=1",
    b"valkey://spill/session:sess:node:obj.1?offset=0&size=1&chunks=1",
    b"valkey://spill/vllm:kv:sess:node:obj.1?offset=0&size=1&chunks=1",
    b"valkey://spill/raz:sess:node:obj.1?offset=0&size=1&chunks=1",
    b"valkey://spill/ray:sess:node:hb?offset=0&size=1&chunks=1",
    b"valkey://spill/ray:sess:node?offset=0&size=1&chunks=1",
    b"valkey://spill/ray:sess:node:obj.1:extra?offset=0&size=1&chunks=1",
    b"valkey://spill/ray:sess:node:obj*?offset=0&size=1&chunks=1",
    b"valkey://other/ray:sess:node:obj.1?offset=0&size=1&chunks=1",
    b"valkey://spill/ray:sess:node:obj.1",
    b"valkey://spill/ray:sess:node:obj.1?offset=5&size=1&chunks=1",
    b"valkey://spill/ray:sess:node:obj.1?offset=0&size=1",
    b"\xff\xfe",
    b"",
])
def test_restore_urls_outside_the_prefix_or_malformed_are_refused(url):
    with pytest.raises(InvalidSpillURLError):
        parse_spill_url(url, PREFIX)


@pytest.mark.parametrize("query", ["size=1_0&chunks=1", "size=10&chunks=١", "size=+10&chunks=1",
                                   "size= 10&chunks=1"])
def test_spill_url_numbers_are_plain_ascii_decimals(query):
    # int() accepts '1_0', '+10', ' 10' and non-ASCII digits; a URL we wrote never has them.
    url = f"valkey://spill/ray:sess:node:obj.1?offset=0&{query}"
    with pytest.raises(InvalidSpillURLError):
        parse_spill_url(url, PREFIX)


# -- manifest and chunks ---------------------------------------------------------------------
@st.composite
def manifests(draw):
    chunk_size = draw(st.integers(1, 64))
    buf_len = draw(st.integers(0, 300))
    n = -(-buf_len // chunk_size)
    chunks = []
    for i in range(n):
        raw_len = min(chunk_size, buf_len - i * chunk_size)
        codec = draw(st.sampled_from([CODEC_RAW, CODEC_ZSTD]))
        stored = raw_len if codec == CODEC_RAW else draw(st.integers(0, 2**32 - 1))
        chunks.append(ChunkInfo(codec, stored, draw(st.integers(0, 2**64 - 1))))
    return Manifest(chunk_size, buf_len, draw(st.binary(max_size=40)),
                    draw(st.binary(max_size=20)), tuple(chunks))


@FUZZ
@given(manifests())
def test_manifest_round_trip(manifest):
    assert Manifest.decode(manifest.encode(), "k") == manifest


def _reseal(body: bytes) -> bytes:
    """Give a tampered manifest body a valid trailing checksum (tests the inner checks)."""
    return body + struct.pack("<Q", checksum(body))


@FUZZ
@given(manifests(), st.data())
def test_manifest_decode_gives_manifest_or_corrupt_error(manifest, data):
    encoded = bytearray(manifest.encode())
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "reseal-flip",
                                     "reseal-truncate", "random"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(encoded) - 1))
        encoded[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        encoded = encoded[:data.draw(st.integers(0, len(encoded) - 1))]
    elif how == "extend":
        encoded += data.draw(st.binary(min_size=1, max_size=20))
    elif how == "reseal-flip":
        body = bytearray(encoded[:-8])
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] ^= data.draw(st.integers(1, 255))
        encoded = bytearray(_reseal(bytes(body)))
    elif how == "reseal-truncate":
        encoded = bytearray(_reseal(bytes(encoded[:data.draw(st.integers(0, len(encoded) - 9))])))
    else:
        encoded = bytearray(data.draw(st.binary(max_size=200)))
    ok, out = ours_or_valid(Manifest.decode, bytes(encoded), "k")
    if ok:
        assert isinstance(out, Manifest)
        assert len(out.chunks) == -(-out.buf_len // out.chunk_size)
    else:
        assert isinstance(out, CorruptObjectError)
        assert "k" in str(out)


@FUZZ
@given(st.binary(max_size=3000), st.sampled_from(["auto", "zstd", "none"]))
def test_chunk_codec_round_trip(payload, compression):
    codec = ChunkCodec(compression)
    info, stored = codec.encode(memoryview(payload))
    target = memoryview(bytearray(len(payload)))
    ChunkCodec.decode_into(info, bytes(stored), target, "k")
    assert target.tobytes() == payload


@st.composite
def decode_inputs(draw):
    payload = draw(st.one_of(st.binary(max_size=2000),
                             st.integers(1, 4000).map(lambda n: b"a" * n)))
    info, stored = ChunkCodec(draw(st.sampled_from(["zstd", "none"]))).encode(
        memoryview(payload))
    stored = bytearray(stored)
    how = draw(st.sampled_from(["ok", "flip", "truncate", "extend", "random", "none",
                                "wrong-target", "info-lies"]))
    target_len = len(payload)
    if how == "flip" and stored:
        stored[draw(st.integers(0, len(stored) - 1))] ^= draw(st.integers(1, 255))
    elif how == "truncate" and stored:
        stored = stored[:draw(st.integers(0, len(stored) - 1))]
        if draw(st.booleans()):
            info = ChunkInfo(info.codec, len(stored), info.checksum)
    elif how == "extend":
        stored += draw(st.binary(min_size=1, max_size=20))
        if draw(st.booleans()):
            info = ChunkInfo(info.codec, len(stored), info.checksum)
    elif how == "random":
        stored = bytearray(draw(st.binary(max_size=200)))
        info = ChunkInfo(draw(st.sampled_from([CODEC_RAW, CODEC_ZSTD])), len(stored),
                         draw(st.integers(0, 2**64 - 1)))
    elif how == "none":
        stored = None
    elif how == "wrong-target":
        target_len = draw(st.integers(0, 5000))
    elif how == "info-lies":
        info = ChunkInfo(1 - info.codec, info.stored_len, info.checksum)
    return info, (None if stored is None else bytes(stored)), target_len, payload, how


@FUZZ
@given(decode_inputs())
@example((ChunkInfo(CODEC_RAW, 3, 0), b"abc", 5, b"abc", "wrong-target"))
def test_decode_into_gives_bytes_or_corrupt_error(case):
    info, stored, target_len, payload, how = case
    target = memoryview(bytearray(target_len))
    ok, out = ours_or_valid(ChunkCodec.decode_into, info, stored, target, "k")
    if ok:
        # Accepted output is always the original payload (checksum-verified), never garbage.
        assert target.tobytes() == payload
    else:
        assert isinstance(out, CorruptObjectError)


def test_zstd_bomb_is_bounded():
    """A small stored chunk that claims to inflate hugely only fills the target, then stops."""
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
    info = ChunkInfo(CODEC_ZSTD, len(bomb), 0)
    target = memoryview(bytearray(1 << 20))
    with pytest.raises(CorruptObjectError):
        ChunkCodec.decode_into(info, bomb, target, "k")
