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
# Environment: POD_IP (required), REDIS_DATA_DIR (/data), REDIS_CONF_DIR (/conf),
# REDIS_ANNOUNCE_HOSTNAME (unset: nothing announced but the IP).
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

exec "$@"
