"""Doctor checks of permissions: what the spill user needs on its prefix, that no checked user
can reach outside its prefix, and that cache keys carry a TTL."""

from __future__ import annotations

import secrets

from ...acl_rules import setuser_command
from ...keyspace import SCAN_COUNT
from ...prefixes import CACHE_PREFIXES
from .report import ERROR, OK, WARN, err_text, is_noperm

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




class PermissionChecks:
    """The permission checks of ``Doctor`` (they use its ``config``, ``client``, ``add`` and,
    when given, the admin's client)."""

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
            if is_noperm(exc):
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
            if not is_noperm(exc) and "unknown" not in str(exc).lower():
                self.add("acl", WARN, f"ACL DRYRUN failed: {err_text(exc)}",
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
            self.add("acl", WARN, f"permission probe failed: {err_text(exc)}",
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
                         f"({err_text(exc)})", "pass --admin-username/--admin-password-env of "
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
            self.add("cache-ttl", WARN, f"cannot read cache keys' TTLs ({err_text(exc)})",
                     "pass admin credentials (--admin-*)")
            return
        if without:
            self.add("cache-ttl", WARN, "cache keys without a TTL (never evictable; they crowd "
                     "out spilled objects): " + ", ".join(f"{p}* {n}" for p, n in without.items()),
                     "write cache entries with SET ... EX (the package's caches always do)")
        else:
            self.add("cache-ttl", OK, f"every cache key seen has a TTL ({seen} checked)")

