"""SessionStore: per-session conversation turns and intermediate results under ``session:``.

Per session two keys share one hash tag (one cluster slot, so one MULTI covers both):

* ``<prefix>{<session>}:turns``   a LIST of JSON-encoded turns, oldest first;
* ``<prefix>{<session>}:results`` a HASH of named intermediate results (bytes, arrays or JSON).

Every write runs in one MULTI (standalone) or pipeline (cluster): the change, LTRIM to
``max_turns``, and EXPIRE of BOTH keys, so a session expires ``ttl_seconds`` after its last
write, and no code path leaves a session key without a TTL.

An append is not idempotent. valkey-py resends a pipeline that timed out on a new connection,
and a server that was only slow (a stall a little longer than ``socket_timeout_s``) then runs
it twice: the turns were stored twice while the caller saw success. So an append sends its
MULTI/EXEC itself, exactly once, on a pooled connection (in a cluster, of the primary that
holds the session's slot); after a timeout it raises, saying the turns may or may not have
been stored.

Every method has an ``a``-prefixed coroutine twin on valkey.asyncio (a standalone server or
Valkey Cluster) with the same commands and round trips; both share the encoding and the command
lists. Since a session's keys share one slot, every call is one round trip to one node on a
cluster too, and the async append keeps the once-only rule the same way as the sync one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np

from ._base import (async_client, async_source, avalue_limit, backend_errors, check_cache_prefix,
                    check_sizes, check_ttl, is_cluster, key_part, max_value_bytes,
                    resolve_client, warn_if_allkeys_policy)
from ._values import ArrayCodec, CacheValueError, CorruptValueError
from ..errors import BackendUnavailableError, ConfigError
from ..prefixes import SESSION_PREFIX
from ..metrics import CacheMetrics
from ..node_groups import refresh_slot_map

DEFAULT_PREFIX = SESSION_PREFIX
DEFAULT_TTL_SECONDS = 30 * 60
DEFAULT_MAX_TURNS = 1000

# Result values carry a one-byte type tag.
_TAG_BYTES, _TAG_ARRAY, _TAG_JSON = b"B", b"A", b"J"


class SessionStore:
    """Conversation state that expires after ``ttl_seconds`` of inactivity.

    Args:
        client_or_url: a server URL / SpillConfig (shared pool) or a valkey-py client.
        ttl_seconds: inactivity lifetime, refreshed by every write (required, 1 s .. 1 year).
        max_turns: turns kept per session (older ones are trimmed on append).
        prefix: must not overlap ``ray:``, ``emb:`` or ``vllm:kv:``.
        async_client: a valkey.asyncio client (``Valkey`` or ``cluster.ValkeyCluster``) for the
            ``a*`` methods when ``client_or_url`` is a sync client (with a URL or SpillConfig
            they get the event loop's shared pool).

    Raises:
        ConfigError: a bad option. BackendUnavailableError: no client for a URL.
    """

    def __init__(self, client_or_url: Any, *, ttl_seconds: int = DEFAULT_TTL_SECONDS,
                 max_turns: int = DEFAULT_MAX_TURNS, prefix: str = DEFAULT_PREFIX,
                 async_client: Any = None):
        self.prefix = check_cache_prefix("session", prefix)
        self.ttl_seconds = check_ttl("ttl_seconds", ttl_seconds)
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
            raise ConfigError("max_turns", max_turns, "a positive integer")
        self.max_turns = max_turns
        self.codec = ArrayCodec()
        self._async_source = async_source(client_or_url, async_client)
        self.client = resolve_client(client_or_url)
        self._cluster = is_cluster(self.client)
        self.maxmemory_policy = warn_if_allkeys_policy(self.client)
        max_value_bytes(self.client)  # read once now, not in the first write's round trip
        self.metrics = CacheMetrics("session")  # Ray metrics (no-op outside a connected Ray)

    def _keys(self, session_id: str) -> tuple[str, str]:
        base = f"{self.prefix}{{{key_part('session_id', session_id)}}}:"
        return base + "turns", base + "results"

    def _aclient(self):
        return async_client(self._async_source, "SessionStore")

    def _pipe(self):
        # MULTI makes change + expiry atomic; a cluster pipeline cannot MULTI, but both keys
        # share a slot and the EXPIREs are in the same batch.
        return self.client.pipeline(transaction=not self._cluster)

    def _apipe(self, client: Any = None):
        if client is None:
            client = self._aclient()
        return client.pipeline(transaction=not is_cluster(client))  # as ``_pipe``

    def _expire_both(self, pipe, turns_key: str, results_key: str) -> None:
        pipe.expire(turns_key, self.ttl_seconds)
        pipe.expire(results_key, self.ttl_seconds)

    def append(self, session_id: str, *turns: Any) -> int:
        """Append JSON-serialisable turns; keep the last ``max_turns``; refresh the TTL.

        Returns the session's turn count after trimming.

        Raises:
            CacheValueError: a turn is not JSON-serialisable, or larger than the server
                accepts (``.failed``: index -> reason; nothing was sent).
            BackendUnavailableError: the server cannot be reached.
        """
        turns_key, commands, nbytes = self._append_commands(session_id, turns,
                                                            max_value_bytes(self.client))
        with backend_errors(f"append to {turns_key}"):
            count = int(self._execute_once(turns_key, commands)[-1])
        self.metrics.bytes_written(nbytes)
        return count

    async def aappend(self, session_id: str, *turns: Any) -> int:
        """``append`` as a coroutine: one MULTI/EXEC, sent once, on valkey.asyncio."""
        client = self._aclient()
        turns_key, commands, nbytes = self._append_commands(
            session_id, turns, await avalue_limit(self.client, client))
        with backend_errors(f"append to {turns_key}"):
            if is_cluster(client):
                replies = await _acluster_transaction_once(client, turns_key, commands)
            else:
                replies = await _atransaction_once(client.connection_pool, turns_key, commands)
            count = int(replies[-1])
        self.metrics.bytes_written(nbytes)
        return count

    def _append_commands(self, session_id: str, turns: tuple, limit_bytes: int
                         ) -> tuple[str, list[tuple], int]:
        if not turns:
            raise ConfigError("turns", (), "at least one turn")
        try:
            encoded = [json.dumps(t, separators=(",", ":")).encode() for t in turns]
        except (TypeError, ValueError) as exc:
            raise CacheValueError(f"a session turn must be JSON-serialisable: {exc}") from exc
        check_sizes(encoded, limit_bytes, [f"turn {i}" for i in range(len(encoded))])
        turns_key, results_key = self._keys(session_id)
        commands = [("RPUSH", turns_key, *encoded), ("LTRIM", turns_key, -self.max_turns, -1),
                    ("EXPIRE", turns_key, self.ttl_seconds),
                    ("EXPIRE", results_key, self.ttl_seconds), ("LLEN", turns_key)]
        return turns_key, commands, sum(len(e) for e in encoded)

    def _execute_once(self, turns_key: str, commands: list[tuple]) -> list:
        """Run ``commands`` in one MULTI/EXEC that is never sent twice (module doc); return
        EXEC's replies."""
        if self._cluster:
            # Both keys share a hash tag: one slot, one primary, where MULTI works.
            for attempt in (1, 2):
                node = self.client.get_node_from_key(turns_key)
                try:
                    return self._transaction_once(node.valkey_connection.connection_pool,
                                                  turns_key, commands)
                except _stale_slot_map_errors():
                    if attempt == 2:
                        raise
                    # If no node answers now, the second attempt reports the outage.
                    refresh_slot_map(self.client)
        return self._transaction_once(self.client.connection_pool, turns_key, commands)

    @staticmethod
    def _transaction_once(pool, turns_key: str, commands: list[tuple]) -> list:
        import valkey

        conn = pool.get_connection("MULTI")  # connected and checked; a failure sent nothing
        try:
            conn.send_packed_command(conn.pack_commands([("MULTI",), *commands, ("EXEC",)]),
                                     check_health=False)
            for _ in range(len(commands) + 1):
                conn.read_response()  # OK, then QUEUED per command
            replies = conn.read_response()
        except (valkey.exceptions.ConnectionError, valkey.exceptions.TimeoutError,
                OSError) as exc:
            conn.disconnect()
            raise _maybe_stored(turns_key, exc) from exc
        except BaseException:
            conn.disconnect()  # a reply error mid-transaction: the connection's state is unknown
            raise
        finally:
            pool.release(conn)
        return _checked(replies)

    def last(self, session_id: str, n: int) -> list[Any]:
        """The last ``n`` turns, oldest first ([] for an unknown or expired session).

        Reading does not refresh the TTL. Raises BackendUnavailableError.
        """
        turns_key = self._last_key(session_id, n)
        if turns_key is None:
            return []
        with backend_errors(f"read {turns_key}"):
            raw = self.client.lrange(turns_key, -n, -1)
        return self._turns(raw, turns_key)

    async def alast(self, session_id: str, n: int) -> list[Any]:
        """``last`` as a coroutine (one LRANGE)."""
        turns_key = self._last_key(session_id, n)
        if turns_key is None:
            return []
        with backend_errors(f"read {turns_key}"):
            raw = await self._aclient().lrange(turns_key, -n, -1)
        return self._turns(raw, turns_key)

    def _last_key(self, session_id: str, n: int) -> str | None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError("n", n, "a non-negative integer")
        return self._keys(session_id)[0] if n else None

    def _turns(self, raw: list[bytes], turns_key: str) -> list[Any]:
        (self.metrics.hit if raw else self.metrics.miss)(1)
        self.metrics.bytes_read(sum(len(item) for item in raw))
        return [_json_value(item, turns_key) for item in raw]

    def trim(self, session_id: str, keep_last: int) -> None:
        """Keep only the last ``keep_last`` turns (0 removes them all); refresh the TTL."""
        turns_key, pipe = self._queue_trim(self._pipe(), session_id, keep_last)
        with backend_errors(f"trim {turns_key}"):
            pipe.execute()

    async def atrim(self, session_id: str, keep_last: int) -> None:
        """``trim`` as a coroutine (one MULTI/EXEC; on a cluster one pipeline to one node)."""
        turns_key, pipe = self._queue_trim(self._apipe(), session_id, keep_last)
        with backend_errors(f"trim {turns_key}"):
            await pipe.execute()

    def _queue_trim(self, pipe: Any, session_id: str, keep_last: int) -> tuple[str, Any]:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
            raise ConfigError("keep_last", keep_last, "a non-negative integer")
        turns_key, results_key = self._keys(session_id)
        if keep_last == 0:
            pipe.unlink(turns_key)
        else:
            pipe.ltrim(turns_key, -keep_last, -1)
        self._expire_both(pipe, turns_key, results_key)
        return turns_key, pipe

    def set_result(self, session_id: str, name: str, value: Any) -> None:
        """Store an intermediate result: bytes as is, numpy arrays in the binary array form,
        anything else as JSON. Refreshes the session's TTL.

        Raises:
            CacheValueError: not bytes, not a numeric array and not JSON-serialisable, or
                larger than the server accepts (nothing was sent).
            BackendUnavailableError: the server cannot be reached.
        """
        results_key, pipe, nbytes = self._queue_result(self._pipe(), session_id, name, value,
                                                       max_value_bytes(self.client))
        with backend_errors(f"write {results_key}"):
            pipe.execute()
        self.metrics.bytes_written(nbytes)

    async def aset_result(self, session_id: str, name: str, value: Any) -> None:
        """``set_result`` as a coroutine (one MULTI/EXEC; on a cluster one pipeline to one node)."""
        client = self._aclient()
        results_key, pipe, nbytes = self._queue_result(
            self._apipe(client), session_id, name, value,
            await avalue_limit(self.client, client))
        with backend_errors(f"write {results_key}"):
            await pipe.execute()
        self.metrics.bytes_written(nbytes)

    def _queue_result(self, pipe: Any, session_id: str, name: str, value: Any,
                      limit_bytes: int) -> tuple[str, Any, int]:
        if not isinstance(name, str) or not name:
            raise ConfigError("name", name, "a non-empty string")
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = _TAG_BYTES + bytes(value)
        elif isinstance(value, np.ndarray) or type(value).__module__.startswith("torch"):
            data = _TAG_ARRAY + self.codec.encode(value)
        else:
            try:
                data = _TAG_JSON + json.dumps(value, separators=(",", ":")).encode()
            except (TypeError, ValueError) as exc:
                raise CacheValueError(f"result {name!r} is not bytes, an array or JSON: {exc}") \
                    from exc
        check_sizes([data], limit_bytes, [f"result {name!r}"])
        turns_key, results_key = self._keys(session_id)
        pipe.hset(results_key, name, data)
        self._expire_both(pipe, turns_key, results_key)
        return results_key, pipe, len(data)

    def get_result(self, session_id: str, name: str) -> Any:
        """An intermediate result, or None if absent/expired.

        Raises:
            CorruptValueError: the stored bytes do not decode.
            BackendUnavailableError: the server cannot be reached.
        """
        _, results_key = self._keys(session_id)
        with backend_errors(f"read {results_key}"):
            data = self.client.hget(results_key, name)
        return self._result(data, results_key, name)

    async def aget_result(self, session_id: str, name: str) -> Any:
        """``get_result`` as a coroutine (one HGET)."""
        _, results_key = self._keys(session_id)
        with backend_errors(f"read {results_key}"):
            data = await self._aclient().hget(results_key, name)
        return self._result(data, results_key, name)

    def _result(self, data: bytes | None, results_key: str, name: str) -> Any:
        if data is None:
            self.metrics.miss(1)
            return None
        self.metrics.hit(1)
        self.metrics.bytes_read(len(data))
        tag, body = data[:1], data[1:]
        if tag == _TAG_BYTES:
            return body
        if tag == _TAG_ARRAY:
            return self.codec.decode(body)
        if tag == _TAG_JSON:
            return _json_value(body, f"{results_key} field {name!r}")
        raise CorruptValueError(f"{results_key} field {name!r} has an unknown type tag {tag!r}")

    def touch(self, session_id: str) -> bool:
        """Refresh the TTL without writing; True if the session exists."""
        turns_key, results_key = self._keys(session_id)
        with backend_errors(f"touch {turns_key}"):
            pipe = self._pipe()
            self._expire_both(pipe, turns_key, results_key)
            return any(pipe.execute())

    async def atouch(self, session_id: str) -> bool:
        """``touch`` as a coroutine."""
        turns_key, results_key = self._keys(session_id)
        with backend_errors(f"touch {turns_key}"):
            pipe = self._apipe()
            self._expire_both(pipe, turns_key, results_key)
            return any(await pipe.execute())

    def delete(self, session_id: str) -> int:
        """Remove a session's turns and results. Returns the number of keys removed."""
        turns_key, results_key = self._keys(session_id)
        with backend_errors(f"delete {turns_key}"):
            return int(self.client.unlink(turns_key, results_key))

    async def adelete(self, session_id: str) -> int:
        """``delete`` as a coroutine."""
        turns_key, results_key = self._keys(session_id)
        with backend_errors(f"delete {turns_key}"):
            return int(await self._aclient().unlink(turns_key, results_key))


async def _acluster_transaction_once(client: Any, turns_key: str, commands: list[tuple]) -> list:
    """``SessionStore._execute_once`` on a valkey.asyncio ValkeyCluster: the MULTI/EXEC goes,
    once, to the primary holding the session's slot (both keys share a hash tag); after an
    error that ran nothing and may mean a stale slot map, refresh it and try once more."""
    await client.initialize()  # the slot map (a no-op once the client has run a command)
    try:
        return await _atransaction_once(_NodeConnections(client.get_node_from_key(turns_key)),
                                        turns_key, commands)
    except _stale_slot_map_errors():
        try:
            await client.nodes_manager.initialize()
        except _refresh_errors():
            pass  # no node answers now: the second attempt reports the outage
    return await _atransaction_once(_NodeConnections(client.get_node_from_key(turns_key)),
                                    turns_key, commands)


def _stale_slot_map_errors() -> tuple[type[BaseException], ...]:
    """Errors of a cluster append that ran nothing and may mean the slot map is stale: MOVED
    or ASK (the slot migrated) abort the MULTI before anything ran, and a failed connect sent
    nothing (the primary may have failed over). A failure after sending is never among them:
    ``_transaction_once`` turns it into a BackendUnavailableError, which is never retried."""
    import valkey

    e = valkey.exceptions
    return (e.MovedError, e.AskError, e.ExecAbortError, e.ConnectionError, e.TimeoutError)


def _refresh_errors() -> tuple[type[BaseException], ...]:
    """What a slot-map refresh raises when no node answers."""
    import valkey

    e = valkey.exceptions
    return (e.ValkeyClusterException, e.ConnectionError, e.TimeoutError)


class _NodeConnections:
    """The connections of one valkey.asyncio ``ClusterNode`` as the pool ``_atransaction_once``
    takes. The node has no pool object: its commands take ``acquire_connection()`` and put the
    connection back on ``_free``; this does the same, so the node's bound still holds."""

    def __init__(self, node: Any):
        self.node = node

    async def get_connection(self, _command: str) -> Any:
        conn = self.node.acquire_connection()
        try:
            await conn.connect()  # a no-op when connected; a failure here sent nothing
        except BaseException:
            await self.release(conn)
            raise
        return conn

    async def release(self, conn: Any) -> None:
        self.node._free.append(conn)


async def _atransaction_once(pool: Any, turns_key: str, commands: list[tuple]) -> list:
    """``SessionStore._transaction_once`` on a valkey.asyncio pool; a cancelled task drops the
    connection (its reply state is unknown) and, like a timeout, never resends."""
    import valkey

    conn = await pool.get_connection("MULTI")
    try:
        await conn.send_packed_command(conn.pack_commands([("MULTI",), *commands, ("EXEC",)]),
                                       check_health=False)
        for _ in range(len(commands) + 1):
            await conn.read_response()
        replies = await conn.read_response()
    except (valkey.exceptions.ConnectionError, valkey.exceptions.TimeoutError, OSError,
            asyncio.TimeoutError) as exc:
        await conn.disconnect()
        raise _maybe_stored(turns_key, exc) from exc
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    return _checked(replies)


def _maybe_stored(turns_key: str, exc: BaseException) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"append to {turns_key}: Valkey did not answer in time; the turns may or may not have "
        f"been stored (not resent, so never stored twice): {exc}")


def _checked(replies: list) -> list:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _json_value(data: bytes, where: str) -> Any:
    """Decode one stored JSON value; bytes that are not JSON are a CorruptValueError."""
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CorruptValueError(f"{where} holds bytes that are not JSON: {exc}") from exc
