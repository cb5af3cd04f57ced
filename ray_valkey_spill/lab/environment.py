"""Versions, machine and commit of a lab run, for its results file."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Any

import numpy as np

def environment(url: str | None) -> dict[str, Any]:
    """Versions, machine and commit, for a results file (the server version when ``url`` is
    given)."""
    import ray

    from .. import __version__

    env: dict[str, Any] = {
        "ray": ray.__version__, "package": __version__, "python": platform.python_version(),
        "numpy": np.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
        "platform": platform.platform(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import valkey

        env["valkey_py"] = valkey.__version__
        if url:
            env["transport"] = "unix" if url.startswith("unix:") else "tcp"
            info = valkey.Valkey.from_url(url).info("server")
            env["valkey_server"] = info.get("valkey_version") or info.get("redis_version")
    except Exception as exc:  # noqa: BLE001
        env["valkey_server"] = f"unknown ({exc})"
    try:
        with open("/proc/meminfo") as f:
            env["mem_total_kib"] = int(f.readline().split()[1])
    except OSError:
        pass
    env["git_commit"] = git_commit()
    return env


def git_commit() -> str | None:
    """The git commit of this checkout, ``-dirty`` if tracked code changed (docs excluded); None
    outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
        # Documentation and result files of earlier runs do not change what is measured.
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no",
                                "--", ":/", ":(exclude,top)docs", ":(exclude,top,glob)**/*.md"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None
