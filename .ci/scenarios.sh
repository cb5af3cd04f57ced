#!/usr/bin/env bash
# .ci/scenarios.sh: the short cross-node and lost-node scenarios (tests/system/test_scenarios_short.py)
# in their own venv, as .ci/run installs the project (non-editable, so the .pth plug-in must
# land in site-packages). They are also part of the main `pytest` run; this script runs them
# alone and prints how long they took. The full measurements are `ray-valkey-spill scenarios`
# (docs/scenarios.md), never part of CI: they take ~30 minutes and only ratios mean anything.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
venv=.ci/venvs/scenarios
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q '.[test]'
"$venv/bin/pytest" -q -p no:cacheprovider tests/system/test_scenarios_short.py tests/unit/test_layout.py
echo "ci/scenarios: took $(( $(date +%s) - started )) s"
