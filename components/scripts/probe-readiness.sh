#!/bin/sh
# Readiness: PING answered with PONG and, once this node is part of a formed cluster (it
# knows more than itself), cluster_state:ok; a replica also needs its link to the master up
# and no sync running. A fresh node is Ready: the bootstrap waits for Ready pods before
# forming the cluster, so requiring a cluster here would deadlock it.
#
# The replica condition paces rolling updates: the StatefulSet moves on to the next pod (it
# may be this replica's master) only once this replica holds a full copy again, so the
# master's preStop finds an in-sync replica to hand over to.
#
# The whole probe, its three calls together, ends within REDIS_PROBE_BUDGET_SECONDS, below
# the probe's timeoutSeconds: the kubelet would otherwise count a probe that is still
# running as failed without its reason, and the next one would start beside it.
#
# Environment: POD_IP and ENGINE_CLI (required), REDIS_PORT (6379),
# REDIS_PASSWORD_FILE (/etc/redis-secret/password), REDIS_PROBE_BUDGET_SECONDS (4).
set -u

: "${POD_IP:?POD_IP must be set}"
budget=${REDIS_PROBE_BUDGET_SECONDS:-4}
if [ -z "${REDIS_PROBE_BOUNDED:-}" ]; then
    REDIS_PROBE_BOUNDED=1 timeout "$budget" sh "$0"
    status=$?
    if [ "$status" -eq 124 ]; then
        echo "readiness: no verdict within ${budget}s" >&2
    fi
    exit "$status"
fi
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_PASSWORD_FILE=${REDIS_PASSWORD_FILE:-/etc/redis-secret/password}

# The engine's own CLI (redis-cli, valkey-cli): the images ship no common name for both.
: "${ENGINE_CLI:?ENGINE_CLI must name the CLI of the engine (redis-cli or valkey-cli)}"
if [ -r "$REDIS_PASSWORD_FILE" ]; then
    # Each CLI reads the password from a variable of its own; it never goes on argv.
    REDISCLI_AUTH=$(cat "$REDIS_PASSWORD_FILE")
    VALKEYCLI_AUTH=$REDISCLI_AUTH
    export REDISCLI_AUTH VALKEYCLI_AUTH
fi

redis() {
    timeout 2 "$ENGINE_CLI" -h "$POD_IP" -p "$REDIS_PORT" "$@" </dev/null 2>&1 | tr -d '\r'
}

reply=$(redis PING)
if [ "$reply" != PONG ]; then
    echo "readiness: PING got: ${reply:-no reply}" >&2
    exit 1
fi

info=$(redis CLUSTER INFO)
known_nodes=$(printf '%s\n' "$info" | sed -n 's/^cluster_known_nodes:\([0-9][0-9]*\)$/\1/p')
if [ -z "$known_nodes" ]; then
    echo "readiness: CLUSTER INFO got: ${info:-no reply}" >&2
    exit 1
fi
if [ "$known_nodes" -le 1 ]; then
    exit 0
fi
case "$info" in
    *cluster_state:ok*) ;;
    *)
        echo "readiness: in a cluster of $known_nodes known nodes whose state is not ok" >&2
        exit 1
        ;;
esac
replication=$(redis INFO replication)
case "$replication" in
    *role:slave*) ;;
    *) exit 0 ;;
esac
case "$replication" in
    *master_link_status:up*) ;;
    *)
        echo "readiness: replica whose link to its master is down" >&2
        exit 1
        ;;
esac
case "$replication" in
    *master_sync_in_progress:0*) exit 0 ;;
esac
echo "readiness: replica still syncing with its master" >&2
exit 1
