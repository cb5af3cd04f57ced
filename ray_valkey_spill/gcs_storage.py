"""What Ray's GCS (fault tolerance) needs from the server it keeps its tables on.

The one home of the facts an operator needs when pointing KubeRay's
``gcsFaultToleranceOptions.redisAddress`` (or ``RAY_REDIS_ADDRESS``) at the shared Valkey:
which address form Ray takes, and why a Valkey Cluster of more than one shard does not work.
``doctor`` reports with these; the key grammar of the GCS tables is in ``prefixes.py``.
"""

from __future__ import annotations

from .config import ServerAddress, parse_url
from .errors import ConfigError

# Ray 2.60 against a 2-shard Valkey 9.1 cluster (checked here): its own shard check
# (redis_context.cc ValidateRedisDB) reads cluster_state from INFO CLUSTER, which Valkey does
# not report there, so it connects, follows DEL DUMMY's MOVED to one node, and every table
# on another node's slots then answers MOVED: "Failed to run redis cmds: [HSCAN RAY<ns>@JOB
# ...] for 5 times", and gcs_server exits within seconds of `ray start --head`.
GCS_CLUSTER_REFUSAL = (
    "Ray's GCS refuses a Redis/Valkey Cluster with more than one shard (Ray: \"doesn't "
    "support Redis Cluster with more than one shard\"; in practice its tables answer MOVED and "
    "gcs_server exits at start)")
GCS_CLUSTER_ALTERNATIVE = (
    "point gcsFaultToleranceOptions.redisAddress at a standalone Valkey (overlays/standalone, "
    "or a small one for the GCS alone), or use gcsFaultToleranceOptions backend: rocksdb")
# Ray's GCS has no database selection: its tables are always in database 0.
GCS_DB = 0


def gcs_storage_address(url: str) -> str:
    """The ``redisAddress`` for KubeRay (``host:port``, ``rediss://host:port`` with TLS) that
    points Ray's GCS at the server of ``url``; ConfigError naming what is wrong otherwise."""
    address: ServerAddress = parse_url(url)
    field = "GCS storage url"
    shown = address.display()
    if address.cluster:
        raise ConfigError(field, shown, f"a standalone server: {GCS_CLUSTER_REFUSAL}; "
                          f"{GCS_CLUSTER_ALTERNATIVE}")
    if address.unix_path:
        raise ConfigError(field, shown, "host:port: Ray's GCS connects over TCP only")
    if address.db != GCS_DB:
        raise ConfigError(field, shown, "database 0: Ray's GCS cannot select another database")
    host = f"[{address.host}]" if ":" in (address.host or "") else address.host
    return f"{'rediss://' if address.tls else ''}{host}:{address.port}"


def cluster_refusal(shards: int) -> str | None:
    """The one line saying why Ray's GCS cannot use a cluster of ``shards`` shards, or None."""
    if shards <= 1:
        return None
    return f"cluster mode with {shards} shards: {GCS_CLUSTER_REFUSAL}"
