"""The package's one error tree.

Every error the package raises on purpose derives from ``RayValkeySpillError`` and is raised
``from`` its cause. Cache callers may treat ``BackendUnavailableError`` and
``CorruptValueError`` as a miss; spill and restore callers must not: a spilled object is the
only copy of the user's data. ``ServerReplyError`` (the server answered, and refused: NOPERM,
WRONGTYPE, ...) and ``ConfigError`` are never misses: they mean a misconfigured deployment.
"""


class RayValkeySpillError(Exception):
    """Base of every error raised by ray_valkey_spill."""


class ConfigError(RayValkeySpillError, ValueError):
    """A configuration field has a bad value; the message names field, value and what is allowed."""

    def __init__(self, field: str, value, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {field}={value!r}: {allowed}")


class PluginError(RayValkeySpillError):
    """The installed Ray does not have the shape the spill plug-in patches."""


class BackendUnavailableError(RayValkeySpillError):
    """The Valkey server could not be reached, refused us, or kept failing after retries."""


class ServerReplyError(RayValkeySpillError):
    """The server answered a command with an error reply (NOPERM, WRONGTYPE, OOM, LOADING...).

    Not a connection problem: a cache caller must not treat it as a miss (a permission or type
    problem would otherwise pass as an empty cache)."""

    @property
    def out_of_memory(self) -> bool:
        """Whether the server refused the write because it is full (an ``OOM`` reply)."""
        return str(self).startswith("OOM")


class UnsafeServerError(RayValkeySpillError):
    """The server is configured so that spilled objects could be lost (e.g. allkeys-* eviction)."""


class SpillError(RayValkeySpillError):
    """Writing a spilled object failed; nothing partial is left behind."""


class ObjectMissingError(RayValkeySpillError):
    """A spilled object (or one of its chunks) is no longer on the server."""


class CorruptObjectError(RayValkeySpillError):
    """Stored data failed its checksum, size or identity check."""


class InvalidSpillURLError(RayValkeySpillError, ValueError):
    """A restore or delete URL is malformed or points outside the configured prefix."""


class CacheValueError(RayValkeySpillError, TypeError):
    """A value cannot be stored in a cache (object/structured dtype, unsupported type, a vector
    that does not fit the cache's declared schema, a value larger than the server accepts).

    ``failed`` maps the index of each refused item of a batch to the reason; a batch with any
    refused item sends nothing, so the caller can fix or drop those items and retry.
    """

    def __init__(self, message: str, failed: dict[int, str] | None = None):
        super().__init__(message)
        self.failed: dict[int, str] = dict(failed or {})


class CorruptValueError(RayValkeySpillError, ValueError):
    """Stored bytes are not a valid encoded array. Cache readers count this as a miss."""
