"""Every difference between the supported Ray releases (2.40 to 2.60), in one place.

Read side by side from the 2.40.0, 2.50.1 and 2.60.0 wheels, what the backend builds on has one
shape in all of them: ``setup_external_storage(config, node_id, session_name)`` (a closed
if/elif the plug-in wraps), the ``_external_storage`` global, the ``ExternalStorage`` base with
``_get_objects_from_store(object_refs)`` and ``_put_object_to_store(metadata, data_size,
file_like, object_ref, owner_address)``, IO workers that build the storage BEFORE they connect,
and the head's ``Node.validate_external_storage()``, which builds one with a random node id and
destroys it at once. What differs, and where it is handled:

==============================  =====================  ======================================
Ray's                           2.40                   2.50, 2.60
==============================  =====================  ======================================
``core_worker.get_if_local``    (buffer, metadata)     (buffer, metadata, <third item>)
                                                       -> :func:`objects_from_store`
``ExternalStorage.__init__``    absent                 sets ``_core_worker`` (call it anyway:
                                                       ``object.__init__`` on 2.40)
``ExternalStorage.core_worker`` absent: the base uses  a property that waits up to 1 s for
                                the worker at once     the IO worker to connect
                                                       -> :func:`external_storage_base`
dashboard dependency check      ``check_dashboard_     ``get_dashboard_dependency_error()``
                                dependencies_...()``   -> :func:`metrics_agent_missing`
``object_spilling_directory``   absent                 ``ray.init``/``ray start``/env; wins
                                                       over ``object_spilling_config``
                                                       -> :func:`ignored_valkey_config`
==============================  =====================  ======================================

Nothing here imports Ray at import time: the plug-in imports this module while Ray is importing
its own ``external_storage``.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time

SUPPORTED_RAY = ("2.40", "2.60")  # oldest and newest minor tested; pyproject's range matches
EXTERNAL_STORAGE_MODULE = "ray._private.external_storage"
SETUP_PARAMS = ("config", "node_id", "session_name")
GET_PARAMS = ("object_refs",)
PUT_PARAMS = ("metadata", "data_size", "file_like", "object_ref", "owner_address")
# The head's validation calls setup_external_storage from this Node method (every version).
VALIDATING_CALLER = "validate_external_storage"
SPILLING_CONFIG_ENV = "RAY_object_spilling_config"
# Ray 2.50+'s ExternalStorage.core_worker waits this long for the IO worker to connect.
CORE_WORKER_GRACE_S = 1.0


def ray_version() -> str:
    """The imported Ray's version, or ``"unknown"`` (never imports Ray)."""
    return getattr(sys.modules.get("ray"), "__version__", "unknown")


def package_version() -> str:
    """This package's version."""
    from .. import __version__

    return __version__


def _params(function, skip_self: bool) -> tuple[str, ...] | None:
    try:
        names = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None
    return tuple(names[1:] if skip_self else names)


def shape_problem(module) -> str | None:
    """What makes ``module`` (Ray's ``external_storage``) unlike every supported Ray, or None.

    Checked: ``setup_external_storage(config, node_id, session_name)``, the
    ``_external_storage`` global, ``ExternalStorage`` with the two plasma helpers the backend
    calls (by name and parameters), and, once Ray's ``node`` module is loaded, the head's
    ``Node.validate_external_storage`` (the plug-in checks the server eagerly only there)."""
    setup = getattr(module, "setup_external_storage", None)
    if not callable(setup):
        return "it has no setup_external_storage()"
    params = _params(inspect.unwrap(setup), skip_self=False)
    if params is None or params[:3] != SETUP_PARAMS:
        return f"setup_external_storage{params} is not setup_external_storage{SETUP_PARAMS}"
    if not hasattr(module, "_external_storage"):
        return "it has no _external_storage global"
    base = getattr(module, "ExternalStorage", None)
    if not isinstance(base, type):
        return "it has no ExternalStorage class"
    for name, expected in (("_get_objects_from_store", GET_PARAMS),
                           ("_put_object_to_store", PUT_PARAMS)):
        method = getattr(base, name, None)
        found = _params(method, skip_self=True) if callable(method) else None
        if found != expected:
            return f"ExternalStorage.{name}{found} is not {name}{expected}"
    node = sys.modules.get("ray._private.node")
    if node is not None and not hasattr(getattr(node, "Node", None), VALIDATING_CALLER):
        return f"ray._private.node.Node has no {VALIDATING_CALLER}()"
    return None


def unsupported_ray(problem: str) -> str:
    """The one-line refusal for a Ray whose external storage has another shape."""
    return (f"ray-valkey-spill {package_version()} supports Ray {SUPPORTED_RAY[0]} to "
            f"{SUPPORTED_RAY[1]}; the installed Ray {ray_version()} has another "
            f"{EXTERNAL_STORAGE_MODULE}: {problem}")


def head_validation_node(depth: int = 8):
    """Ray's ``Node`` when called from its ``validate_external_storage`` (the head, before GCS
    and raylet start: the one call that may check the server eagerly), else None."""
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        if frame.f_code.co_name == VALIDATING_CALLER:
            return frame.f_locals.get("self")
        frame = frame.f_back
    return None


def _asks_for_valkey(raw) -> bool:
    try:
        requested = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except ValueError:
        return False
    return isinstance(requested, dict) and requested.get("type") == "valkey"


def ignored_valkey_config(config, node) -> str | None:
    """The one-line error when the head (``node``) validates a non-valkey ``config`` although
    the user asked for valkey, else None: Ray would silently spill to local disk. Every
    supported Ray writes the config it resolved back into the node's system config before it
    validates, so a valkey config left there, or in ``RAY_object_spilling_config``, was
    ignored: by an ``object_spilling_directory`` (Ray 2.50+ prefers it: ``ray.init``, ``ray
    start --object-spilling-directory``, ``RAY_object_spilling_directory``), or by a Ray that
    no longer reads that surface."""
    if _asks_for_valkey(config):
        return None
    params = getattr(node, "_ray_params", None)
    surfaces = [("the system config's object_spilling_config",
                 (getattr(params, "_system_config", None) or {}).get("object_spilling_config")),
                (SPILLING_CONFIG_ENV, os.environ.get(SPILLING_CONFIG_ENV))]
    asked = [name for name, raw in surfaces if raw and _asks_for_valkey(raw)]
    if not asked:
        return None
    used = config.get("type") if isinstance(config, dict) else config
    return (f"ray-valkey-spill {package_version()}: Ray {ray_version()} is starting with "
            f"{used!r} spilling although {asked[0]} asks for 'valkey' (an "
            f"object_spilling_directory takes precedence from Ray 2.50 on; or this Ray no "
            f"longer reads it); remove one of them")


_waiting_bases: dict[tuple[type, float], type] = {}


def external_storage_base() -> type:
    """Ray's ``ExternalStorage`` to subclass; on a Ray without the ``core_worker`` property
    (2.40) a subclass that adds it, with 2.50's wait for the IO worker to connect: 2.40's base
    reads the worker's core worker at once, which can fail on a request that arrives before
    ``connect()`` has finished (Ray added the wait for that race)."""
    from ray._private.external_storage import ExternalStorage

    if isinstance(inspect.getattr_static(ExternalStorage, "core_worker", None), property):
        return ExternalStorage
    return with_core_worker_wait(ExternalStorage)


def with_core_worker_wait(base: type, grace_s: float = CORE_WORKER_GRACE_S) -> type:
    """``base`` plus a ``core_worker`` property that waits up to ``grace_s`` for the IO worker
    to connect, and the two plasma helpers going through it (as Ray 2.50+ defines them)."""
    if (base, grace_s) in _waiting_bases:
        return _waiting_bases[base, grace_s]

    class WaitingExternalStorage(base):
        @property
        def core_worker(self):
            core_worker = self.__dict__.get("_connected_core_worker")
            if core_worker is None:
                import ray

                worker = ray._private.worker.global_worker
                deadline = time.monotonic() + grace_s
                while not worker.connected:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"Ray's core worker did not connect within {grace_s} s")
                    time.sleep(0.001)
                core_worker = self.__dict__["_connected_core_worker"] = worker.core_worker
            return core_worker

        def _get_objects_from_store(self, object_refs):
            return self.core_worker.get_if_local(object_refs)

        def _put_object_to_store(self, metadata, data_size, file_like, object_ref,
                                 owner_address):
            self.core_worker.put_file_like_object(metadata, data_size, file_like, object_ref,
                                                  owner_address)

    _waiting_bases[base, grace_s] = WaitingExternalStorage
    return WaitingExternalStorage


def objects_from_store(storage, object_refs) -> list[tuple]:
    """``(buffer, metadata)`` per ref, zero-copy views over plasma (``buffer`` may be None).
    Ray 2.40 returns pairs, 2.50+ triples whose third item the backend does not use."""
    return [(item[0], item[1]) for item in storage._get_objects_from_store(object_refs)]


def lost_object_metadata() -> bytes:
    """The plasma metadata that makes ``ray.get`` raise ``ObjectLostError``: an object that
    is metadata only, the decimal ``ErrorType.OBJECT_LOST`` (the way Ray stores its own error
    objects; ``_private/serialization.py`` maps it to the exception in every supported Ray)."""
    from ray.core.generated.common_pb2 import ErrorType

    return str(ErrorType.Value("OBJECT_LOST")).encode("ascii")


def tell_drivers(error_type: str, message: str) -> None:
    """Print ``message`` in every driver's console (Ray's error channel, job id nil), as Ray
    does for its own background errors; best effort, never raises."""
    try:
        import ray

        ray._private.utils.push_error_to_driver(ray._private.worker.global_worker, error_type,
                                                message, job_id=None)
    except Exception:  # noqa: BLE001 - the log line and the metric remain
        pass


def metrics_agent_missing() -> ImportError | None:
    """Why Ray's metrics agent cannot run here (``ray[default]`` missing), or None. The same
    import every supported Ray makes (2.40 hides it in a bool-returning helper)."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError as exc:
        return exc
    return None


__all__ = ["SUPPORTED_RAY", "shape_problem", "unsupported_ray", "head_validation_node",
           "ignored_valkey_config", "external_storage_base", "with_core_worker_wait",
           "objects_from_store", "lost_object_metadata", "tell_drivers", "metrics_agent_missing",
           "ray_version", "package_version"]
