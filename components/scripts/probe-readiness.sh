#!/bin/sh
# Readiness: PING answered with PONG and, once this node is part of a formed cluster (it
# knows more than itself), cluster_state:ok; a replica also needs its link to the master up
# and no sync running. A fresh node is Ready: the bootstrap waits for Ready pods before
# forming the cluster, so requiring a cluster here would deadlock it. A node that lost its
# identity (lost-identity.sh) is not, until it has rejoined.
#
# The replica condition paces rolling updates: the StatefulSet moves on to the next pod (it
# may be this replica's master) only once this replica holds a full copy again, so the
# master's preStop finds an in-sync replica to hand over to.
#
# The whole probe, its three calls together, ends within REDIS_PROBE_BUDGET_SECONDS, below
# the probe's timeoutSeconds: the kubelet would otherwise count a probe that is still
# running as failed without its reason, and the next one would start beside it.
#
# With TLS (REDIS_TLS_CA_FILE set) every call goes over TLS, and the probe also applies a
# renewed certificate: see reload_tls_if_changed below.
#
# Environment: POD_IP and ENGINE_CLI (required), REDIS_PORT (6379), REDIS_DATA_DIR (/data),
# REDIS_PASSWORD_FILE (/etc/redis-secret/password), REDIS_PROBE_BUDGET_SECONDS (4),
# REDIS_TLS_CA_FILE (set: over TLS; tls.crt and tls.key sit beside it, as the TLS Secret
# mounts them), TMPDIR (/tmp, the pod's emptyDir: the record of the loaded TLS files).
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
    if [ -n "${REDIS_TLS_CA_FILE:-}" ]; then
        set -- --tls --cacert "$REDIS_TLS_CA_FILE" "$@"
    fi
    timeout 2 "$ENGINE_CLI" -h "$POD_IP" -p "$REDIS_PORT" "$@" </dev/null 2>&1 | tr -d '\r'
}

# Certificate renewal without a restart. When the TLS Secret changes (cert-manager renews the
# certificate, an operator replaces it), the kubelet swaps the mounted files under the running
# pod, but the server keeps what it loaded at its start until it is told to load them again:
# CONFIG SET of its TLS file settings, to the very same paths, which both engines apply to
# new connections while the established ones (clients, replicas, the cluster bus) carry on.
# (Redis 8.0 has no reload of its own; Valkey's tls-auto-reload-interval is off by default,
# and one mechanism for both engines is one thing to test.)
#
# It lives here, not in a loop the entrypoint would start beside the server: the kubelet runs
# this probe every few seconds for the pod's whole life, each run bounded, whereas a background
# loop that died would never be started again and nobody would notice. A run compares a digest
# of the three files with the one recorded in $TMPDIR at the last load and reloads when they
# differ, which is within one probe period of the kubelet's update. With no record (a new pod:
# the files may have changed since the server read them) it loads once. A load that fails (a
# key that does not match its certificate) is not recorded, so the next run tries again; it
# does not make the pod unready, since the server goes on with the certificate it has.
#
# A new CA cannot replace the old one in a single change: until a node reloads it presents a
# certificate that the new ca.crt does not verify, to this probe and to its peers. Change a
# CA through a bundle: ca.crt with both CAs, then certificates from the new CA, then ca.crt
# with the new CA only, each step on every pod before the next.
reload_tls_if_changed() {
    [ -n "${REDIS_TLS_CA_FILE:-}" ] || return 0
    ca=$REDIS_TLS_CA_FILE
    cert=${ca%/*}/tls.crt
    key=${ca%/*}/tls.key
    record=${TMPDIR:-/tmp}/redis-tls-loaded.sha256
    # The digest, never the files: the key stays where the Secret put it.
    digest=$(sha256sum "$cert" "$key" "$ca" 2>&1) || {
        echo "readiness: cannot read the TLS files: $digest" >&2
        return 0
    }
    [ "$digest" = "$(cat "$record" 2>/dev/null)" ] && return 0
    loaded=$(redis CONFIG SET tls-cert-file "$cert" tls-key-file "$key" tls-ca-cert-file "$ca")
    if [ "$loaded" != OK ]; then
        echo "readiness: reloading the TLS files failed: ${loaded:-no reply}" >&2
        return 0
    fi
    if printf '%s\n' "$digest" >"$record.tmp" && mv -f "$record.tmp" "$record"; then
        echo "readiness: reloaded the TLS files"
    else
        echo "readiness: reloaded the TLS files, but cannot record it in ${TMPDIR:-/tmp}" >&2
    fi
}

reply=$(redis PING)
if [ "$reply" != PONG ]; then
    holding="${TMPDIR:-/tmp}/entrypoint-holding"
    if [ -r "$holding" ]; then
        echo "readiness: the entrypoint holds the server back: $(cat "$holding")" >&2
    else
        # MISCONF among them: a master that cannot write its AOF refuses writes.
        echo "readiness: PING got: ${reply:-no reply}" >&2
    fi
    exit 1
fi
reload_tls_if_changed

info=$(redis CLUSTER INFO)
known_nodes=$(printf '%s\n' "$info" | sed -n 's/^cluster_known_nodes:\([0-9][0-9]*\)$/\1/p')
if [ -z "$known_nodes" ]; then
    echo "readiness: CLUSTER INFO got: ${info:-no reply}" >&2
    exit 1
fi
if [ "$known_nodes" -le 1 ]; then
    # A new node is Ready, for the bootstrap to form or scale out the cluster; a node that
    # lost its identity is not: clients must not meet it until it has rejoined.
    if [ -e "${REDIS_DATA_DIR:-/data}/lost-identity/rejoining" ]; then
        echo "readiness: this node lost its cluster identity and has not rejoined yet ($(cat "${REDIS_DATA_DIR:-/data}/lost-identity/rejoining"))" >&2
        exit 1
    fi
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
