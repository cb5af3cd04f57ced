"""What every subcommand that connects shares: one set of connection options, and exit codes.

``gc``, ``doctor`` and ``stats`` take the same ``--url/--username/--password-env/
--password-file/--ssl-*`` options and turn them into the same validated ``SpillConfig`` the
backend uses, so a tool connects exactly as the spill backend would.
"""

from __future__ import annotations

import argparse
import sys

from ..config import SpillConfig
from ..errors import RayValkeySpillError
from ..prefixes import SPILL_PREFIX

# Exit codes of every subcommand.
EXIT_OK = 0
EXIT_FINDINGS = 1  # the command ran and found a problem (doctor: an ERROR row)
EXIT_USAGE = 2  # a bad argument, or the server could not be used


def add_connection_options(parser: argparse.ArgumentParser, *, prefix_help: str) -> None:
    """Add the shared connection options (and ``--prefix``) to ``parser``."""
    p = parser.add_argument_group("connection (as the spill backend connects)")
    p.add_argument("--url", required=True,
                   help="server URL, e.g. valkey://host:6379/0 (never a password in it)")
    p.add_argument("--prefix", default=SPILL_PREFIX, help=prefix_help)
    p.add_argument("--username", help="ACL user")
    p.add_argument("--password-env", help="NAME of the environment variable holding the password")
    p.add_argument("--password-file", help="file holding the password")
    p.add_argument("--ssl-ca-certs", help="CA bundle for valkeys:// URLs")
    p.add_argument("--ssl-certfile", help="client certificate (mutual TLS)")
    p.add_argument("--ssl-keyfile", help="client key (mutual TLS)")
    p.add_argument("--no-ssl-check-hostname", action="store_true",
                   help="do not verify the server's hostname (not recommended)")
    p.add_argument("--connect-timeout-s", type=float, default=5.0,
                   help="seconds to wait for a connection (default 5)")


_CONNECTION_FIELDS = ("username", "password_env", "password_file", "ssl_ca_certs",
                      "ssl_certfile", "ssl_keyfile")


def config_from_args(args: argparse.Namespace, **extra) -> SpillConfig:
    """The validated config for the shared options (plus ``extra`` spilling options).
    Raises ConfigError naming the bad option."""
    params = {"url": args.url, "prefix": args.prefix, "connect_timeout_s": args.connect_timeout_s}
    for name in _CONNECTION_FIELDS:
        if getattr(args, name, None):
            params[name] = getattr(args, name)
    if args.no_ssl_check_hostname:
        params["ssl_check_hostname"] = False
    params.update({k: v for k, v in extra.items() if v is not None})
    return SpillConfig.from_params(params)


def report_problems(problems: list) -> int:
    """EXIT_OK, or EXIT_FINDINGS after one line naming how many problems a run found."""
    if not problems:
        return EXIT_OK
    print(f"FAILED: {len(problems)} problem(s), e.g. {problems[0]}", file=sys.stderr)
    return EXIT_FINDINGS


def fail(command: str, exc: RayValkeySpillError) -> int:
    """Print one clear line for an error of the package; return EXIT_USAGE."""
    print(f"ray-valkey-spill {command}: {exc}", file=sys.stderr)
    return EXIT_USAGE
