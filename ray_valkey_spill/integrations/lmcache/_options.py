"""The plug-in's options, read from LMCache's ``extra_config`` and validated (no lmcache import).

Every option lives under ``remote_storage_plugin.<plugin name>.``. ``url`` and ``ttl_seconds``
are required: a shared Valkey evicts only keys with a TTL (``volatile-lru``), so a KV chunk
without one could never be evicted and would crowd out spilled Ray objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ...caches._base import DEFAULT_STATS_FLUSH_SECONDS, check_cache_prefix, check_ttl
from ...config import SpillConfig, parse_url
from ...errors import ConfigError
from ...prefixes import KV_PREFIX

DEFAULT_PREFIX = KV_PREFIX
# Options handed to ``connect(url, ...)``: the same names and checks as the spill backend's.
CONNECTION_OPTIONS = ("username", "password_env", "password_file", "ssl_ca_certs",
                      "ssl_certfile", "ssl_keyfile", "ssl_check_hostname", "connect_timeout_s",
                      "socket_timeout_s", "retries")
# Keys LMCache itself reads under the same namespace.
LMCACHE_KEYS = ("module_path", "class_name")


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ConfigError(name, value, f"a number of seconds from {lo} to {hi}")
    return float(value)


def _integer(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(name, value, f"an integer from {lo} to {hi}")
    return value


@dataclass(frozen=True)
class PluginOptions:
    """Validated options of one plug-in instance."""

    url: str
    ttl_seconds: int
    prefix: str = DEFAULT_PREFIX
    read_timeout_s: float = 1.0
    write_timeout_s: float = 10.0
    io_threads: int = 4
    stats_flush_seconds: float | None = DEFAULT_STATS_FLUSH_SECONDS
    connection: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_extra_config(cls, extra_config: Mapping[str, Any] | None,
                          plugin_name: str) -> "PluginOptions":
        """Read ``remote_storage_plugin.<plugin_name>.*``. Raises ConfigError naming the field."""
        head = f"remote_storage_plugin.{plugin_name}."
        # Names with a dot belong to another instance of the type ("rvs.b.url" is not ours).
        raw = {k[len(head):]: v for k, v in (extra_config or {}).items()
               if isinstance(k, str) and k.startswith(head) and "." not in k[len(head):]}
        for name in LMCACHE_KEYS:
            raw.pop(name, None)
        known = {"url", "ttl_seconds", "prefix", "read_timeout_s", "write_timeout_s",
                 "io_threads", "stats_flush_seconds", *CONNECTION_OPTIONS}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(head + unknown[0], raw[unknown[0]],
                              f"a known option: {', '.join(sorted(known))}")
        return cls.create(**{k: v for k, v in raw.items()})

    @classmethod
    def create(cls, url: Any = None, ttl_seconds: Any = None, prefix: Any = DEFAULT_PREFIX,
               read_timeout_s: Any = 1.0, write_timeout_s: Any = 10.0, io_threads: Any = 4,
               stats_flush_seconds: Any = DEFAULT_STATS_FLUSH_SECONDS,
               **connection: Any) -> "PluginOptions":
        """Validate every option; raises ConfigError naming the first bad one."""
        if url is None:
            raise ConfigError("url", None, "required: the shared Valkey, e.g. "
                              "valkey://valkey.ai-ml.svc.cluster.local:6379/0 (no password in it)")
        parse_url(url)  # a bad URL is a ConfigError naming it (never echoing a password)
        if ttl_seconds is None:
            raise ConfigError("ttl_seconds", None, "required: every KV chunk on the shared Valkey "
                              "must expire (maxmemory-policy volatile-lru evicts only keys with "
                              "a TTL), e.g. 3600")
        ttl = check_ttl("ttl_seconds", _integer("ttl_seconds", ttl_seconds, 1, 2**31))
        unknown = sorted(set(connection) - set(CONNECTION_OPTIONS))
        if unknown:
            raise ConfigError(unknown[0], connection[unknown[0]],
                              f"one of {', '.join(CONNECTION_OPTIONS)}")
        SpillConfig.from_params({"url": url, **connection})  # same checks as the spill backend
        if stats_flush_seconds is not None:
            stats_flush_seconds = _number("stats_flush_seconds", stats_flush_seconds, 0, 86400)
        return cls(url=url, ttl_seconds=ttl, prefix=check_cache_prefix("vllm_kv", prefix),
                   read_timeout_s=_number("read_timeout_s", read_timeout_s, 0.01, 600),
                   write_timeout_s=_number("write_timeout_s", write_timeout_s, 0.01, 3600),
                   io_threads=_integer("io_threads", io_threads, 1, 64),
                   stats_flush_seconds=stats_flush_seconds, connection=dict(connection))
