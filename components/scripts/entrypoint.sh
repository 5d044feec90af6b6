#!/bin/sh
# Container entrypoint: entrypoint.sh redis-server /conf/redis.conf (or valkey-server)
#
# A restarted pod usually has a new IP while nodes.conf on its volume still holds the old
# one. The `myself` line gets the new address before Redis reads the file; the peers learn
# it from this node's gossip. When every pod got a new IP nobody can reach anybody through
# nodes.conf, so peer-recovery.sh re-introduces the peers (see that script).
#
# With TLS, clients verify a node's certificate against the address a redirect names, and
# no certificate can cover pod IPs that change: the node announces its stable DNS name
# (REDIS_ANNOUNCE_HOSTNAME, `<pod>.<headless service>.<namespace>.svc.cluster.local`, which
# the certificate's wildcard covers) as `--cluster-announce-hostname`, and redis.conf's
# `cluster-preferred-endpoint-type hostname` puts it in MOVED, ASK and CLUSTER SHARDS/SLOTS.
# nodes.conf then carries it after the bus port (`<ip>:<port>@<cport>,<hostname>`); the
# rewrite below keeps it.
#
# Before the server starts, three things can hold it back; while one does, the entrypoint
# writes why into $TMPDIR/entrypoint-holding, which the liveness probe reads (a container
# held back on purpose is alive: restarting it would only start the wait over).
#
# * The data volume has less than REDIS_MIN_FREE_KIB free. A server that cannot write its
#   AOF refuses writes, and one that cannot write nodes.conf exits ("can't update cluster
#   config file"): it could forget a vote or an epoch it gave. Started on a full volume it
#   would exit again at once. So it waits until the volume has room (it was grown, or files
#   were removed) and says so every minute; its replica takes over its slots meanwhile.
# * nodes.conf is missing, empty, truncated or corrupt beside data files: the node's data is
#   there but not who it is. Started as it is, Redis would come up as a one-node cluster at
#   the old address (with its keys, or refusing to start on a corrupt file). Everything in the
#   data dir is moved aside, never deleted, to lost-identity/<UTC time>/, and the node goes on
#   as an empty one whose identity is lost (next point). The same for a node the cluster has
#   forgotten (a scale-in removed its pod, and a scale-out brings the pod back on its
#   retained volume): its keys are a stale copy, and its old peers would not let it in.
# * The node has no identity (no nodes.conf: a new volume, or the case above) while the
#   cluster still lists this pod's host name under an old ID: lost-identity.sh holds the
#   server back until the peers see that ID failed, so that its replica takes over, and once
#   the server runs joins it as a replica in its place (see that script).
#
# Environment: POD_IP (required), REDIS_DATA_DIR (/data), REDIS_CONF_DIR (/conf),
# REDIS_ANNOUNCE_HOSTNAME (unset: nothing announced but the IP), REDIS_MIN_FREE_KIB (16384),
# TMPDIR (/tmp, the pod's emptyDir), and what lost-identity.sh reads.
set -eu

: "${POD_IP:?POD_IP must be set (the pod IP, from status.podIP)}"
REDIS_DATA_DIR=${REDIS_DATA_DIR:-/data}
REDIS_CONF_DIR=${REDIS_CONF_DIR:-/conf}
nodes_conf="$REDIS_DATA_DIR/nodes.conf"

if [ "$#" -eq 0 ]; then
    echo "entrypoint: usage: entrypoint.sh <redis-server or valkey-server> <redis.conf> [args...]" >&2
    exit 64
fi

# POD_IP goes into a sed expression below: only address characters may pass.
case "$POD_IP" in
    *[!0-9A-Fa-f.:]*)
        echo "entrypoint: POD_IP '$POD_IP' is not an IP address" >&2
        exit 64
        ;;
esac

holding="${TMPDIR:-/tmp}/entrypoint-holding"
min_free_kib=${REDIS_MIN_FREE_KIB:-16384}

hold_because() {
    printf '%s\n' "$*" >"$holding.tmp" && mv -f "$holding.tmp" "$holding"
}

# Free KiB on the data volume (POSIX df: one line per file system, the 4th field).
free_kib() {
    df -Pk "$REDIS_DATA_DIR" | sed -n '2s/^[^ ]*  *[0-9]*  *[0-9]*  *\([0-9]*\).*/\1/p'
}

said=0
while free=$(free_kib) && [ "${free:-0}" -lt "$min_free_kib" ]; do
    hold_because "the data volume has ${free:-?} KiB free, less than the ${min_free_kib} KiB the server needs to start"
    if [ $(($(date +%s) - said)) -ge 60 ]; then
        echo "entrypoint: $REDIS_DATA_DIR has ${free:-?} KiB free, less than ${min_free_kib} KiB: not starting the server until the volume has room (grow it: docs/operations.md, \"The data volume is full\")" >&2
        said=$(date +%s)
    fi
    sleep 5
done

# Why nodes.conf cannot be loaded, or nothing when it can: every line is a node (a 40-hex ID
# and seven more fields) or the `vars` line, exactly one node is `myself`, and the file ends
# with a newline (a file cut inside a line does not). A file cut between lines that still
# holds the myself line keeps the node's identity; gossip brings back the peers it lost.
nodes_conf_damage() {
    if [ ! -e "$nodes_conf" ]; then
        echo "missing"
    elif [ ! -s "$nodes_conf" ]; then
        echo "empty"
    elif [ "$(tail -c 1 "$nodes_conf" | od -An -c | tr -d ' ')" != '\n' ]; then
        echo "truncated"
    elif grep -a -v '^vars ' "$nodes_conf" | grep -a -q -E -v '^[0-9a-f]{40} [^ ]+ [^ ]+ [^ ]+ [0-9]+ [0-9]+ [0-9]+ (connected|disconnected)( |$)'; then
        # -a: a damaged file may hold any bytes, and grep would only say "binary file matches".
        echo "corrupt"
    elif [ "$(grep -a -c -E '^[0-9a-f]{40} [^ ]+ ([^ ]*,)?myself(,[^ ]*)? ' "$nodes_conf")" -ne 1 ]; then
        echo "corrupt (no single myself line)"
    fi
}

# Anything in the data dir but nodes.conf, a file system's lost+found and what was set aside.
data_files() {
    for entry in "$REDIS_DATA_DIR"/* "$REDIS_DATA_DIR"/.[!.]*; do
        [ -e "$entry" ] || continue
        case "${entry##*/}" in
            nodes.conf | lost+found | lost-identity) ;;
            *) echo "$entry" ;;
        esac
    done
}

# Moves everything in the data dir (but lost+found and what was set aside before) to
# lost-identity/<UTC time>/: a rename, never a copy or a delete.
set_aside() {
    aside="$REDIS_DATA_DIR/lost-identity/$(date -u +%Y%m%dT%H%M%SZ)"
    mkdir -p "$aside"
    for entry in $(data_files) "$nodes_conf"; do
        if [ -e "$entry" ]; then
            mv "$entry" "$aside/"
        fi
    done
    echo "entrypoint: $*: moved it all to $aside (kept, never deleted); this node starts empty" >&2
}

old_id=""
damage=$(nodes_conf_damage)
my_id=$(grep -a -o '^[0-9a-f]\{40\} [^ ]* [^ ]*myself' "$nodes_conf" 2>/dev/null | head -n 1 | cut -c1-40)
# A new volume (no nodes.conf, nothing else) has nothing to set aside.
if [ -n "$damage" ] && { [ "$damage" != missing ] || [ -n "$(data_files)" ]; }; then
    old_id=$my_id
    set_aside "nodes.conf is $damage beside the node's data${old_id:+ (it was $old_id)}"
elif [ -z "$damage" ] && [ "$(grep -c '^[0-9a-f]\{40\} ' "$nodes_conf")" -gt 1 ] &&
    why=$(sh "$REDIS_CONF_DIR/lost-identity.sh" forgotten "$my_id"); then
    # A node the cluster removed (a scale-in) back on its retained volume: its keys are a
    # stale copy, and its peers would not let it in.
    set_aside "$why"
fi

if [ ! -e "$nodes_conf" ]; then
    # It writes $holding itself while it holds.
    if ! sh "$REDIS_CONF_DIR/lost-identity.sh" hold "$old_id"; then
        # Not a reason to crash-loop: the node starts as it did before this check existed.
        echo "entrypoint: could not ask the peers about this pod's old identity; starting anyway" >&2
    fi
fi
rm -f "$holding"

if [ -s "$nodes_conf" ]; then
    # A line is `<40 hex id> <ip>:<port>@<cport>[,<hostname>,<aux>...] <flags> ...`.
    # Only the ip of the line whose *flags* say myself changes: the seed's sed replaced the
    # first dotted quad anywhere on any line mentioning "myself", which a hostname or an aux
    # field can contain too. `[^ ]*:` is greedy, so it stops before the last `:<port>@`, which
    # keeps IPv6 addresses whole and also fills in an empty ip (`:6379@16379`).
    if sed -i -e "/^[0-9a-f]\{40\} [^ ]* [^ ]*myself/ s/^\([0-9a-f]\{40\}\) [^ ]*:\([0-9][0-9]*@\)/\1 ${POD_IP}:\2/" "$nodes_conf"; then
        echo "entrypoint: nodes.conf: myself is now at $POD_IP"
    else
        # Redis also learns its own address from its peers; starting beats crash-looping.
        echo "entrypoint: could not rewrite $nodes_conf; starting anyway" >&2
    fi
fi

if [ -n "${REDIS_ANNOUNCE_HOSTNAME:-}" ]; then
    # Arguments after the config file override it; one word, whatever it holds.
    set -- "$@" --cluster-announce-hostname "$REDIS_ANNOUNCE_HOSTNAME"
fi

# In the background, never instead of exec: the server must become PID 1 to get SIGTERM.
sh "$REDIS_CONF_DIR/peer-recovery.sh" </dev/null &
if [ -e "$REDIS_DATA_DIR/lost-identity/rejoining" ]; then
    sh "$REDIS_CONF_DIR/lost-identity.sh" rejoin </dev/null &
fi

exec "$@"
