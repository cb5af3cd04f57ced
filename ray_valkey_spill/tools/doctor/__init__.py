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

Ray's GCS (fault tolerance) is reported as a tenant: its tables per namespace (``RAY<ns>@*``,
found with SCAN; keys, entries, MEMORY USAGE), that they never expire, the headroom left for
keys that are never evicted, whether the server's layout can hold them at all (not a cluster
of more than one shard), and, given ``--gcs-username`` with ``--gcs-password-env`` or
``--gcs-password-file``, that user's rights: what the GCS sends, and nothing on other tenants.

Exit codes: 0 no ERROR, 1 at least one ERROR, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ...cli.options import EXIT_FINDINGS, EXIT_OK, add_connection_options, config_from_args, fail
from ...config import SpillConfig
from ...errors import RayValkeySpillError
from .report import ERROR, WARN, Check, render
from .runner import DEFAULT_PINGS, Doctor

__all__ = ["Check", "Doctor", "build_parser", "main"]


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
    p.add_argument("--gcs-username", help="ACL user of Ray's GCS (gcsFaultToleranceOptions."
                   "redisUsername) whose rights to check")
    p.add_argument("--gcs-password-env", help="NAME of the variable holding the GCS user's "
                   "password (REDIS_PASSWORD in the head pod)")
    p.add_argument("--gcs-password-file", help="file holding the GCS user's password")
    p.add_argument("--chunk-size-bytes", type=int, help="the backend's chunk_size_bytes")
    p.add_argument("--pings", type=int, default=DEFAULT_PINGS, help="PINGs for the latency check")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def admin_config_from_args(args) -> SpillConfig | None:
    """The spill user's config with the --admin-* credentials instead, if any were given."""
    return _config_as(args, "admin")


def gcs_config_from_args(args) -> SpillConfig | None:
    """The connection as Ray's GCS user, if --gcs-* credentials were given (same server)."""
    return _config_as(args, "gcs")


def _config_as(args, who: str) -> SpillConfig | None:
    """The spill user's config with the --<who>-username/-password-env/-password-file
    credentials instead, or None if none of them was given."""
    username, password_env, password_file = (getattr(args, f"{who}_{field}") for field in
                                             ("username", "password_env", "password_file"))
    if not (username or password_env or password_file):
        return None
    other = argparse.Namespace(**vars(args))
    other.username, other.password_env, other.password_file = username, password_env, password_file
    return _config(other)


def _config(args) -> SpillConfig:
    return config_from_args(args, chunk_size_bytes=args.chunk_size_bytes)


def main(argv: list[str] | None = None) -> int:
    """Run the doctor and print its report; ``EXIT_FINDINGS`` if any check is an ERROR,
    ``EXIT_USAGE`` for a bad argument."""
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
        if args.pings < 1:
            raise RayValkeySpillError("--pings must be at least 1")
        checks = Doctor(config, pings=args.pings, admin=admin_config_from_args(args),
                        check_users=tuple(args.check_user), gcs=gcs_config_from_args(args)).run()
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
