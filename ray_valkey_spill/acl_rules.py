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
