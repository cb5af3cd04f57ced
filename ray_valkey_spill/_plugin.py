"""Makes ``"type": "valkey"`` known to Ray's ``setup_external_storage``.

Ray (2.40 to 2.60) has no plug-in point for spill backends: ``setup_external_storage`` is a
closed if/elif. The ``ray_valkey_spill_plugin.pth`` file in site-packages calls ``install()``
at every interpreter start-up (the head's validation and every spill/restore IO worker are ordinary
start-ups). ``install()`` only puts a finder on ``sys.meta_path``: nothing is imported until
Ray itself imports ``ray._private.external_storage``; then the finder wraps
``setup_external_storage`` so that our type builds ``ValkeyStorage`` and other types are
untouched. What differs between Ray releases, and the check that refuses a Ray of another
shape, live in ``spill/ray_compat.py``. Set ``RAY_VALKEY_SPILL_DISABLE_PLUGIN=1`` to switch it
off.
"""

from __future__ import annotations

import sys

TARGET = "ray._private.external_storage"
TYPE_NAME = "valkey"
DISABLE_ENV = "RAY_VALKEY_SPILL_DISABLE_PLUGIN"


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


def patch(module) -> None:
    """Wrap ``module.setup_external_storage``; safe to call more than once."""
    original = getattr(module, "setup_external_storage", None)
    if original is None or getattr(original, "_ray_valkey_spill", False):
        return

    def setup_external_storage(config, *args, **kwargs):
        from .spill import ray_compat

        if isinstance(config, dict) and config.get("type") == TYPE_NAME:
            problem = ray_compat.shape_problem(module)
            if problem:
                from .errors import PluginError

                raise PluginError(ray_compat.unsupported_ray(problem))
            return _setup_valkey(module, config, *args, **kwargs)
        node = ray_compat.head_validation_node()
        if node is not None:
            ignored = ray_compat.ignored_valkey_config(config, node)
            if ignored:
                from .errors import PluginError

                raise PluginError(ignored)
        return original(config, *args, **kwargs)

    setup_external_storage._ray_valkey_spill = True
    setup_external_storage.__wrapped__ = original
    setup_external_storage.__doc__ = original.__doc__
    module.setup_external_storage = setup_external_storage


def _setup_valkey(module, config, node_id, session_name):
    from .config import parse_spilling_config
    from .spill import ray_compat
    from .spill.ray_storage import ValkeyStorage

    parse_spilling_config(config)  # one clear ConfigError for any bad field
    # Only the head's validation (Node.validate_external_storage) checks the server eagerly:
    # IO workers must register within 60 s, and ray.shutdown() must work with the server down.
    validating = ray_compat.head_validation_node() is not None
    storage = ValkeyStorage(node_id, session_name, check_server_now=validating,
                            **config["params"])
    module._external_storage = storage
    return storage
