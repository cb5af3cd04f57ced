"""Key and URL formats of spilled objects, as pure functions.

    base key   <prefix><session>:<node_id>:<object_id>.<nonce>
    chunk i    <base key>:<i>
    manifest   <base key>:m
    heartbeat  <prefix><session>:<node_id>:hb   (unix time of the last beat; no TTL)
    (nonce: 8 hex digits; ``parse_key`` accepts 1-32, the shapes older versions wrote)
    Ray URL    valkey://spill/<base key>?offset=0&size=<object bytes>&chunks=<n>

Session and node come first so that ``destroy`` and ``gc`` find one node's keys of one session
with a single SCAN pattern. Every object has its own base key (and so its own Ray URL): Ray
ref-counts by base URL, so Valkey memory is reclaimed object by object. The nonce keeps a
re-spill of the same object from colliding with a copy that is still being deleted. Chunk keys
carry no hash tag, so in cluster mode the chunks of a large object spread over all shards.
"""

from __future__ import annotations

import re
import secrets
import urllib.parse
from dataclasses import dataclass

from ..errors import InvalidSpillURLError

URL_SCHEME = "valkey"
URL_HOST = "spill"  # Ray's URL parser needs a non-empty host part
MANIFEST_SUFFIX = ":m"
HEARTBEAT_SUFFIX = ":hb"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
# What follows <prefix><session>:<node>: in a key this backend writes; anything else under the
# prefix (e.g. a nested prefix such as ray:team:<session>:...) is not ours.
_REST = re.compile(r"^(?:hb|[A-Za-z0-9_.\-]{1,128}\.[0-9a-f]{1,32}:(?:m|0|[1-9][0-9]{0,8}))$")
_MAX_CHUNKS = 1 << 24


def _check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise InvalidSpillURLError(f"{kind} {value!r} is not a plain name ([A-Za-z0-9_.-]{{1,128}})")
    return value


def node_pattern(prefix: str, session: str, node_id: str) -> str:
    """SCAN pattern matching every key this node wrote in this session."""
    return f"{prefix}{_check_name('session', session)}:{_check_name('node id', node_id)}:*"


def heartbeat_key(prefix: str, session: str, node_id: str) -> str:
    """The heartbeat key of this node in this session."""
    # No TTL on purpose: under volatile-lru a TTL would make it evictable, and an evicted
    # heartbeat would make gc take a live session for dead.
    return node_pattern(prefix, session, node_id)[:-2] + HEARTBEAT_SUFFIX


def split_key(prefix: str, key: str) -> tuple[str, str, str] | None:
    """(session, node_id, rest) of a key this backend wrote, or None for any other key."""
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix):].split(":", 2)
    if len(parts) != 3 or not all(_NAME.match(p) for p in parts[:2]):
        return None
    return parts[0], parts[1], parts[2]


def parse_key(prefix: str, key: str) -> tuple[str, str, bool] | None:
    """(session, node_id, is_heartbeat) of a chunk, manifest or heartbeat key this backend
    wrote under ``prefix``; None for any other key."""
    parts = split_key(prefix, key)
    if parts is None or not _REST.match(parts[2]):
        return None
    return parts[0], parts[1], parts[2] == HEARTBEAT_SUFFIX[1:]


def chunk_base(key: str) -> str | None:
    """The object's base key of a chunk key (``<base>:<n>``); None for manifests and beats."""
    base, _, last = key.rpartition(":")
    return base if last.isdigit() else None


def is_manifest_key(key: str | bytes) -> bool:
    """Whether ``key`` is an object manifest key."""
    return key.endswith(MANIFEST_SUFFIX if isinstance(key, str) else MANIFEST_SUFFIX.encode())


def is_heartbeat_key(key: str | bytes) -> bool:
    """Whether ``key`` is a heartbeat key."""
    return key.endswith(HEARTBEAT_SUFFIX if isinstance(key, str) else HEARTBEAT_SUFFIX.encode())


def new_base_key(prefix: str, session: str, node_id: str, object_hex: str) -> str:
    """A fresh base key for one spill of an object (a random nonce each time); raises
    ``InvalidSpillURLError`` for a session, node or object id that is not a plain name."""
    return (f"{prefix}{_check_name('session', session)}:{_check_name('node id', node_id)}:"
            f"{_check_name('object id', object_hex)}.{secrets.token_hex(4)}")


def chunk_key(base_key: str, index: int) -> str:
    """The key of chunk ``index`` of an object."""
    return f"{base_key}:{index}"


def manifest_key(base_key: str) -> str:
    """The manifest key of an object."""
    return base_key + MANIFEST_SUFFIX


def object_keys(base_key: str, n_chunks: int) -> list[str]:
    """Every key of an object: its manifest first, then its chunks in order."""
    return [manifest_key(base_key)] + [chunk_key(base_key, i) for i in range(n_chunks)]


@dataclass(frozen=True)
class SpillURL:
    """What a spill URL carries: the object's base key, its size in Ray's framing and its chunk
    count."""

    base_key: str
    size: int
    n_chunks: int

    def encode(self) -> bytes:
        """The URL handed to Ray, as bytes."""
        return (f"{URL_SCHEME}://{URL_HOST}/{self.base_key}"
                f"?offset=0&size={self.size}&chunks={self.n_chunks}").encode()


def parse_spill_url(url: bytes | str, prefix: str) -> SpillURL:
    """Parse a URL this backend returned; refuse anything malformed or outside ``prefix``."""
    try:
        text = url.decode("ascii") if isinstance(url, (bytes, bytearray)) else str(url)
    except UnicodeDecodeError as exc:
        raise InvalidSpillURLError(f"spill URL is not ASCII: {url!r}") from exc
    head = f"{URL_SCHEME}://{URL_HOST}/"
    if not text.startswith(head) or text.count("?") != 1:
        raise InvalidSpillURLError(f"not a valkey spill URL (expected {head}<key>?...): {text!r}")
    key, query = text[len(head):].split("?", 1)
    if not key.startswith(prefix):
        raise InvalidSpillURLError(f"spill URL key {key!r} is outside the prefix {prefix!r}")
    rest = key[len(prefix):].split(":")
    if len(rest) != 3 or rest[2] == HEARTBEAT_SUFFIX[1:]:
        raise InvalidSpillURLError(f"spill URL key {key!r} is not <session>:<node>:<object>")
    for kind, part in zip(("session", "node id", "object id"), rest):
        _check_name(kind, part)
    try:
        pairs = urllib.parse.parse_qsl(query, strict_parsing=True)
    except ValueError as exc:
        raise InvalidSpillURLError(f"spill URL query is not offset=0&size=N&chunks=N: {text!r}") from exc
    fields = dict(pairs)
    if (len(pairs) != 3 or set(fields) != {"offset", "size", "chunks"}
            or not all(v.isascii() and v.isdigit() and len(v) <= 20 for v in fields.values())):
        raise InvalidSpillURLError(f"spill URL query is not offset=0&size=N&chunks=N: {text!r}")
    offset, size, n_chunks = int(fields["offset"]), int(fields["size"]), int(fields["chunks"])
    if offset != 0 or size < 0 or not 0 <= n_chunks <= _MAX_CHUNKS:
        raise InvalidSpillURLError(f"spill URL has out-of-range numbers: {text!r}")
    return SpillURL(key, size, n_chunks)
