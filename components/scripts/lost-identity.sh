#!/bin/sh
# A pod with no cluster identity of its own (a new, empty volume; or data the entrypoint moved
# aside because nodes.conf was gone or damaged) while the cluster still lists its host name
# under an old node ID.
#
#   lost-identity.sh hold [OLD_ID]   before the server starts (the entrypoint): finds the old
#                                    ID (OLD_ID, from a damaged nodes.conf, or the entry that
#                                    carries this pod's host name), records it in
#                                    $REDIS_DATA_DIR/lost-identity/rejoining, and returns once
#                                    every peer that answers sees it failed. Returns at once
#                                    when no peer lists this pod: a new pod, for the bootstrap.
#   lost-identity.sh rejoin          in the background once the server runs: joins it as a
#                                    replica of a master that lacks one and has every node
#                                    forget the old ID, then removes the record.
#   lost-identity.sh forgotten ID    (the entrypoint, for an intact nodes.conf that knows
#                                    peers) whether the cluster has forgotten ID: says why and
#                                    returns 0 if so.
#
# Why hold: a server that answered at the old address under a new ID would have its peers mark
# the old ID `noaddr`, and Redis never fails a node without an address: its shard would never
# fail over (a third of the keyspace unreachable while every node says cluster_state:ok). With
# nothing answering, the peers time the old ID out, and its replica takes over.
#
# Rejoin only under the conditions the bootstrap's lost-identity path holds itself to: the old
# ID is failed or without an address on every peer that answers, it holds no slot, and this
# node holds no key. Otherwise the pod stays out (not Ready, see probe-readiness.sh) and says
# why; an operator decides (docs/operations.md, "A pod lost its volume").
#
# Two pods that lost their identities at once pick masters in the order of their old entries'
# host names, so they do not pick the same one; if they did anyway (they saw the cluster at
# different moments), the replica with the highest ID of a master with too many moves on.
#
# Environment: POD_IP and ENGINE_CLI (required), REDIS_PORT (6379), REDIS_DATA_DIR (/data),
# REDIS_PEERS_FILE (/conf/peers), REDIS_PASSWORD_FILE (/etc/redis-secret/password),
# REDIS_ANNOUNCE_HOSTNAME (this pod's DNS name, which the cluster lists beside its address),
# REDIS_LOST_IDENTITY_INTERVAL_SECONDS (2), REDIS_LOST_IDENTITY_TIMEOUT_SECONDS (1800),
# REDIS_TLS_CA_FILE (set: every call over TLS, the server verified against this CA), TMPDIR
# (/tmp, the pod's emptyDir: entrypoint-holding, which the probes read, while it holds).
set -u

: "${POD_IP:?POD_IP must be set}"
REDIS_PORT=${REDIS_PORT:-6379}
REDIS_DATA_DIR=${REDIS_DATA_DIR:-/data}
REDIS_PEERS_FILE=${REDIS_PEERS_FILE:-/conf/peers}
REDIS_PASSWORD_FILE=${REDIS_PASSWORD_FILE:-/etc/redis-secret/password}
hostname=${REDIS_ANNOUNCE_HOSTNAME:-}
interval=${REDIS_LOST_IDENTITY_INTERVAL_SECONDS:-2}
timeout_seconds=${REDIS_LOST_IDENTITY_TIMEOUT_SECONDS:-1800}
record="$REDIS_DATA_DIR/lost-identity/rejoining"
holding="${TMPDIR:-/tmp}/entrypoint-holding"

log() {
    echo "lost-identity: $*"
}

# The engine's own CLI (redis-cli, valkey-cli): the images ship no common name for both.
: "${ENGINE_CLI:?ENGINE_CLI must name the CLI of the engine (redis-cli or valkey-cli)}"
if [ -r "$REDIS_PASSWORD_FILE" ]; then
    # Each CLI reads the password from a variable of its own; it never goes on argv.
    REDISCLI_AUTH=$(cat "$REDIS_PASSWORD_FILE")
    VALKEYCLI_AUTH=$REDISCLI_AUTH
    export REDISCLI_AUTH VALKEYCLI_AUTH
fi

# stdin=/dev/null so the CLI never eats a file being read in a loop; `timeout` because a peer
# address may drop packets rather than refuse. Peers are dialled by IP: with TLS the chain is
# verified against the cluster CA, no host name.
redis_at() {
    host=$1
    shift
    if [ -n "${REDIS_TLS_CA_FILE:-}" ]; then
        set -- --tls --cacert "$REDIS_TLS_CA_FILE" "$@"
    fi
    timeout 2 "$ENGINE_CLI" -h "$host" -p "$REDIS_PORT" "$@" </dev/null 2>/dev/null | tr -d '\r'
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

# The addresses of every peer of the peers file but this pod.
peer_addresses() {
    [ -r "$REDIS_PEERS_FILE" ] || return 0
    while read -r host _; do
        case "$host" in
            "" | "#"*) continue ;;
        esac
        for address in $(resolve "$host"); do
            [ "$address" = "$POD_IP" ] || echo "$address"
        done
    done <"$REDIS_PEERS_FILE"
}

# CLUSTER NODES of each peer that is a cluster member (knows more than itself), one view after
# another, each view's lines prefixed with the peer's address. With `first`: the first
# member's view only, and none once three peers answered as new nodes (a cluster still to be
# formed: the pods of a new stack ask this at their first start, and need not ask them all).
member_views() {
    fresh=0
    for address in $(peer_addresses); do
        nodes=$(redis_at "$address" CLUSTER NODES)
        [ -n "$nodes" ] || continue
        if [ "$(printf '%s\n' "$nodes" | grep -c '^[0-9a-f]\{40\} ')" -le 1 ]; then
            fresh=$((fresh + 1))
            if [ "${1:-}" = first ] && [ "$fresh" -ge 3 ]; then
                return 0
            fi
            continue
        fi
        printf '%s\n' "$nodes" | sed "s/^/$address /"
        if [ "${1:-}" = first ]; then
            return 0
        fi
    done
}

# The first peer's view alone, without the address prefix.
first_view() {
    first=${1%% *}
    printf '%s\n' "$1" | while read -r peer line; do
        [ "$peer" = "$first" ] && printf '%s\n' "$line"
    done
}

# The old ID in the views: OLD_ID if given, else the entry whose address field carries this
# pod's host name (`<ip>:<port>@<cport>,<hostname>[,...]`), that is not the running node.
old_identity() {
    given=$1
    views=$2
    mine=$3
    if [ -n "$given" ]; then
        printf '%s\n' "$views" | grep -q "^[^ ]* $given " && echo "$given"
        return 0
    fi
    [ -n "$hostname" ] || return 0
    printf '%s\n' "$views" | while read -r _peer id addr _; do
        case "$addr" in
            *",$hostname" | *",$hostname,"*) [ "$id" = "$mine" ] || echo "$id" ;;
        esac
    done | sort -u | head -n 1
}

# Whether every view lists ID failed (`fail`, not `fail?`) or without an address, or not at
# all; and, with `slotless`, holding no slot.
failed_everywhere() {
    id=$1
    slotless=${2:-}
    printf '%s\n' "$3" | while read -r _peer node _addr flags _master _ping _pong _epoch _link slots; do
        [ "$node" = "$id" ] || continue
        case ",$flags," in
            *,fail,* | *,noaddr,*) ;;
            *) echo "$_peer sees it $flags" ;;
        esac
        if [ -n "$slotless" ] && [ -n "$slots" ]; then
            echo "$_peer sees it holding slots $slots"
        fi
    done | head -n 1
}

hold() {
    given=${1:-}
    views=$(member_views first)
    if [ -z "$views" ]; then
        # Nobody to ask, or nobody formed yet: a pod of a new cluster, or of one that is all
        # down. The bootstrap judges it (its lost-identity path needs the old ID failed too).
        return 0
    fi
    old=$(old_identity "$given" "$views" "")
    [ -n "$old" ] || return 0
    mkdir -p "${record%/*}"
    echo "$old" >"$record.tmp" && mv -f "$record.tmp" "$record"
    # What the probes report while the server is held back (the entrypoint removes it).
    echo "this pod's old identity $old is not failed on every peer yet" >"$holding"
    log "the cluster lists this pod as $old, an identity this node no longer has; holding the server back until every peer sees $old failed"
    said=""
    while :; do
        views=$(member_views)
        why=$(failed_everywhere "$old" "" "$views")
        if [ -n "$views" ] && [ -z "$why" ]; then
            break
        fi
        why=${why:-no peer answers}
        if [ "$why" != "$said" ]; then
            log "waiting: $why"
            said=$why
        fi
        sleep "$interval"
    done
    log "every peer sees $old failed; starting empty, to rejoin as a replica"
}

# A master to follow: among the masters holding slots that are not failing, those with the
# fewest replicas; the old ID's own master when it was a replica of one of them; else the
# one at this old entry's rank among every failed, slotless entry (ordered by host name), so
# that two pods rejoining at once spread.
choose_master() {
    old=$1
    view=$2
    counts=$(printf '%s\n' "$view" | while read -r id _addr flags master _rest; do
        case ",$flags," in *,fail,* | *,fail?,* | *,noaddr,*) continue ;; esac
        case ",$flags," in *,slave,*) echo "$master" ;; esac
    done)
    candidates=$(printf '%s\n' "$view" | while read -r id _addr flags _master _ping _pong _epoch _link slots; do
        case ",$flags," in *,fail,* | *,fail?,* | *,noaddr,* | *,handshake,*) continue ;; esac
        case ",$flags," in *,master,*) ;; *) continue ;; esac
        [ -n "$slots" ] || continue
        echo "$(printf '%s\n' "$counts" | grep -c "^$id\$") $id"
    done | sort -n)
    fewest=$(printf '%s\n' "$candidates" | head -n 1 | cut -d' ' -f1)
    needy=$(printf '%s\n' "$candidates" | sed -n "s/^$fewest //p" | sort)
    [ -n "$needy" ] || return 0
    own_master=$(printf '%s\n' "$view" | sed -n "s/^$old [^ ]* [^ ]*slave[^ ]* \([0-9a-f]\{40\}\) .*/\1/p")
    if [ -n "$own_master" ] && printf '%s\n' "$needy" | grep -q "^$own_master\$"; then
        echo "$own_master"
        return 0
    fi
    rank=$(printf '%s\n' "$view" | while read -r id addr flags _master _ping _pong _epoch _link slots; do
        case ",$flags," in *,fail,* | *,noaddr,*) ;; *) continue ;; esac
        [ -z "$slots" ] && echo "${addr#*,} $id"
    done | sort | grep -n " $old\$" | cut -d: -f1)
    count=$(printf '%s\n' "$needy" | grep -c .)
    index=$((((${rank:-1} - 1) % count) + 1))
    printf '%s\n' "$needy" | sed -n "${index}p"
}

# Every node the local server knows forgets ID: FORGET must reach them all within a minute,
# or gossip brings the ID back.
forget_everywhere() {
    id=$1
    redis_at "$POD_IP" CLUSTER NODES | while read -r node addr _; do
        [ "$node" = "$id" ] && continue
        address=${addr%%:*}
        [ -n "$address" ] && redis_at "$address" CLUSTER FORGET "$id" >/dev/null
    done
    redis_at "$POD_IP" CLUSTER FORGET "$id" >/dev/null
}

# Two rejoining pods that picked the same master: the one with the highest ID moves on to a
# master with fewer replicas (an empty replica moves at no cost).
rebalance_once() {
    me=$1
    view=$(redis_at "$POD_IP" CLUSTER NODES)
    master=$(printf '%s\n' "$view" | sed -n 's/^[0-9a-f]\{40\} [^ ]* [^ ]*myself,slave \([0-9a-f]\{40\}\) .*/\1/p')
    [ -n "$master" ] || return 0
    siblings=$(printf '%s\n' "$view" | grep -v 'fail\|noaddr' | sed -n "s/^\([0-9a-f]\{40\}\) [^ ]* [^ ]*slave[^ ]* $master .*/\1/p" | sort)
    [ "$(printf '%s\n' "$siblings" | tail -n 1)" = "$me" ] || return 0
    other=$(choose_master "none" "$view")
    [ -n "$other" ] && [ "$other" != "$master" ] || return 0
    mine=$(printf '%s\n' "$siblings" | grep -c .)
    theirs=$(printf '%s\n' "$view" | grep -v 'fail\|noaddr' | grep -c " slave[^ ]* $other ")
    if [ "$mine" -gt $((theirs + 1)) ]; then
        log "$master has $mine replicas and $other $theirs; moving to $other"
        redis_at "$POD_IP" CLUSTER REPLICATE "$other" >/dev/null
    fi
}

rejoin() {
    [ -r "$record" ] || exit 0
    old=$(cat "$record")
    deadline=$(($(date +%s) + timeout_seconds))
    until [ "$(redis_at "$POD_IP" PING)" = PONG ]; do
        [ "$(date +%s)" -lt "$deadline" ] || exit 1
        sleep 1
    done
    said=""
    while [ "$(date +%s)" -lt "$deadline" ]; do
        me=$(redis_at "$POD_IP" CLUSTER MYID)
        known=$(redis_at "$POD_IP" CLUSTER INFO | sed -n 's/^cluster_known_nodes:\([0-9]*\)$/\1/p')
        keys=$(redis_at "$POD_IP" DBSIZE)
        views=$(member_views)
        view=$(first_view "$views")
        why=""
        if [ "${known:-0}" -gt 1 ]; then
            why="joined"
        elif [ "${keys:-1}" != 0 ]; then
            why="this node holds ${keys:-?} keys; an operator decides"
        elif [ -z "$views" ]; then
            why="no peer answers as a cluster member"
        else
            why=$(failed_everywhere "$old" slotless "$views")
        fi
        if [ "$why" = joined ]; then
            break
        elif [ -z "$why" ]; then
            master=$(choose_master "$old" "$view")
            if [ -z "$master" ]; then
                why="no master holding slots is up"
            else
                address=$(printf '%s\n' "$view" | sed -n "s/^$master \([^:]*\):.*/\1/p")
                log "rejoining as a replica of $master ($address) in place of $old"
                redis_at "$POD_IP" CLUSTER MEET "$address" "$REDIS_PORT" >/dev/null
                met=$(($(date +%s) + 30))
                until redis_at "$POD_IP" CLUSTER NODES | grep -v handshake | grep -q "^$master "; do
                    [ "$(date +%s)" -lt "$met" ] || break
                    sleep 0.2
                done
                if [ "$(redis_at "$POD_IP" CLUSTER REPLICATE "$master")" = OK ]; then
                    break
                fi
                why="CLUSTER REPLICATE $master was refused"
            fi
        fi
        if [ "$why" != "$said" ]; then
            log "not rejoining yet: $why"
            said=$why
        fi
        sleep "$interval"
    done
    [ "$(date +%s)" -lt "$deadline" ] || {
        log "gave up after ${timeout_seconds}s"
        exit 1
    }
    forget_everywhere "$old"
    rm -f "$record"
    log "joined; every node told to forget $old"
    # Settle a race with another rejoining pod, a few rounds apart.
    for _round in 1 2 3; do
        sleep "$interval"
        rebalance_once "$(redis_at "$POD_IP" CLUSTER MYID)"
    done
}

# Whether the cluster has forgotten MY_ID (from an intact nodes.conf that knows peers): the
# first peer that answers as a member knows nodes of this node's nodes.conf, but not this
# one. Says why and returns 0 if so; returns 1 when it cannot tell, or the cluster knows it.
forgotten() {
    mine=$1
    [ -n "$mine" ] || return 1
    view=$(first_view "$(member_views first)")
    [ -n "$view" ] || return 1
    printf '%s\n' "$view" | grep -q "^$mine " && return 1
    known=$(grep -o '^[0-9a-f]\{40\}' "$REDIS_DATA_DIR/nodes.conf" | sort -u)
    shared=$(printf '%s\n' "$view" | cut -c1-40 | sort -u | grep -c -x -F "$known")
    [ "$shared" -gt 0 ] || return 1
    echo "the cluster has forgotten this node ($mine): its pod was removed, and is back on its old volume"
}

case "${1:-}" in
    forgotten)
        forgotten "${2:-}"
        ;;
    hold)
        hold "${2:-}"
        ;;
    rejoin)
        rejoin
        ;;
    *)
        echo "usage: lost-identity.sh hold [OLD_ID] | rejoin | forgotten ID" >&2
        exit 64
        ;;
esac
