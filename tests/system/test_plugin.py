"""The .pth plug-in: installed in site-packages, cheap, switchable, and safe on a wrong Ray."""

import os
import subprocess
import sys
import sysconfig

import pytest

from support import fake_external_storage
from ray_valkey_spill import PluginError, __version__, _plugin


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_pth_file_is_in_site_packages():
    purelib = sysconfig.get_paths()["purelib"]
    assert os.path.exists(os.path.join(purelib, "ray_valkey_spill_plugin.pth"))


def test_startup_installs_only_a_finder_and_imports_nothing_heavy():
    out = _run("import sys; print(any(type(f).__name__ == '_Finder' for f in sys.meta_path),"
               " 'ray' in sys.modules, 'valkey' in sys.modules, 'pyarrow' in sys.modules)")
    assert out.stdout.split() == ["True", "False", "False", "False"], out.stderr


def test_importing_the_package_does_not_import_ray():
    out = _run("import sys, ray_valkey_spill as r; r.spilling_config('valkey://h');"
               " r.EmbeddedValkey; r.connect; print('ray' in sys.modules)")
    assert out.stdout.strip() == "False", out.stderr


def test_ray_sees_the_valkey_type_after_import():
    out = _run("from ray._private import external_storage as e;"
               " print(getattr(e.setup_external_storage, '_ray_valkey_spill', False))")
    assert out.stdout.strip() == "True", out.stderr


def test_disable_switch():
    out = _run("import sys; from ray._private import external_storage as e;"
               " print(any(type(f).__name__ == '_Finder' for f in sys.meta_path),"
               " getattr(e.setup_external_storage, '_ray_valkey_spill', False))",
               RAY_VALKEY_SPILL_DISABLE_PLUGIN="1")
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_a_broken_package_never_breaks_interpreter_startup(tmp_path):
    broken = tmp_path / "ray_valkey_spill"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('broken install')\n")
    out = _run("print('alive')", PYTHONPATH=str(tmp_path))
    assert out.returncode == 0 and out.stdout.strip() == "alive"
    assert "spill plug-in not installed" in out.stderr


def test_other_storage_types_are_untouched(tmp_path):
    from ray._private import external_storage as e

    storage = e.setup_external_storage(
        {"type": "filesystem", "params": {"directory_path": str(tmp_path)}}, "ab" * 28, "s")
    assert type(storage).__name__ == "FileSystemStorage"
    e.reset_external_storage()


def test_bad_params_give_a_config_error_through_ray():
    from ray._private import external_storage as e

    from ray_valkey_spill import ConfigError

    with pytest.raises(ConfigError, match="chunk_size_bytes"):
        e.setup_external_storage({"type": "valkey", "params": {"url": "valkey://h",
                                                               "chunk_size_bytes": 1}},
                                 "ab" * 28, "s")


def test_wrong_ray_shape_gives_a_clear_error_naming_the_version():
    module = fake_external_storage(signature_ok=False)
    _plugin.patch(module)
    assert module.setup_external_storage({"type": "filesystem"}, "n") == ("original", "filesystem")
    with pytest.raises(PluginError) as err:
        module.setup_external_storage({"type": "valkey", "params": {}}, "n")
    import ray

    message = str(err.value)
    assert "\n" not in message
    assert f"Ray {ray.__version__}" in message and f"ray-valkey-spill {__version__}" in message
    assert "supports Ray 2.40 to 2.60" in message and "setup_external_storage" in message


def test_patch_is_idempotent():
    module = fake_external_storage()
    _plugin.patch(module)
    patched = module.setup_external_storage
    _plugin.patch(module)
    assert module.setup_external_storage is patched
