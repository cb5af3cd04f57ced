"""Test helpers that every tier and every extra's tests share (importable as ``support``: the
extras have a conftest of their own, so these cannot live in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


# -- the shipped ACL (cluster_configs/base), rendered as the Valkey pods' init containers do ----
REPO = Path(__file__).resolve().parents[1]
SHIPPED_ACL = REPO / "cluster_configs" / "base" / "valkey-users.acl"
RENDER_ACL_SCRIPT = REPO / "cluster_configs" / "base" / "render-acl.sh"


def shipped_acl_users() -> list[str]:
    """The users of the shipped ACL template that log in with a password (all but default)."""
    return [line.split()[1] for line in SHIPPED_ACL.read_text(encoding="utf-8").splitlines()
            if line.startswith("user ") and line.split()[1] != "default"]


def render_acl(output: Path, passwords: dict[str, str], off_users: str | None = None,
               template: Path = SHIPPED_ACL) -> subprocess.CompletedProcess:
    """Run render-acl.sh on ``template`` into ``output`` (passwords as VALKEY_PASSWORD_<USER>)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VALKEY_PASSWORD_") and k != "VALKEY_ACL_OFF_USERS"}
    if off_users is not None:
        env["VALKEY_ACL_OFF_USERS"] = off_users
    env.update({f"VALKEY_PASSWORD_{u.upper().replace('-', '_')}": pw
                for u, pw in passwords.items()})
    return subprocess.run(["sh", str(RENDER_ACL_SCRIPT), str(template), str(output)], env=env,
                          capture_output=True, text=True, timeout=30)


# -- counting the commands a server ran (tests that promise N round trips) -------------------
def commandstats(client) -> dict[str, int]:
    """{command: calls} from INFO commandstats, without INFO itself."""
    stats = {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}
    stats.pop("info", None)
    return stats


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The commands run between two ``commandstats`` readings, with how often."""
    out = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    out.pop("info", None)
    return out
