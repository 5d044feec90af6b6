"""The files every Redis pod runs: redis.conf, the users' ACL file, auth.conf, the peers
list and the scripts.

Plain functions with no Pulumi in them, so the Kubernetes component (ConfigMap, Secrets,
StatefulSet) and the local sandbox (`sandbox.local_nodes`) render exactly the same files.
Only the paths differ: a pod reads /conf, /etc/redis-secret, /etc/redis-tls and /data; a
sandbox node reads directories of its own, and the scripts learn them from
`script_environment(paths)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from cluster_logic.credentials import (
    ADMIN_USER,
    MONITORING_USER,
    REPLICATION_RULES,
    Credential,
    UserAccess,
    render_acl_file,
    render_masterauth,
    wanted_credentials,
)
from components import metrics_exporter as exporter
from components.engines import Engine
from components.memory_budget import (
    MAXMEMORY_PERCENT_OF_LIMIT,
    REPLICA_BUFFER_HARD_PERCENT_OF_LIMIT,
    REPLICA_BUFFER_SOFT_PERCENT_OF_LIMIT,
    maxmemory_bytes,
    whole_mib,
)
from components.stack_settings import StackSettings

SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"


@dataclass(frozen=True)
class NodePaths:
    """Where a pod (or a sandbox node) finds things."""

    conf_dir: str = "/conf"  # ConfigMap mount: redis.conf, the scripts, `peers`
    secret_dir: str = "/etc/redis-secret"  # Secret mount: `password`, `users.acl`, `auth.conf`
    data_dir: str = "/data"  # PVC: nodes.conf, AOF
    tls_dir: str = "/etc/redis-tls"  # TLS Secret mount: tls.crt, tls.key, ca.crt


POD_PATHS = NodePaths()

REDIS_PORT = 6379
# Redis derives the cluster bus port as port + 10000 when `cluster-port` is unset.
BUS_PORT = REDIS_PORT + 10000

REDIS_CONF_FILE = "redis.conf"
PEERS_FILE = "peers"
PASSWORD_FILE = "password"
ACL_FILE = "users.acl"
AUTH_CONF_FILE = "auth.conf"
# The layout of a kubernetes.io/tls Secret with its CA, as cert-manager writes it too.
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"
TLS_CA_FILE = "ca.crt"
NODES_CONF_FILE = "nodes.conf"

SCRIPT_NAMES: tuple[str, ...] = (
    "entrypoint.sh",
    "lost-identity.sh",
    "peer-recovery.sh",
    "probe-liveness.sh",
    "probe-readiness.sh",
    "pre-stop.sh",
)

# How old a replica's data (the time its link to its master had been down) may be for it to
# fail over on its own: node timeout x cluster-replica-validity-factor + the replica ping
# period (10 s, repl-ping-replica-period), which is 60 s at the engines' factor (10) and a
# 5000 ms node timeout.
REPLICA_MAX_DATA_AGE_SECONDS = 60
REPLICA_PING_PERIOD_SECONDS = 10
ENGINE_VALIDITY_FACTOR = 10
# durability = bounded: how old (in whole seconds, as the engines count it) the last
# acknowledgement of a replica may be before its master refuses writes.
MIN_REPLICAS_MAX_LAG_SECONDS = 1
# A manual failover is a handful of round trips once the replica has caught up; the bound
# only matters when the election cannot complete (no majority of masters reachable), and
# then the pod should go on terminating rather than hang. pre-stop.sh has the same default.
PRESTOP_TIMEOUT_SECONDS = 60
# The kubelet's timeout for each probe run, and the budget a multi-call probe script keeps
# below it, so that the script, not the kubelet, ends a slow probe and says why.
PROBE_TIMEOUT_SECONDS = 5
PROBE_BUDGET_SECONDS = PROBE_TIMEOUT_SECONDS - 1
# peer-recovery.sh covers the wait for the AOF to load as well, which can take minutes on a
# large data set; past this bound an operator has to look anyway.
PEER_RECOVERY_TIMEOUT_SECONDS = 1800
PEER_RECOVERY_INTERVAL_SECONDS = 3


def render_redis_conf(settings: StackSettings, paths: NodePaths = POD_PATHS, bind_address: Optional[str] = None) -> str:
    """redis.conf for one node. No password in it: the users come from the ACL file, the
    replicas' login from the included auth.conf, both in the Secret."""
    limit = settings.memory_limit_bytes
    replica_hard = whole_mib(limit * REPLICA_BUFFER_HARD_PERCENT_OF_LIMIT // 100)
    replica_soft = whole_mib(limit * REPLICA_BUFFER_SOFT_PERCENT_OF_LIMIT // 100)
    lines: list[str] = [
        "# Rendered by components/redis_node_files.py; edit that, not this file.",
        "# Redis rejects comments after a value, so every comment sits on a line of its own.",
    ]
    if settings.tls:
        lines += _tls_lines(paths)
    else:
        lines.append(f"port {REDIS_PORT}")
    if bind_address is not None:
        lines += [
            "# Sandbox only: each node owns one loopback address, and its cluster-bus connections",
            "# leave from it so that peers see the node's own address.",
            f"bind {bind_address}",
            f"bind-source-addr {bind_address}",
        ]
    lines += [
        "# With passwords set, protected mode never refuses a client; it stays on as a backstop.",
        "protected-mode yes",
        "daemonize no",
        "# Logs go to stdout: the container runtime collects them.",
        'logfile ""',
        "loglevel notice",
        "tcp-keepalive 60",
        "",
        "cluster-enabled yes",
        f"cluster-config-file {paths.data_dir}/{NODES_CONF_FILE}",
        f"cluster-node-timeout {settings.node_timeout_ms}",
        "# A replica whose link to its master was down longer than node timeout x this factor",
        "# (+ repl-ping-replica-period, 10 s) before the master failed does not fail over on its",
        f"# own. The factor holds that age at {REPLICA_MAX_DATA_AGE_SECONDS} s (the engines' 10 at a 5000 ms node timeout) whatever",
        "# the timeout: a short one detects a failure sooner, and should not also leave a shard",
        "# without failover after a shorter loss of its replica's link.",
        f"cluster-replica-validity-factor {replica_validity_factor(settings.node_timeout_ms)}",
        "# Shards that are up keep serving while another shard has lost its master and replicas.",
        "cluster-require-full-coverage no",
        "# A node of a failed shard refuses reads too, rather than serving data it cannot update.",
        "cluster-allow-reads-when-down no",
        "# A master keeps one replica before a spare one may migrate to an orphaned master.",
        "cluster-migration-barrier 1",
        "",
        *_durability_lines(settings),
        "",
        f"dir {paths.data_dir}",
        "appendonly yes",
        "appendfsync everysec",
        "aof-use-rdb-preamble yes",
        "# The AOF is the durable copy. Periodic RDB snapshots would be a second source of forks",
        "# (and copy-on-write) competing for the memory headroom below.",
        'save ""',
        "",
        f"# maxmemory = {MAXMEMORY_PERCENT_OF_LIMIT}% of the container memory limit ({limit} bytes), leaving",
        "# room for fragmentation, a replica's full-sync output buffer and the AOF-rewrite fork's",
        "# copy-on-write pages, none of which maxmemory counts.",
        f"maxmemory {maxmemory_bytes(limit)}",
        f"maxmemory-policy {settings.maxmemory_policy}",
        "# Memory is freed in a background thread: a DEL (or an expiry, an eviction, a FLUSH, a",
        "# replica's flush before a full sync) of a key with millions of elements would",
        "# otherwise hold the one thread that also answers the cluster bus for a second or more,",
        "# long enough for the peers to suspect a healthy master. Valkey 8+ does this by",
        "# default, Redis 8 does not.",
        "lazyfree-lazy-eviction yes",
        "lazyfree-lazy-expire yes",
        "lazyfree-lazy-server-del yes",
        "lazyfree-lazy-user-del yes",
        "lazyfree-lazy-user-flush yes",
        "replica-lazy-flush yes",
        "# A replica that falls this far behind is resynced instead of growing the master's",
        "# memory beyond the headroom kept for it.",
        f"client-output-buffer-limit replica {replica_hard} {replica_soft} 60",
        "# A full sync starts the moment a replica asks for it, not after the engines' 5 s wait",
        "# for more replicas to share the transfer: every second of it is a second the shard's",
        "# writes have one copy only (after a failover, a pod's restart, a scale-in, a lost volume).",
        "repl-diskless-sync-delay 0",
        "",
        "# The users (the admin `default`, `replication`, the named ones), password hashes",
        "# only; a running node gets changes through ACL SETUSER, never by reloading this file.",
        f"aclfile {paths.secret_dir}/{ACL_FILE}",
        "# masteruser and masterauth: how a replica logs in to its master.",
        f"include {paths.secret_dir}/{AUTH_CONF_FILE}",
    ]
    return "\n".join(lines) + "\n"


def replica_validity_factor(node_timeout_ms: int) -> int:
    """cluster-replica-validity-factor for a node timeout: the engines' 10, or more for a
    shorter timeout, so that a replica stays eligible for REPLICA_MAX_DATA_AGE_SECONDS."""
    window_ms = (REPLICA_MAX_DATA_AGE_SECONDS - REPLICA_PING_PERIOD_SECONDS) * 1000
    return max(ENGINE_VALIDITY_FACTOR, -(-window_ms // node_timeout_ms))


def _durability_lines(settings: StackSettings) -> list[str]:
    """What a master's acknowledgement of a plain write is worth (the `durability` setting;
    docs/operations.md, "What you can lose")."""
    if settings.durability == "bounded":
        return [
            "# durability = bounded: a master refuses writes (NOREPLICAS) while no replica has",
            f"# acknowledged its stream within {MIN_REPLICAS_MAX_LAG_SECONDS} s, so a master cut off from its replicas stops",
            "# acknowledging writes within 3 s of the cut (the engines count the lag in whole",
            "# seconds, 1 the least, and check it once a second), not once the node timeout shows",
            "# it is in a minority.",
            "min-replicas-to-write 1",
            f"min-replicas-max-lag {MIN_REPLICAS_MAX_LAG_SECONDS}",
        ]
    return [
        "# durability = cache: a master acknowledges writes whatever its replicas do; cut off, it",
        "# goes on until the node timeout shows it is in a minority, and a failover drops what",
        "# its replica had not received. Clients that must not lose a write use WAIT.",
        "min-replicas-to-write 0",
    ]


def _tls_lines(paths: NodePaths) -> list[str]:
    return [
        "# TLS only: clients, replication and the cluster bus. A plaintext client is refused.",
        "port 0",
        f"tls-port {REDIS_PORT}",
        f"tls-cert-file {paths.tls_dir}/{TLS_CERT_FILE}",
        f"tls-key-file {paths.tls_dir}/{TLS_KEY_FILE}",
        f"tls-ca-cert-file {paths.tls_dir}/{TLS_CA_FILE}",
        "# Clients prove who they are with a password, not a certificate of their own.",
        "tls-auth-clients no",
        "tls-replication yes",
        "tls-cluster yes",
        "# Redirects (MOVED, ASK) and CLUSTER SHARDS/SLOTS name a node by the stable DNS name",
        "# the entrypoint announces, which its certificate covers; pod IPs change.",
        "cluster-preferred-endpoint-type hostname",
    ]


def replication_rules(settings: StackSettings) -> tuple[str, ...]:
    """What the replication user may run on the engine deployed. Valkey 9's atomic slot
    migration logs in to the target as that user and replays the slots' keys there (SELECT,
    then any write), so on Valkey 9 it needs the rights of the admin; on Redis, and Valkey
    before 9, it may only replicate (docs/known-limits.md)."""
    if settings.engine == "valkey" and settings.engine_version >= (9, 0):
        return ("~*", "&*", "+@all")
    return REPLICATION_RULES


def node_credentials(
    settings: StackSettings,
    admin_password: str,
    users: Sequence[UserAccess] = (),
    user_passwords: Optional[dict[str, str]] = None,
) -> list[Credential]:
    """Every user a node of this stack holds, with the rules of its engine."""
    return wanted_credentials(admin_password, users, user_passwords, replication_rules(settings))


def secret_files(credentials: Sequence[Credential], tls: bool = False) -> dict[str, str]:
    """What the Secret carries: the admin password (for the scripts), the ACL file,
    auth.conf, and the metrics exporter's password file (the monitoring user's, for the
    node's listener: TLS or not). The admin is the first credential, `default`."""
    admin = credentials[0]
    if admin.name != ADMIN_USER:
        raise ValueError(f"the first credential must be the admin ({ADMIN_USER}), not {admin.name}")
    password = admin.passwords[0]
    if not password or any(c.isspace() or c in "\"'#\\" for c in password):
        # The settings validation already limits passwords to [A-Za-z0-9_.~-]; this guards
        # direct callers, since such a character would break a config line silently.
        raise ValueError("the password must be non-empty and free of whitespace, quotes, '#' and '\\'")
    monitoring = next((c for c in credentials if c.name == MONITORING_USER), None)
    return {
        PASSWORD_FILE: password,
        ACL_FILE: render_acl_file(credentials),
        AUTH_CONF_FILE: render_masterauth(password),
        **(
            {exporter.PASSWORD_FILE_KEY: exporter.password_file(monitoring.passwords[0], REDIS_PORT, tls)}
            if monitoring
            else {}
        ),
    }


def render_peers(hosts: Sequence[str]) -> str:
    """The peers file: one host (DNS name or IP) per line."""
    for host in hosts:
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"a peer host must be one word, got {host!r}")
    return "".join(f"{host}\n" for host in hosts)


def pod_dns_names(stateful_set: str, headless_service: str, namespace: str, count: int) -> list[str]:
    """The stable DNS name of every pod of a StatefulSet behind its headless Service."""
    return [f"{stateful_set}-{i}.{headless_service}.{namespace}.svc.cluster.local" for i in range(count)]


def certificate_dns_names(headless_service: str, client_service: str, namespace: str) -> list[str]:
    """What the nodes' one certificate covers: every pod behind the headless Service (a
    wildcard, so a scale-out needs no new certificate), the client Service and localhost
    (the probes and hooks inside the pod)."""
    names = [f"*.{headless_service}.{namespace}.svc.cluster.local", f"*.{headless_service}.{namespace}.svc"]
    for service in (client_service, headless_service):
        names += [f"{service}.{namespace}.svc.cluster.local", f"{service}.{namespace}.svc"]
    return [*dict.fromkeys(names), "localhost"]


def announced_hostname(pod: str, headless_service: str, namespace: str) -> str:
    """The stable DNS name a node announces (`cluster-announce-hostname`): with TLS clients
    are redirected to it; always, it tells the cluster which pod an ID belongs to, so that a
    pod that lost its identity finds its old one (lost-identity.sh)."""
    return f"{pod}.{headless_service}.{namespace}.svc.cluster.local"


def script_files() -> dict[str, str]:
    """Script file name -> content, read from components/scripts/."""
    return {name: (SCRIPTS_DIR / name).read_text() for name in SCRIPT_NAMES}


def config_files(
    settings: StackSettings,
    paths: NodePaths = POD_PATHS,
    bind_address: Optional[str] = None,
    peers: Sequence[str] = (),
) -> dict[str, str]:
    """Everything the ConfigMap carries: redis.conf, the scripts, the exporter's Lua script
    and the peers file."""
    files = {REDIS_CONF_FILE: render_redis_conf(settings, paths, bind_address)}
    files.update(script_files())
    files[exporter.CLUSTER_VIEW_SCRIPT.name] = exporter.CLUSTER_VIEW_SCRIPT.read_text()
    files[PEERS_FILE] = render_peers(peers)
    return files


def script_environment(engine: Engine, paths: NodePaths = POD_PATHS, tls: bool = False) -> dict[str, str]:
    """The environment the scripts read besides POD_IP, pointing at `paths`; ENGINE_CLI is
    the engine's own CLI (redis-cli, valkey-cli), which the scripts call, over TLS
    verified against REDIS_TLS_CA_FILE when that is set."""
    tls_env = {"REDIS_TLS_CA_FILE": f"{paths.tls_dir}/{TLS_CA_FILE}"} if tls else {}
    return {
        **tls_env,
        "ENGINE_CLI": engine.cli,
        "REDIS_PORT": str(REDIS_PORT),
        "REDIS_DATA_DIR": paths.data_dir,
        "REDIS_CONF_DIR": paths.conf_dir,
        "REDIS_PASSWORD_FILE": f"{paths.secret_dir}/{PASSWORD_FILE}",
        "REDIS_PEERS_FILE": f"{paths.conf_dir}/{PEERS_FILE}",
        "REDIS_PRESTOP_TIMEOUT_SECONDS": str(PRESTOP_TIMEOUT_SECONDS),
        "REDIS_PROBE_BUDGET_SECONDS": str(PROBE_BUDGET_SECONDS),
        "REDIS_PEER_RECOVERY_TIMEOUT_SECONDS": str(PEER_RECOVERY_TIMEOUT_SECONDS),
        "REDIS_PEER_RECOVERY_INTERVAL_SECONDS": str(PEER_RECOVERY_INTERVAL_SECONDS),
    }
