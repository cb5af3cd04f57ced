"""The architecture as rules: the engine has no Ray, no tool imports another tool, operator tools
never depend on lab tooling, the library imports neither, and every connecting subcommand takes
the same connection options."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ray_valkey_spill"
# Modules of tools/ (operator tools) and lab/ (benchmarks, scenarios, stress) that the tools of
# that folder share; every other module there is a tool of its own.
SHARED_MODULES = {
    "tools": {"__init__", "ray_sessions"},
    "lab": {"__init__", "workload", "data", "probes", "environment", "rawclient", "multinode",
            "throttle", "deployed_server", "ray_data_workload"},
}


def _imports(path: Path) -> set[str]:
    """Modules a file imports, relative ones resolved against its package."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def test_the_spill_engine_imports_no_ray():
    for name in ("engine", "transport", "leftovers", "codec", "keys", "heartbeat"):
        imported = _imports(PACKAGE / "spill" / f"{name}.py")
        assert not any(m == "ray" or m.startswith("ray.") for m in imported), (name, imported)
    code = ("import sys; import ray_valkey_spill.spill.engine, ray_valkey_spill.testing.harness;"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("folder", sorted(SHARED_MODULES))
def test_no_tool_imports_another_tool(folder):
    tools = {p.stem for p in (PACKAGE / folder).glob("*.py")} - SHARED_MODULES[folder]
    tools |= {p.name for p in (PACKAGE / folder).iterdir() if (p / "__init__.py").exists()}
    for path in (PACKAGE / folder).rglob("*.py"):
        own = path.relative_to(PACKAGE / folder).parts[0].removesuffix(".py")
        others = {m.split(".")[2] for m in _imports(path)
                  if m.startswith(f"ray_valkey_spill.{folder}.")} & (tools - {own})
        assert not others, f"{folder}/{path.name} imports the tool(s) {sorted(others)}"


def test_operator_tools_never_depend_on_lab_tooling():
    # An operator's image needs tools/ and cli/ only; the lab (benchmarks, scenarios) may use
    # the CLI pieces but nothing in tools/ or cli/ may need it (the dispatcher names lab
    # modules as strings, imported on demand).
    for folder in ("tools", "cli"):
        for path in (PACKAGE / folder).rglob("*.py"):
            bad = {m for m in _imports(path) if m.startswith("ray_valkey_spill.lab")}
            assert not bad, f"{folder}/{path.name} imports {sorted(bad)}"


def test_the_library_never_imports_the_command_or_testing():
    outside = ("ray_valkey_spill.tools", "ray_valkey_spill.lab", "ray_valkey_spill.cli",
               "ray_valkey_spill.testing")
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        if rel[0] in ("tools", "lab", "cli", "testing"):
            continue
        bad = {m for m in _imports(path) if m.startswith(outside)}
        if rel == ("__init__.py",):
            continue  # the lazy public names (EmbeddedValkey) load on first use only
        assert not bad, f"{'/'.join(rel)} imports {sorted(bad)}"


@pytest.mark.parametrize("command", ["gc", "doctor", "stats"])
def test_every_connecting_subcommand_takes_the_same_connection_options(command):
    from importlib import import_module

    parser = import_module(f"ray_valkey_spill.tools.{command}").build_parser()
    args = parser.parse_args([
        "--url", "valkeys://h:6380/0", "--prefix", "ray:x:", "--username", "u",
        "--password-env", "PW", "--ssl-ca-certs", "ca.pem", "--ssl-certfile", "c.pem",
        "--ssl-keyfile", "k.pem", "--no-ssl-check-hostname", "--connect-timeout-s", "2"])
    from ray_valkey_spill.cli.options import config_from_args

    config = config_from_args(args)
    assert (config.user, config.password_env, config.ssl_ca_certs, config.ssl_check_hostname,
            config.prefix, config.connect_timeout_s) == ("u", "PW", "ca.pem", False, "ray:x:", 2.0)
