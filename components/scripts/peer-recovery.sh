#!/bin/sh
# Re-introduces this node to its peers after a restart in which every pod got a new IP.
#
# nodes.conf then only holds addresses nobody listens on any more: without help the cluster
# stays CLUSTERDOWN forever. While the cluster is not healthy, this resolves every host of
# the peers file and sends CLUSTER MEET to each peer that already knows this node's ID. Once
# a handshake reaches a known node, Redis updates that node's address, and gossip spreads the
# rest. Asking first whether a peer knows us keeps a fresh pod (e.g. one just scaled out,
# already in the peers file) from being pulled in as an empty master.
#
# A fresh node (no nodes.conf, or one that knows only itself) has nothing to recover: the
# bootstrap forms the cluster. Exits once the cluster is healthy or the time is up.
#
# Environment: POD_IP and ENGINE_CLI (required), REDIS_PORT (6379), REDIS_DATA_DIR (/data),
# REDIS_PEERS_FILE (/conf/peers), REDIS_PASSWORD_FILE (/etc/redis-secret/password),
# REDIS_PEER_RECOVERY_TIMEOUT_SECONDS (1800), REDIS_PEER_RECOVERY_INTERVAL_SECONDS (3),
# REDIS_TLS_CA_FILE (set: every call over TLS, the server verified against this CA).
set -u

: "${POD_IP:?POD_IP must be set}"
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_DATA_DIR=${REDIS_DATA_DIR:-/data}
REDIS_PEERS_FILE=${REDIS_PEERS_FILE:-/conf/peers}
REDIS_PASSWORD_FILE=${REDIS_PASSWORD_FILE:-/etc/redis-secret/password}
timeout_seconds=${REDIS_PEER_RECOVERY_TIMEOUT_SECONDS:-1800}
interval_seconds=${REDIS_PEER_RECOVERY_INTERVAL_SECONDS:-3}
nodes_conf="$REDIS_DATA_DIR/nodes.conf"

log() {
    echo "peer-recovery: $*"
}

known_nodes=0
if [ -f "$nodes_conf" ]; then
    known_nodes=$(grep -c '^[0-9a-f]\{40\} ' "$nodes_conf") || known_nodes=0
fi
if [ "$known_nodes" -le 1 ]; then
    exit 0
fi

# The engine's own CLI (redis-cli, valkey-cli): the images ship no common name for both.
: "${ENGINE_CLI:?ENGINE_CLI must name the CLI of the engine (redis-cli or valkey-cli)}"
if [ -r "$REDIS_PASSWORD_FILE" ]; then
    # Each CLI reads the password from a variable of its own; it never goes on argv.
    REDISCLI_AUTH=$(cat "$REDIS_PASSWORD_FILE")
    VALKEYCLI_AUTH=$REDISCLI_AUTH
    export REDISCLI_AUTH VALKEYCLI_AUTH
fi

# The CLI on stdin=/dev/null so it never eats the peers file being read in a loop; a
# `timeout` because a peer address may drop packets rather than refuse. With TLS the chain
# is verified against the cluster CA; the CLI checks no host name (peers are dialled by IP).
redis_at() {
    host=$1
    shift
    if [ -n "${REDIS_TLS_CA_FILE:-}" ]; then
        set -- --tls --cacert "$REDIS_TLS_CA_FILE" "$@"
    fi
    timeout 5 "$ENGINE_CLI" -h "$host" -p "$REDIS_PORT" "$@" </dev/null 2>/dev/null | tr -d '\r'
}

deadline=$(($(date +%s) + timeout_seconds))
time_is_up() {
    [ "$(date +%s)" -ge "$deadline" ]
}

# Healthy: cluster_state:ok, every other master holding slots linked and not failing, and
# no peer without an address. cluster_state alone is not enough: right after a start, before
# node-timeout has passed, a node counts its unreachable peers as up and can report ok.
#
# noaddr is what an IP handed out again leaves behind: dialling a peer's old address reached
# another member, which answered with the wrong ID. Redis then never dials that peer again;
# it only learns the new address when the peer pings it. Two nodes that did this to each
# other (two replicas, say) stay blind to each other for good, so any such entry keeps the
# recovery going: its CLUSTER MEET teaches this node the address again.
cluster_healthy() {
    info=$(redis_at "$POD_IP" CLUSTER INFO)
    case "$info" in
        *cluster_state:ok*) ;;
        *) return 1 ;;
    esac
    nodes=$(redis_at "$POD_IP" CLUSTER NODES)
    [ -n "$nodes" ] || return 1
    # The address field is `<ip>:<port>@<cport>` and, with a hostname announced,
    # `,<hostname>` after it: one word either way, so the fields after it stay in place.
    while read -r _id _addr flags _master _ping _pong _epoch link slots; do
        case "$flags" in
            *myself*) continue ;;
            *noaddr*) return 1 ;;
            *master*) ;;
            *) continue ;;
        esac
        [ -n "$slots" ] || continue
        case "$flags" in
            *fail* | *handshake*) return 1 ;;
        esac
        [ "$link" = connected ] || return 1
    done <<NODES
$nodes
NODES
    return 0
}

# Every address of a host: an IP stays an IP, a DNS name is looked up now (pods move).
resolve() {
    case "$1" in
        *[!0-9.]* | "")
            case "$1" in
                *:*) echo "$1" ;;
                *) getent hosts "$1" | while read -r address _; do echo "$address"; done ;;
            esac
            ;;
        *) echo "$1" ;;
    esac
}

meet_peers() {
    met=""
    [ -r "$REDIS_PEERS_FILE" ] || return 0
    while read -r host _; do
        case "$host" in
            "" | "#"*) continue ;;
        esac
        for address in $(resolve "$host"); do
            [ "$address" = "$POD_IP" ] && continue
            case "$(redis_at "$address" CLUSTER NODES)" in
                *"$my_id"*) ;;
                *) continue ;;
            esac
            if [ "$(redis_at "$POD_IP" CLUSTER MEET "$address" "$REDIS_PORT")" = OK ]; then
                met="$met $address"
            fi
        done
    done <"$REDIS_PEERS_FILE"
    if [ -n "$met" ]; then
        log "cluster not healthy yet; sent CLUSTER MEET to$met"
    fi
}

log "nodes.conf knows $known_nodes nodes; waiting for the local server"
until [ "$(redis_at "$POD_IP" PING)" = PONG ]; do
    if time_is_up; then
        log "the local server did not answer within ${timeout_seconds}s; giving up"
        exit 1
    fi
    sleep 1
done

my_id=$(redis_at "$POD_IP" CLUSTER MYID)
case "$my_id" in
    *[!0-9a-f]* | "")
        log "could not read this node's ID; giving up"
        exit 1
        ;;
esac

while ! cluster_healthy; do
    if time_is_up; then
        log "the cluster is still not healthy after ${timeout_seconds}s; giving up"
        exit 1
    fi
    meet_peers
    sleep "$interval_seconds"
done
log "the cluster is healthy"
exit 0
