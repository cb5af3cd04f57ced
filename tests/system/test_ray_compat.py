"""What differs between the supported Ray releases (ray_compat), checked against the installed
Ray: the shape check accepts it and refuses another shape, the fallbacks for what Ray 2.40 lacks
work, and a valkey config that Ray would silently ignore stops the head with one line."""

from __future__ import annotations

import json
import threading
import time
import types

import pytest

from support import fake_external_storage
from ray_valkey_spill import PluginError, __version__, _plugin
from ray_valkey_spill.spill import ray_compat


def _ray():
    import ray

    return ray


def test_the_installed_ray_has_the_supported_shape():
    from ray._private import external_storage, node  # noqa: F401 - node: checked when loaded

    assert ray_compat.shape_problem(external_storage) is None


def test_the_version_range_matches_the_dependency_pin():
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("pyproject.toml is not beside the tests (installed package)")
    low, high = ray_compat.SUPPORTED_RAY
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    next_minor = f"{high.split('.')[0]}.{int(high.split('.')[1]) + 1}"
    assert f"ray>={low},<{next_minor}" in deps


def test_a_changed_plasma_helper_is_refused_with_one_line_naming_both_versions():
    from ray._private.external_storage import ExternalStorage

    class Changed(ExternalStorage):
        def _put_object_to_store(self, metadata, data_size, file_like, object_ref):
            pass

    module = fake_external_storage(Changed)
    problem = ray_compat.shape_problem(module)
    assert problem and "_put_object_to_store" in problem
    _plugin.patch(module)
    assert module.setup_external_storage({"type": "filesystem"}, "n", "s") == \
        ("original", "filesystem")
    with pytest.raises(PluginError) as err:
        module.setup_external_storage({"type": "valkey", "params": {}}, "n", "s")
    message = str(err.value)
    assert "\n" not in message and f"Ray {_ray().__version__}" in message
    assert f"ray-valkey-spill {__version__}" in message and "_put_object_to_store" in message


def test_pairs_and_triples_from_plasma_become_pairs():
    class Store:
        def __init__(self, items):
            self.items = items

        def _get_objects_from_store(self, refs):
            return [self.items[r] for r in refs]

    pairs = Store({"a": (b"buf", b"meta")})  # Ray 2.40
    triples = Store({"a": (b"buf", b"meta", None)})  # Ray 2.50, 2.60
    assert ray_compat.objects_from_store(pairs, ["a"]) == [(b"buf", b"meta")]
    assert ray_compat.objects_from_store(triples, ["a"]) == [(b"buf", b"meta")]


class _CoreWorker:
    def __init__(self):
        self.calls = []

    def get_if_local(self, refs):
        self.calls.append(("get", refs))
        return [(b"buf", b"meta")] * len(refs)

    def put_file_like_object(self, *args):
        self.calls.append(("put", args))


class _Worker:
    """Ray's global worker as an IO worker sees it while connect() is still running."""

    def __init__(self):
        self.connected = False
        self.core_worker = None

    def connect_after(self, delay_s: float, core_worker) -> threading.Thread:
        def connect():
            time.sleep(delay_s)
            self.core_worker = core_worker
            self.connected = True
        thread = threading.Thread(target=connect)
        thread.start()
        return thread


class _Base:
    """A base without ``core_worker``, as Ray 2.40's ExternalStorage."""


def test_the_core_worker_fallback_waits_for_connect(monkeypatch):
    ray = _ray()
    worker, core_worker = _Worker(), _CoreWorker()
    monkeypatch.setattr(ray._private.worker, "global_worker", worker)
    storage = ray_compat.with_core_worker_wait(_Base)()
    thread = worker.connect_after(0.2, core_worker)
    assert ray_compat.objects_from_store(storage, ["r1", "r2"]) == [(b"buf", b"meta")] * 2
    storage._put_object_to_store(b"m", 3, "file", "r1", b"owner")
    thread.join()
    assert core_worker.calls == [("get", ["r1", "r2"]), ("put", (b"m", 3, "file", "r1", b"owner"))]
    assert ray_compat.with_core_worker_wait(_Base) is type(storage)  # built once per base


def test_the_core_worker_fallback_gives_up_after_its_grace(monkeypatch):
    monkeypatch.setattr(_ray()._private.worker, "global_worker", _Worker())

    class Base:
        pass

    storage = ray_compat.with_core_worker_wait(Base, grace_s=0.05)()
    with pytest.raises(RuntimeError, match="did not connect"):
        storage._get_objects_from_store(["r"])


def test_the_fallback_is_used_only_where_ray_lacks_the_property():
    from ray._private.external_storage import ExternalStorage

    base = ray_compat.external_storage_base()
    has_property = isinstance(getattr(ExternalStorage, "core_worker", None), property)
    assert (base is ExternalStorage) == has_property
    assert issubclass(base, ExternalStorage)


class _Head:
    """Named like Ray's Node and its method, so the plug-in sees the head's validation."""

    def __init__(self, system_config=None):
        self._ray_params = types.SimpleNamespace(_system_config=system_config or {})

    def validate_external_storage(self, config):
        from ray._private import external_storage

        return external_storage.setup_external_storage(config, "ab" * 28, "s")


VALKEY = '{"type": "valkey", "params": {"url": "valkey://h"}}'


@pytest.mark.parametrize("surface", ["env", "system-config"])
def test_a_valkey_config_ray_would_ignore_stops_the_head(surface, monkeypatch, tmp_path):
    from ray._private import external_storage

    filesystem = {"type": "filesystem", "params": {"directory_path": str(tmp_path)}}
    head = _Head({"object_spilling_config": VALKEY} if surface == "system-config" else None)
    if surface == "env":
        monkeypatch.setenv("RAY_object_spilling_config", VALKEY)
    with pytest.raises(PluginError) as err:
        head.validate_external_storage(filesystem)
    message = str(err.value)
    assert "\n" not in message and f"Ray {_ray().__version__}" in message
    assert f"ray-valkey-spill {__version__}" in message and "'filesystem'" in message
    assert ("RAY_object_spilling_config" if surface == "env" else "system config") in message
    # Outside the head's validation (IO workers, tests) nothing changes.
    storage = external_storage.setup_external_storage(filesystem, "ab" * 28, "s")
    assert type(storage).__name__ == "FileSystemStorage"
    external_storage.reset_external_storage()


def test_a_head_that_asks_for_no_valkey_validates_as_before(monkeypatch, tmp_path):
    from ray._private import external_storage

    monkeypatch.delenv("RAY_object_spilling_config", raising=False)
    filesystem = {"type": "filesystem", "params": {"directory_path": str(tmp_path)}}
    head = _Head({"object_spilling_config": json.dumps(filesystem)})
    assert type(head.validate_external_storage(filesystem)).__name__ == "FileSystemStorage"
    external_storage.reset_external_storage()


def test_object_spilling_directory_over_a_valkey_env_config_fails_ray_init(tmp_path,
                                                                         monkeypatch):
    """Ray 2.50+ prefers object_spilling_directory over RAY_object_spilling_config, silently."""
    ray = _ray()
    if tuple(int(p) for p in ray.__version__.split(".")[:2]) < (2, 50):
        pytest.skip(f"Ray {ray.__version__} has no object_spilling_directory")
    monkeypatch.setenv("RAY_object_spilling_config",
                       '{"type": "valkey", "params": {"url": "valkey://h"}}')
    with pytest.raises(PluginError, match="object_spilling_directory"):
        ray.init(address="local", num_cpus=1, include_dashboard=False,
                 object_spilling_directory=str(tmp_path))
    assert not ray.is_initialized()


def test_metrics_agent_check_matches_ray():
    missing = ray_compat.metrics_agent_missing()
    try:
        import aiohttp  # noqa: F401 - part of ray[default]
        assert missing is None
    except ImportError:
        assert isinstance(missing, ImportError)
