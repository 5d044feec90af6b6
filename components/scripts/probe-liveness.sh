#!/bin/sh
# Liveness: the server process answers at all. Any Redis reply counts, including
#   LOADING  - replaying a large AOF can take minutes; a kill would only start it over,
#   BUSY     - a long script; killing would lose more than waiting,
#   MISCONF  - a master that cannot write its AOF (a full volume) refuses writes and PING;
#              a restart cannot give it room, and on a full volume would not even start
#              (readiness fails on it instead, and the AOF alert fires),
#   NOAUTH/WRONGPASS - the Secret changed under a running server; a restart would pick the
#              new password up, but liveness restarting every pod at once is worse than a
#              deliberate rollout, so it is only reported.
# No reply at all (refused, reset, timed out) fails, unless the entrypoint holds the server
# back on purpose (a full volume, a lost identity: $TMPDIR/entrypoint-holding says why): a
# restart would only start that wait over.
#
# Over TLS (REDIS_TLS_CA_FILE set), a server whose certificate does not verify against the
# CA gives no reply either.
#
# Environment: POD_IP and ENGINE_CLI (required), REDIS_PORT (6379),
# REDIS_PASSWORD_FILE (/etc/redis-secret/password), REDIS_TLS_CA_FILE (set: over TLS),
# TMPDIR (/tmp, the pod's emptyDir).
set -u

: "${POD_IP:?POD_IP must be set}"
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

if [ -n "${REDIS_TLS_CA_FILE:-}" ]; then
    set -- --tls --cacert "$REDIS_TLS_CA_FILE"
else
    set --
fi
reply=$(timeout 4 "$ENGINE_CLI" -h "$POD_IP" -p "$REDIS_PORT" "$@" PING </dev/null 2>&1)
case "$reply" in
    PONG | LOADING* | BUSY* | MASTERDOWN*)
        exit 0
        ;;
    MISCONF*)
        echo "liveness: the server answers but cannot persist: $reply" >&2
        exit 0
        ;;
    *NOAUTH* | *WRONGPASS*)
        echo "liveness: the server answers but refuses the mounted password; roll the pods to apply a new one" >&2
        exit 0
        ;;
esac
holding="${TMPDIR:-/tmp}/entrypoint-holding"
if [ -r "$holding" ]; then
    echo "liveness: the entrypoint holds the server back: $(cat "$holding")" >&2
    exit 0
fi
echo "liveness: no reply from redis at $POD_IP:$REDIS_PORT: $reply" >&2
exit 1
