"""Doctor checks of the server itself: transport, reachability, version, latency, memory and
eviction policy, persistence, bulk length and authentication."""

from __future__ import annotations

import statistics
import time

from ...config import MiB
from ...errors import RayValkeySpillError
from ...server_checks import each_node
from .report import ERROR, OK, WARN, err_text, is_loopback, is_noperm

MIN_VERSION = (7, 2)  # CLIENT NO-TOUCH, ACL DRYRUN, volatile-* semantics as documented
# The RDB save rules of the shipped valkey.conf (cluster_configs/overlays/*/valkey*.yaml),
# suggested to a server without persistence; tests/unit/test_persistence.py keeps them equal.
SHIPPED_SAVE_RULES = "3600 1 300 100 60 10000"


class ServerChecks:
    """The server-side checks of ``Doctor`` (they use its ``config``, ``client`` and ``add``)."""

    def check_transport(self) -> None:
        """Check TLS: certificate and hostname verification, or plaintext only to a local server."""
        a, c = self.config.address, self.config
        where = a.display()
        if a.tls:
            bits = ["server certificate verified"
                    + (f" against {c.ssl_ca_certs}" if c.ssl_ca_certs else
                       " against the system CAs")]
            bits.append("hostname checked" if c.ssl_check_hostname else "hostname NOT checked")
            if c.ssl_certfile:
                bits.append("client certificate sent (mutual TLS)")
            if not c.ssl_check_hostname:
                self.add("tls", WARN, "; ".join(bits),
                         "set ssl_check_hostname=true (any certificate from the CA is accepted)")
            else:
                self.add("tls", OK, "; ".join(bits))
        elif is_loopback(a.host):
            self.add("tls", OK, f"plaintext, but {where} is local (loopback or unix socket)")
        else:
            self.add("tls", WARN, f"plaintext to a network host {a.host}: spilled objects and "
                     "the password cross the network unencrypted",
                     "serve TLS (tls-port, or stunnel in front) and use valkeys:// with "
                     "ssl_ca_certs")

    def check_reachable(self) -> bool:
        """Connect and PING as the spill user; whether the server answered."""
        import valkey

        where = self.config.address.display()
        try:
            self.client = self._client()
            started = time.perf_counter()
            self.client.ping()
            first_ms = (time.perf_counter() - started) * 1000
        except RayValkeySpillError as exc:
            self.add("reachable", ERROR, str(exc), "fix the option named above")
            return False
        except valkey.exceptions.AuthenticationError as exc:
            self.add("reachable", ERROR, f"{where} refused the credentials of user "
                     f"{self.config.user or 'default'}: {exc}",
                     "check username and the password in password_env/password_file")
            return False
        except (valkey.exceptions.ValkeyError, OSError) as exc:
            hint = "check host, port, firewall and that the server runs"
            text = str(exc).lower()
            if "certificate" in text or "ssl" in text or "tls" in text:
                hint = ("check ssl_ca_certs (the CA that signed the server certificate), the "
                        "hostname in the certificate, and the client certificate if the server "
                        "requires one")
            if "noauth" in text or "authentication required" in text:
                hint = "the server requires a password: set password_env or password_file"
            self.add("reachable", ERROR, f"cannot PING {where}: {err_text(exc)}", hint)
            return False
        self.add("reachable", OK, f"PING answered by {where} in {first_ms:.1f} ms (incl. connect)")
        return True

    def check_version(self) -> None:
        """Check the server version (at least MIN_VERSION) and that a cluster server has a cluster
        URL."""
        version, mode = None, None
        try:
            hello = self.client.execute_command("HELLO")
            if isinstance(hello, list):
                hello = dict(zip(hello[::2], hello[1::2]))
            info = {(k.decode() if isinstance(k, bytes) else k):
                    (v.decode() if isinstance(v, bytes) else v) for k, v in hello.items()}
            version, mode = info.get("version"), info.get("mode")
            server = info.get("server", "?")
        except Exception:  # noqa: BLE001 - fall back to INFO (a @dangerous command)
            try:
                info = self.client.info("server")
                version, mode = info.get("valkey_version") or info.get("redis_version"), \
                    info.get("server_mode") or info.get("redis_mode")
                server = "valkey" if info.get("valkey_version") else "redis"
            except Exception as exc:  # noqa: BLE001
                self.add("version", WARN, f"cannot read the server version ({err_text(exc)})",
                         "allow HELLO for this user, or check the version by hand "
                         f"(>= {'.'.join(map(str, MIN_VERSION))})")
                return
        try:
            parsed = tuple(int(x) for x in str(version).split(".")[:2])
        except ValueError:
            parsed = (0, 0)
        self.server_mode = mode  # the GCS checks need it (a cluster URL is not the only sign)
        detail = f"{server} {version}, {mode} mode"
        if mode == "cluster" and not self.config.address.cluster:
            self.add("version", ERROR, detail + ", but the URL is not a cluster URL",
                     "use valkey+cluster:// (or valkeys+cluster://)")
        elif parsed < MIN_VERSION:
            self.add("version", WARN, detail, "upgrade to Valkey >= 7.2 (8.x or 9.x tested)")
        else:
            self.add("version", OK, detail)

    def check_latency(self) -> None:
        """Time ``pings`` PINGs; warn when the median round trip exceeds 5 ms."""
        samples = []
        try:
            for _ in range(self.pings):
                started = time.perf_counter()
                self.client.ping()
                samples.append((time.perf_counter() - started) * 1000)
        except Exception as exc:  # noqa: BLE001
            self.add("latency", ERROR, f"PING failed after {len(samples)} answers: "
                     f"{err_text(exc)}", "the server or network drops requests; check it")
            return
        p50 = statistics.median(samples)
        detail = f"PING p50 {p50:.2f} ms, max {max(samples):.2f} ms over {len(samples)} pings"
        if p50 > 5.0:
            self.add("latency", WARN, detail, "spill throughput suffers above ~5 ms per round "
                     "trip: put the server near the Ray nodes")
        else:
            self.add("latency", OK, detail)

    def _settings_client(self):
        """The spill user's client, or the admin's when admin credentials were given."""
        if self.admin is None:
            return self.client
        import valkey

        user = self.admin.user or "default"
        try:
            client = self._client(self.admin)
            client.ping()
        except (RayValkeySpillError, valkey.exceptions.ValkeyError, OSError) as exc:
            self.add("admin", WARN, f"cannot connect as admin user {user}: {err_text(exc)}; "
                     "settings are read as the spill user", "check the --admin-* options")
            return self.client
        self.add("admin", OK, f"server settings read as ACL user {user}")
        self._admin_client = client
        return client

    def read_settings(self, client) -> list[tuple[list[str], dict]]:
        """Every node's settings, grouped by value: ``[(node names, settings)]``, a single
        group when all nodes agree (and always for a standalone server)."""
        groups: dict[tuple, tuple[list[str], dict]] = {}
        for name, node_client in each_node(client):
            settings = self._node_settings(node_client)
            same = tuple((k, err_text(v) if isinstance(v, Exception) else v)
                         for k, v in settings.items())
            groups.setdefault(same, ([], settings))[0].append(name)
        return list(groups.values())

    @staticmethod
    def _node_settings(client) -> dict:
        import valkey

        names = ("maxmemory", "maxmemory-policy", "appendonly", "appendfsync", "save",
                 "proto-max-bulk-len")
        settings: dict = {}
        for name in names:
            try:
                value = client.config_get(name).get(name)
            except valkey.exceptions.ValkeyError as exc:
                settings[name] = exc
                continue
            settings[name] = value.decode() if isinstance(value, bytes) else value
        if isinstance(settings["maxmemory-policy"], Exception):
            # A least-privilege user may read INFO memory (+info|memory) but not CONFIG.
            try:
                info = client.info("memory")
                settings["maxmemory-policy"] = info["maxmemory_policy"]
                settings["maxmemory"] = str(info["maxmemory"])
            except (valkey.exceptions.ValkeyError, KeyError):
                pass
        return settings

    @staticmethod
    def _unreadable(value) -> str | None:
        if isinstance(value, Exception):
            return ("no permission to run CONFIG GET" if is_noperm(value) else err_text(value))
        if value is None:
            return "not reported by the server"
        return None

    def check_memory(self, s: dict) -> None:
        """Check that the eviction policy cannot evict spilled objects (no ``allkeys-*``) and that
        maxmemory is set."""
        why = self._unreadable(s["maxmemory-policy"]) or self._unreadable(s["maxmemory"])
        if why:
            self.add("maxmemory", WARN, f"cannot read maxmemory / maxmemory-policy ({why})",
                     "ask the server admin to confirm maxmemory > 0 and a volatile-* policy")
            return
        policy, maxmemory = s["maxmemory-policy"], int(s["maxmemory"])
        limit = "no limit" if maxmemory == 0 else f"{maxmemory / MiB:.0f} MiB"
        if policy.startswith("allkeys-"):
            self.add("maxmemory-policy", ERROR, f"{policy}: the server may evict spilled objects "
                     "(silent data loss; restores then fail with ObjectMissingError)",
                     "CONFIG SET maxmemory-policy volatile-lru (only keys with a TTL, i.e. cache "
                     "keys, are evicted); persist it in valkey.conf")
        else:
            self.add("maxmemory-policy", OK, f"{policy}: spilled objects (no TTL) are never "
                     "evicted; a full server refuses new spills (Ray keeps them in memory)")
        if maxmemory == 0:
            self.add("maxmemory", WARN, "maxmemory 0 (no limit): the server grows until the OS "
                     "kills it, and with it every spilled object",
                     "set maxmemory below the machine's memory (leave room for client buffers "
                     "and the AOF rewrite)")
        else:
            self.add("maxmemory", OK, limit)

    def check_persistence(self, s: dict) -> None:
        """Report what a server restart keeps: spilled objects, sessions and cache entries
        (RDB snapshots as shipped, AOF, or nothing)."""
        why = self._unreadable(s["appendonly"]) or self._unreadable(s["save"])
        if why:
            self.add("persistence", WARN, f"cannot read appendonly / save ({why})",
                     "ask the server admin whether sessions and cache entries survive a restart")
            return
        aof = s["appendonly"] == "yes"
        rules = " ".join((s["save"] or "").replace('"', " ").split())
        if aof:
            fsync = s.get("appendfsync")
            fsync = fsync if isinstance(fsync, str) else "?"
            self.add("persistence", OK, f"AOF on (appendfsync {fsync}): spilled objects, "
                     "sessions and cache entries survive a restart"
                     + (" (up to ~1 s of writes lost on a crash)" if fsync == "everysec" else "")
                     + "; the AOF writes every spilled byte to disk a second time, which slows "
                     "spilling (docs/deployment.md, Persistence)")
        elif rules:
            self.add("persistence", OK, f"RDB snapshots (save {rules}): a restart keeps sessions, "
                     "cache entries and spilled objects as of the last snapshot (a clean "
                     "shutdown writes a final one); a spilled object missing from it fails its "
                     "ray.get with ObjectLostError at once")
        else:
            self.add("persistence", WARN, "none: a server restart loses every spilled object "
                     "(their ray.get raises ObjectLostError at once) and every session and "
                     "cache entry",
                     f'persist it as the shipped valkey.conf does (save "{SHIPPED_SAVE_RULES}", '
                     "appendonly no: docs/deployment.md, Persistence), or accept re-running work "
                     "after a server restart")

    def check_bulk_len(self, s: dict) -> None:
        """Check that ``chunk_size_bytes`` is below the server's ``proto-max-bulk-len``."""
        chunk = self.config.chunk_size_bytes
        why = self._unreadable(s["proto-max-bulk-len"])
        if why:
            self.add("proto-max-bulk-len", WARN, f"cannot read it ({why}); chunk_size_bytes is "
                     f"{chunk}", "make sure the server's proto-max-bulk-len exceeds "
                     "chunk_size_bytes (default 512 MB does)")
            return
        bulk = int(s["proto-max-bulk-len"])
        detail = f"{bulk} bytes vs chunk_size_bytes {chunk}"
        if chunk >= bulk:
            self.add("proto-max-bulk-len", ERROR, detail + ": every chunk would be refused "
                     "(the server resets the connection)",
                     f"lower chunk_size_bytes below {bulk}, or raise proto-max-bulk-len")
        else:
            self.add("proto-max-bulk-len", OK, detail)

    def check_auth(self) -> None:
        """Warn when the connection uses neither a user nor a password."""
        if self.config.user is None and self.config.resolve_password() is None:
            self.add("authentication", WARN, "connected without a user or password: anyone who "
                     "can reach the port can read and delete spilled objects",
                     "create an ACL user limited to the spill prefix (see the acl check) and "
                     "pass username + password_env/password_file")
        else:
            self.add("authentication", OK, f"user {self.config.user or 'default'} with a "
                     "password from " + ("$" + self.config.password_env
                                         if self.config.password_env else "password_file"
                                         if self.config.password_file else "nowhere"))

