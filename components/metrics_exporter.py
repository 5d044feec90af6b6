"""How the redis_exporter sidecar is started: one definition for the pod and the tests that
run the same exporter against real servers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from cluster_logic.credentials import MONITORING_USER

# The exporter's port in the pod (its upstream default), named `metrics` on the Service.
EXPORTER_PORT = 9121
METRICS_PATH = "/metrics"
# The monitoring user's password reaches the exporter in a file of the Secret (never argv,
# where `ps` and the pod spec would show it, nor an environment variable, fixed at start):
# a rotation changes the mounted file, and the exporter reads it again on `GET /-/reload`,
# which its liveness probe calls.
PASSWORD_FILE_KEY = "exporter-passwords.json"
RELOAD_PATH = "/-/reload"
# What the sidecar asks for and may use: a scrape of one node is a handful of commands,
# little CPU, a small Go heap. The settings add the requests to each pod's when they check
# that the pods fit the nodes.
REQUESTS = {"cpu": "10m", "memory": "32Mi"}
LIMITS = {"cpu": "100m", "memory": "64Mi"}
# The alerting rules, one file for the PrometheusRule and for `promtool test rules`.
ALERT_RULES_FILE = Path(__file__).resolve().parent / "alerts" / "redis-cluster.rules.yaml"


def redis_address(redis_port: int, tls: bool, host: str = "localhost") -> str:
    return f"{'rediss' if tls else 'redis'}://{host}:{redis_port}"


def password_file(password: str, redis_port: int, tls: bool, host: str = "localhost") -> str:
    """The exporter's password file: its address with the user in it -> the password (the
    key the exporter looks the password up by)."""
    scheme, rest = redis_address(redis_port, tls, host).split("://")
    return json.dumps({f"{scheme}://{MONITORING_USER}@{rest}": password})


def exporter_args(
    redis_port: int,
    tls_ca_file: Optional[str],
    password_path: str,
    host: str = "localhost",
    listen_address: str = f":{EXPORTER_PORT}",
) -> list[str]:
    """The exporter's arguments for the node at `host:redis_port`: logged in as the
    monitoring user, over TLS when a CA file is given (verified: the node certificate names
    localhost), without `CONFIG GET` (the monitoring user may not run it; INFO carries
    maxmemory). `password_path` holds `password_file(...)`; `listen_address` is the pod's by
    default; tests give each exporter its own."""
    args = [
        f"--redis.addr={redis_address(redis_port, bool(tls_ca_file), host)}",
        f"--redis.user={MONITORING_USER}",
        f"--redis.password-file={password_path}",
        "--config-command=-",
        # /scrape?target=... would let anyone who reaches the port make the exporter dial
        # any address its network allows, with the monitoring user's password.
        "--disable-scrape-endpoint",
        f"--web.listen-address={listen_address}",
        f"--web.telemetry-path={METRICS_PATH}",
    ]
    if tls_ca_file:
        args.append(f"--tls-ca-cert-file={tls_ca_file}")
    return args
