#!/usr/bin/env bash
# Container entrypoint. `head` and `worker` start a Ray node and block (the container lives as long as the
# node); any other command runs as given, e.g. `aae-pipeline run semisup --address head:6379`.
# `head --dry-run` / `worker --dry-run` print the `ray start` line instead of running it (used by the tests).
#
# Settings, all from the environment (docker-compose.yml passes them through):
#   RAY_AUTH_MODE, RAY_AUTH_TOKEN  every node of one cluster must share the mode and the token
#   RAY_HEAD_ADDRESS               where workers find the head's GCS (default head:6379)
#   RAY_NUM_CPUS, RAY_NUM_GPUS     what this node offers Ray; unset: Ray detects it
#   RAY_OBJECT_STORE_MEMORY        bytes; keep it below the container's shm_size
set -euo pipefail

GCS_PORT=6379
DASHBOARD_PORT=8265
CLIENT_PORT=10001

die() {
    echo "entrypoint: $*" >&2
    exit 2
}

check_auth() {
    # Without a shared token the head would mint its own and no worker could ever join it.
    local mode="${RAY_AUTH_MODE:-token}"
    if [[ "$mode" == "token" && -z "${RAY_AUTH_TOKEN:-}" ]]; then
        die "RAY_AUTH_TOKEN is empty; put RAY_AUTH_TOKEN=<64 hex chars> in .env next to docker-compose.yml" \
            "(python3 -c 'import secrets; print(secrets.token_hex(32))')"
    fi
    if [[ "$mode" != "token" ]]; then
        echo "entrypoint: warning: RAY_AUTH_MODE=$mode: anyone who reaches this cluster's ports can run code" >&2
    fi
}

resource_args() {
    # One flag per line, only for the settings that are present.
    [[ -n "${RAY_NUM_CPUS:-}" ]] && echo "--num-cpus=${RAY_NUM_CPUS}"
    [[ -n "${RAY_NUM_GPUS:-}" ]] && echo "--num-gpus=${RAY_NUM_GPUS}"
    [[ -n "${RAY_OBJECT_STORE_MEMORY:-}" ]] && echo "--object-store-memory=${RAY_OBJECT_STORE_MEMORY}"
    return 0
}

start_node() {
    local role="$1" dry_run="$2"
    local -a cmd
    case "$role" in
        head)
            cmd=(ray start --head "--port=${GCS_PORT}" --dashboard-host=0.0.0.0 "--dashboard-port=${DASHBOARD_PORT}"
                 "--ray-client-server-port=${CLIENT_PORT}")
            ;;
        worker)
            cmd=(ray start "--address=${RAY_HEAD_ADDRESS:-head:${GCS_PORT}}")
            ;;
    esac
    mapfile -t resources < <(resource_args)
    cmd+=("${resources[@]}" --disable-usage-stats --block)
    check_auth
    if [[ "$dry_run" == "--dry-run" ]]; then
        printf '%q ' "${cmd[@]}"
        echo
        return 0
    fi
    exec "${cmd[@]}"
}

case "${1:-head}" in
    head | worker) start_node "${1:-head}" "${2:-}" ;;
    *) exec "$@" ;;
esac
