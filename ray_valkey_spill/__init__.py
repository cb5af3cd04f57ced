"""ray-valkey-spill: Ray object spilling to Valkey, and ML caches that share the same server.

Importing this package is cheap and never imports Ray (a ``.pth`` hook imports it at every
interpreter start-up); the public names below load their modules on first use.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "spilling_config": "config",
    "parse_spilling_config": "config",
    "SpillConfig": "config",
    "connect": "connection",
    "EmbeddedValkey": "testing.embedded",
    "RayValkeySpillError": "errors",
    "ConfigError": "errors",
    "PluginError": "errors",
    "BackendUnavailableError": "errors",
    "UnsafeServerError": "errors",
    "SpillError": "errors",
    "ObjectMissingError": "errors",
    "CorruptObjectError": "errors",
    "InvalidSpillURLError": "errors",
    "CacheValueError": "errors",
    "CorruptValueError": "errors",
    "EmbeddingCache": "caches",
    "KVCache": "caches",
    "SessionStore": "caches",
    "EvictionPolicyWarning": "caches",
    "shed_cache_entries": "shedding",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ray_valkey_spill' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
