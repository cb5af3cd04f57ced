"""Makes ``"type": "valkey"`` known to Ray's ``setup_external_storage``.

Ray 2.60 has no plug-in point for spill backends: ``setup_external_storage`` is a closed
if/elif. The ``ray_valkey_spill_plugin.pth`` file in site-packages calls ``install()`` at every
interpreter start-up (the head's validation and every spill/restore IO worker are ordinary
start-ups). ``install()`` only puts a finder on ``sys.meta_path``: nothing is imported until
Ray itself imports ``ray._private.external_storage``; then the finder wraps
``setup_external_storage`` so that our type builds ``ValkeyStorage`` and other types are
untouched. Set ``RAY_VALKEY_SPILL_DISABLE_PLUGIN=1`` to switch it off.
"""

from __future__ import annotations

import sys

TARGET = "ray._private.external_storage"
TYPE_NAME = "valkey"
DISABLE_ENV = "RAY_VALKEY_SPILL_DISABLE_PLUGIN"
TESTED_RAY = "2.60"
_EXPECTED_PARAMS = ["config", "node_id", "session_name"]


def _disabled() -> bool:
    import os

    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class _PatchingLoader:
    """Delegates to Ray's own loader, then patches the module it executed."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        patch(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _Finder:
    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Install the finder (idempotent); patch at once if Ray's module is already imported."""
    if _disabled():
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    module = sys.modules.get(TARGET)
    if module is not None:
        patch(module)


def _ray_version() -> str:
    ray = sys.modules.get("ray")
    return getattr(ray, "__version__", "unknown")


def _shape_problem(module) -> str | None:
    import inspect

    original = getattr(module, "setup_external_storage", None)
    if not callable(original):
        return "it has no setup_external_storage()"
    if not hasattr(module, "ExternalStorage") or not hasattr(module, "_external_storage"):
        return "it has no ExternalStorage class or _external_storage global"
    try:
        params = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        return "setup_external_storage() has no readable signature"
    if params[:3] != _EXPECTED_PARAMS:
        return f"setup_external_storage{tuple(params)} is not {tuple(_EXPECTED_PARAMS)}"
    return None


def patch(module) -> None:
    """Wrap ``module.setup_external_storage``; safe to call more than once."""
    original = getattr(module, "setup_external_storage", None)
    if original is None or getattr(original, "_ray_valkey_spill", False):
        return
    problem = _shape_problem(module)

    def setup_external_storage(config, *args, **kwargs):
        if isinstance(config, dict) and config.get("type") == TYPE_NAME:
            from .errors import PluginError

            if problem:
                raise PluginError(
                    f"ray-valkey-spill is tested with Ray {TESTED_RAY}.x; the installed Ray "
                    f"{_ray_version()} has a different {TARGET}: {problem}")
            return _setup_valkey(module, config, *args, **kwargs)
        return original(config, *args, **kwargs)

    setup_external_storage._ray_valkey_spill = True
    setup_external_storage.__wrapped__ = original
    setup_external_storage.__doc__ = original.__doc__
    module.setup_external_storage = setup_external_storage


def _called_from(function_name: str, depth: int = 6) -> bool:
    frame = sys._getframe(2)
    for _ in range(depth):
        if frame is None:
            return False
        if frame.f_code.co_name == function_name:
            return True
        frame = frame.f_back
    return False


def _setup_valkey(module, config, node_id, session_name):
    from .config import parse_spilling_config
    from .spill.ray_storage import ValkeyStorage

    parse_spilling_config(config)  # one clear ConfigError for any bad field
    # Only the head's validation (Node.validate_external_storage) checks the server eagerly:
    # IO workers must register within 60 s, and ray.shutdown() must work with the server down.
    validating = _called_from("validate_external_storage")
    storage = ValkeyStorage(node_id, session_name, check_server_now=validating,
                            **config["params"])
    module._external_storage = storage
    return storage
