#!/usr/bin/env bash
# CI for the LMCache extra, in its own virtual environment so that README's test command and
# its default environment stay light: lmcache pulls torch and CUDA wheels (~3 min, ~6 GB).
# Installs the project NON-editable with [test,lmcache], runs tests/extras/lmcache (and the
# check that importing the plug-in module stays light) and prints how long that took.
# Call it from .ci/run after the main test command:  .ci/lmcache.sh
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.ci/venvs/lmcache
start=$(date +%s)
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q '.[test,lmcache]'
installed=$(date +%s)
# Run from outside the checkout so the tests import the installed package, not ./ray_valkey_spill.
# (The torch-free tests of the same feature, tests/unit and tests/integration, run in .ci/run.)
(cd tests && "../$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir=.. \
    extras/lmcache unit/test_lmcache_format.py)
end=$(date +%s)
echo "ci/lmcache: install $((installed - start)) s, tests $((end - installed)) s, total $((end - start)) s"
