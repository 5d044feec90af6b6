#!/bin/sh
# preStop: a master that holds slots hands them to an in-sync replica before it stops, so
# the shard changes master without a node-timeout of unavailability and without losing an
# acknowledged write. CLUSTER FAILOVER (never FORCE or TAKEOVER) makes the master pause its
# clients until the replica has caught up, then the replica wins an election; if anything
# fails, the master simply resumes. Anything else (a replica, a master without slots or
# without a linked replica) exits 0 at once; a replica still writing its AOF waits for that
# first (see below). Bounded by REDIS_PRESTOP_TIMEOUT_SECONDS; the pod's
# terminationGracePeriodSeconds leaves room after it for Redis to shut down.
#
# Environment: POD_IP and ENGINE_CLI (required), REDIS_PORT (6379),
# REDIS_PASSWORD_FILE (/etc/redis-secret/password), REDIS_PRESTOP_TIMEOUT_SECONDS (60),
# REDIS_TLS_CA_FILE (set: every call over TLS, the server verified against this CA).
set -u

: "${POD_IP:?POD_IP must be set}"
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_PASSWORD_FILE=${REDIS_PASSWORD_FILE:-/etc/redis-secret/password}
timeout_seconds=${REDIS_PRESTOP_TIMEOUT_SECONDS:-60}
deadline=$(($(date +%s) + timeout_seconds))

log() {
    echo "pre-stop: $*"
}

# The engine's own CLI (redis-cli, valkey-cli): the images ship no common name for both.
: "${ENGINE_CLI:?ENGINE_CLI must name the CLI of the engine (redis-cli or valkey-cli)}"
if [ -r "$REDIS_PASSWORD_FILE" ]; then
    # Each CLI reads the password from a variable of its own; it never goes on argv.
    REDISCLI_AUTH=$(cat "$REDIS_PASSWORD_FILE")
    VALKEYCLI_AUTH=$REDISCLI_AUTH
    export REDISCLI_AUTH VALKEYCLI_AUTH
fi

# With TLS the chain is verified against the cluster CA; the CLI checks no host name (the
# replica is dialled at the IP its master reports).
redis_at() {
    host=$1
    port=$2
    shift 2
    if [ -n "${REDIS_TLS_CA_FILE:-}" ]; then
        set -- --tls --cacert "$REDIS_TLS_CA_FILE" "$@"
    fi
    timeout 5 "$ENGINE_CLI" -h "$host" -p "$port" "$@" </dev/null 2>/dev/null | tr -d '\r'
}

role_of() {
    redis_at "$1" "$2" ROLE | sed -n 1p
}

# A replica that has just finished a full sync writes its first AOF, and Redis drops a
# SIGTERM that arrives meanwhile ("Writing initial AOF, can't exit"): the pod would only go
# by SIGKILL at the end of its grace period. So a replica stops once no rewrite is running.
if [ "$(role_of "$POD_IP" "$REDIS_PORT")" = slave ]; then
    while [ "$(date +%s)" -lt "$deadline" ]; do
        case "$(redis_at "$POD_IP" "$REDIS_PORT" INFO persistence)" in
            *aof_rewrite_in_progress:1* | *aof_rewrite_scheduled:1*) sleep 0.2 ;;
            *) exit 0 ;;
        esac
    done
    log "the AOF rewrite still runs after ${timeout_seconds}s; stopping anyway"
    exit 0
fi

nodes=$(redis_at "$POD_IP" "$REDIS_PORT" CLUSTER NODES)
my_id=""
my_slots=""
while read -r id _addr flags _master _ping _pong _epoch _link slots; do
    case "$flags" in
        *myself*)
            case "$flags" in
                *master*)
                    my_id=$id
                    my_slots=$slots
                    ;;
            esac
            ;;
    esac
done <<NODES
$nodes
NODES
if [ -z "$my_id" ] || [ -z "$my_slots" ]; then
    exit 0
fi

# A healthy replica of mine according to the cluster: linked, not failing. The address
# field is `<ip>:<port>@<cport>`, with `,<hostname>` after it when one is announced: the
# part before `@` is the ip:port that INFO replication reports.
cluster_says_healthy_replica() {
    while read -r _id addr flags master _ping _pong _epoch link _slots; do
        [ "${addr%%@*}" = "$1:$2" ] || continue
        [ "$master" = "$my_id" ] || continue
        [ "$link" = connected ] || continue
        case "$flags" in
            *fail* | *noaddr* | *handshake*) continue ;;
            *slave*) return 0 ;;
        esac
    done <<NODES
$nodes
NODES
    return 1
}

# INFO replication: slaveN:ip=<ip>,port=<port>,state=online,offset=<n>,lag=<s>. The online
# replica with the highest offset has the least to catch up during the client pause.
target_host=""
target_port=""
best_offset=-1
for line in $(redis_at "$POD_IP" "$REDIS_PORT" INFO replication | sed -n 's/^slave[0-9][0-9]*://p'); do
    host=$(printf '%s\n' "$line" | sed -n 's/.*ip=\([^,]*\).*/\1/p')
    port=$(printf '%s\n' "$line" | sed -n 's/.*port=\([0-9]*\).*/\1/p')
    offset=$(printf '%s\n' "$line" | sed -n 's/.*offset=\([0-9]*\).*/\1/p')
    case "$line" in
        *state=online*) ;;
        *) continue ;;
    esac
    if [ -z "$host" ] || [ -z "$port" ] || [ -z "$offset" ]; then
        continue
    fi
    cluster_says_healthy_replica "$host" "$port" || continue
    if [ "$offset" -gt "$best_offset" ]; then
        target_host=$host
        target_port=$port
        best_offset=$offset
    fi
done
if [ -z "$target_host" ]; then
    log "master without a replica in sync; nothing to hand over"
    exit 0
fi

# A manual failover that cannot finish is abandoned by Redis after a few seconds; then it
# is asked again, until the deadline. A replica that stops answering is stopping as well
# (every pod deleted at once): waiting for it would only hold this pod for the full bound.
while [ "$(date +%s)" -lt "$deadline" ]; do
    reply=$(redis_at "$target_host" "$target_port" CLUSTER FAILOVER)
    log "CLUSTER FAILOVER on replica $target_host:$target_port: ${reply:-no reply}"
    attempt_ends=$(($(date +%s) + 15))
    while [ "$(date +%s)" -lt "$attempt_ends" ] && [ "$(date +%s)" -lt "$deadline" ]; do
        target_role=$(role_of "$target_host" "$target_port")
        if [ -z "$target_role" ]; then
            log "replica $target_host:$target_port stopped answering; stopping as master"
            exit 0
        fi
        if [ "$target_role" = master ] && [ "$(role_of "$POD_IP" "$REDIS_PORT")" = slave ]; then
            log "replica $target_host:$target_port is master now"
            exit 0
        fi
        sleep 0.2
    done
done
log "the replica did not take over within ${timeout_seconds}s; stopping as master"
exit 0
