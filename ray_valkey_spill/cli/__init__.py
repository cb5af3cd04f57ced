"""The ``ray-valkey-spill`` command: one subcommand per tool (operator tools in ``tools/``, lab
tools in ``lab/``), exit codes from ``cli.options``."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError, RayValkeySpillError, ServerReplyError
from .options import EXIT_OK, fail


def _cmd_config(args) -> int:
    import json

    from ..config import spilling_config

    options = {}
    for item in args.option or []:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise ConfigError("option", item.split("=", 1)[0] or item,
                              "name=value, e.g. chunk_size_bytes=4194304")
        if name == "url":
            raise ConfigError("option", "url", "the URL only as the first argument")
        try:
            options[name] = json.loads(value)
        except ValueError:
            options[name] = value
    print(spilling_config(args.url, **options))
    return EXIT_OK


def _cmd_options(args) -> int:
    from ..config import option_table_markdown

    print(option_table_markdown())
    return EXIT_OK


# Subcommands that own their argument parsing: name -> (module under ray_valkey_spill, help).
_DELEGATED = {
    "stress": ("lab.stress", "spill stress test through Ray, optionally beside filesystem spilling"),
    "stress-versions": ("lab.stress_versions", "the stress run through several Ray versions "
                        "(one venv each), one row per version"),
    "bench": ("lab.bench", "backend write/read benchmark against the raw server"),
    "bench-caches": ("lab.bench_caches", "cache benchmark beside RedisVL and a naive JSON cache"),
    "bench-shards": ("lab.bench_shards", "spill throughput on 1 vs N Valkey Cluster shards"),
    "bench-frameworks": ("lab.bench_frameworks", "CacheBackedEmbeddings over this store beside "
                         "LangChain's RedisStore and RedisVL (needs the frameworks extras)"),
    "bench-lmcache": ("lab.bench_lmcache", "the LMCache plug-in beside LMCache's valkey:// and "
                      "redis:// connectors (needs the bench-lmcache extra)"),
    "scenarios": ("lab.scenarios", "cross-node, lost-node, deployed-config, same-node and "
                  "ray-data (Ray Data shuffle, sort, map_batches) runs beside filesystem "
                  "spilling"),
    "gcs-footprint": ("lab.gcs_footprint", "bytes Ray's GCS (fault tolerance) keeps in Valkey "
                      "after jobs, actors and a working_dir"),
    "snapshot-cost": ("lab.snapshot_cost", "what an RDB snapshot of the deployed valkey.conf "
                      "costs (fork, copy-on-write, shutdown save) as the data grows"),
    "stats": ("tools.stats", "keys and bytes per prefix, eviction policy, cache hit rates"),
    "gc": ("tools.gc", "find and remove spilled keys whose Ray session or node is gone"),
    "doctor": ("tools.doctor", "check a server before a cluster relies on it"),
}


def _delegate(module_name: str):
    def run(args) -> int:
        from importlib import import_module

        return import_module(f"ray_valkey_spill.{module_name}").main(args.rest)

    return run


def main(argv: list[str] | None = None) -> int:
    """Run the ``ray-valkey-spill`` subcommand in ``argv``; its exit code (``EXIT_USAGE`` for an
    error of this package)."""
    parser = argparse.ArgumentParser(prog="ray-valkey-spill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="print an object_spilling_config JSON for a URL")
    p.add_argument("url")
    p.add_argument("option", nargs="*", help="name=value (value parsed as JSON if it can be)")
    p.set_defaults(func=_cmd_config)
    p = sub.add_parser("options", help="print the table of spilling options (Markdown)")
    p.set_defaults(func=_cmd_options)
    for name, (module_name, help_text) in _DELEGATED.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(module_name))
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _DELEGATED:  # they parse their own options, including --flags
        args = argparse.Namespace(func=_delegate(_DELEGATED[argv[0]][0]), rest=argv[1:])
    else:
        args = parser.parse_args(argv)
    command = getattr(args, "command", None) or argv[0]
    try:
        return args.func(args)
    except RayValkeySpillError as exc:
        return fail(command, exc)
    except (OSError, ValueError) as exc:  # a safety net: one line, never a traceback
        return fail(command, ServerReplyError(f"{type(exc).__name__}: {exc}"))

