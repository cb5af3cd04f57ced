"""Doctor checks of Ray's GCS (fault tolerance) as a tenant: whether the server's layout can hold
GCS tables at all, the tables each GCS namespace keeps (keys, entries, memory, TTLs), the
headroom left for keys that are never evicted, and what the GCS user may and may not do."""

from __future__ import annotations

import secrets

from ...acl_rules import GCS_COMMANDS, gcs_user_rule
from ...errors import ConfigError, RayValkeySpillError
from ...gcs_storage import GCS_CLUSTER_ALTERNATIVE, cluster_refusal, gcs_storage_address
from ...keyspace import SCAN_COUNT
from ...prefixes import (CACHE_PREFIXES, GCS_KEY_PATTERN, GCS_PROBE_KEY, SPILL_PREFIX,
                         gcs_namespace_of, gcs_prefix)
from .report import ERROR, INFO, OK, WARN, err_text, is_noperm

# Keys of every namespace measured one by one (MEMORY USAGE, TTL); beyond that, extrapolated.
SAMPLE_KEYS = 200
MAX_SCANNED_KEYS = 100_000
# MEMORY USAGE counts every field of a hash up to this many (SAMPLES 0), samples beyond it.
EXACT_FIELDS = 10_000
# Keys without a TTL (GCS tables, spilled objects) are never evicted under volatile-lru: warn
# when they take this share of maxmemory. prometheusrule.yaml's ValkeyNonEvictableMemoryNearMax
# uses the same share (a test checks).
NON_VOLATILE_SHARE = 0.8
SHOWN_NAMESPACES = 10
# The tenants whose keys the GCS user must not reach.
OTHER_TENANTS = (SPILL_PREFIX, *CACHE_PREFIXES)


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.1f} MiB"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GcsChecks:
    """The GCS-tenant checks of ``Doctor`` (they use its ``config``, ``client``, ``add``, the
    admin's client when given, and ``gcs``: the GCS user's credentials, if given)."""

    def check_gcs(self) -> None:
        """Every GCS row: layout, tables per namespace, headroom, the GCS user's rights."""
        namespaces = self._check_gcs_tables()
        if not self._check_gcs_layout(bool(namespaces)):
            return
        if namespaces or self.gcs is not None:
            self._check_gcs_headroom()
        if self.gcs is not None:
            self._check_gcs_user()

    # -- layout ---------------------------------------------------------------------------
    def _cluster_shards(self) -> int:
        """Primaries serving slots: 1 for a standalone server, 0 if unknown."""
        if self.config.address.cluster:
            return sum(node.server_type == "primary" for node in self.client.get_nodes())
        if self.server_mode != "cluster":
            return 1
        try:  # a plain URL to a cluster node; data users may run CLUSTER SLOTS
            slots = self.client.execute_command("CLUSTER", "SLOTS")
            return len({(_text(r[2][0]), r[2][1]) for r in slots})
        except Exception:  # noqa: BLE001
            return 0

    def _check_gcs_layout(self, has_tables: bool) -> bool:
        """Whether Ray's GCS can keep its tables on this server; a row saying so."""
        shards = self._cluster_shards()
        why = cluster_refusal(shards) if shards else (
            "cluster mode (shard count unreadable): Ray's GCS works on a one-shard cluster only")
        if why is None and self.gcs is None:
            return True
        if why is None:
            one_shard = self.config.address.cluster or self.server_mode == "cluster"
            # Ray takes a one-shard cluster by its node's host:port (no cluster client).
            url = self.gcs.url.replace("+cluster://", "://", 1) if one_shard else self.gcs.url
            try:
                address = gcs_storage_address(url)
            except ConfigError as exc:
                self.add("gcs-layout", ERROR, str(exc), "fix --url for the GCS user")
                return False
            where = "a one-shard cluster" if one_shard else "a standalone server"
            self.add("gcs-layout", OK, f"{where}: Ray's GCS can keep its tables here "
                     f"(redisAddress {address})")
            return True
        status = ERROR if (self.gcs is not None or has_tables) else INFO
        self.add("gcs-layout", status, why, GCS_CLUSTER_ALTERNATIVE)
        return False

    # -- tables ---------------------------------------------------------------------------
    def _check_gcs_tables(self) -> dict[str, list[bytes]]:
        """SCAN for RAY<ns>@* keys and report each namespace's tables; the keys by namespace."""
        import valkey

        client = self._dryrun_client()
        namespaces: dict[str, list[bytes]] = {}
        scanned = 0
        try:
            for key in client.scan_iter(match=GCS_KEY_PATTERN, count=SCAN_COUNT):
                namespace = gcs_namespace_of(key)
                if namespace is not None:
                    namespaces.setdefault(namespace, []).append(key)
                scanned += 1
                if scanned >= MAX_SCANNED_KEYS:
                    break
        except valkey.exceptions.ValkeyError as exc:
            self.add("gcs-tables", WARN, f"cannot SCAN for GCS tables ({err_text(exc)})",
                     "pass admin credentials (--admin-*)")
            return {}
        if not namespaces:
            self.add("gcs-tables", INFO, f"no GCS tables ({GCS_KEY_PATTERN}) on this server: no "
                     "Ray cluster keeps its GCS here (or none has started yet)")
            return {}
        try:
            measured = {ns: self._measure(client, keys) for ns, keys in namespaces.items()}
        except valkey.exceptions.ValkeyError as exc:
            counts = ", ".join(f"{gcs_prefix(ns)}* {len(k)}" for ns, k in namespaces.items())
            self.add("gcs-tables", WARN, f"GCS tables found ({counts}) but not measured "
                     f"({err_text(exc)})", "pass admin credentials (--admin-*) for their memory")
            return namespaces
        ranked = sorted(measured.items(), key=lambda item: -item[1]["bytes"])
        for namespace, m in ranked[:SHOWN_NAMESPACES]:
            self.add("gcs-namespace", OK, f"{gcs_prefix(namespace)}*: {m['keys']} tables, "
                     f"{m['entries']} entries, {_kib(m['bytes'])}"
                     + (f" (estimated from {m['sampled']} keys)" if m["sampled"] < m["keys"] else "")
                     + (f"; largest {m['largest']}" if m["largest"] else ""))
        total = sum(m["bytes"] for m in measured.values())
        expiring = sum(m["expiring"] for m in measured.values())
        detail = (f"{len(measured)} namespace(s), {sum(m['keys'] for m in measured.values())} "
                  f"tables, {_kib(total)} in all"
                  + (f" ({len(ranked) - SHOWN_NAMESPACES} namespaces not listed)"
                     if len(ranked) > SHOWN_NAMESPACES else ""))
        if expiring:
            self.add("gcs-ttl", WARN, f"{expiring} GCS table(s) have a TTL: when one expires the "
                     "GCS loses that table (actors, jobs, nodes) on its next restart",
                     "remove the TTL (PERSIST) and find who set it: Ray never does")
        else:
            self.add("gcs-ttl", INFO, detail + "; none expires (TTL -1, as Ray writes them), so "
                     "under volatile-lru they are never evicted: size for them (docs/deployment"
                     ".md, Sizing)", "a namespace of a deleted RayCluster stays until KubeRay's "
                     "cleanup Job deletes RAY<namespace>@*")
        return namespaces

    @staticmethod
    def _measure(client, keys: list[bytes]) -> dict:
        """Tables, entries, bytes (MEMORY USAGE) and TTLs of one namespace's keys, sampled."""
        sample = keys[:SAMPLE_KEYS]
        pipe = client.pipeline(transaction=False)
        for key in sample:
            pipe.type(key)
            pipe.ttl(key)
        replies = pipe.execute()
        types, ttls = [_text(t) for t in replies[::2]], replies[1::2]
        pipe = client.pipeline(transaction=False)
        for key, kind in zip(sample, types):
            if kind == "hash":
                pipe.hlen(key)
            else:
                pipe.exists(key)
        sizes = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for key, kind, size in zip(sample, types, sizes):
            exact = kind != "hash" or size <= EXACT_FIELDS
            pipe.execute_command("MEMORY", "USAGE", key, *(("SAMPLES", "0") if exact else ()))
        used = [int(b or 0) for b in pipe.execute()]
        scale = len(keys) / max(len(sample), 1)
        entries = sum(s for s, kind in zip(sizes, types) if kind == "hash")
        largest = max(zip(used, sample), default=(0, b""))
        table = _text(largest[1]).partition("@")[2]
        return {"keys": len(keys), "sampled": len(sample), "bytes": int(sum(used) * scale),
                "entries": int(entries * scale), "expiring": sum(t >= 0 for t in ttls),
                "largest": f"{table} {_kib(largest[0])}" if largest[0] else ""}

    # -- headroom -------------------------------------------------------------------------
    def _check_gcs_headroom(self) -> None:
        """WARN when keys without a TTL (never evicted) approach maxmemory: a full server
        answers the GCS's writes with OOM and the GCS exits."""
        client = self._dryrun_client()
        try:
            memory = client.info("memory")
            keyspace = client.info("keyspace")
        except Exception as exc:  # noqa: BLE001 - a data user may not read INFO keyspace
            self.add("gcs-headroom", WARN, f"cannot read INFO memory/keyspace ({err_text(exc)})",
                     "pass admin credentials (--admin-*)")
            return
        used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
        keys = sum(int(db.get("keys", 0)) for db in keyspace.values() if isinstance(db, dict))
        expires = sum(int(db.get("expires", 0)) for db in keyspace.values()
                      if isinstance(db, dict))
        if not limit:
            self.add("gcs-headroom", WARN, "maxmemory 0: nothing bounds the keys that never "
                     "expire (GCS tables, spilled objects) short of the OS killing the server",
                     "set maxmemory (docs/deployment.md, Sizing)")
            return
        # Count-weighted, as the alert computes it from redis_db_keys(_expiring).
        lasting = used * (1 - expires / keys) if keys else 0
        share = lasting / limit
        detail = (f"keys without a TTL take ~{share:.0%} of maxmemory {_kib(limit)} (used "
                  f"{_kib(used)}; {keys - expires} of {keys} keys have no TTL)")
        if share > NON_VOLATILE_SHARE:
            self.add("gcs-headroom", WARN, detail + ": they are never evicted under volatile-lru;"
                     " when they fill maxmemory the server answers writes with OOM, spills fail "
                     "and Ray's GCS exits", "run gc, remove GCS namespaces of deleted clusters, "
                     "or grow maxmemory (docs/deployment.md, Sizing)")
        else:
            self.add("gcs-headroom", OK, detail)

    # -- the GCS user ---------------------------------------------------------------------
    def _check_gcs_user(self) -> None:
        """What the GCS user may do: every command the GCS sends on RAY<ns>@* and DEL DUMMY,
        and nothing on the other tenants' keys."""
        import valkey

        user = self.gcs.user or "default"
        try:
            password = self.gcs.resolve_password()
        except ConfigError as exc:
            self.add("gcs-user", ERROR, f"the password of GCS user {user}: {exc}",
                     "in the RayService KubeRay sets REDIS_PASSWORD from gcsFaultToleranceOptions"
                     ".redisPassword's Secret (valkey-gcs, key password); a missing Secret or key "
                     "keeps the head pod in CreateContainerConfigError")
            return
        if password is None:
            self.add("gcs-user", ERROR, f"no password for GCS user {user}",
                     "pass --gcs-password-env NAME (REDIS_PASSWORD in the head pod) or "
                     "--gcs-password-file")
            return
        if not password:
            self.add("gcs-user", ERROR, f"the password of GCS user {user} is empty: Ray then "
                     "sends no AUTH and every GCS command fails NOAUTH", "check the Secret's key")
            return
        try:
            client = self._client(self.gcs)
            client.ping()
        except (RayValkeySpillError, valkey.exceptions.ValkeyError, OSError) as exc:
            self.add("gcs-user", ERROR, f"cannot log in as GCS user {user}: {err_text(exc)}",
                     "check redisUsername and the password in the Secret against the ACL file")
            return
        token = secrets.token_hex(6)
        table = gcs_prefix(f"__rvs_doctor_{token}") + "probe"
        counter = gcs_prefix(f"__rvs_doctor_{token}") + "JobCounter"
        needed = [("HSET", table, "f", "v"), ("HSETNX", table, "g", "v"), ("HGET", table, "f"),
                  ("HMGET", table, "f"), ("HEXISTS", table, "f"), ("HSCAN", table, "0"),
                  ("HDEL", table, "g"), ("INCRBY", counter, "1"), ("PING",),
                  ("INFO", "CLUSTER"), ("INFO", "SENTINEL"), ("DEL", GCS_PROBE_KEY),
                  ("SCAN", "0", "MATCH", GCS_KEY_PATTERN, "COUNT", "10"),
                  ("DEL", table), ("DEL", counter)]
        # Random absent keys: a probe that is wrongly allowed reads nothing and deletes nothing.
        foreign = [(cmd, f"{p}__rvs_doctor_{token}", *args) for p in OTHER_TENANTS
                   for cmd, *args in (("HGET", "f"), ("HSCAN", "0"), ("DEL",))]
        foreign.append(("HGET", GCS_PROBE_KEY, "f"))  # DUMMY is write-only
        judge, method = self._gcs_judge(user, client)
        try:
            missing = [c for c in needed if not judge(c)]
            reached = [c for c in foreign if judge(c)]
        except Exception as exc:  # noqa: BLE001 - reported as a row, never a traceback
            self.add("gcs-acl", WARN, f"permission probe as {user} failed: {err_text(exc)}",
                     "check the user's permissions by hand")
            return
        finally:
            if method == "live probes":
                try:
                    client.delete(table, counter)
                except Exception:  # noqa: BLE001
                    pass
            client.close()
        fix = f"ACL SETUSER {user} reset >PASSWORD {gcs_user_rule()}"
        if missing:
            names = sorted({" ".join(c[:2]) if c[0] in ("INFO", "DEL") and c[1] in (
                "CLUSTER", "SENTINEL", GCS_PROBE_KEY) else c[0] for c in missing})
            self.add("gcs-acl", ERROR, f"GCS user {user} ({method}) may not run "
                     f"{', '.join(names)}: the GCS exits at start or on its first write", fix)
        elif reached:
            by_target: dict[str, list[str]] = {}
            for c in reached:
                target = c[1] if c[1] == GCS_PROBE_KEY else c[1].split("__rvs")[0] + "*"
                by_target.setdefault(target, []).append(c[0])
            where = [f"{t} ({'/'.join(cmds)})" for t, cmds in sorted(by_target.items())]
            self.add("gcs-acl", WARN, f"GCS user {user} ({method}) has what the GCS needs, but "
                     f"also reaches other tenants' keys: {', '.join(where)}",
                     "limit it to RAY*@* and write-only DUMMY: " + fix)
        else:
            self.add("gcs-acl", OK, f"GCS user {user} ({method}) can run "
                     f"{' '.join(c.upper() for c in GCS_COMMANDS)} on {GCS_KEY_PATTERN} and DEL "
                     f"{GCS_PROBE_KEY}, and cannot read "
                     f"{', '.join(p + '*' for p in OTHER_TENANTS)}")

    def _gcs_judge(self, user: str, gcs_client):
        """(command -> allowed, method): ACL DRYRUN as the admin when it may, else live probes
        as the GCS user (only on its own random probe keys and absent keys elsewhere)."""
        admin = self._dryrun_client()
        try:
            if _text(admin.execute_command("ACL", "DRYRUN", user, "PING")) != "OK":
                raise RuntimeError("DRYRUN refused PING")

            def dryrun(command) -> bool:
                return _text(admin.execute_command("ACL", "DRYRUN", user, *command)) == "OK"

            return dryrun, "ACL DRYRUN"
        except Exception:  # noqa: BLE001 - no DRYRUN for this client: probe for real
            pass

        def probe(command) -> bool:
            try:
                gcs_client.execute_command(*command)
                return True
            except Exception as exc:  # noqa: BLE001
                if is_noperm(exc):
                    return False
                raise

        return probe, "live probes"
