"""The pod scripts against real redis-server processes, run under dash as in the image.

Each "pod" is a `LocalNode`: its own 127.0.1x.y address, conf/secret/data dirs, started as
`dash entrypoint.sh redis-server redis.conf` exactly as the StatefulSet starts it. The tests
that take `nodes_tls_too` run twice: in plaintext, and with TLS on (the scripts then speak TLS
only, and the nodes announce their DNS names), but for the long ones, which take one of the two
per engine pass; tests/integration/test_tls.py has the rest.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import pytest

from cluster_logic.credentials import replication_password
from components.redis_node_files import PRESTOP_TIMEOUT_SECONDS, SCRIPTS_DIR
from sandbox.engine_binaries import EngineBinaries
from sandbox.local_nodes import LocalNode
from sandbox.processes import kill_session
from testkit.redis_nodes import (
    LocalNodes,
    LoopbackAddresses,
    cluster_client,
    cluster_info,
    cluster_nodes,
    create_cluster,
    fast_settings,
    key_in_slots,
    masters_and_replicas,
    myself,
    replica_of,
    stop_all,
    wait_cluster_ok,
    wait_gossip_rounds,
    wait_ready,
    wait_replicas_in_sync,
)
from testkit.writers import Writer, lost_keys, write_keys

pytestmark = pytest.mark.integration

ID_A = "a" * 40
ID_B = "b" * 40
ID_C = "c" * 40


@pytest.fixture(params=[pytest.param(False, id="plaintext"), pytest.param(True, id="tls")])
def nodes_tls_too(request: pytest.FixtureRequest, nodes: LocalNodes) -> LocalNodes:
    """`nodes`, once in plaintext and once with TLS on (a CA and a certificate of their own)."""
    if request.param:
        nodes.settings = fast_settings(nodes.binaries.engine.name, tls="true")
    return nodes


# The long cluster scenarios take plaintext in the redis pass and TLS in the valkey pass
# (tests/conftest.py, engine_pass; `--every-variant` runs both); the sandbox's suites run
# the same scripts with and without TLS on both engines.
ONE_WAY_PER_PASS = pytest.mark.parametrize(
    "nodes_tls_too",
    [
        pytest.param(False, id="plaintext", marks=pytest.mark.engine_pass("redis")),
        pytest.param(True, id="tls", marks=pytest.mark.engine_pass("valkey")),
    ],
    indirect=True,
)


class EntrypointRun:
    def __init__(self, pid: int, returncode: int, stdout: str, stderr: str, nodes_conf: Optional[str]) -> None:
        self.pid, self.returncode, self.stdout, self.stderr, self.nodes_conf = (
            pid,
            returncode,
            stdout,
            stderr,
            nodes_conf,
        )


def _run_entrypoint(
    tmp_path: Path, nodes_conf: Optional[str], pod_ip: str, command: list[str], **extra_env: str
) -> EntrypointRun:
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    if nodes_conf is not None:
        (data / "nodes.conf").write_text(nodes_conf)
    env = {
        "PATH": os.environ["PATH"],
        "POD_IP": pod_ip,
        "REDIS_DATA_DIR": str(data),
        "REDIS_CONF_DIR": str(SCRIPTS_DIR),
        # No server answers here: peer-recovery must give up at once.
        "REDIS_PEERS_FILE": str(tmp_path / "no-peers"),
        "REDIS_PASSWORD_FILE": str(tmp_path / "no-password"),
        "REDIS_PORT": "1",
        "REDIS_PEER_RECOVERY_TIMEOUT_SECONDS": "0",
        "ENGINE_CLI": "redis-cli",
        **extra_env,
    }
    process = subprocess.Popen(
        ["dash", str(SCRIPTS_DIR / "entrypoint.sh"), *command],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=10)
    finally:
        kill_session(process.pid)
    left = data / "nodes.conf"
    return EntrypointRun(process.pid, process.returncode, stdout, stderr, left.read_text() if left.exists() else None)


NODES_CONF_CASES = {
    "redis-7.0": (
        f"{ID_A} 10.1.2.3:6379@16379 myself,master - 0 0 1 connected 0-5460\n"
        f"{ID_B} 10.1.2.4:6379@16379 slave {ID_A} 0 1700000000000 1 connected\n"
        "vars currentEpoch 3 lastVoteEpoch 0\n",
        f"{ID_A} 10.9.8.7:6379@16379 myself,master - 0 0 1 connected 0-5460\n",
    ),
    # Redis 7.2+ (the image's 7.4): hostname and aux fields after the bus port, and a
    # hostname containing both "myself" and a dotted quad on another line.
    "redis-7.4-aux-fields": (
        f"{ID_B} 10.1.2.4:6379@16379,myself-10.1.2.4,tls-port=0,shard-id={'d' * 40} slave {ID_A} 0 1700000000000 1 connected\n"
        f"{ID_A} 10.1.2.3:6379@16379,redis-0,tls-port=0,shard-id={'d' * 40} myself,master - 0 0 1 connected 0-5460\n"
        "vars currentEpoch 3 lastVoteEpoch 0\n",
        f"{ID_A} 10.9.8.7:6379@16379,redis-0,tls-port=0,shard-id={'d' * 40} myself,master - 0 0 1 connected 0-5460\n",
    ),
    "replica-myself": (
        f"{ID_A} 10.1.2.3:6379@16379 master - 0 1700000000000 1 connected 0-16383\n"
        f"{ID_C} 10.1.2.5:6379@16379 myself,slave {ID_A} 0 0 1 connected\n",
        f"{ID_C} 10.9.8.7:6379@16379 myself,slave {ID_A} 0 0 1 connected\n",
    ),
    # TLS only (port 0, tls-port aux field) with a hostname announced: the hostname, a DNS
    # name with dots, stays as it is.
    "tls-hostname": (
        f"{ID_A} 10.1.2.3:0@16379,redis-cluster-0.redis-cluster-headless.redis.svc.cluster.local,tls-port=6379,"
        f"shard-id={'d' * 40} myself,master - 0 0 1 connected 0-5460\n"
        f"{ID_B} 10.1.2.4:0@16379,redis-cluster-3.redis-cluster-headless.redis.svc.cluster.local,tls-port=6379,"
        f"shard-id={'d' * 40} slave {ID_A} 0 1700000000000 1 connected\n",
        f"{ID_A} 10.9.8.7:0@16379,redis-cluster-0.redis-cluster-headless.redis.svc.cluster.local,tls-port=6379,"
        f"shard-id={'d' * 40} myself,master - 0 0 1 connected 0-5460\n",
    ),
    # A fresh node saved its config before learning its own address.
    "empty-ip": (
        f"{ID_A} :0@0 myself,master - 0 0 0 connected\nvars currentEpoch 0 lastVoteEpoch 0\n",
        f"{ID_A} 10.9.8.7:0@0 myself,master - 0 0 0 connected\n",
    ),
}


@pytest.mark.parametrize("case", NODES_CONF_CASES, ids=list(NODES_CONF_CASES))
def test_entrypoint_rewrites_only_the_address_of_the_myself_line(tmp_path: Path, case: str) -> None:
    before, expected_myself = NODES_CONF_CASES[case]
    run = _run_entrypoint(tmp_path, before, "10.9.8.7", ["true"])

    assert run.returncode == 0, run.stderr
    changed = [(old, new) for old, new in zip(before.splitlines(True), run.nodes_conf.splitlines(True)) if old != new]
    assert len(changed) == 1, f"exactly the myself line must change:\n{run.nodes_conf}"
    assert changed[0][1] == expected_myself
    assert len(run.nodes_conf.splitlines()) == len(before.splitlines())


def test_entrypoint_rewrites_ipv6_addresses_whole(tmp_path: Path) -> None:
    before = f"{ID_A} fd00::1:6379@16379 myself,master - 0 0 1 connected 0-16383\n"
    run = _run_entrypoint(tmp_path, before, "fd00::2:7", ["true"])
    assert run.returncode == 0, run.stderr
    assert run.nodes_conf == f"{ID_A} fd00::2:7:6379@16379 myself,master - 0 0 1 connected 0-16383\n"


def test_entrypoint_refuses_a_pod_ip_that_is_not_an_address(tmp_path: Path) -> None:
    before = f"{ID_A} 10.1.2.3:6379@16379 myself,master - 0 0 1 connected 0-16383\n"
    run = _run_entrypoint(tmp_path, before, "1.2.3.4/ s/x/y", ["true"])
    assert run.returncode != 0
    assert "not an IP address" in run.stderr
    assert run.nodes_conf == before


def test_entrypoint_announces_the_hostname_it_is_given(tmp_path: Path) -> None:
    # Appended after the config file's arguments, as one word whatever it holds.
    command = ["dash", "-c", 'for a in "$@"; do echo "[$a]"; done', "dash", "redis.conf", "--port", "7000"]
    announced = _run_entrypoint(
        tmp_path / "with", "", "10.9.8.7", command, REDIS_ANNOUNCE_HOSTNAME="pod-0.svc.example $(x)"
    )
    assert announced.returncode == 0, announced.stderr
    assert announced.stdout.splitlines() == [
        "[redis.conf]",
        "[--port]",
        "[7000]",
        "[--cluster-announce-hostname]",
        "[pod-0.svc.example $(x)]",
    ]
    plain = _run_entrypoint(tmp_path / "without", "", "10.9.8.7", command, REDIS_ANNOUNCE_HOSTNAME="")
    assert plain.stdout.splitlines() == ["[redis.conf]", "[--port]", "[7000]"]


VALID_NODES_CONF = (
    f"{ID_A} 10.1.2.3:6379@16379 myself,master - 0 0 1 connected 0-5460\n"
    f"{ID_B} 10.1.2.4:6379@16379 slave {ID_A} 0 1700000000000 1 connected\n"
    "vars currentEpoch 3 lastVoteEpoch 0\n"
)


@pytest.mark.parametrize(
    ("case", "nodes_conf", "data", "damage"),
    [
        ("intact", VALID_NODES_CONF, True, None),
        ("cut between lines, myself kept", VALID_NODES_CONF.split("vars")[0], True, None),
        ("a new volume", None, False, None),
        ("missing beside data", None, True, "missing"),
        ("empty", "", True, "empty"),
        ("cut inside a line", VALID_NODES_CONF[:60], True, "truncated"),
        ("binary garbage", "\x00\x17garbage\n" + VALID_NODES_CONF[7:], True, "corrupt"),
        ("two myself lines", VALID_NODES_CONF.replace(" slave ", " myself,slave "), True, "corrupt"),
        ("no myself line", VALID_NODES_CONF.replace("myself,", ""), True, "corrupt"),
    ],
)
def test_entrypoint_sets_aside_data_whose_identity_is_gone(tmp_path: Path, case, nodes_conf, data, damage) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if data:
        (data_dir / "appendonlydir").mkdir()
        (data_dir / "appendonlydir" / "appendonly.aof.1.base.rdb").write_bytes(b"REDIS0011 keys")
    (data_dir / "lost+found").mkdir()
    run = _run_entrypoint(tmp_path, nodes_conf, "10.9.8.7", ["true"])
    assert run.returncode == 0, run.stderr
    aside = list((data_dir / "lost-identity").glob("2*")) if (data_dir / "lost-identity").exists() else []
    if damage is None:
        assert not aside and "moved" not in run.stderr, case
        assert (data_dir / "appendonlydir").exists() == data, case
    else:
        assert f"nodes.conf is {damage}" in run.stderr, (case, run.stderr)
        (where,) = aside
        assert (where / "appendonlydir" / "appendonly.aof.1.base.rdb").read_bytes() == b"REDIS0011 keys", case
        assert (where / "nodes.conf").exists() == (nodes_conf is not None), case
        assert not (data_dir / "appendonlydir").exists() and not (data_dir / "nodes.conf").exists(), case
    # A file system's own lost+found is never touched.
    assert (data_dir / "lost+found").is_dir()


def test_entrypoint_execs_its_arguments_in_place(tmp_path: Path) -> None:
    # `exec` keeps the pid: the command runs as the very process the runtime started, so
    # it is PID 1 in a container and gets SIGTERM itself.
    run = _run_entrypoint(tmp_path, "", "10.9.8.7", ["dash", "-c", 'echo "$$ $1"', "dash", "argument-passed"])
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(run.pid), "argument-passed"]


# ---------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------


class FakeRedis:
    """A server on a loopback address that answers AUTH with OK and every other command
    with one fixed reply: how Redis answers while loading an AOF or running a long script."""

    def __init__(self, ip: str, reply: bytes, silent_to: tuple[bytes, ...] = ()) -> None:
        self.reply = reply
        # Commands (by name) left without an answer, as a server stuck on them would.
        self.silent_to = silent_to
        self.listener = socket.create_server((ip, 6379), reuse_port=False)
        self.listener.settimeout(0.2)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeRedis:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.listener.close()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                buffer = b""
                try:
                    while not self.stopped.is_set():
                        chunk = connection.recv(4096)
                        if not chunk:
                            break
                        buffer += chunk
                        # One reply per complete RESP array of bulk strings.
                        while True:
                            command, buffer = _split_command(buffer)
                            if command is None:
                                break
                            name = command[0].upper()
                            if name not in self.silent_to:
                                connection.sendall(b"+OK\r\n" if name == b"AUTH" else self.reply)
                except OSError:
                    pass


def _split_command(buffer: bytes) -> tuple[list[bytes] | None, bytes]:
    if not buffer.startswith(b"*") or b"\r\n" not in buffer:
        return None, buffer
    header, rest = buffer.split(b"\r\n", 1)
    parts = []
    for _ in range(int(header[1:])):
        if b"\r\n" not in rest:
            return None, buffer
        length_line, rest = rest.split(b"\r\n", 1)
        length = int(length_line[1:])
        if len(rest) < length + 2:
            return None, buffer
        parts.append(rest[:length])
        rest = rest[length + 2 :]
    return parts, rest


def _probe(node: LocalNode, name: str, **env: str) -> subprocess.CompletedProcess:
    return node.run_script(name, timeout=15, env=env)


def test_probes_on_a_fresh_node_and_on_a_stopped_one(nodes_tls_too: LocalNodes) -> None:
    node = nodes_tls_too.new()
    node.start()

    # Fresh: no cluster yet. Ready, or the bootstrap that waits for Ready pods never starts.
    assert _probe(node, "probe-liveness.sh").returncode == 0
    readiness = _probe(node, "probe-readiness.sh")
    assert readiness.returncode == 0, readiness.stderr
    started = time.monotonic()
    recovery = _probe(node, "peer-recovery.sh")
    assert recovery.returncode == 0 and recovery.stdout == ""
    assert time.monotonic() - started < 2, "peer-recovery must leave a fresh node alone at once"

    node.stop()
    liveness = _probe(node, "probe-liveness.sh")
    readiness = _probe(node, "probe-readiness.sh")
    assert liveness.returncode == 1 and "no reply" in liveness.stderr
    assert readiness.returncode == 1


def test_peer_recovery_gives_up_when_the_local_server_never_answers(tmp_path: Path, engine: EngineBinaries) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "nodes.conf").write_text(
        f"{ID_A} 10.1.2.3:6379@16379 myself,master - 0 0 1 connected 0-16383\n"
        f"{ID_B} 10.1.2.4:6379@16379 slave {ID_A} 0 0 1 connected\n"
    )
    env = {
        "PATH": engine.search_path(),
        "ENGINE_CLI": engine.engine.cli,
        "POD_IP": "127.0.10.254",
        "REDIS_PORT": "1",
        "REDIS_DATA_DIR": str(data),
        "REDIS_PEER_RECOVERY_TIMEOUT_SECONDS": "2",
    }
    started = time.monotonic()
    result = subprocess.run(
        ["dash", str(SCRIPTS_DIR / "peer-recovery.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        start_new_session=True,
    )
    assert result.returncode == 1
    assert "did not answer" in result.stdout
    assert time.monotonic() - started < 6


def test_probes_with_a_password_the_server_does_not_know(nodes: LocalNodes) -> None:
    node = nodes.new()
    node.start()
    wrong_password = node.root / "wrong-password"
    wrong_password.write_text("not-the-password-at-all")

    liveness = _probe(node, "probe-liveness.sh", REDIS_PASSWORD_FILE=str(wrong_password))
    readiness = _probe(node, "probe-readiness.sh", REDIS_PASSWORD_FILE=str(wrong_password))
    # Alive (a restart of every pod is not the fix), but not serving anybody: not Ready.
    assert liveness.returncode == 0 and "refuses the mounted password" in liveness.stderr
    assert readiness.returncode == 1
    assert "not-the-password-at-all" not in liveness.stderr + readiness.stderr


@pytest.mark.parametrize(
    "reply, alive",
    [
        (b"-LOADING Redis is loading the dataset in memory\r\n", True),
        (b"-BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.\r\n", True),
        (b"+PONG\r\n", True),
    ],
    ids=["loading", "busy", "pong"],
)
def test_liveness_counts_a_loading_or_busy_server_as_alive_but_not_ready(
    nodes: LocalNodes, reply: bytes, alive: bool
) -> None:
    node = nodes.new()
    node.write_files()
    with FakeRedis(node.ip, reply):
        liveness = _probe(node, "probe-liveness.sh")
        readiness = _probe(node, "probe-readiness.sh")
    assert (liveness.returncode == 0) == alive, liveness.stderr
    if reply != b"+PONG\r\n":
        assert readiness.returncode == 1, "a loading or busy node must not receive traffic"


def test_readiness_gives_its_verdict_within_its_budget(nodes: LocalNodes) -> None:
    """Three calls of up to 2 s each would outlast the kubelet's 5 s: the whole probe is
    bounded, and says so when it runs out."""
    node = nodes.new()
    node.write_files()
    # PING is answered at once; CLUSTER INFO never is.
    with FakeRedis(node.ip, b"+PONG\r\n", silent_to=(b"CLUSTER",)):
        readiness = _probe(node, "probe-readiness.sh", REDIS_PROBE_BUDGET_SECONDS="1")
    assert readiness.returncode != 0
    assert "no verdict within 1s" in readiness.stderr, readiness.stderr


def test_a_replica_without_a_working_link_to_its_master_is_not_ready(nodes: LocalNodes) -> None:
    cluster = nodes.cluster()
    wait_ready(cluster, timeout=20)
    _, replicas = masters_and_replicas(cluster)
    replica = replicas[0]
    client = replica.client()
    # The replica can no longer authenticate to its master; the cluster bus is unaffected.
    client.config_set("masterauth", "not-the-password")
    client.execute_command("CLIENT", "KILL", "TYPE", "master")
    deadline = time.monotonic() + 10
    while client.info("replication")["master_link_status"] != "down":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert cluster_info(replica)["cluster_state"] == "ok"
    readiness = _probe(replica, "probe-readiness.sh")
    assert readiness.returncode == 1
    assert "link to its master is down" in readiness.stderr
    assert _probe(replica, "probe-liveness.sh").returncode == 0

    client.config_set("masterauth", replication_password(replica.password))
    wait_ready([replica], timeout=20)


@ONE_WAY_PER_PASS
def test_probes_before_and_after_formation_and_when_the_cluster_is_down(nodes_tls_too: LocalNodes) -> None:
    cluster = nodes_tls_too.started(6)
    for node in cluster:
        assert _probe(node, "probe-readiness.sh").returncode == 0, f"{node.pod}: a fresh node must be Ready"

    create_cluster(cluster, replicas_per_shard=1)
    wait_ready(cluster, timeout=20)

    # Two of three masters gone: the survivors are a minority, the cluster is down.
    masters, _ = masters_and_replicas(cluster)
    for master in masters[:2]:
        master.kill()
    survivors = [node for node in cluster if node.is_running()]
    # Each survivor declares the cluster down on its own, once it has missed the two
    # masters for cluster-node-timeout; an orphaned replica already fails readiness
    # earlier for its broken link, so readiness alone does not show that every node
    # saw the outage.
    deadline = time.monotonic() + 30
    while True:
        states = {node.pod: cluster_info(node)["cluster_state"] for node in survivors}
        if all(state == "fail" for state in states.values()):
            break
        assert time.monotonic() < deadline, f"the survivors never saw the cluster down: {states}"
        time.sleep(0.2)
    for node in survivors:
        readiness = _probe(node, "probe-readiness.sh")
        assert readiness.returncode == 1, f"{node.pod}: readiness passes on a down cluster"
        assert _probe(node, "probe-liveness.sh").returncode == 0, "a node of a down cluster is still alive"
    surviving_master = masters[2]
    assert "state is not ok" in _probe(surviving_master, "probe-readiness.sh").stderr

    # pre-stop on the surviving master: its replica cannot win an election without a
    # majority of masters. The hook gives up at its bound and changes nothing.
    master = masters[2]
    replica = replica_of(master, cluster)
    started = time.monotonic()
    hook = _probe(master, "pre-stop.sh", REDIS_PRESTOP_TIMEOUT_SECONDS="4")
    elapsed = time.monotonic() - started
    assert hook.returncode == 0, hook.stderr
    # The script counts whole seconds (date +%s): up to one second early, never much late.
    assert 3 <= elapsed < 12, f"pre-stop took {elapsed:.1f}s with a 4s bound: {hook.stdout}"
    assert "did not take over" in hook.stdout
    assert master.client().info("replication")["role"] == "master"
    assert replica.client().info("replication")["role"] == "slave"
    print(f"\npre-stop without a majority gave up after {elapsed:.1f}s")


# ---------------------------------------------------------------------------------------
# All pods back on new IPs
# ---------------------------------------------------------------------------------------


def _write_keys(cluster: list[LocalNode], count: int) -> dict[str, str]:
    with cluster_client(cluster) as client:
        return write_keys(client, "key", count)


def _assert_keys_intact(cluster: list[LocalNode], expected: dict[str, str]) -> None:
    with cluster_client(cluster) as client:
        lost = lost_keys(client, expected)
    assert not lost, f"{len(lost)} of {len(expected)} keys lost, e.g. {lost[:10]}"


def _wait_peer_recovery_ended(cluster: list[LocalNode], timeout: float = 15.0) -> None:
    """Until every node's peer-recovery has said the cluster is healthy and ended."""
    deadline = time.monotonic() + timeout
    for node in cluster:
        while "peer-recovery: the cluster is healthy" not in node.log_tail(10**7):
            assert time.monotonic() < deadline, node.log_tail()
            time.sleep(0.2)


def _restart_all_on_new_ips(cluster: list[LocalNode], new_ips: list[str], peers: list[str]) -> None:
    stop_all(cluster)
    for node, ip in zip(cluster, new_ips):
        node.ip = ip
        node.peers = tuple(peers)
        node.start()


@ONE_WAY_PER_PASS
def test_all_pods_back_on_new_ips_recover_through_the_peers_file(
    nodes_tls_too: LocalNodes, loopback: LoopbackAddresses
) -> None:
    cluster = nodes_tls_too.cluster()
    expected = _write_keys(cluster, 1000)
    wait_replicas_in_sync(cluster, timeout=10)
    old_ips = {node.pod: node.ip for node in cluster}

    new_ips = loopback.allocate_many(len(cluster))
    # Hosts that are not peers (nothing listens, or no such name) must not get in the way.
    peers = [*new_ips, "localhost", "no-such-peer.invalid"]
    started = time.monotonic()
    _restart_all_on_new_ips(cluster, new_ips, peers)
    restarted = time.monotonic()
    wait_cluster_ok(cluster, timeout=90)
    recovered_after, restarts_took = time.monotonic() - started, restarted - started

    for node in cluster:
        # The entrypoint exec'd: redis-server is the process that was started.
        assert int(node.client().info("server")["process_id"]) == node.pid
        assert (myself(node).host, myself(node).port, myself(node).bus_port) == (node.ip, 6379, 16379), myself(node)
        addresses = {entry.host for entry in cluster_nodes(node)}
        assert addresses == set(new_ips), f"{node.pod} still knows old addresses: {addresses}"
        assert node.ip != old_ips[node.pod]
        if node.tls:
            # Every node still announced by its DNS name, now beside its new address.
            text = node.client().execute_command("CLUSTER", "NODES")
            for peer in cluster:
                assert f"{peer.ip}:6379@16379,{peer.announced_hostname}" in text, text

    _assert_keys_intact(cluster, expected)
    assert sum(node.client().dbsize() for node in masters_and_replicas(cluster)[0]) == len(expected)

    # peer-recovery notices within one interval (3 s) and ends; it printed no secret.
    _wait_peer_recovery_ended(cluster)
    for node in cluster:
        assert node.password not in node.log_tail(10**7)
    print(
        f"\nall-new-IP recovery: cluster_state:ok on all 6 nodes {recovered_after:.1f}s after the first"
        f" SIGTERM ({restarts_took:.1f}s of it stopping and starting the processes)"
    )


def test_all_pods_back_on_each_others_old_ips_end_with_no_stale_entry(nodes: LocalNodes) -> None:
    """The VPC CNI hands freed IPs out again: after a restart of every pod, a node that dials
    a peer's old address may reach another member, which answers with the wrong node ID.
    Redis then marks that peer `noaddr` and stops dialling it; two nodes that did this to
    each other stay blind to each other for good unless something introduces them again."""
    cluster = nodes.cluster()
    expected = _write_keys(cluster, 1000)
    wait_replicas_in_sync(cluster, timeout=10)
    ids = {node.pod: myself(node).id for node in cluster}
    old_ips = [node.ip for node in cluster]
    # Every pod gets the address its neighbour had: every stale entry now leads to a member.
    recycled = old_ips[1:] + old_ips[:1]
    _restart_all_on_new_ips(cluster, recycled, peers=recycled)
    wait_cluster_ok(cluster, timeout=90)

    for node in cluster:
        assert myself(node).id == ids[node.pod]
        seen = {entry.id: entry.host for entry in cluster_nodes(node)}
        assert seen == {ids[peer.pod]: peer.ip for peer in cluster}, f"{node.pod} sees {seen}"
    _assert_keys_intact(cluster, expected)
    # Recovery ended on its own: nothing is left for it to repair.
    _wait_peer_recovery_ended(cluster)


def _peers_without_address(node: LocalNode) -> list[str]:
    return [entry.id for entry in cluster_nodes(node) if "noaddr" in entry.flags]


def test_peer_recovery_repairs_two_replicas_that_lost_each_others_address(
    nodes: LocalNodes, loopback: LoopbackAddresses
) -> None:
    cluster = nodes.cluster()
    _, replicas = masters_and_replicas(cluster)
    first, second = replicas[0], replicas[1]
    stop_all([first, second])
    # Other pods now hold their old IPs and answer on the cluster bus with their own IDs.
    for replica in (first, second):
        nodes.new(pod=f"new-owner-of-{replica.ip}", ip=replica.ip).start()
    # Back on new IPs, without a peers list: the state a recovery that ended too early leaves.
    for replica in (first, second):
        replica.ip = loopback.allocate()
        replica.peers = ()
        replica.start()
    ids = {node.pod: myself(node).id for node in cluster}
    deadline = time.monotonic() + 20
    blind = False
    while not blind and time.monotonic() < deadline:
        blind = _peers_without_address(first) == [ids[second.pod]] and _peers_without_address(second) == [
            ids[first.pod]
        ]
        time.sleep(0.2)
    # Redis always gets there; Valkey 9 may repair it before it is ever seen.
    if nodes.binaries.engine.name == "redis":
        assert blind, f"{_peers_without_address(first)} {_peers_without_address(second)}"
    # Redis does not repair this by itself: each waits for the other to ping it. Every
    # node gets five rounds of gossip from each of its peers, and still nothing changes.
    # Valkey 9 repairs it within those rounds; peer recovery must then find nothing to do.
    wait_gossip_rounds(cluster, rounds=5)
    still_blind = bool(_peers_without_address(first) or _peers_without_address(second))
    if nodes.binaries.engine.name == "redis":
        assert _peers_without_address(first) == [ids[second.pod]]
        assert _peers_without_address(second) == [ids[first.pod]]
        assert cluster_info(first)["cluster_state"] == "ok", "noaddr hides from cluster_state"

    for node in cluster:
        node.peers = tuple(peer.ip for peer in cluster)
        node.write_files()
    recovery = first.run_script("peer-recovery.sh", env={"REDIS_PEER_RECOVERY_TIMEOUT_SECONDS": "30"}, timeout=60)
    assert recovery.returncode == 0, recovery.stdout
    if still_blind:
        assert "sent CLUSTER MEET" in recovery.stdout, "a node with a noaddr peer called itself healthy"
    wait_cluster_ok(cluster, timeout=30)
    assert _peers_without_address(first) == [] and _peers_without_address(second) == []


def test_without_peers_all_pods_on_new_ips_stay_down_as_in_the_seed(
    nodes: LocalNodes, loopback: LoopbackAddresses
) -> None:
    cluster = nodes.cluster()
    new_ips = loopback.allocate_many(len(cluster))
    # The seed's design: only the myself line is fixed, nobody is told where the others are.
    _restart_all_on_new_ips(cluster, new_ips, peers=[])

    # Right after a start a node may count its unreachable peers as up for a node-timeout
    # (2 s here); once every node has noticed, the cluster is down, and it stays down.
    deadline = time.monotonic() + 20
    while not all(cluster_info(node)["cluster_state"] == "fail" for node in cluster):
        assert time.monotonic() < deadline, "the seed's cluster never noticed its peers were gone"
        time.sleep(0.5)
    # Watched for two of peer-recovery's 3 s rounds: staying down over time is the claim
    # itself (with nobody reachable, no event would show that nothing happened).
    samples: list[dict[str, str]] = []
    end = time.monotonic() + 6
    while time.monotonic() < end:
        samples.append({node.pod: cluster_info(node)["cluster_state"] for node in cluster})
        time.sleep(1)
    assert all(state == "fail" for sample in samples for state in sample.values()), samples
    for node in cluster:
        assert _probe(node, "probe-readiness.sh").returncode == 1

    # peer-recovery with nobody to meet gives up at its bound instead of looping forever.
    started = time.monotonic()
    bounded = _probe(cluster[0], "peer-recovery.sh", REDIS_PEER_RECOVERY_TIMEOUT_SECONDS="3")
    assert bounded.returncode == 1 and "giving up" in bounded.stdout, bounded.stdout
    assert time.monotonic() - started < 8

    # The same data dirs recover as soon as the peers are known: the missing piece is
    # CLUSTER MEET, nothing else.
    for node in cluster:
        node.peers = tuple(new_ips)
        node.write_files()
    recoveries = [
        subprocess.Popen(
            [node.shell, str(Path(node.paths.conf_dir) / "peer-recovery.sh")],
            env=node.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for node in cluster
    ]
    try:
        took = wait_cluster_ok(cluster, timeout=60)
        outputs = [process.communicate(timeout=30)[0] for process in recoveries]
    finally:
        for process in recoveries:
            kill_session(process.pid)
            process.wait(timeout=10)
    assert all(process.returncode == 0 for process in recoveries), outputs
    assert any("sent CLUSTER MEET" in output for output in outputs), outputs
    print(f"\nseed design: still down after 8s; peer-recovery run afterwards fixed it in {took:.1f}s")


def test_peer_recovery_does_not_pull_in_a_node_that_does_not_know_this_cluster(
    nodes: LocalNodes, loopback: LoopbackAddresses
) -> None:
    cluster = nodes.cluster()
    stranger = nodes.new(pod="scaled-out-0")
    stranger.start()
    new_ips = loopback.allocate_many(len(cluster))
    _restart_all_on_new_ips(cluster, new_ips, peers=[*new_ips, stranger.ip])
    wait_cluster_ok(cluster, timeout=90)
    # Every node's peer-recovery has seen the cluster healthy and ended: it had its chance
    # to meet the stranger, and did not.
    _wait_peer_recovery_ended(cluster)

    # The fresh pod (e.g. just scaled out, already listed in peers) is left to the bootstrap.
    assert cluster_info(stranger)["cluster_known_nodes"] == "1"
    for node in cluster:
        assert stranger.ip not in {entry.host for entry in cluster_nodes(node)}


def test_one_crashed_master_back_on_a_new_ip_rejoins_as_a_replica(
    nodes: LocalNodes, loopback: LoopbackAddresses
) -> None:
    """The everyday case: one pod rescheduled. Its replica took over meanwhile; the pod
    comes back on another IP and must rejoin, found by the others at its new address."""
    cluster = nodes.cluster()
    masters, _ = masters_and_replicas(cluster)
    crashed = masters[0]
    successor = replica_of(crashed, cluster)
    crashed_id = myself(crashed).id
    crashed.kill()
    deadline = time.monotonic() + 30
    while successor.client().info("replication")["role"] != "master":
        assert time.monotonic() < deadline, "the replica never took over"
        time.sleep(0.2)

    crashed.ip = loopback.allocate()
    crashed.peers = tuple(node.ip for node in cluster)
    crashed.start()
    took = wait_cluster_ok(cluster, timeout=60)

    assert myself(crashed).id == crashed_id, "the node must keep its identity (nodes.conf)"
    assert myself(crashed).flags == {"myself", "slave"} and myself(crashed).master_id == myself(successor).id
    _wait_peer_recovery_ended([crashed])
    print(f"\none pod back on a new IP: healthy {took:.1f}s after its start")


# ---------------------------------------------------------------------------------------
# preStop
# ---------------------------------------------------------------------------------------


@ONE_WAY_PER_PASS
def test_prestop_on_a_master_hands_over_without_losing_acknowledged_writes(nodes_tls_too: LocalNodes) -> None:
    cluster = nodes_tls_too.cluster()
    masters, _ = masters_and_replicas(cluster)
    master = masters[0]
    replica = replica_of(master, cluster)
    master_slots = myself(master).slots
    tag = key_in_slots(master_slots, "t")

    # Acknowledged = on the master and on at least one replica (SET, then WAIT 1 on the
    # same connection), every key in the master's slots.
    writer = Writer(cluster_client(cluster), f"{{{tag}}}", mode="wait", pace=0).start()
    try:
        writer.wait_acknowledged(200, durable=True, timeout=10)
        started = time.monotonic()
        hook = master.stop(prestop=True)
        took = time.monotonic() - started
    finally:
        writer.stop()
    acknowledged = writer.durable()

    assert hook is not None and hook.returncode == 0, hook and hook.stderr
    assert f"replica {replica.ip}:6379 is master now" in hook.stdout, hook.stdout
    assert master.password not in hook.stdout + hook.stderr
    # The writer was cut off by the handover (MOVED from the old master) or the shutdown.
    assert writer.failures(), "the writer never noticed the master going away"

    assert replica.client().info("replication")["role"] == "master"
    assert myself(replica).slots == master_slots
    keys = list(acknowledged)
    assert replica.client().mget(keys) == [acknowledged[key] for key in keys], "an acknowledged write was lost"

    remaining = [node for node in cluster if node.is_running()]
    for node in remaining:
        assert cluster_info(node)["cluster_state"] == "ok"
    print(f"\npre-stop handover took {took:.2f}s (including SIGTERM); {len(acknowledged)} acknowledged writes kept")


def test_prestop_returns_at_once_on_a_replica_and_on_a_master_without_a_linked_replica(nodes: LocalNodes) -> None:
    cluster = nodes.cluster()
    masters, replicas = masters_and_replicas(cluster)

    replica = replicas[0]
    started = time.monotonic()
    hook = _probe(replica, "pre-stop.sh")
    assert hook.returncode == 0 and hook.stdout == "", hook.stdout + hook.stderr
    assert time.monotonic() - started < 1.5
    assert replica.client().info("replication")["role"] == "slave"

    master = masters[0]
    replica_of(master, cluster).kill()
    # Once the link is gone INFO replication no longer lists the replica as online.
    deadline = time.monotonic() + 10
    while master.client().info("replication")["connected_slaves"] != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    started = time.monotonic()
    hook = _probe(master, "pre-stop.sh")
    assert hook.returncode == 0
    assert "nothing to hand over" in hook.stdout
    assert time.monotonic() - started < 1.5
    assert master.client().info("replication")["role"] == "master"


def test_prestop_lets_a_replica_finish_its_first_aof_so_that_sigterm_is_not_dropped(nodes: LocalNodes) -> None:
    cluster = nodes.cluster()
    masters, _ = masters_and_replicas(cluster)
    master = masters[0]
    replica = replica_of(master, cluster)
    tag = key_in_slots(myself(master).slots, "t")
    writer = master.client()
    for i in range(8):
        writer.set(f"{{{tag}}}:{i}", i)
    assert writer.execute_command("WAIT", 1, 5000) == 1

    def begin_first_aof() -> None:
        # What a replica goes through after a full sync: AOF off, then a rewrite to create
        # it again. rdb-key-save-delay (0.25 s per key) keeps the rewrite running ~2 s.
        client = replica.client()
        client.config_set("rdb-key-save-delay", 250_000)
        client.config_set("appendonly", "no")
        client.config_set("appendonly", "yes")
        assert client.info("persistence")["aof_rewrite_in_progress"] == 1

    # The trap: a SIGTERM in this window is dropped and the server runs on.
    begin_first_aof()
    os.kill(replica.pid, signal.SIGTERM)
    # Redis says it refuses to exit, and runs on.
    deadline = time.monotonic() + 10
    while "can't exit" not in replica.log_tail():
        assert replica.is_running() and time.monotonic() < deadline, replica.log_tail()
        time.sleep(0.05)
    assert replica.is_running(), "Redis no longer drops SIGTERM while writing its first AOF"
    deadline = time.monotonic() + 10
    while replica.client().info("persistence")["aof_rewrite_in_progress"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    # With pre-stop first, as the kubelet runs it: one SIGTERM is enough.
    begin_first_aof()
    started = time.monotonic()
    hook = _probe(replica, "pre-stop.sh")
    waited = time.monotonic() - started
    assert hook.returncode == 0, hook.stdout + hook.stderr
    assert replica.client().info("persistence")["aof_rewrite_in_progress"] == 0
    assert 1 <= waited < 10, f"pre-stop returned after {waited:.1f}s"
    process = replica.process
    os.kill(process.pid, signal.SIGTERM)
    process.wait(timeout=5)
    assert process.returncode == 0


def test_prestop_does_not_hold_a_master_whose_replica_is_stopping_too(nodes: LocalNodes) -> None:
    """Every pod deleted at once (a namespace deletion, a full restart): each replica's hook
    returns and the kubelet SIGTERMs it; the masters must not wait out the whole bound for a
    handover to replicas that are gone."""
    cluster = nodes.cluster()
    masters, _ = masters_and_replicas(cluster)

    def stop_like_the_kubelet(node: LocalNode) -> tuple[float, str]:
        started = time.monotonic()
        hook = _probe(node, "pre-stop.sh")
        took = time.monotonic() - started
        node.stop()
        return took, hook.stdout

    with ThreadPoolExecutor(max_workers=len(cluster)) as pool:
        results = dict(zip((n.pod for n in cluster), pool.map(stop_like_the_kubelet, cluster)))
    for master in masters:
        took, output = results[master.pod]
        assert took < PRESTOP_TIMEOUT_SECONDS / 4, f"{master.pod} held for {took:.1f}s: {output}"
    assert not any(node.is_running() for node in cluster)
