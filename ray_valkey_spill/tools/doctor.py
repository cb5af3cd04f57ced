"""``ray-valkey-spill doctor``: check a server before a Ray cluster relies on it.

Prints one row per check (status OK / WARN / ERROR, what was found, what to do) and exits
non-zero when any check is an ERROR, so it can gate a deployment::

    ray-valkey-spill doctor --url valkeys://valkey.example:6380/0 --username rayspill \\
        --password-env RAY_SPILL_PASSWORD --ssl-ca-certs /etc/ssl/valkey-ca.pem [--json]

It connects exactly as the spill backend would (same ``SpillConfig``, same user), and never
changes data outside its own probe key ``<prefix>__doctor__:<random>:probe``, which it removes.

Permissions are checked with ``ACL DRYRUN`` when the user may run it (an admin or the default
user); a least-privilege user may not, so then every command is probed for real against a
random key that does not exist (GET, UNLINK: nothing is read or deleted) and against the
probe key under the spill prefix (SET, GET, UNLINK).

Exit codes: 0 no ERROR, 1 at least one ERROR, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import statistics
import time
from dataclasses import asdict, dataclass

from ..acl_rules import setuser_command
from ..config import MiB, SpillConfig
from ..connection import connection_kwargs
from ..errors import RayValkeySpillError
from ..keyspace import SCAN_COUNT
from ..prefixes import CACHE_PREFIXES
from ..server_checks import each_node
from .cli_options import (EXIT_FINDINGS, EXIT_OK, add_connection_options, config_from_args,
                          fail)
from .tables import render_table

OK, WARN, ERROR = "OK", "WARN", "ERROR"
DEFAULT_PINGS = 20
MIN_VERSION = (7, 2)  # CLIENT NO-TOUCH, ACL DRYRUN, volatile-* semantics as documented
# Commands the spill backend (and gc) sends on keys under its prefix.
# Prefixes the spill user must not reach: the other tenants of a shared server.
OTHER_PREFIXES = CACHE_PREFIXES
TTL_SAMPLE_KEYS = 10_000
# Commands that reach outside a data user's key prefix: every key, another database, the
# server's settings or secrets, code that runs on the server, or a copy of all data.
DANGEROUS_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("FLUSHALL",), ("FLUSHDB",), ("KEYS", "*"), ("SELECT", "1"), ("SWAPDB", "0", "1"),
    ("MOVE", "k", "1"), ("MIGRATE", "h", "1", "k", "0", "1"),
    ("EVAL", "return 1", "0"), ("SCRIPT", "LOAD", "return 1"), ("FCALL", "f", "0"),
    ("FUNCTION", "LOAD", "#!lua name=x\nreturn 1"), ("FUNCTION", "DELETE", "x"),
    ("FUNCTION", "FLUSH"), ("CONFIG", "SET", "maxmemory", "0"),
    ("CONFIG", "GET", "masterauth"), ("CONFIG", "GET", "requirepass"), ("DEBUG", "SLEEP", "0"),
    ("MODULE", "LIST"), ("SHUTDOWN",), ("REPLICAOF", "NO", "ONE"), ("SYNC",),
    ("PSYNC", "?", "-1"), ("ACL", "SETUSER", "x"), ("CLIENT", "KILL", "ID", "1"),
)
_SUBCOMMANDS = {"SCRIPT", "FUNCTION", "CONFIG", "MODULE", "ACL", "CLIENT", "DEBUG"}


@dataclass
class Check:
    """One row of the report: the check's name, its status, what was found and what to do."""

    check: str
    status: str
    detail: str
    action: str = ""


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return True  # unix socket
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _err_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _is_noperm(exc: BaseException) -> bool:
    import valkey

    return isinstance(exc, valkey.exceptions.NoPermissionError) or "NOPERM" in str(exc)


class Doctor:
    """Runs the checks against one server, as the spill user, and collects a ``Check`` per
    finding."""

    def __init__(self, config: SpillConfig, pings: int = DEFAULT_PINGS,
                 admin: SpillConfig | None = None, check_users: tuple[str, ...] = ()):
        """``admin``: credentials to read the server's settings with when the spill user may
        not run CONFIG GET (a least-privilege user); permissions are always checked as the
        spill user. ``check_users``: more ACL users (caches, metrics) whose permissions are
        checked for commands that reach outside their prefix."""
        self.config = config
        self.admin = admin
        self.check_users = check_users
        self.pings = pings
        self.checks: list[Check] = []
        self.client = None
        self._admin_client = None
        self._scope = ""  # which cluster nodes the settings checks being added are about

    def add(self, check: str, status: str, detail: str, action: str = "") -> None:
        """Record a finding (prefixed with the cluster nodes it is about, if any)."""
        if self._scope:
            detail = f"{self._scope}: {detail}"
        self.checks.append(Check(check, status, detail, action))

    # -- connection ---------------------------------------------------------------------
    def _client(self, config: SpillConfig | None = None):
        import valkey

        config = config or self.config
        kwargs = connection_kwargs(config)
        kwargs.pop("retry", None)
        kwargs.pop("retry_on_error", None)
        kwargs["socket_timeout"] = max(config.connect_timeout_s, 1.0)
        if config.address.cluster:
            from valkey.cluster import ValkeyCluster

            return ValkeyCluster(**kwargs)
        return valkey.Valkey(**kwargs)

    def run(self) -> list[Check]:
        """Run every check; the findings, in order. Stops after the reachability check if the
        server cannot be reached."""
        self.check_transport()
        if not self.check_reachable():
            return self.checks
        try:
            self.check_version()
            self.check_latency()
            groups = self.read_settings(self._settings_client())
            for nodes, settings in groups:
                if self.config.address.cluster:
                    self._scope = (f"all {len(nodes)} nodes" if len(groups) == 1
                                   else "node " + ", ".join(nodes))
                self.check_memory(settings)
                self.check_persistence(settings)
                self.check_bulk_len(settings)
            self._scope = ""
            self.check_auth()
            self.check_acl()
            self.check_dangerous_permissions()
            self.check_cache_ttls()
        finally:
            for client in (self.client, self._admin_client):
                try:
                    if client is not None:
                        client.close()
                except Exception:  # noqa: BLE001
                    pass
        return self.checks

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
        elif _is_loopback(a.host):
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
            self.add("reachable", ERROR, f"cannot PING {where}: {_err_text(exc)}", hint)
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
                self.add("version", WARN, f"cannot read the server version ({_err_text(exc)})",
                         "allow HELLO for this user, or check the version by hand "
                         f"(>= {'.'.join(map(str, MIN_VERSION))})")
                return
        try:
            parsed = tuple(int(x) for x in str(version).split(".")[:2])
        except ValueError:
            parsed = (0, 0)
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
                     f"{_err_text(exc)}", "the server or network drops requests; check it")
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
            self.add("admin", WARN, f"cannot connect as admin user {user}: {_err_text(exc)}; "
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
            same = tuple((k, _err_text(v) if isinstance(v, Exception) else v)
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
            return ("no permission to run CONFIG GET" if _is_noperm(value) else _err_text(value))
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
        """Report whether spilled objects survive a server restart (AOF, RDB or nothing)."""
        why = self._unreadable(s["appendonly"]) or self._unreadable(s["save"])
        if why:
            self.add("persistence", WARN, f"cannot read appendonly / save ({why})",
                     "ask the server admin whether spilled objects survive a restart")
            return
        aof = s["appendonly"] == "yes"
        rdb = bool((s["save"] or "").strip().strip('"'))
        if aof:
            fsync = s.get("appendfsync")
            fsync = fsync if isinstance(fsync, str) else "?"
            self.add("persistence", OK, f"AOF on (appendfsync {fsync}): spilled objects survive "
                     "a restart" + (" (up to ~1 s of writes lost on a crash)"
                                    if fsync == "everysec" else ""))
        elif rdb:
            self.add("persistence", WARN, f"RDB snapshots only (save {s['save']}): objects "
                     "spilled since the last snapshot are lost on a crash, and every snapshot "
                     "forks the server (memory doubling with GBs of spill data)",
                     "CONFIG SET appendonly yes (appendfsync everysec), or accept the loss")
        else:
            self.add("persistence", WARN, "none: a server restart loses every spilled object "
                     "(restores fail with ObjectMissingError; tasks needing them fail)",
                     "CONFIG SET appendonly yes if spilled objects must survive a server restart")

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

    # -- permissions ----------------------------------------------------------------------
    def _dryrun(self, user: str, *command: str):
        """(allowed, reason) from ACL DRYRUN; raises when DRYRUN itself is not permitted."""
        reply = self.client.execute_command("ACL", "DRYRUN", user, *command)
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        return text == "OK", text

    def _probe(self, *command: str):
        """(allowed, reason) by running the command for real (only harmless commands)."""
        try:
            self.client.execute_command(*command)
            return True, "OK"
        except Exception as exc:  # noqa: BLE001
            if _is_noperm(exc):
                return False, str(exc)
            raise

    def check_acl(self) -> None:
        """Check the spill user's permissions: what spilling needs on its prefix, what is optional,
        and that the other tenants' prefixes are out of its reach."""
        user = self.config.user or "default"
        token = secrets.token_hex(6)
        own = f"{self.config.prefix}__doctor__:{token}:probe"
        needed = [("SET", own, "x"), ("GET", own), ("UNLINK", own), ("PING",),
                  ("SCAN", "0", "MATCH", f"{self.config.prefix}__doctor__:*", "COUNT", "10")]
        # What the shipped rule grants beyond the needed (acl_rules): gc's idle times and
        # sizes, and INFO memory for the start-up eviction-policy check (never CONFIG GET).
        optional = [("OBJECT", "IDLETIME", own), ("MEMORY", "USAGE", own), ("INFO", "memory")]
        foreign = []
        for other in OTHER_PREFIXES:
            probe_key = f"{other}__rvs_doctor_probe__{token}"  # random: never exists
            foreign += [("GET", probe_key), ("UNLINK", probe_key), ("SET", probe_key, "x")]
        method = "ACL DRYRUN"
        try:
            self._dryrun(user, "PING")
            judge = lambda cmd: self._dryrun(user, *cmd)  # noqa: E731
        except Exception as exc:  # noqa: BLE001
            if not _is_noperm(exc) and "unknown" not in str(exc).lower():
                self.add("acl", WARN, f"ACL DRYRUN failed: {_err_text(exc)}",
                         "check the user's permissions by hand")
                return
            method = "live probes"
            judge = None
        try:
            if judge is None:
                # Create the probe key first so OBJECT/MEMORY have something to look at.
                results = {}
                for cmd in needed[:1]:
                    results[cmd] = self._probe(*cmd)
                for cmd in optional[:2] + needed[1:] + optional[2:]:
                    results[cmd] = self._probe(*cmd)
                # Writes to other prefixes are probed with UNLINK of a random, absent key only:
                # a SET there could create data in another tenant's range.
                for cmd in foreign:
                    if cmd[0] != "SET":
                        results[cmd] = self._probe(*cmd)
                check = lambda cmd: results.get(cmd)  # noqa: E731
            else:
                check = judge
            missing = [" ".join(c[:1]) for c in needed if not check(c)[0]]
            missing_opt = [" ".join(c[:2]) for c in optional if not check(c)[0]]
            allowed: dict[str, list[str]] = {}
            for c in foreign:
                if check(c) is not None and check(c)[0]:
                    allowed.setdefault(c[1].split("__rvs")[0] + "*", []).append(c[0])
            reachable = [f"{p} ({'/'.join(cmds)})" for p, cmds in sorted(allowed.items())]
        except Exception as exc:  # noqa: BLE001
            self.add("acl", WARN, f"permission probe failed: {_err_text(exc)}",
                     "check the user's permissions by hand")
            return
        finally:
            if judge is None:
                try:
                    self.client.unlink(own)
                except Exception:  # noqa: BLE001
                    pass
        pattern = f"{self.config.prefix}*"
        setuser = setuser_command(user if user != "default" else "rayspill", self.config.prefix)
        if missing:
            self.add("acl", ERROR, f"user {user} ({method}) may not run {', '.join(missing)} on "
                     f"{pattern} keys: spilling will fail", setuser)
        elif reachable:
            self.add("acl", WARN, f"user {user} ({method}) has what spilling needs, but can "
                     f"also reach other tenants' keys: {', '.join(reachable)}",
                     "use a dedicated user limited to the spill prefix: " + setuser)
        else:
            self.add("acl", OK, f"user {user} ({method}) can SET/GET/UNLINK/SCAN {pattern} and "
                     f"cannot touch {', '.join(p + '*' for p in OTHER_PREFIXES)}")
        if missing_opt:
            self.add("acl-optional", WARN, f"user {user} may not run {', '.join(missing_opt)}: "
                     "the eviction-policy check at start-up and `gc` idle times/sizes are "
                     "skipped", "give the user the shipped data-user rule: " + setuser)


    # -- what no data user may do ---------------------------------------------------------
    def _dryrun_client(self):
        """A client that may run ACL DRYRUN for other users: the admin's, else the spill
        user's (which usually may not)."""
        return self._admin_client or self.client

    def check_dangerous_permissions(self) -> None:
        """ERROR for every checked user that may run a command reaching outside its key
        prefix (scripts, functions, other databases, server configuration, replication)."""
        users = [self.config.user or "default", *self.check_users]
        client = self._dryrun_client()
        for user in dict.fromkeys(users):
            allowed = []
            try:
                for command in DANGEROUS_COMMANDS:
                    reply = client.execute_command("ACL", "DRYRUN", user, *command)
                    if (reply.decode() if isinstance(reply, bytes) else str(reply)) == "OK":
                        allowed.append(" ".join(command[:2]) if command[0] in _SUBCOMMANDS
                                       else command[0])
            except Exception as exc:  # noqa: BLE001 - reported as a row, never a traceback
                self.add("acl-dangerous", WARN, f"cannot check user {user}: ACL DRYRUN failed "
                         f"({_err_text(exc)})", "pass --admin-username/--admin-password-env of "
                         "a user allowed ACL DRYRUN")
                continue
            if allowed:
                self.add("acl-dangerous", ERROR, f"user {user} may run {', '.join(allowed)}: "
                         "these reach outside its key prefix (another database, every key, "
                         "server settings or code that runs on the server)",
                         "reset the user with the shipped ACL (docs/security.md)")
            else:
                self.add("acl-dangerous", OK, f"user {user} may run none of the "
                         f"{len(DANGEROUS_COMMANDS)} commands that reach outside its prefix")

    def check_cache_ttls(self, sample: int = TTL_SAMPLE_KEYS) -> None:
        """WARN when cache keys have no TTL: a volatile-* server can never evict them, so they
        crowd out spilled objects."""
        import valkey

        client = self._dryrun_client()
        without, seen = {}, 0
        try:
            for prefix in OTHER_PREFIXES:
                keys = []
                for key in client.scan_iter(match=prefix + "*", count=SCAN_COUNT):
                    keys.append(key)
                    if seen + len(keys) >= sample:
                        break
                seen += len(keys)
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.ttl(key)
                missing = sum(1 for ttl in (pipe.execute() if keys else []) if ttl == -1)
                if missing:
                    without[prefix] = missing
        except valkey.exceptions.ValkeyError as exc:
            self.add("cache-ttl", WARN, f"cannot read cache keys' TTLs ({_err_text(exc)})",
                     "pass admin credentials (--admin-*)")
            return
        if without:
            self.add("cache-ttl", WARN, "cache keys without a TTL (never evictable; they crowd "
                     "out spilled objects): " + ", ".join(f"{p}* {n}" for p, n in without.items()),
                     "write cache entries with SET ... EX (the package's caches always do)")
        else:
            self.add("cache-ttl", OK, f"every cache key seen has a TTL ({seen} checked)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ray-valkey-spill doctor``."""
    p = argparse.ArgumentParser(prog="ray-valkey-spill doctor",
                                description="Check a Valkey server before Ray spills to it.")
    add_connection_options(p, prefix_help="spill key prefix (default: ray:)")
    p.add_argument("--admin-username", help="ACL user to read server settings with when the "
                   "spill user may not run CONFIG GET (default: the default user)")
    p.add_argument("--admin-password-env", help="NAME of the variable holding the admin password")
    p.add_argument("--admin-password-file", help="file holding the admin password")
    p.add_argument("--check-user", action="append", default=[], metavar="USER",
                   help="also check this ACL user (caches, metrics) for commands that reach "
                        "outside its prefix (repeatable; needs ACL DRYRUN, e.g. as --admin-*)")
    p.add_argument("--chunk-size-bytes", type=int, help="the backend's chunk_size_bytes")
    p.add_argument("--pings", type=int, default=DEFAULT_PINGS, help="PINGs for the latency check")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def admin_config_from_args(args) -> SpillConfig | None:
    """The spill user's config with the --admin-* credentials instead, if any were given."""
    if not (args.admin_username or args.admin_password_env or args.admin_password_file):
        return None
    admin = argparse.Namespace(**vars(args))
    admin.username = args.admin_username
    admin.password_env, admin.password_file = args.admin_password_env, args.admin_password_file
    return _config(admin)


def _config(args) -> SpillConfig:
    return config_from_args(args, chunk_size_bytes=args.chunk_size_bytes)


def render(checks: list[Check]) -> str:
    """The findings as a text table."""
    return render_table([[c.check, c.status, c.detail, c.action] for c in checks],
                        ["check", "status", "detail", "what to do"])


def main(argv: list[str] | None = None) -> int:
    """Run the doctor and print its report; ``EXIT_FINDINGS`` if any check is an ERROR,
    ``EXIT_USAGE`` for a bad argument."""
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
        if args.pings < 1:
            raise RayValkeySpillError("--pings must be at least 1")
        checks = Doctor(config, pings=args.pings, admin=admin_config_from_args(args),
                        check_users=tuple(args.check_user)).run()
    except RayValkeySpillError as exc:
        return fail("doctor", exc)
    errors = sum(c.status == ERROR for c in checks)
    warnings = sum(c.status == WARN for c in checks)
    if args.json:
        print(json.dumps({"server": config.address.display(), "ok": errors == 0,
                          "errors": errors, "warnings": warnings,
                          "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(f"ray-valkey-spill doctor: {config.address.display()}")
        print(render(checks))
        print(f"{errors} error(s), {warnings} warning(s)")
    return EXIT_FINDINGS if errors else EXIT_OK
