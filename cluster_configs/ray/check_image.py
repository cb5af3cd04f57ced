"""check_image.py: fail the image build unless Ray's IO workers will find the "valkey" spill type.

Run by the Dockerfile beside it (RUN python /tmp/check_image.py) and by
tests/unit/test_ray_image.py. It checks, in a fresh interpreter as every Ray worker starts:
- ray_valkey_spill_plugin.pth sits in a site-packages directory (.pth files are only read
  there; PYTHONPATH and runtime_env do not reach Ray's spill/restore IO workers);
- ray_valkey_spill itself is installed there, not editable from a source checkout;
- the hook patched Ray's external storage, and Ray is the version the package supports;
- with RVS_EXTRAS naming lmcache: vLLM knows LMCacheConnectorV1, and LMCache's own plug-in
  loader finds the adapter class at the module_path/class_name rayservice.yaml names.
Exit status 0 when all hold, else 1 with one line per problem.
"""

from __future__ import annotations

import os
import site
import sys

SUPPORTED_RAY = "2.60."
PTH = "ray_valkey_spill_plugin.pth"
# What rayservice.yaml's LMCache config names (tests/unit/test_ray_image.py checks they agree).
PLUGIN_MODULE = "ray_valkey_spill.integrations.lmcache"
PLUGIN_CLASS = "SharedValkeyConnectorAdapter"


def problems() -> list[str]:
    """What would stop the "valkey" spill type from working in this interpreter."""
    out = []
    dirs = [os.path.realpath(d) for d in site.getsitepackages() + [site.getusersitepackages()]]
    if not any(os.path.exists(os.path.join(d, PTH)) for d in dirs):
        out.append(f"{PTH} is in no site-packages directory of {sys.executable}")
    import ray
    import ray._private.external_storage as storage

    import ray_valkey_spill

    package_dir = os.path.realpath(os.path.dirname(ray_valkey_spill.__file__))
    if not any(package_dir.startswith(d + os.sep) for d in dirs):
        out.append(f"ray_valkey_spill is imported from {package_dir}, outside site-packages "
                   "(an editable install or PYTHONPATH): install the package itself")
    if not ray.__version__.startswith(SUPPORTED_RAY):
        out.append(f"Ray {ray.__version__} is installed; ray-valkey-spill supports {SUPPORTED_RAY}x")
    if not getattr(storage.setup_external_storage, "_ray_valkey_spill", False):
        out.append("the .pth hook did not patch ray._private.external_storage "
                   "(is RAY_VALKEY_SPILL_DISABLE_PLUGIN set?)")
    if "lmcache" in os.environ.get("RVS_EXTRAS", "").split(","):
        out.extend(llm_problems())
    return out


def llm_problems() -> list[str]:
    """What would stop the llm app's vLLM from offloading its KV cache through the plug-in."""
    out = []
    try:
        from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    except ImportError as e:
        return [f"vLLM is not importable ({e}): build FROM a rayproject/ray-llm image"]
    if "LMCacheConnectorV1" not in KVConnectorFactory._registry:
        out.append("vLLM has no LMCacheConnectorV1 connector")
    import importlib

    try:
        module = importlib.import_module(PLUGIN_MODULE)
        from lmcache.v1.storage_backend.connector import ConnectorAdapter
    except ImportError as e:
        return out + [f"the LMCache plug-in does not import ({e}): install the lmcache extra"]
    adapter = getattr(module, PLUGIN_CLASS, None)
    if not (isinstance(adapter, type) and issubclass(adapter, ConnectorAdapter)):
        out.append(f"{PLUGIN_MODULE}.{PLUGIN_CLASS} is not an LMCache ConnectorAdapter")
    return out


def main() -> int:
    """Print every problem found (or that all is well); exit status 1 on any."""
    found = problems()
    for problem in found:
        print(f"check_image: {problem}", file=sys.stderr)
    if not found:
        print("check_image: ray-valkey-spill is installed for every Ray process")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
