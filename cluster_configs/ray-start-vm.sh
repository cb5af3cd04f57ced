#!/usr/bin/env bash
# ray-start-vm.sh: start Ray on plain VMs (no Kubernetes) with object spilling to Valkey.
#
# WHAT IT IS
#   `ray start` for a head node and for worker nodes whose object stores spill to Valkey
#   through ray-valkey-spill. The spilling config is generated and validated by the package
#   itself (`ray-valkey-spill config`) and holds no secret: it names the environment variable
#   VALKEY_SPILL_PASSWORD, which must be set in the environment of `ray start` on EVERY node
#   (the raylet's spill/restore IO workers inherit it). Ray prints the spilling config on
#   every IO worker's command line, so a password must never be in it.
#     head:    ray start --head --system-config='{"object_spilling_config": "<json>"}' ...
#     workers: ray start --address=HEAD:6379 ... (they receive the config from the head; the
#              same JSON is also exported as RAY_object_spilling_config so every node agrees)
#
# PREREQUISITES ON EVERY VM
#   pip install "ray-valkey-spill==0.1.0"  (pulls ray 2.60.x) into the SAME Python that runs
#   `ray`: its .pth hook registers the "valkey" spill type in every Ray process, IO workers
#   included. runtime_env pip does NOT reach IO workers. The Valkey server runs
#   maxmemory-policy volatile-lru and has the ACL user (see base/valkey-users.acl, docs/security.md).
#
# HOW TO USE
#   Put the password in the environment without typing it on a command line, e.g. a root-only
#   file loaded by systemd (EnvironmentFile=/etc/ray/valkey.env, mode 0600) or:
#     set -a; . /etc/ray/valkey.env; set +a          # VALKEY_SPILL_PASSWORD=...
#   then
#     ./ray-start-vm.sh head                         # on the head VM
#     ./ray-start-vm.sh worker 10.0.0.10:6379        # on each worker VM
#   DRY_RUN=1 prints the commands instead of running them (used by tests/unit/test_cluster_configs.py).
#   Cleanup: Ray removes spilled keys on ray.shutdown() only, so a crashed or stopped cluster
#   leaves them. Run gc from cron on one host, naming the running cluster so that its session
#   is always kept (this cluster has no driver heartbeat; see README, "ray-valkey-spill gc"):
#     ray-valkey-spill gc --url "$VALKEY_URL" --username rayspill \
#       --password-env VALKEY_SPILL_PASSWORD --ray-address 10.0.0.10:6379 --yes
#
# WHAT TO CHANGE (environment variables, defaults below)
#   VALKEY_URL   valkey://host:6379/0, valkeys://... (TLS), valkey+cluster://host:6379 (cluster).
#                Never with a password in it (the package refuses that).
#   VALKEY_USER  the ACL user (rayspill: keys ray:*, for a Valkey that only this cluster uses).
#                On a shared Valkey (the Kubernetes overlays render rayspill off) each Ray
#                cluster has its own user and prefix (base/valkey-users.acl), e.g.
#                VALKEY_USER=raysp-batch SPILL_OPTIONS="prefix=ray:batch:", and gc --prefix ray:batch:.
#   OBJECT_STORE_BYTES  object store size per node (default 10 GiB).
#   SPILL_OPTIONS  extra name=value spilling options, e.g. "chunk_size_bytes=4194304 connections=4".
#   PYTHON       the Python that has ray and ray-valkey-spill (default python3).
set -euo pipefail

VALKEY_URL=${VALKEY_URL:-valkey://valkey.internal.example.com:6379/0}
VALKEY_USER=${VALKEY_USER:-rayspill}
OBJECT_STORE_BYTES=${OBJECT_STORE_BYTES:-10737418240}
SPILL_OPTIONS=${SPILL_OPTIONS:-}
PYTHON=${PYTHON:-python3}

usage() {
  echo "usage: $0 head | worker HEAD_ADDRESS:PORT" >&2
  exit 2
}

run() {
  if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

role=${1:-}
[[ "$role" == head || "$role" == worker ]] || usage

: "${VALKEY_SPILL_PASSWORD:?set VALKEY_SPILL_PASSWORD (password of ACL user $VALKEY_USER) in the environment first}"

if ! "$PYTHON" -c 'import ray_valkey_spill' 2>/dev/null; then
  echo "ray-valkey-spill is not installed for $PYTHON: pip install ray-valkey-spill" >&2
  exit 1
fi

# Validated by the package: refuses a password in the URL, unknown options, bad values.
# shellcheck disable=SC2086
spill_config=$("$PYTHON" -m ray_valkey_spill.cli config "$VALKEY_URL" \
  "username=$VALKEY_USER" password_env=VALKEY_SPILL_PASSWORD $SPILL_OPTIONS)

case "$role" in
  head)
    system_config=$("$PYTHON" -c \
      'import json, sys; print(json.dumps({"object_spilling_config": sys.argv[1]}))' \
      "$spill_config")
    # The head validates the config by connecting to Valkey once: a wrong password or an
    # allkeys-* eviction policy stops it here, before any object is spilled.
    run env "RAY_object_spilling_config=$spill_config" \
      ray start --head --port=6379 --dashboard-host=0.0.0.0 \
      --object-store-memory="$OBJECT_STORE_BYTES" \
      --system-config="$system_config"
    ;;
  worker)
    address=${2:-}
    [[ -n "$address" ]] || usage
    run env "RAY_object_spilling_config=$spill_config" \
      ray start --address="$address" --object-store-memory="$OBJECT_STORE_BYTES"
    ;;
esac
