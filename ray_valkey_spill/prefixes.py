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


# -- Ray's GCS (fault tolerance) as a tenant ---------------------------------------------------
# Ray's GCS keeps one hash per table under RAY<namespace>@<TABLE> (and RAY<namespace>@JobCounter)
# and probes every new connection with DEL DUMMY (ray-project/ray
# src/ray/gcs/store_client/redis_store_client.cc). KubeRay sets the namespace to the RayCluster's
# UID unless gcsFaultToleranceOptions.externalStorageNamespace says otherwise; its cleanup Job
# deletes SCAN MATCH RAY<namespace>@*. Upper-case "RAY" never overlaps "ray:" (key names and ACL
# patterns are case-sensitive), nor any other registered prefix.
GCS_KEY_PREFIX = "RAY"
GCS_NAMESPACE_END = "@"
GCS_PROBE_KEY = "DUMMY"
# The ACL key pattern of the GCS user: every namespace (one per RayCluster UID, not known
# before the cluster exists).
GCS_KEY_PATTERN = f"{GCS_KEY_PREFIX}*{GCS_NAMESPACE_END}*"


def gcs_prefix(namespace: object) -> str:
    """The key prefix ``RAY<namespace>@`` of one Ray cluster's GCS tables."""
    field = "GCS external storage namespace"
    if not isinstance(namespace, str) or not namespace:
        raise ConfigError(field, namespace, "a non-empty string such as the RayCluster UID")
    if len(namespace) > _MAX_PREFIX_LEN or not namespace.isascii() or not namespace.isprintable():
        raise ConfigError(field, namespace, f"printable ASCII, at most {_MAX_PREFIX_LEN} characters")
    if any(c in namespace for c in " *?[]\\{}@"):
        # '@' would let SCAN MATCH RAY<ns>@* of one namespace reach another ("a" and "a@b").
        raise ConfigError(field, namespace, "no spaces, glob characters, braces or '@'")
    return f"{GCS_KEY_PREFIX}{namespace}{GCS_NAMESPACE_END}"


def gcs_namespace_of(key: bytes | str) -> str | None:
    """The GCS namespace a key belongs to (``RAY<ns>@...``), or None if it is not a GCS key."""
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    if not text.startswith(GCS_KEY_PREFIX):
        return None
    namespace, sep, _ = text[len(GCS_KEY_PREFIX):].partition(GCS_NAMESPACE_END)
    return namespace if sep and namespace else None
