"""Key prefixes of the four uses that share one Valkey instance, and the overlap rule.

The one home of the tenant prefixes: everything else (config defaults, caches, shedding,
stats, doctor, gc) reads them from here.

Two uses must never share a key range: a SCAN, DEL or ACL pattern meant for one would reach
the other. A prefix is refused when it is a prefix of another use's prefix, or the reverse.
"""

from .errors import ConfigError

DEFAULT_PREFIXES: dict[str, str] = {
    "ray": "ray:",
    "emb": "emb:",
    "vllm_kv": "vllm:kv:",
    "session": "session:",
}

SPILL_PREFIX = DEFAULT_PREFIXES["ray"]
EMBEDDING_PREFIX = DEFAULT_PREFIXES["emb"]
KV_PREFIX = DEFAULT_PREFIXES["vllm_kv"]
SESSION_PREFIX = DEFAULT_PREFIXES["session"]
# Rebuildable entries (each with a TTL) that shedding may drop to make room for a spill.
CACHE_PREFIXES: tuple[str, ...] = (EMBEDDING_PREFIX, KV_PREFIX, SESSION_PREFIX)
# Every cache publishes its hit/miss counters in the hash ``<its prefix>_stats``.
STATS_SUFFIX = "_stats"

_MAX_PREFIX_LEN = 64


def validate_prefix(use: str, prefix: object, others: dict[str, str] | None = None) -> str:
    """Return ``prefix`` if it is a well-formed, non-overlapping prefix for ``use``."""
    field = f"{use} prefix"
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(field, prefix, "a non-empty string such as 'ray:'")
    if len(prefix) > _MAX_PREFIX_LEN or not prefix.isascii() or not prefix.isprintable():
        raise ConfigError(field, prefix, f"printable ASCII, at most {_MAX_PREFIX_LEN} characters")
    if any(c in prefix for c in " *?[]\\{}"):
        raise ConfigError(field, prefix, "no spaces, glob characters (*?[]\\) or hash-tag braces")
    if not prefix.endswith(":"):
        raise ConfigError(field, prefix, "must end with ':' so that it delimits a key range")
    taken = DEFAULT_PREFIXES if others is None else others
    for other_use, other in taken.items():
        if other_use == use:
            continue
        if prefix.startswith(other) or other.startswith(prefix):
            raise ConfigError(
                field, prefix, f"overlaps the {other_use!r} prefix {other!r}; pick a disjoint prefix"
            )
    return prefix
