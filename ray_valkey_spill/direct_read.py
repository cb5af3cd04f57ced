"""GET replies received straight into their destination buffer.

valkey-py reads a reply into its socket buffer, copies it out as ``bytes``, and the caller
copies it again into plasma: three passes over every restored byte. Here the GETs of a batch
are sent as one pipeline on a pooled valkey-py connection (so AUTH, TLS, SELECT and timeouts
stay valkey-py's), and each bulk reply is read with ``recv_into`` directly into the slice of
the plasma buffer it belongs to (raw chunks) or into one reused scratch buffer (zstd chunks,
then decompressed into plasma). ``recv_into`` releases the GIL, so the I/O threads overlap
network reads with checksumming and decompression.
"""

from __future__ import annotations

from typing import Callable, Sequence

_HEADER_READ = 256  # bytes asked for when only a reply header (e.g. b"$4194304\r\n") is due


class ReplyError(Exception):
    """The server answered a GET with an error reply (e.g. -NOPERM, -LOADING)."""


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
        while len(self._pending) < n:
            self._fill()
        del self._pending[:n]

    @property
    def clean(self) -> bool:
        return not self._pending


def get_into(client, keys: Sequence[str],
             destination: Callable[[int, int], memoryview | None]) -> list[int | None]:
    """Pipeline ``GET key`` for every key; reply i of length n is written into
    ``destination(i, n)`` (which returns a writable view of exactly n bytes, or None to
    discard). Returns each reply's length, None for a missing key. Standalone clients only.
    """
    pool = client.connection_pool
    conn = pool.get_connection("GET")
    reusable = False
    try:
        if conn._sock is None:
            conn.connect()
        parser_buffer = getattr(conn._parser, "_buffer", None)
        if parser_buffer is not None and parser_buffer.unread_bytes():
            conn.disconnect()  # leftovers from an aborted command: start clean
            conn.connect()
        conn.send_packed_command(conn.pack_commands([("GET", k) for k in keys]))
        reader = _Reader(conn._sock)
        lengths: list[int | None] = []
        error: Exception | None = None
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
                    reader.into(target)
                    reader.skip(2)
                lengths.append(n)
            elif head[:1] == b"-":
                error = error or ReplyError(head[1:].decode(errors="replace"))
                lengths.append(None)
            else:
                raise ConnectionError(f"unexpected reply to GET: {head[:40]!r}")
        reusable = reader.clean
        if error is not None:
            raise error
        return lengths
    except BaseException:
        reusable = False
        raise
    finally:
        if not reusable:
            conn.disconnect()
        pool.release(conn)
