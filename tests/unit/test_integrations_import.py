"""Importing the package, its caches or the integrations package pulls in no framework."""

from __future__ import annotations

import subprocess
import sys


def test_integrations_package_and_caches_import_no_framework():
    code = ("import sys, ray_valkey_spill, ray_valkey_spill.caches, ray_valkey_spill.integrations, "
            "ray_valkey_spill.connection; "
            "print(sorted(m for m in ('langchain_core', 'llama_index', 'redisvl', 'ray', "
            "'valkey.asyncio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout.strip()
    assert out == "[]"
