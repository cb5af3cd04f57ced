#!/usr/bin/env bash
# .ci/deploy.sh: system tools the deployment tests use, for the main test run.
#   promtool  tests/unit/test_prometheus_rules.py (Debian/Ubuntu package "prometheus")
#   kubectl   tests/unit/test_kustomize.py, test_sizing.py, test_secret_refs.py (`kubectl kustomize`; not installed
#             here: Debian's kubernetes-client is too old for the kustomizations, so without a
#             kubectl those tests skip with a reason)
# The tests themselves run in the main venv with the rest of the suite (.ci/run calls this
# script before pytest). `.ci/deploy.sh --run-tests PYTHON` also runs just the deployment
# tests with that interpreter and prints how long they took.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
            || echo "ci/deploy: could not install prometheus; the promtool tests will be skipped"
        # The package's service must not keep running on a CI machine.
        if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus 2>/dev/null || true; fi
    else
        echo "ci/deploy: promtool missing and not root; the promtool tests will be skipped"
    fi
fi
for tool in promtool kubectl; do
    if command -v "$tool" >/dev/null 2>&1; then
        echo "ci/deploy: $tool at $(command -v "$tool")"
    else
        echo "ci/deploy: no $tool: its tests will be skipped"
    fi
done

if [ "${1:-}" = "--run-tests" ]; then
    python=${2:?usage: .ci/deploy.sh --run-tests PYTHON}
    "$python" -m pytest -q tests/unit/test_cluster_configs.py tests/unit/test_kustomize.py \
        tests/unit/test_network_policies.py tests/unit/test_prometheus_rules.py \
        tests/unit/test_sizing.py tests/unit/test_secret_refs.py tests/unit/test_ray_image.py \
        tests/unit/test_security_docs.py tests/integration/test_doctor_gcs.py \
        tests/integration/test_acl.py tests/integration/test_acl_shipped.py \
        tests/integration/test_serve_app.py tests/system/test_serve_app_http.py
fi
echo "ci/deploy: done in $(( $(date +%s) - start )) s"
