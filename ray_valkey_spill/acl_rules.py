"""The one home of the ACL rule every data user of the shared Valkey gets.

cluster_configs/base/valkey-users.acl writes these rules out for the shipped users (a test
checks each data user's line against :func:`data_user_rule`), and ``doctor`` suggests the same
rule when a user lacks something or reaches too far. Why each part is there is explained in the
ACL file's header; in short: its own prefix only, database 0 only, the data commands, nothing
dangerous, no scripts, and the two read-only commands the start-up checks need.
"""

from __future__ import annotations

# The data commands; -@dangerous and -@scripting then take back FLUSHALL, CONFIG, EVAL,
# FUNCTION LOAD...; OBJECT IDLETIME and MEMORY USAGE (gc, shedding) are part of @read.
_COMMANDS = "-@all +@read +@write +@keyspace +@connection"
_REFUSED = "-@dangerous -@scripting -select -move"
# INFO memory: the start-up check reads maxmemory_policy (CONFIG GET would expose masterauth);
# CLUSTER SLOTS: the slot map for valkey+cluster:// clients.
_START_UP_READS = "+info|memory +cluster|slots"


def data_user_rule(prefix: str, *, transactions: bool = False) -> str:
    """The ACL rule (everything after ``user NAME``) of a data user limited to ``prefix``.

    ``transactions`` adds MULTI/EXEC/WATCH (the session store's appends need them).
    """
    if not prefix or any(c in prefix for c in " *?[]\\"):
        raise ValueError(f"prefix {prefix!r}: must be a non-empty literal key prefix such as "
                         "'ray:' (no spaces or glob characters)")
    transaction = " +@transaction" if transactions else ""
    return (f"on resetchannels ~{prefix}* db=0 {_COMMANDS}{transaction} {_REFUSED} "
            f"{_START_UP_READS}")


def setuser_command(user: str, prefix: str, *, transactions: bool = False) -> str:
    """``ACL SETUSER`` that gives ``user`` exactly the shipped data-user rule for ``prefix``
    (``reset`` first, so nothing the user had before survives; the password stays a placeholder).
    """
    return f"ACL SETUSER {user} reset >PASSWORD {data_user_rule(prefix, transactions=transactions)}"


# Ray's GCS (fault tolerance): exactly what redis_store_client.cc sends (hash tables, the job
# counter, PING), DEL (the DUMMY probe on connect; KubeRay's cleanup), SCAN (the cleanup's
# SCAN MATCH RAY<ns>@*), and INFO CLUSTER / INFO SENTINEL, which its connect sends to tell a
# cluster or a sentinel from a plain server (seen with MONITOR, Ray 2.60; without them the GCS
# exits "Failed to get Redis cluster info"). No @read/@write categories: HGETALL, SET,
# EXPIRE... are nothing the GCS uses. DUMMY is write-only (%W~): DEL DUMMY passes, GET does not.
GCS_COMMANDS: tuple[str, ...] = ("hset", "hsetnx", "hget", "hmget", "hdel", "hscan", "hexists",
                                 "incrby", "ping", "del", "scan", "info|cluster", "info|sentinel")


def gcs_user_rule() -> str:
    """The ACL rule (everything after ``user NAME``) of a Ray GCS fault-tolerance user."""
    from .prefixes import GCS_KEY_PATTERN, GCS_PROBE_KEY

    commands = " ".join(f"+{c}" for c in GCS_COMMANDS)
    return f"on resetchannels ~{GCS_KEY_PATTERN} %W~{GCS_PROBE_KEY} db=0 -@all {commands}"
