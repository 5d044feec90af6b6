"""The files a Redis pod runs, as rendered: no server needed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cluster_logic.credentials import (
    MONITORING_USER,
    REPLICATION_USER,
    UserAccess,
    monitoring_password,
    password_hash,
    replication_password,
    wanted_credentials,
)
from components import metrics_exporter as exporter
from components import redis_node_files as files
from components.engines import ENGINES, REDIS, VALKEY
from components.redis_node_files import (
    POD_PATHS,
    PRESTOP_TIMEOUT_SECONDS,
    SCRIPT_NAMES,
    SCRIPTS_DIR,
    NodePaths,
    config_files,
    maxmemory_bytes,
    pod_dns_names,
    render_peers,
    render_redis_conf,
    script_environment,
    script_files,
    secret_files,
)
from components.stack_settings import parse_settings

MIB = 2**20
PASSWORD = "unit-Test-passw0rd.~_-x"


def _directives(conf: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in conf.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition(" ")
            found.setdefault(name, []).append(value)
    return found


def test_redis_conf_has_every_required_directive_for_the_pod_paths() -> None:
    settings = parse_settings(
        {"nodeTimeoutMs": "7000", "maxmemoryPolicy": "allkeys-lfu", "memoryLimit": "2Gi", "memoryRequest": "1Gi"}
    )
    directives = _directives(render_redis_conf(settings))

    expected = {
        "port": "6379",
        "cluster-enabled": "yes",
        "cluster-config-file": "/data/nodes.conf",
        "cluster-node-timeout": "7000",
        "cluster-replica-validity-factor": "10",
        "cluster-require-full-coverage": "no",
        "cluster-migration-barrier": "1",
        "appendonly": "yes",
        "appendfsync": "everysec",
        "dir": "/data",
        "protected-mode": "yes",
        "maxmemory": str(maxmemory_bytes(2 * 2**30)),
        "maxmemory-policy": "allkeys-lfu",
        "aclfile": "/etc/redis-secret/users.acl",
        "include": "/etc/redis-secret/auth.conf",
        "cluster-allow-reads-when-down": "no",
        "logfile": '""',
        # A big key's DEL must not stall the thread that answers the cluster bus.
        "lazyfree-lazy-user-del": "yes",
        "lazyfree-lazy-server-del": "yes",
        "lazyfree-lazy-expire": "yes",
        "lazyfree-lazy-eviction": "yes",
        "lazyfree-lazy-user-flush": "yes",
        "replica-lazy-flush": "yes",
    }
    for name, value in expected.items():
        assert directives.get(name) == [value], f"{name}: {directives.get(name)}"
    # A directive given twice silently takes the last value: each appears once.
    duplicated = [name for name, values in directives.items() if len(values) > 1]
    assert not duplicated


def test_redis_conf_follows_the_paths_it_is_given() -> None:
    paths = NodePaths(conf_dir="/x/conf", secret_dir="/x/secret", data_dir="/x/data")
    directives = _directives(render_redis_conf(parse_settings({}), paths))
    assert directives["dir"] == ["/x/data"]
    assert directives["cluster-config-file"] == ["/x/data/nodes.conf"]
    assert directives["include"] == ["/x/secret/auth.conf"]
    assert directives["aclfile"] == ["/x/secret/users.acl"]


def test_durability_cache_acknowledges_without_replicas_and_bounded_needs_one_within_a_second() -> None:
    cache = _directives(render_redis_conf(parse_settings({})))
    assert cache["min-replicas-to-write"] == ["0"] and "min-replicas-max-lag" not in cache
    bounded = _directives(render_redis_conf(parse_settings({"durability": "bounded"})))
    assert bounded["min-replicas-to-write"] == ["1"]
    # The engines count the lag in whole seconds and 0 turns the check off: 1 is the tightest.
    assert bounded["min-replicas-max-lag"] == ["1"]
    assert [name for name, values in bounded.items() if len(values) > 1] == []


@pytest.mark.parametrize(("timeout_ms", "factor"), [(1000, 50), (1500, 34), (2000, 25), (5000, 10), (15000, 10)])
def test_a_replica_stays_eligible_for_failover_a_minute_whatever_the_node_timeout(timeout_ms, factor) -> None:
    directives = _directives(render_redis_conf(parse_settings({"nodeTimeoutMs": str(timeout_ms)})))
    assert directives["cluster-replica-validity-factor"] == [str(factor)]
    # The engines allow node timeout x factor + the replica ping period (10 s) of data age.
    assert timeout_ms * factor / 1000 + 10 >= 60


def test_bounded_durability_needs_replicas_and_warns_with_a_single_one() -> None:
    with pytest.raises(ValueError, match=r"replicasPerShard = 0.*refuse every write"):
        parse_settings({"durability": "bounded", "replicasPerShard": "0"})
    (warning,) = parse_settings({"durability": "bounded", "replicasPerShard": "1"}).warnings
    assert "NOREPLICAS" in warning and "replicasPerShard = 2" in warning
    assert parse_settings({"durability": "bounded", "replicasPerShard": "2"}).warnings == ()
    assert parse_settings({"replicasPerShard": "1"}).warnings == ()


def test_tls_serves_clients_replication_and_the_bus_over_tls_only() -> None:
    paths = NodePaths(conf_dir="/x/conf", secret_dir="/x/secret", data_dir="/x/data", tls_dir="/x/tls")
    plain = _directives(render_redis_conf(parse_settings({}), paths))
    assert plain["port"] == ["6379"] and not any(name.startswith("tls-") for name in plain)
    directives = _directives(render_redis_conf(parse_settings({"tls": "true"}), paths))
    assert directives["port"] == ["0"], "a plaintext port would let clients around TLS"
    assert directives["tls-port"] == ["6379"]
    assert directives["tls-replication"] == ["yes"] and directives["tls-cluster"] == ["yes"]
    assert directives["tls-cert-file"] == ["/x/tls/tls.crt"]
    assert directives["tls-key-file"] == ["/x/tls/tls.key"]
    assert directives["tls-ca-cert-file"] == ["/x/tls/ca.crt"]
    assert directives["tls-auth-clients"] == ["no"]
    # Redirects name nodes by the DNS name their certificate covers.
    assert directives["cluster-preferred-endpoint-type"] == ["hostname"]
    assert [name for name, values in directives.items() if len(values) > 1] == []


def test_the_certificate_covers_every_pod_the_services_and_localhost() -> None:
    names = files.certificate_dns_names("redis-cluster-headless", "redis-cluster", "cache")
    for pod in range(0, 200, 37):
        host = files.announced_hostname(f"redis-cluster-{pod}", "redis-cluster-headless", "cache")
        assert any(_covers(name, host) for name in names), host
    assert "redis-cluster.cache.svc.cluster.local" in names and "redis-cluster.cache.svc" in names
    assert "localhost" in names
    assert len(names) == len(set(names))


def _covers(pattern: str, host: str) -> bool:
    # RFC 6125: a wildcard stands for exactly the leftmost label.
    if pattern.startswith("*."):
        return host.split(".", 1)[1] == pattern[2:] and "." not in host.split(".", 1)[0]
    return pattern == host


def test_bind_lines_only_for_the_sandbox() -> None:
    settings = parse_settings({})
    pod = _directives(render_redis_conf(settings))
    assert "bind" not in pod and "bind-source-addr" not in pod
    sandbox = _directives(render_redis_conf(settings, bind_address="127.0.10.7"))
    assert sandbox["bind"] == ["127.0.10.7"]
    assert sandbox["bind-source-addr"] == ["127.0.10.7"]
    # Apart from the bind lines, the sandbox runs the pod's file.
    without_bind = [
        line
        for line in render_redis_conf(settings, bind_address="127.0.10.7").splitlines()
        if not line.startswith("bind")
    ]
    assert [line for line in without_bind if not line.startswith("#")] == [
        line for line in render_redis_conf(settings).splitlines() if not line.startswith("#")
    ]


def test_redis_conf_has_no_inline_comment() -> None:
    conf = render_redis_conf(parse_settings({}), bind_address="127.0.10.1")
    for line in conf.splitlines():
        if not line.startswith("#"):
            assert "#" not in line, f"Redis rejects a comment after a value: {line!r}"


def test_no_password_in_anything_but_the_secret() -> None:
    settings = parse_settings({"password": PASSWORD})
    for name, content in config_files(settings, peers=["a", "b"]).items():
        assert PASSWORD not in content, f"{name} holds the password"
    directives = _directives(render_redis_conf(settings))
    assert "requirepass" not in directives and "masterauth" not in directives


def test_the_secret_holds_hashes_for_the_users_and_the_replicas_own_login() -> None:
    app = UserAccess("app", commands=("+@read", "+@write"), keys=("app:*",))
    secret = secret_files(wanted_credentials(PASSWORD, [app], {"app": "app-Passw0rd-0123456789"}))
    assert secret["password"] == PASSWORD
    acl = secret["users.acl"].splitlines()
    assert acl[0] == f"user default on #{password_hash(PASSWORD)} ~* &* +@all"
    assert acl[1].startswith(f"user {REPLICATION_USER} on #{password_hash(replication_password(PASSWORD))} -@all ")
    assert acl[2].startswith(f"user {MONITORING_USER} on #{password_hash(monitoring_password(PASSWORD))} -@all ")
    assert acl[3] == f"user app on #{password_hash('app-Passw0rd-0123456789')} ~app:* -@all +@read +@write"
    # Only hashes: no password appears in the ACL file.
    assert PASSWORD not in secret["users.acl"] and "app-Passw0rd-0123456789" not in secret["users.acl"]
    assert "nopass" not in secret["users.acl"]
    assert secret["auth.conf"] == f"masteruser {REPLICATION_USER}\nmasterauth {replication_password(PASSWORD)}\n"


@pytest.mark.parametrize("bad", ["", "has space", "has#hash", 'quo"te', "new\nline"])
def test_secret_files_refuse_a_password_that_would_break_a_file(bad: str) -> None:
    with pytest.raises(ValueError):
        secret_files(wanted_credentials(bad))


@pytest.mark.parametrize(
    "limit, expected_mib",
    [
        (2**30, 716),  # 1Gi * 0.7 = 716.8 MiB
        (256 * MIB, 179),  # the smallest limit the settings allow: 179.2 MiB
        (512 * MIB, 358),  # 358.4
        (4 * 2**30, 2867),  # 2867.2
        (1_500_000_000, 1001),  # a decimal quantity (1.5G): 1050000000 B = 1001.36 MiB
    ],
)
def test_maxmemory_is_70_percent_of_the_limit_rounded_down_to_a_mib(limit: int, expected_mib: int) -> None:
    assert maxmemory_bytes(limit) == expected_mib * MIB


@pytest.mark.parametrize("limit", [256 * MIB, 300 * MIB + 12345, 2**30, 3 * 2**30 + 1, 64 * 2**30])
def test_maxmemory_leaves_headroom_for_forks_and_buffers(limit: int) -> None:
    value = maxmemory_bytes(limit)
    assert value % MIB == 0
    assert 0.69 * limit <= value <= 0.70 * limit
    # The replica output buffer the file allows must fit in the headroom as well.
    # The limit in bytes, as a decimal quantity with a unit (k); a volume twice the data set.
    memory = {"memoryLimit": f"{limit // 1000}.{limit % 1000:03d}k", "memoryRequest": "256Mi", "storageSize": "100Gi"}
    conf = _directives(render_redis_conf(parse_settings(memory)))
    _, hard, soft, _ = conf["client-output-buffer-limit"][0].split()
    assert value + int(hard) < limit
    assert int(soft) <= int(hard)


def test_maxmemory_refuses_a_non_positive_limit() -> None:
    with pytest.raises(ValueError):
        maxmemory_bytes(0)


def test_pod_dns_names() -> None:
    assert pod_dns_names("redis-cluster", "redis-cluster-headless", "redis", 3) == [
        "redis-cluster-0.redis-cluster-headless.redis.svc.cluster.local",
        "redis-cluster-1.redis-cluster-headless.redis.svc.cluster.local",
        "redis-cluster-2.redis-cluster-headless.redis.svc.cluster.local",
    ]
    assert pod_dns_names("s", "h", "n", 0) == []


def test_peers_file() -> None:
    assert render_peers(["10.0.0.1", "redis-1.h.ns.svc.cluster.local"]) == "10.0.0.1\nredis-1.h.ns.svc.cluster.local\n"
    assert render_peers([]) == ""
    with pytest.raises(ValueError):
        render_peers(["two words"])


def test_config_files_carry_redis_conf_the_scripts_and_peers() -> None:
    settings = parse_settings({})
    rendered = config_files(settings, peers=["p0", "p1"])
    assert set(rendered) == {"redis.conf", "peers", "cluster-view.lua", *SCRIPT_NAMES}
    assert rendered["cluster-view.lua"] == exporter.CLUSTER_VIEW_SCRIPT.read_text()
    assert rendered["redis.conf"] == render_redis_conf(settings)
    assert rendered[files.PEERS_FILE] == "p0\np1\n"
    assert {name: rendered[name] for name in SCRIPT_NAMES} == script_files()
    # ConfigMap keys must be valid: [-._a-zA-Z0-9]+
    assert all(re.fullmatch(r"[-._a-zA-Z0-9]+", name) for name in rendered)


def test_script_environment_points_at_the_paths() -> None:
    assert script_environment(REDIS) == {
        "ENGINE_CLI": "redis-cli",
        "REDIS_PORT": "6379",
        "REDIS_DATA_DIR": "/data",
        "REDIS_CONF_DIR": "/conf",
        "REDIS_PASSWORD_FILE": "/etc/redis-secret/password",
        "REDIS_PEERS_FILE": "/conf/peers",
        "REDIS_PRESTOP_TIMEOUT_SECONDS": str(PRESTOP_TIMEOUT_SECONDS),
        "REDIS_PROBE_BUDGET_SECONDS": str(files.PROBE_BUDGET_SECONDS),
        "REDIS_PEER_RECOVERY_TIMEOUT_SECONDS": str(files.PEER_RECOVERY_TIMEOUT_SECONDS),
        "REDIS_PEER_RECOVERY_INTERVAL_SECONDS": str(files.PEER_RECOVERY_INTERVAL_SECONDS),
    }
    other = script_environment(VALKEY, NodePaths("/c", "/s", "/d", "/t"))
    assert other["REDIS_PASSWORD_FILE"] == "/s/password" and other["REDIS_PEERS_FILE"] == "/c/peers"
    assert other["ENGINE_CLI"] == "valkey-cli"
    # With TLS the scripts verify the node against the cluster's CA.
    assert "REDIS_TLS_CA_FILE" not in other
    assert script_environment(VALKEY, NodePaths("/c", "/s", "/d", "/t"), tls=True)["REDIS_TLS_CA_FILE"] == "/t/ca.crt"


def test_script_defaults_match_the_pod_environment() -> None:
    """A script run without the environment (e.g. by hand in a pod) behaves the same; only
    ENGINE_CLI has no default, as no one CLI suits both engines' images."""
    environment = script_environment(REDIS, POD_PATHS)
    used = set()
    for name, text in script_files().items():
        for variable, default in re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", text):
            if variable in environment:
                assert default == environment[variable], f"{name}: {variable} defaults to {default!r}"
                used.add(variable)
        assert "${ENGINE_CLI:-" not in text, f"{name} must not default ENGINE_CLI to one engine's CLI"
        if "$ENGINE_CLI" in text:
            assert re.search(r"^: \"\$\{ENGINE_CLI:\?", text, re.M), f"{name} calls $ENGINE_CLI without requiring it"
            used.add("ENGINE_CLI")
    assert used == set(environment), f"variables no script reads: {set(environment) - used}"


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_scripts_call_the_engines_cli_from_the_environment(engine: str) -> None:
    assert script_environment(ENGINES[engine])["ENGINE_CLI"] == ENGINES[engine].cli
    for name, text in script_files().items():
        # Code only: no comments, and not the message of the ENGINE_CLI requirement.
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines() if "${ENGINE_CLI:?" not in line)
        # No script names one engine's CLI: the other's image does not ship it.
        assert not re.search(r"\b(redis|valkey)-cli\b", code), f"{name} calls a CLI by name"


def test_prestop_bound_leaves_the_grace_period_meaningful() -> None:
    assert 10 <= PRESTOP_TIMEOUT_SECONDS <= 300


def test_scripts_are_posix_sh_and_never_put_the_password_in_argv() -> None:
    for name, text in script_files().items():
        assert text.startswith("#!/bin/sh\n"), name
        for line in text.splitlines():
            code = line.split("#", 1)[0]
            if "$ENGINE_CLI" in code:
                assert not re.search(r"\s-a\s|--pass|--user|\bAUTH\b", code), f"{name}: {line.strip()}"
        if "$ENGINE_CLI" in text:
            # redis-cli reads REDISCLI_AUTH, valkey-cli VALKEYCLI_AUTH.
            assert re.search(r"^\s*export REDISCLI_AUTH VALKEYCLI_AUTH$", text, re.M), (
                f"{name} must pass the password through REDISCLI_AUTH and VALKEYCLI_AUTH"
            )
        # Nothing echoes the secret.
        assert not re.search(r"echo[^\n]*(REDIS|VALKEY)CLI_AUTH", text), name


def test_shellcheck_passes_on_every_script() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed; CI installs it (apt-get install shellcheck) and so must you")
    result = subprocess.run(
        [shellcheck, "-s", "sh", "-S", "style", *[str(SCRIPTS_DIR / name) for name in SCRIPT_NAMES]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dash_parses_every_script() -> None:
    dash = shutil.which("dash")
    if dash is None:
        pytest.fail("dash is not installed; the redis image runs the scripts with dash (apt-get install dash)")
    for name in SCRIPT_NAMES:
        result = subprocess.run([dash, "-n", str(SCRIPTS_DIR / name)], capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_every_script_exists() -> None:
    assert sorted(p.name for p in Path(SCRIPTS_DIR).glob("*.sh")) == sorted(SCRIPT_NAMES)
