#!/usr/bin/env bash
# CI for the framework adapters: a fresh venv under .ci/venvs/frameworks, a NON-editable install
# with the langchain and llamaindex extras (plus frameworks-test: LangChain's standard store
# suites and pytest-asyncio), then tests/extras/frameworks. Prints its duration.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

venv=.ci/venvs/frameworks
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q '.[test,langchain,llamaindex,frameworks-test]'
# Run from outside the checkout so the installed package, not the source tree, is imported.
status=0
(cd tests && "../$venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir=.. \
    extras/frameworks) || status=$?

echo "ci frameworks: $(( $(date +%s) - start )) s (exit $status)"
exit $status
