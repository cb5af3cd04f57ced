"""The raw server limit: pipelined SET/GET over plain sockets, without any client library.

Benchmarks measure the backend and the caches against it: the same keys, value sizes,
connections and batches, minus encoding, checksums and bookkeeping.
"""

from __future__ import annotations

import socket
import threading
import time

from ..direct_io import send_all


class RawClient:
    """Pipelined SET/GET over plain sockets, one thread per connection, no copies of values."""

    def __init__(self, connections: int, host: str | None = None, port: int | None = None,
                 unix_path: str | None = None):
        self.socks = [self._connect(host, port, unix_path) for _ in range(connections)]
        self.readers = [s.makefile("rb", buffering=1 << 16) for s in self.socks]

    @staticmethod
    def _connect(host: str | None, port: int | None, unix_path: str | None) -> socket.socket:
        if unix_path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(unix_path)
            return sock
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close(self) -> None:
        """Close every connection."""
        for r in self.readers:
            r.close()
        for s in self.socks:
            s.close()

    @staticmethod
    def _batches(n_chunks: int, chunk: int, batch_bytes: int, batch_cmds: int) -> list[range]:
        per = max(1, min(batch_cmds, batch_bytes // max(chunk, 1)))
        return [range(i, min(i + per, n_chunks)) for i in range(0, n_chunks, per)]

    def _run(self, work, n_chunks: int, chunk: int, batch_bytes: int, batch_cmds: int) -> float:
        batches = self._batches(n_chunks, chunk, batch_bytes, batch_cmds)
        lanes = [batches[i::len(self.socks)] for i in range(len(self.socks))]
        errors: list[BaseException] = []

        def lane(i: int) -> None:
            try:
                for b in lanes[i]:
                    work(self.socks[i], self.readers[i], b)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=lane, args=(i,)) for i in range(len(self.socks))]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
        if errors:
            raise errors[0]
        return dt

    def set_all(self, prefix: str, buf: memoryview, chunk: int, batch_bytes: int,
                batch_cmds: int) -> float:
        """SET ``buf`` as ``chunk``-byte values under ``<prefix><i>``; seconds taken. Raises
        ``RuntimeError`` if a SET fails."""
        n = -(-len(buf) // chunk)

        def work(sock, reader, batch):
            parts = []
            for i in batch:
                key = f"{prefix}{i}".encode()
                value = buf[i * chunk:(i + 1) * chunk]
                parts.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key, len(value)))
                parts.append(value)
                parts.append(b"\r\n")
            send_all(sock, parts)  # gather lists straight from the buffers
            for _ in batch:
                line = reader.readline()
                if line != b"+OK\r\n":
                    raise RuntimeError(f"SET failed: {line!r}")

        return self._run(work, n, chunk, batch_bytes, batch_cmds)

    def get_all(self, prefix: str, target: memoryview, chunk: int, batch_bytes: int,
                batch_cmds: int) -> float:
        """GET the keys ``set_all`` wrote straight into ``target``; seconds taken. Raises
        ``RuntimeError`` on a closed connection or a malformed reply."""
        n = -(-len(target) // chunk)

        def work(sock, reader, batch):
            out = []
            for i in batch:
                key = f"{prefix}{i}".encode()
                out.append(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
            sock.sendall(b"".join(out))
            for i in batch:
                line = reader.readline()
                size = int(line[1:-2])
                view = target[i * chunk:i * chunk + size]
                got = 0
                while got < size:
                    k = reader.readinto(view[got:])
                    if not k:
                        raise RuntimeError("connection closed")
                    got += k
                if reader.read(2) != b"\r\n":
                    raise RuntimeError("bad reply framing")

        return self._run(work, n, chunk, batch_bytes, batch_cmds)
