"""What a doctor check finds: the statuses, one row of the report, the table, and the few
helpers every check uses to describe an error."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ...cli.tables import render_table

OK, WARN, ERROR = "OK", "WARN", "ERROR"
# A fact the operator should know that needs no action (e.g. GCS tables never expire).
INFO = "INFO"


@dataclass
class Check:
    """One row of the report: the check's name, its status, what was found and what to do."""

    check: str
    status: str
    detail: str
    action: str = ""


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is this machine (loopback, or None for a unix socket)."""
    if host is None:
        return True  # unix socket
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def err_text(exc: BaseException) -> str:
    """An exception as one line: its type and message."""
    return f"{type(exc).__name__}: {exc}"


def is_noperm(exc: BaseException) -> bool:
    """Whether the server refused a command for lack of ACL permission."""
    import valkey

    return isinstance(exc, valkey.exceptions.NoPermissionError) or "NOPERM" in str(exc)


def render(checks: list[Check]) -> str:
    """The findings as a text table."""
    return render_table([[c.check, c.status, c.detail, c.action] for c in checks],
                        ["check", "status", "detail", "what to do"])
