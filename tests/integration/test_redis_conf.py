"""The rendered redis.conf, unchanged but for its paths, runs a real server of the engine under test."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from cluster_logic.credentials import (
    MONITORING_USER,
    REPLICATION_USER,
    password_hash,
    replication_password,
    wanted_credentials,
)
from components.redis_node_files import (
    REDIS_CONF_FILE,
    NodePaths,
    maxmemory_bytes,
    render_redis_conf,
    secret_files,
)
from components.stack_settings import StackSettings
from sandbox.engine_binaries import EngineBinaries
from sandbox.local_nodes import LocalNode
from testkit.redis_nodes import PASSWORD, LocalNodes, LoopbackAddresses

pytestmark = pytest.mark.integration


@dataclass
class Server:
    node: LocalNode
    conf_text: str

    @property
    def ip(self) -> str:
        return self.node.ip

    @property
    def paths(self) -> NodePaths:
        return self.node.paths

    def client(self, password: str | None = PASSWORD, **options: object) -> redis.Redis:
        # No retries: a refused login must show at once, not after redis-py's backoff.
        return self.node.client(password=password, socket_timeout=5, **options)


def _paths(root: Path) -> NodePaths:
    paths = NodePaths(conf_dir=str(root / "conf"), secret_dir=str(root / "secret"), data_dir=str(root / "data"))
    for directory in (paths.conf_dir, paths.secret_dir, paths.data_dir):
        Path(directory).mkdir(parents=True)
    return paths


def _run_server(nodes: LocalNodes, settings: StackSettings) -> Server:
    """A node with the stack's rendered redis.conf (only its paths and bind line are the
    node's own), started as a pod starts; `nodes` stops it when the test ends."""
    node = nodes.new(settings=settings, password=PASSWORD)
    node.start()
    return Server(node, (Path(node.paths.conf_dir) / REDIS_CONF_FILE).read_text())


@pytest.fixture
def server(nodes: LocalNodes, engine_settings) -> Server:
    return _run_server(nodes, engine_settings())


def test_the_server_requires_the_password(server: Server) -> None:
    # On the wire, as any client sees it before authenticating.
    with socket.create_connection((server.ip, 6379), timeout=5) as connection:
        connection.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert connection.recv(1024).startswith(b"-NOAUTH")
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):
        server.client(password=None, protocol=2).ping()
    with pytest.raises(redis.AuthenticationError):
        server.client(password="not-the-password").ping()
    assert server.client().ping() is True
    assert server.client().dbsize() == 0


def test_the_server_runs_in_cluster_mode_with_its_files_on_the_data_dir(server: Server) -> None:
    client = server.client()
    assert client.info("cluster")["cluster_enabled"] == 1
    data_dir = Path(server.paths.data_dir)
    assert (data_dir / "nodes.conf").exists()
    assert (data_dir / "appendonlydir").is_dir(), "the AOF must live on the data volume"
    assert client.info("persistence")["aof_enabled"] == 1


def _directives(conf_text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in conf_text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition(" ")
            pairs.append((name, value))
    return pairs


def test_every_directive_is_in_effect(server: Server) -> None:
    """Every line of the file took effect as written: none was ignored or misspelled."""
    client = server.client()
    directives = _directives(server.conf_text)
    assert ("include", f"{server.paths.secret_dir}/auth.conf") in directives
    for name, value in directives:
        if name == "include":
            continue
        actual = client.config_get(name)
        assert name in actual, f"redis does not know the directive {name!r}"
        expected = value.strip('"')
        if name == "client-output-buffer-limit":
            # Redis lists every client class and calls the replica class "slave".
            assert expected.replace("replica ", "slave ") in actual[name]
        elif name in ("dir", "cluster-config-file"):
            assert Path(actual[name]).resolve() == Path(expected).resolve()
        else:
            assert actual[name] == expected, f"{name}: configured {expected!r}, running {actual[name]!r}"
    # The ACL file gave the admin its password (as a hash) and nothing passwordless; the
    # included auth.conf logs replicas in as the replication user.
    users = {line.split()[1]: line for line in client.acl_list()}
    assert f"#{password_hash(PASSWORD)}" in users["default"].split() and "nopass" not in users["default"]
    assert set(users) == {"default", REPLICATION_USER, MONITORING_USER}
    assert client.config_get("requirepass")["requirepass"] == ""
    assert client.config_get("masteruser")["masteruser"] == REPLICATION_USER
    assert client.config_get("masterauth")["masterauth"] == replication_password(PASSWORD)


@pytest.mark.parametrize(
    "config",
    [
        {"memoryLimit": "512Mi", "memoryRequest": "512Mi", "maxmemoryPolicy": "allkeys-lru", "nodeTimeoutMs": "3000"},
        # A volume of at least twice maxmemory (2.8Gi), as the settings require.
        {
            "memoryLimit": "4Gi",
            "memoryRequest": "2Gi",
            "maxmemoryPolicy": "volatile-ttl",
            "replicasPerShard": "2",
            "storageSize": "6Gi",
            "durability": "bounded",
        },
    ],
)
def test_settings_reach_the_running_server(nodes: LocalNodes, engine_settings, config: dict[str, str]) -> None:
    settings = engine_settings(**config)
    server = _run_server(nodes, settings)
    running = server.client().config_get("*")
    assert int(running["maxmemory"]) == maxmemory_bytes(settings.memory_limit_bytes)
    assert running["maxmemory-policy"] == settings.maxmemory_policy
    assert int(running["cluster-node-timeout"]) == settings.node_timeout_ms
    bounded = settings.durability == "bounded"
    assert running["min-replicas-to-write"] == ("1" if bounded else "0")
    if bounded:
        assert running["min-replicas-max-lag"] == "1"


def test_the_server_refuses_inline_comments_which_is_why_the_file_has_none(
    tmp_path: Path, loopback: LoopbackAddresses, engine: EngineBinaries, engine_settings
) -> None:
    ip = loopback.allocate()
    paths = _paths(tmp_path / "node")
    conf_text = render_redis_conf(engine_settings(), paths, bind_address=ip).replace(
        "appendonly yes", "appendonly yes # replay on restart"
    )
    conf = Path(paths.conf_dir) / "redis.conf"
    conf.write_text(conf_text)
    for name, content in secret_files(wanted_credentials(PASSWORD)).items():
        (Path(paths.secret_dir) / name).write_text(content)
    result = subprocess.run(
        [engine.server, str(conf)], capture_output=True, text=True, timeout=10, start_new_session=True
    )
    assert result.returncode != 0
    assert "appendonly" in result.stdout + result.stderr


def test_without_the_secret_the_server_does_not_start_passwordless(
    tmp_path: Path, loopback: LoopbackAddresses, engine: EngineBinaries, engine_settings
) -> None:
    ip = loopback.allocate()
    paths = _paths(tmp_path / "node")
    conf = Path(paths.conf_dir) / "redis.conf"
    conf.write_text(render_redis_conf(engine_settings(), paths, bind_address=ip))
    result = subprocess.run(
        [engine.server, str(conf)], capture_output=True, text=True, timeout=10, start_new_session=True
    )
    assert result.returncode != 0
    assert "auth.conf" in result.stdout + result.stderr
    assert not os.path.exists(Path(paths.data_dir) / "nodes.conf")


def test_a_big_key_is_freed_in_the_background(server: Server) -> None:
    """lazyfree: a DEL of a key with many elements hands the freeing to a background thread, so
    the thread that also answers the cluster bus is not held for it."""
    client = server.client()
    client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    deadline = time.monotonic() + 10
    while "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
        assert time.monotonic() < deadline, "a lone node with every slot never got to ok"
        time.sleep(0.05)
    pipe = client.pipeline(transaction=False)
    for n in range(0, 20_000, 1000):
        pipe.hset("big", mapping={f"f{i}": "v" for i in range(n, n + 1000)})
    pipe.execute()
    freed = int(client.info("memory")["lazyfreed_objects"])
    assert client.delete("big") == 1
    deadline = time.monotonic() + 10
    while int(client.info("memory")["lazyfreed_objects"]) != freed + 1:
        assert time.monotonic() < deadline, "the big key was freed by the main thread, not in the background"
        time.sleep(0.05)
