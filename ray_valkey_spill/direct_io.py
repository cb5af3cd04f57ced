"""Pipelined GET and SET of large values without copying them in Python.

valkey-py reads a reply into its socket buffer, copies it out as ``bytes``, and the caller
copies it again into plasma: three passes over every restored byte. ``get_into`` sends the
GETs of a batch as one pipeline on a pooled valkey-py connection (so AUTH, TLS, SELECT and
timeouts stay valkey-py's) and reads each bulk reply with ``recv_into`` directly into the
buffer it belongs to. ``set_from`` sends a batch of SETs as one ``sendmsg`` gather list whose
values are the caller's buffers (plasma memory, Arrow buffers), with none of valkey-py's
per-command packing. Both release the GIL in the socket calls, so I/O threads overlap the
network with checksumming and compression.
"""

from __future__ import annotations

import ssl
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

from .errors import ServerReplyError

_HEADER_READ = 256  # bytes asked for when only a reply header (e.g. b"$4194304\r\n") is due
_SKIP_READ = 1 << 20  # bytes per read when discarding a reply


class _Reader:
    def __init__(self, sock):
        self._sock = sock
        self._pending = bytearray()  # bytes received beyond what was consumed

    def _fill(self) -> None:
        chunk = self._sock.recv(_HEADER_READ)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._pending += chunk

    def line(self) -> bytes:
        while True:
            end = self._pending.find(b"\r\n")
            if end >= 0:
                text = bytes(self._pending[:end])
                del self._pending[:end + 2]
                return text
            self._fill()

    def into(self, target: memoryview) -> None:
        """Fill ``target`` exactly with the next len(target) bytes of the stream."""
        have = min(len(self._pending), len(target))
        if have:
            target[:have] = self._pending[:have]
            del self._pending[:have]
        view, pos = target, have
        while pos < len(view):
            n = self._sock.recv_into(view[pos:])
            if not n:
                raise ConnectionError("server closed the connection mid-reply")
            pos += n

    def skip(self, n: int) -> None:
        """Discard the next n bytes (a reply nobody wants), in large reads, keeping none."""
        have = min(len(self._pending), n)
        del self._pending[:have]
        n -= have
        scratch = bytearray(min(n, _SKIP_READ)) if n else None
        while n:
            got = self._sock.recv_into(scratch, min(n, len(scratch)))
            if not got:
                raise ConnectionError("server closed the connection mid-reply")
            n -= got

    @property
    def clean(self) -> bool:
        return not self._pending


@contextmanager
def _stream(client, command: str,
            timeout_s: float | None = None) -> Iterator[tuple[object, "_Reader"]]:
    """A pooled connection, connected and with nothing unread in valkey-py's buffer, and a
    reader on its socket. It goes back to the pool only if every reply was consumed exactly;
    after any error it is disconnected, so a half-read reply never reaches the next user.
    ``timeout_s`` bounds each socket call of this exchange instead of the pool's
    ``socket_timeout`` (a caller with a latency budget, e.g. a KV-cache read)."""
    pool = client.connection_pool
    conn = pool.get_connection(command)
    reader = None
    try:
        if conn._sock is None:
            conn.connect()
        parser_buffer = getattr(conn._parser, "_buffer", None)
        if parser_buffer is not None and parser_buffer.unread_bytes():
            conn.disconnect()  # leftovers from an aborted command: start clean
            conn.connect()
        if timeout_s is not None:
            conn._sock.settimeout(timeout_s)
        reader = _Reader(conn._sock)
        yield conn, reader
        if timeout_s is not None:
            conn._sock.settimeout(conn.socket_timeout)
    except BaseException:
        reader = None
        raise
    finally:
        if reader is None or not reader.clean:
            conn.disconnect()
        pool.release(conn)


_IOV_MAX = 512  # buffers per sendmsg call (Linux allows 1024)


def send_all(sock, parts: list) -> None:
    """Send every buffer of ``parts`` in order, as gather lists (no joining), or one by one on TLS."""
    if isinstance(sock, ssl.SSLSocket):  # no sendmsg on TLS sockets
        for part in parts:
            sock.sendall(part)
        return
    for start in range(0, len(parts), _IOV_MAX):
        pending = [memoryview(p).cast("B") for p in parts[start:start + _IOV_MAX]]
        while pending:
            sent = sock.sendmsg(pending)
            while pending and sent >= len(pending[0]):
                sent -= len(pending[0])
                pending.pop(0)
            if pending and sent:
                pending[0] = pending[0][sent:]


def _set_command(key: str, value, ex_seconds: int | None) -> list:
    """The RESP parts of one SET; ``value`` is a buffer or a sequence of buffers sent one
    after the other as a single value (e.g. a small header and a large payload, no join)."""
    k = key.encode()
    parts = value if isinstance(value, (list, tuple)) else (value,)
    n = sum(memoryview(p).nbytes for p in parts)
    head = b"*%d\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (
        3 if ex_seconds is None else 5, len(k), k, n)
    if ex_seconds is None:
        return [head, *parts, b"\r\n"]
    ttl = b"%d" % ex_seconds
    return [head, *parts, b"\r\n$2\r\nEX\r\n$%d\r\n%s\r\n" % (len(ttl), ttl)]


def set_many(client, items: Sequence[tuple[str, object]], *, ex_seconds: int | None = None,
             timeout_s: float | None = None) -> list[ServerReplyError | None]:
    """Pipeline ``SET key value [EX ex_seconds]`` for every (key, value) pair, values sent
    from the caller's buffers as they are (a value may be a sequence of buffers). Returns,
    per item, None or the error reply the server gave it (e.g. OOM); every reply is read, so
    the connection stays usable. Standalone clients only."""
    parts: list = []
    for key, value in items:
        parts += _set_command(key, value, ex_seconds)
    errors: list[ServerReplyError | None] = []
    with _stream(client, "SET", timeout_s) as (conn, reader):
        send_all(conn._sock, parts)
        for _ in items:
            line = reader.line()
            if line[:1] == b"-":
                errors.append(ServerReplyError(line[1:].decode(errors="replace")))
            elif line == b"+OK":
                errors.append(None)
            else:
                raise ConnectionError(f"unexpected reply to SET: {line[:40]!r}")
    return errors


def set_from(client, items: Sequence[tuple[str, object]]) -> None:
    """Pipeline ``SET key value`` for every (key, buffer) pair; values are sent from the
    caller's buffers as they are. Raises ServerReplyError for the first error reply (e.g. OOM).
    Standalone clients only."""
    error = next((e for e in set_many(client, items) if e is not None), None)
    if error is not None:
        raise error


def exists_many(client, keys: Sequence[str], *, timeout_s: float | None = None) -> list[bool]:
    """Pipeline ``EXISTS key`` for every key (one send, one read of the replies); returns
    whether each exists. ``timeout_s`` bounds each socket call (default: the pool's).
    Raises ServerReplyError for an error reply (e.g. NOPERM). Standalone clients only."""
    out: list[bool] = []
    error: Exception | None = None
    with _stream(client, "EXISTS", timeout_s) as (conn, reader):
        conn.send_packed_command(conn.pack_commands([("EXISTS", k) for k in keys]))
        for _ in keys:
            line = reader.line()
            if line[:1] == b":":
                out.append(line != b":0")
            elif line[:1] == b"-":
                error = error or ServerReplyError(line[1:].decode(errors="replace"))
                out.append(False)
            else:
                raise ConnectionError(f"unexpected reply to EXISTS: {line[:40]!r}")
    if error is not None:
        raise error
    return out


def get_into(client, keys: Sequence[str],
             destination: Callable[[int, int], object], *,
             timeout_s: float | None = None) -> list[int | None]:
    """Pipeline ``GET key`` for every key; reply i of length n is written into
    ``destination(i, n)``, which returns a writable view of exactly n bytes, a sequence of
    views whose lengths add up to n (scatter: e.g. a header buffer, then the payload's own
    buffer), or None to discard the reply. Returns each reply's length, None for a missing
    key. ``timeout_s`` bounds each socket call (default: the pool's). Standalone clients only.
    """
    lengths: list[int | None] = []
    error: Exception | None = None
    with _stream(client, "GET", timeout_s) as (conn, reader):
        conn.send_packed_command(conn.pack_commands([("GET", k) for k in keys]))
        for i in range(len(keys)):
            head = reader.line()
            if head[:1] == b"$":
                n = int(head[1:])
                if n < 0:
                    lengths.append(None)
                    continue
                target = destination(i, n) if error is None else None
                if target is None:
                    reader.skip(n + 2)
                else:
                    for view in (target if isinstance(target, (list, tuple)) else (target,)):
                        reader.into(view)
                    reader.skip(2)
                lengths.append(n)
            elif head[:1] == b"-":
                error = error or ServerReplyError(head[1:].decode(errors="replace"))
                lengths.append(None)
            else:
                raise ConnectionError(f"unexpected reply to GET: {head[:40]!r}")
    if error is not None:
        raise error
    return lengths
