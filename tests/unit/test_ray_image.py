"""The Ray image: its Dockerfile and the build-time check that the .pth hook will load.

check_image.py is what `RUN python /tmp/check_image.py` runs in the image; here it runs in
this interpreter, where it must pass for a regular install and name the problem for an
editable one or a disabled hook.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata

import yaml

from cluster_configs_lib import CONFIGS, DOCKERFILE, RAYSERVICE, load_docs, one

CHECK = CONFIGS / "ray" / "check_image.py"


def run_check(**env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "RAY_VALKEY_SPILL_DISABLE_PLUGIN"}
    full.update(env)
    return subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True,
                          env=full, timeout=120)


def installed_editable() -> bool:
    direct = metadata.distribution("ray-valkey-spill").read_text("direct_url.json")
    return bool(direct and json.loads(direct).get("dir_info", {}).get("editable"))


def test_check_passes_for_a_regular_install_and_names_an_editable_one():
    result = run_check()
    problems = [line for line in result.stderr.splitlines() if line.startswith("check_image:")]
    if installed_editable():
        assert result.returncode == 1
        assert len(problems) == 1 and "outside site-packages" in problems[0], result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert "installed for every Ray process" in result.stdout


def test_llm_check_passes_only_with_vllm_and_the_plugin():
    """With the lmcache extra requested the check also needs vLLM's LMCacheConnectorV1 and the
    plug-in class LMCache loads: here (no vLLM) it names vLLM; in .ci/lmcache.sh's venv (vLLM
    for CPU, lmcache, the package installed non-editable) it passes."""
    import importlib.util

    result = run_check(RVS_EXTRAS="lmcache")
    if importlib.util.find_spec("vllm") is None:
        assert result.returncode == 1 and "vLLM is not importable" in result.stderr
    elif not installed_editable():
        assert result.returncode == 0, result.stderr


def test_check_fails_when_the_hook_does_not_load():
    result = run_check(RAY_VALKEY_SPILL_DISABLE_PLUGIN="1")
    assert result.returncode == 1 and "did not patch" in result.stderr


def test_dockerfile_installs_checks_and_ships_the_app():
    text = DOCKERFILE.read_text(encoding="utf-8")
    steps = [line for line in text.splitlines() if line and not line.startswith("#")]
    ray_version = one(load_docs(RAYSERVICE), "RayService")["spec"]["rayClusterConfig"]["rayVersion"]
    assert steps[0] == f"ARG RAY_IMAGE=rayproject/ray-llm:{ray_version}-py311-cu128"
    assert steps[1] == "FROM ${RAY_IMAGE}"
    assert "ARG RVS_EXTRAS=lmcache" in steps
    install = steps.index('RUN pip install --no-cache-dir "/tmp/rvs[${RVS_EXTRAS}]" && rm -rf /tmp/rvs')
    check = steps.index('RUN RVS_EXTRAS="${RVS_EXTRAS}" python /tmp/check_image.py '
                        '&& rm /tmp/check_image.py')
    assert install < check, "the check must run on the installed package"
    assert "ENV PYTHONPATH=/home/ray/app" in steps
    copied = [line.split()[2:] for line in steps if line.startswith("COPY")]
    sources = {s for c in copied for s in c[:-1]}
    assert {"pyproject.toml", "ray_valkey_spill_plugin.pth", "ray_valkey_spill",
            "cluster_configs/ray/embed_service"} <= sources
    serve = yaml.safe_load(one(load_docs(RAYSERVICE), "RayService")["spec"]["serveConfigV2"])
    for app in serve["applications"]:
        package = app["import_path"].split(".")[0]
        if package == "ray":
            continue  # ray.serve.llm, from the base image
        assert any(c[-1] == f"/home/ray/app/{package}" for c in copied), package
    assert not re.search(r"pip install[^\n]*(-e|--editable)\b", text)
