"""The typed, validated spill configuration, built from one table of options.

Ray hands the backend ``object_spilling_config = {"type": "valkey", "params": {...}}``. That JSON
is put, base64-encoded, on every IO worker's command line and into the GCS, so it must never
carry a secret: a password comes from an environment variable or a file named here.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError
from .prefixes import SPILL_PREFIX, validate_prefix

MiB = 1024 * 1024
GiB = 1024 * MiB
MIN_CHUNK_SIZE_BYTES = 64 * 1024
# Far below the server's default proto-max-bulk-len (512 MB) and its 1 MB minimum is checked
# against the live server at validation time.
MAX_CHUNK_SIZE_BYTES = 256 * MiB

PLAIN_SCHEMES = ("valkey", "redis")
TLS_SCHEMES = ("valkeys", "rediss")
CLUSTER_SCHEMES = ("valkey+cluster", "valkeys+cluster")
SCHEMES = PLAIN_SCHEMES + TLS_SCHEMES + CLUSTER_SCHEMES + ("unix",)


def _int_in(lo: int, hi: int) -> Callable[[str, Any], int]:
    def check(field: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(field, value, f"an integer from {lo} to {hi}")
        return value

    return check


def _float_in(lo: float, hi: float) -> Callable[[str, Any], float]:
    def check(field: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(field, value, f"a number from {lo} to {hi}")
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ConfigError(field, value, f"a number from {lo} to {hi}")
        return float(value)

    return check


def _one_of(*choices: str) -> Callable[[str, Any], str]:
    def check(field: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(field, value, f"one of {', '.join(repr(c) for c in choices)}")
        return value

    return check


def _bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(field, value, "true or false (a JSON boolean)")
    return value


def _optional_str(field: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(field, value, "a non-empty string, or null")
    return value


_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_LOOKS_LIKE_A_SECRET = re.compile(r"^[0-9A-F]{16,}$")
NOT_SHOWN = "<not shown: it may be a secret>"


def _env_name(field: str, value: Any) -> str | None:
    """The NAME of an environment variable. Anything else is refused without being echoed: a
    password pasted here by mistake would travel on every IO worker's command line."""
    if value is None:
        return None
    if (not isinstance(value, str) or not _ENV_NAME.match(value)
            or _LOOKS_LIKE_A_SECRET.match(value)):
        raise ConfigError(field, NOT_SHOWN, "the NAME of an environment variable: upper-case "
                          "letters, digits and _, not starting with a digit (e.g. "
                          "VALKEY_SPILL_PASSWORD); never the password itself")
    return value


def _prefix(field: str, value: Any) -> str:
    return validate_prefix("ray", value)


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    check: Callable[[str, Any], Any]
    help: str


# The one table of options: README's option table is generated from it (`ray-valkey-spill
# options`; tests/unit/test_readme.py fails when they differ).
OPTIONS: tuple[Option, ...] = (
    Option("url", None, lambda f, v: v, "Server URL: `valkey://`, `valkeys://`, `redis://`, "
           "`rediss://`, `unix://`, `valkey+cluster://`, `valkeys+cluster://`. No password in it."),
    Option("prefix", SPILL_PREFIX, _prefix, "Key prefix of spilled objects; must not overlap "
           "`emb:`, `vllm:kv:`, `session:`."),
    Option("username", None, _optional_str, "ACL user (also allowed in the URL)."),
    Option("password_env", None, _env_name, "Name of the environment variable holding the "
           "password (IO workers inherit the raylet's environment)."),
    Option("password_file", None, _optional_str, "Path of a file holding the password "
           "(e.g. a mounted Kubernetes Secret)."),
    Option("chunk_size_bytes", 4 * MiB, _int_in(MIN_CHUNK_SIZE_BYTES, MAX_CHUNK_SIZE_BYTES),
           "Objects are split into values of at most this many bytes "
           "(64 KiB to 256 MiB, and below the server's `proto-max-bulk-len`)."),
    Option("compression", "auto", _one_of("auto", "zstd", "none"), "`auto`: zstd where a cheap "
           "probe shows the chunk shrinks, raw otherwise; `zstd`: always try; `none`: never."),
    Option("zstd_level", 1, _int_in(-7, 22), "zstd level (1 is fast; negative is faster still)."),
    Option("connections", 4, _int_in(1, 64), "Parallel connections (and I/O threads) per IO "
           "worker (1 to 64)."),
    Option("socket_timeout_s", 30.0, _float_in(0.1, 3600.0), "Timeout of one command, covering "
           "the send of a whole chunk."),
    Option("connect_timeout_s", 5.0, _float_in(0.1, 600.0), "Timeout to connect; also bounds the "
           "head's validation check."),
    Option("retries", 3, _int_in(0, 20), "Retries of a failed command (exponential backoff "
           "with jitter)."),
    Option("ssl_ca_certs", None, _optional_str, "CA bundle for TLS server verification."),
    Option("ssl_certfile", None, _optional_str, "Client certificate for mutual TLS."),
    Option("ssl_keyfile", None, _optional_str, "Client key for mutual TLS."),
    Option("ssl_check_hostname", True, _bool, "Verify the server's hostname against its "
           "certificate."),
    Option("allow_allkeys_eviction", False, _bool, "Accept an `allkeys-*` `maxmemory-policy`, "
           "which can evict spilled objects (data loss). Use `volatile-lru` instead."),
)
_OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}


def option_default(name: str) -> Any:
    """The default of one option (the table above is its only home)."""
    return _OPTIONS_BY_NAME[name].default


@dataclass(frozen=True)
class ServerAddress:
    """Where and how to connect; parsed from the URL, never holding a secret."""

    scheme: str
    host: str | None
    port: int | None
    unix_path: str | None
    db: int
    username: str | None
    tls: bool
    cluster: bool

    def display(self) -> str:
        """The URL without credentials, safe to log."""
        if self.unix_path:
            return f"unix://{self.unix_path}?db={self.db}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/{self.db}"


def redact_url(url: str) -> str:
    """``url`` as safe to show: the userinfo's password and every query value replaced by
    ``***``. Works on malformed URLs too (it never parses them), so any error may quote it."""
    text = url
    head, sep, rest = text.partition("://")
    if sep:
        netloc_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        at = rest.rfind("@", 0, netloc_end) if "@" in rest[:netloc_end] else rest.rfind("@")
        if at >= 0:
            user = rest[:at].split(":", 1)[0]
            rest = f"{user}:***@{rest[at + 1:]}"
        text = head + sep + rest
    return re.sub(r"([?&;][^=&;#]*)=([^&;#]*)", r"\1=***", text)


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _valid_host(host: str) -> bool:
    if ":" in host:  # an IPv6 literal (urlsplit already took the brackets off)
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
            return True
        except ValueError:
            return False
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.match(label) for label in labels)


def parse_url(url: Any) -> ServerAddress:
    """Parse and check a server URL. A password in it is refused: use password_env/_file.

    Errors quote the URL only in its redacted form (``redact_url``)."""
    if not isinstance(url, str) or not url:
        shown = url if not isinstance(url, str) else ""
        raise ConfigError("url", shown, f"a server URL with scheme one of {', '.join(SCHEMES)}")
    shown = redact_url(url)
    if any(c.isspace() for c in url) or not url.isprintable():
        raise ConfigError("url", shown, "a URL without whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        username, password = parts.username, parts.password
    except ValueError:
        raise ConfigError("url", shown, "a well-formed URL (host, and a port from 1 to 65535)") \
            from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError("url", shown, f"scheme one of {', '.join(SCHEMES)}")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    if password is not None or "password" in query:
        raise ConfigError(
            "url", shown, "no password in the URL: Ray shows the spilling config on every "
            "IO worker's command line; put it in an environment variable named by "
            "'password_env' or a file named by 'password_file'")
    unknown = set(query) - {"db"}
    if unknown:
        raise ConfigError("url", shown, "no query arguments other than db=N")
    if parts.fragment:
        raise ConfigError("url", shown, "no #fragment")
    db_text = query.get("db", [None])[-1]
    if scheme == "unix":
        if not parts.path.startswith("/") or parts.netloc:
            raise ConfigError("url", shown, "unix:///absolute/path/to/socket[?db=N]")
        host, unix_path = None, parts.path
    else:
        host, unix_path = parts.hostname, None
        if not host:
            raise ConfigError("url", shown, "a host, as in valkey://host:6379/0")
        if not _valid_host(host):
            raise ConfigError("url", shown, "a host name (letters, digits, '-', dot-separated "
                              "labels) or an IP address")
        if port == 0:
            raise ConfigError("url", shown, "a port from 1 to 65535")
        path = parts.path.strip("/")
        if path:
            db_text = path
        if port is None:
            port = 6379
    if db_text is None:
        db = 0
    elif db_text.isascii() and db_text.isdigit() and int(db_text) < 2**31:
        db = int(db_text)
    else:
        raise ConfigError("url", shown, "a database number such as /0")
    cluster = scheme in CLUSTER_SCHEMES
    if cluster and db != 0:
        raise ConfigError("url", shown, "database 0: Valkey Cluster has only one database")
    return ServerAddress(
        scheme=scheme, host=host, port=port, unix_path=unix_path, db=db,
        username=urllib.parse.unquote(username) if username else None,
        tls=scheme in TLS_SCHEMES or scheme == "valkeys+cluster", cluster=cluster,
    )


@dataclass(frozen=True)
class SpillConfig:
    """The validated ``params`` of ``{"type": "valkey", "params": {...}}``."""

    url: str
    address: ServerAddress
    # One field per option in OPTIONS (same name); the defaults live there only.
    prefix: str
    username: str | None
    password_env: str | None
    password_file: str | None
    chunk_size_bytes: int
    compression: str
    zstd_level: int
    connections: int
    socket_timeout_s: float
    connect_timeout_s: float
    retries: int
    ssl_ca_certs: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None
    ssl_check_hostname: bool
    allow_allkeys_eviction: bool

    @classmethod
    def from_params(cls, params: Any) -> "SpillConfig":
        """Build a config from the spilling ``params`` (a dict of options, ``url`` required),
        checking every option; raises ``ConfigError`` naming the first bad one."""
        if not isinstance(params, dict):
            raise ConfigError("params", params, "a JSON object of options, e.g. {\"url\": ...}")
        unknown = sorted(set(params) - set(_OPTIONS_BY_NAME), key=str)
        if unknown:
            raise ConfigError(
                "params", unknown[0], f"a known option: {', '.join(sorted(_OPTIONS_BY_NAME))}")
        if "url" not in params:
            raise ConfigError("url", None, "required: the server URL, e.g. valkey://host:6379/0")
        values = {}
        for option in OPTIONS:
            if option.name == "url":
                continue
            raw = params.get(option.name, option.default)
            values[option.name] = option.check(option.name, raw) if raw is not None else None
            if values[option.name] is None and option.default is not None:
                raise ConfigError(option.name, raw, "a value (null is not allowed here)")
        address = parse_url(params["url"])
        if values["username"] and address.username and values["username"] != address.username:
            raise ConfigError("username", values["username"],
                              f"the same user as the URL's ({address.username!r}), or omitted")
        if values["password_env"] and values["password_file"]:
            raise ConfigError("password_file", values["password_file"],
                              "unset when password_env is set (choose one source)")
        if address.unix_path and any(values[k] for k in ("ssl_ca_certs", "ssl_certfile",
                                                         "ssl_keyfile")):
            raise ConfigError("url", params["url"], "a TCP URL (valkeys://) when TLS files are set")
        if bool(values["ssl_certfile"]) != bool(values["ssl_keyfile"]):
            raise ConfigError("ssl_keyfile", values["ssl_keyfile"],
                              "set together with ssl_certfile (both or neither)")
        return cls(url=params["url"], address=address, **values)

    @property
    def user(self) -> str | None:
        """The ACL user: ``username``, else the URL's user, else None (the default user)."""
        return self.username or self.address.username

    def resolve_password(self) -> str | None:
        """Read the password from its named source, at connect time, in the process that connects."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError("password_env", self.password_env,
                                  "the name of an environment variable that is set on every node")
            return value
        if self.password_file:
            try:
                with open(self.password_file, encoding="utf-8") as f:
                    return f.read().strip("\r\n")
            except OSError as exc:
                raise ConfigError("password_file", self.password_file,
                                  f"a readable file holding the password ({exc.strerror})") from exc
        return None

    def to_params(self) -> dict[str, Any]:
        """The params dict that reproduces this config, with defaults left out."""
        out: dict[str, Any] = {"url": self.url}
        for option in OPTIONS[1:]:
            value = getattr(self, option.name)
            if value != option.default:
                out[option.name] = value
        return out


def spilling_config(url: str, **options: Any) -> str:
    """Build the JSON for Ray's ``object_spilling_config``; validates every option first."""
    config = SpillConfig.from_params({"url": url, **options})
    return json.dumps({"type": "valkey", "params": config.to_params()})


def parse_spilling_config(text_or_dict: Any) -> SpillConfig:
    """Parse a whole ``object_spilling_config`` (JSON text or dict) of type valkey."""
    data = text_or_dict
    if isinstance(text_or_dict, (str, bytes)):
        try:
            data = json.loads(text_or_dict)
        except (ValueError, RecursionError) as exc:
            raise ConfigError("object_spilling_config", text_or_dict, f"valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("type") != "valkey":
        raise ConfigError("object_spilling_config", data,
                          '{"type": "valkey", "params": {"url": ...}}')
    if set(data) - {"type", "params"}:
        raise ConfigError("object_spilling_config", sorted(set(data) - {"type", "params"}),
                          "only the keys 'type' and 'params'")
    return SpillConfig.from_params(data.get("params"))


def option_table_markdown() -> str:
    """The options as a Markdown table (README's table is this text; a unit test compares)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for o in OPTIONS:
        default = "required" if o.name == "url" else f"`{json.dumps(o.default)}`"
        rows.append(f"| `{o.name}` | {default} | {o.help} |")
    return "\n".join(rows)


__all__ = ["SpillConfig", "ServerAddress", "OPTIONS", "option_default", "spilling_config",
           "parse_spilling_config", "parse_url", "option_table_markdown"]
