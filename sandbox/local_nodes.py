"""Run Redis "pods" as local processes, each on a loopback address of its own.

A `LocalNode` gets what Kubernetes gives a pod: a conf dir with the ConfigMap's files
(`config_files`, scripts mode 0755), a secret dir with `password` and `auth.conf` (mode
0600), a data dir that survives restarts, POD_IP and `script_environment` in its
environment, and `sh entrypoint.sh redis-server redis.conf` as its command. So the sandbox
runs the very files a pod runs; only the paths and a `bind` line differ.

Each node runs in a session of its own: the entrypoint exec's redis-server, which thereby
becomes the session leader (its pid is `LocalNode.pid`), and the background peer-recovery
and every redis-cli it starts stay in that session even when `timeout` moves them to a
process group of their own. Stopping a node ends the whole session, as a container's end
would.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from components.redis_node_files import (
    AUTH_CONF_FILE,
    BUS_PORT,
    PASSWORD_FILE,
    PRESTOP_TIMEOUT_SECONDS,
    REDIS_CONF_FILE,
    REDIS_PORT,
    SCRIPT_NAMES,
    NodePaths,
    config_files,
    render_auth_conf,
    script_environment,
)
from components.stack_settings import StackSettings

LOCK_DIR = Path(tempfile.gettempdir()) / "redis-eks-loopback-locks"
LOG_FILE = "redis.log"


class LoopbackAddresses:
    """Hands out 127.0.<octet>.<host> addresses nobody else uses right now.

    Every address handed out holds an exclusive lock file until released, so test runs in
    parallel processes (or two people running the suite at once) never get the same one;
    the kernel drops a dead process's locks. An address whose ports are bound by a process
    that does not take part in the locking is skipped as well.
    """

    def __init__(self, third_octets: Iterable[int] = range(10, 20), ports: Sequence[int] = (REDIS_PORT, BUS_PORT)):
        self.third_octets = tuple(third_octets)
        if not self.third_octets or not all(0 <= octet <= 255 for octet in self.third_octets):
            raise ValueError(f"third octets must be within 0..255, got {self.third_octets}")
        self.ports = tuple(ports)
        self._locks: dict[str, int] = {}

    def allocate(self) -> str:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for octet in self.third_octets:
            for host in range(1, 255):
                address = f"127.0.{octet}.{host}"
                if address in self._locks:
                    continue
                lock = os.open(LOCK_DIR / address, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    os.close(lock)
                    if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
                        continue
                    raise
                if ports_free(address, self.ports):
                    self._locks[address] = lock
                    return address
                os.close(lock)
        raise RuntimeError(f"no free loopback address in 127.0.{{{','.join(map(str, self.third_octets))}}}.0/24")

    def allocate_many(self, count: int) -> list[str]:
        return [self.allocate() for _ in range(count)]

    def release(self, address: str) -> None:
        lock = self._locks.pop(address, None)
        if lock is not None:
            os.close(lock)

    def close(self) -> None:
        for address in list(self._locks):
            self.release(address)

    def __enter__(self) -> "LoopbackAddresses":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ports_free(address: str, ports: Sequence[int] = (REDIS_PORT, BUS_PORT)) -> bool:
    """Whether a node could listen on `ports` of `address` now."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As redis-server does: a port lingering in TIME_WAIT is free to listen on.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                return False
    return True


@dataclass
class LocalNode:
    """One Redis "pod": a redis-server process started through entrypoint.sh.

    `root` is the node's directory (conf/, secret/, data/, redis.log); data/ survives
    stop/start like a PersistentVolume. `peers` is what the ConfigMap's peers file lists.
    `extra_env` adds to or overrides the scripts' environment (e.g. shorter timeouts).
    `shell` runs the scripts; the redis image's sh is dash, so tests pass "dash".
    """

    pod: str
    ip: str
    port: int
    root: Path
    settings: StackSettings
    password: str
    peers: Sequence[str] = ()
    extra_env: Mapping[str, str] = field(default_factory=dict)
    shell: str = "sh"
    process: Optional[subprocess.Popen] = field(default=None, init=False, repr=False)

    @property
    def paths(self) -> NodePaths:
        return NodePaths(
            conf_dir=str(self.root / "conf"),
            secret_dir=str(self.root / "secret"),
            data_dir=str(self.root / "data"),
        )

    @property
    def log_path(self) -> Path:
        return self.root / LOG_FILE

    @property
    def pid(self) -> Optional[int]:
        """The pid of redis-server (the entrypoint's sh exec's into it), while running."""
        return self.process.pid if self.is_running() else None

    def environment(self) -> dict[str, str]:
        """What the container's environment would hold: POD_IP and the script settings."""
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "POD_IP": self.ip}
        env.update(script_environment(self.paths))
        env["REDIS_PORT"] = str(self.port)
        env.update(self.extra_env)
        return env

    def write_files(self) -> None:
        """(Re)writes conf/ and secret/ as the ConfigMap and Secret mounts would hold them."""
        paths = self.paths
        conf_dir, secret_dir, data_dir = Path(paths.conf_dir), Path(paths.secret_dir), Path(paths.data_dir)
        for directory in (conf_dir, secret_dir, data_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for name, content in config_files(self.settings, paths, bind_address=self.ip, peers=self.peers).items():
            _write(conf_dir / name, content, 0o755 if name in SCRIPT_NAMES else 0o644)
        secret_dir.chmod(0o700)
        _write(secret_dir / PASSWORD_FILE, self.password, 0o600)
        _write(secret_dir / AUTH_CONF_FILE, render_auth_conf(self.password), 0o600)

    def start(self, timeout: float = 15.0) -> int:
        """Starts the node and waits until its port accepts connections; returns the pid."""
        if self.is_running():
            raise RuntimeError(f"{self.pod} is already running as pid {self.process.pid}")
        self.write_files()
        conf_dir = Path(self.paths.conf_dir)
        argv = [self.shell, str(conf_dir / "entrypoint.sh"), "redis-server", str(conf_dir / REDIS_CONF_FILE)]
        if self.port != REDIS_PORT:
            # Arguments after the file override it; the bus port follows as port + 10000.
            argv += ["--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                env=self.environment(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_accepting(timeout)
        except BaseException:
            self.kill()
            raise
        return self.process.pid

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.pod} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection((self.ip, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.pod} does not accept on {self.ip}:{self.port}:\n{self.log_tail()}")
                time.sleep(0.02)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, prestop: bool = False, timeout: float = 30.0) -> Optional[subprocess.CompletedProcess]:
        """Stops the node as the kubelet does: preStop hook (if asked), SIGTERM, SIGKILL of
        everything left after `timeout`. Returns the pre-stop run, if there was one."""
        hook = None
        if self.is_running() and prestop:
            hook = self.run_script("pre-stop.sh", timeout=PRESTOP_TIMEOUT_SECONDS + 15)
        if self.process is None:
            return hook
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            # Redis drops a SIGTERM that arrives while it writes its first AOF after a full
            # sync ("Writing initial AOF, can't exit") and runs on; the kubelet would SIGKILL
            # it at the end of the grace period. The sandbox asks again each second instead,
            # so that a stop stays a clean shutdown.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return hook

    def kill(self) -> None:
        """Ends every process of the node at once (SIGKILL), as a crashed pod."""
        if self.process is None:
            return
        kill_session(self.process.pid)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # Only a process stuck in the kernel survives SIGKILL this long.
            raise RuntimeError(f"{self.pod} (pid {self.process.pid}) did not die on SIGKILL") from None
        kill_session(self.process.pid)

    def restart(self, ip: Optional[str] = None, peers: Optional[Sequence[str]] = None, prestop: bool = False) -> int:
        """Stops the node and starts it again (on a new IP and peers list, if given)."""
        self.stop(prestop=prestop)
        if ip is not None:
            self.ip = ip
        if peers is not None:
            self.peers = tuple(peers)
        return self.start()

    def run_script(self, name: str, timeout: float = 30.0, env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess:
        """Runs one of the node's scripts as the kubelet runs a probe or hook: `sh <script>`."""
        return subprocess.run(
            [self.shell, str(Path(self.paths.conf_dir) / name)],
            env={**self.environment(), **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.2) -> None:
        """Waits until the readiness probe passes."""
        deadline = time.monotonic() + timeout
        while True:
            probe = self.run_script("probe-readiness.sh", timeout=10)
            if probe.returncode == 0:
                return
            if not self.is_running():
                raise RuntimeError(f"{self.pod} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.pod} not ready after {timeout}s: {probe.stderr.strip()}")
            time.sleep(interval)

    def client(self, **kwargs: object) -> redis.Redis:
        # No retries by default: callers poll, and a node that is down should say so at once.
        options = {
            "socket_timeout": 10,
            "socket_connect_timeout": 2,
            "decode_responses": True,
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(kwargs)
        return redis.Redis(host=self.ip, port=self.port, password=self.password, **options)

    def cluster_info(self) -> dict[str, str]:
        return {key: str(value) for key, value in self.client().execute_command("CLUSTER INFO").items()}

    def cluster_nodes(self) -> list[list[str]]:
        """CLUSTER NODES, one list of fields per node (id, addr, flags, master, ...)."""
        # "CLUSTER", "NODES" as two words: redis-py then returns the text instead of its own parse.
        text = self.client().execute_command("CLUSTER", "NODES")
        return [line.split() for line in text.splitlines() if line.strip()]

    def myself(self) -> list[str]:
        return next(fields for fields in self.cluster_nodes() if "myself" in fields[2].split(","))

    def log_tail(self, characters: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except FileNotFoundError:
            return "(no log)"


def _write(path: Path, content: str, mode: int) -> None:
    # A file of the previous run may be read-only for us; a mount is replaced wholesale too.
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(content)
    os.chmod(path, mode)


def session_members(session_id: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp session ...
        fields = stat[stat.rfind(")") + 2 :].split()
        # A zombie is dead already; it only waits for its parent (or init) to reap it.
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == session_id:
            members.append(int(entry))
    return members


def kill_session(session_id: int) -> None:
    """SIGKILLs every process in the session. The session id cannot be reused while any
    member lives, so this never hits a stranger; `timeout` moving redis-cli to its own
    process group does not take it out of the session."""
    for _ in range(50):
        members = session_members(session_id)
        alive = []
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return
        time.sleep(0.02)


def replication_problems(pod: str, info: Mapping) -> list[str]:
    """What keeps one node's replication from being settled, read from its INFO."""
    problems = []
    if info["role"] == "slave":
        if info.get("master_link_status") != "up" or info.get("master_sync_in_progress"):
            problems.append(f"{pod}: link {info.get('master_link_status')}")
    else:
        for i in range(info.get("connected_slaves", 0)):
            if info[f"slave{i}"]["state"] != "online":
                problems.append(f"{pod}: replica {info[f'slave{i}']}")
    if info.get("aof_rewrite_in_progress") or info.get("loading"):
        problems.append(f"{pod}: writing its AOF or loading")
    return problems


def stop_all(nodes: Sequence[LocalNode], timeout: float = 30.0) -> None:
    """Stops nodes together, as deleting every pod at once does: SIGTERM to all, then waits."""
    for node in nodes:
        if node.is_running():
            node.process.send_signal(signal.SIGTERM)
    for node in nodes:
        node.stop(timeout=timeout)


def create_cluster(nodes: Sequence[LocalNode], replicas_per_shard: int, timeout: float = 60.0) -> None:
    """Forms a cluster of fresh nodes with `redis-cli --cluster create`, as a bootstrap
    would, and waits until every node reports cluster_state:ok."""
    password = nodes[0].password
    result = subprocess.run(
        ["redis-cli", "--cluster", "create", *[f"{node.ip}:{node.port}" for node in nodes],
         "--cluster-replicas", str(replicas_per_shard), "--cluster-yes"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REDISCLI_AUTH": password},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}\n{result.stderr}")
    wait_cluster_ok(nodes, timeout=timeout)
    wait_replicas_online(nodes, timeout=timeout)


def wait_replicas_online(nodes: Sequence[LocalNode], timeout: float = 60.0, interval: float = 0.1) -> None:
    """Waits until every running replica has finished its sync (link up, not loading) and
    shows as online at its master: before that a master has no replica to fail over to."""
    deadline = time.monotonic() + timeout
    while True:
        pending = []
        for node in nodes:
            if not node.is_running():
                continue
            pending += replication_problems(node.pod, node.client().info())
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"replication not settled after {timeout}s: {pending}")
        time.sleep(interval)


def cluster_problems(nodes: Sequence[LocalNode]) -> dict[str, str]:
    """What keeps the cluster of `nodes` from being healthy, per pod (empty when healthy).

    Healthy: every node reports cluster_state:ok, serves all 16384 slots and sees every
    other node at its current address, linked and without a fail flag. cluster_state alone
    can read ok for a moment after a restart, before a node has noticed that its peers are
    unreachable.
    """
    addresses = {f"{node.ip}:{node.port}" for node in nodes}
    problems: dict[str, str] = {}
    for node in nodes:
        try:
            info = node.cluster_info()
            if info.get("cluster_state") != "ok":
                problems[node.pod] = f"cluster_state:{info.get('cluster_state')}"
                continue
            if info.get("cluster_slots_ok") != "16384":
                problems[node.pod] = f"{info.get('cluster_slots_ok')} slots ok"
                continue
            seen = {}
            for fields in node.cluster_nodes():
                seen[fields[1].split("@")[0].split(",")[0]] = fields
            if set(seen) != addresses:
                problems[node.pod] = f"knows {sorted(seen)}"
                continue
            for address, fields in seen.items():
                flags = fields[2].split(",")
                if "myself" in flags:
                    continue
                if fields[7] != "connected" or {"fail", "fail?", "handshake", "noaddr"} & set(flags):
                    problems[node.pod] = f"{address} is {fields[2]}/{fields[7]}"
                    break
        except (redis.RedisError, OSError) as error:
            problems[node.pod] = f"error: {error}"
    return problems


def wait_cluster_ok(nodes: Sequence[LocalNode], timeout: float = 60.0, interval: float = 0.1) -> float:
    """Waits until the cluster of `nodes` is healthy (see `cluster_problems`); returns the
    seconds it took."""
    started = time.monotonic()
    while True:
        problems = cluster_problems(nodes)
        if not problems:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"cluster not healthy after {timeout}s: {problems}")
        time.sleep(interval)


def masters_and_replicas(cluster: Sequence[LocalNode]) -> tuple[list[LocalNode], list[LocalNode]]:
    """The running nodes split by their current role."""
    masters, replicas = [], []
    for node in cluster:
        if not node.is_running():
            continue
        role = node.client().info("replication")["role"]
        (masters if role == "master" else replicas).append(node)
    return masters, replicas


def replica_of(master: LocalNode, cluster: Sequence[LocalNode]) -> LocalNode:
    """A running replica of `master`."""
    master_id = master.myself()[0]
    for node in cluster:
        if node is master or not node.is_running():
            continue
        fields = node.myself()
        if "slave" in fields[2].split(",") and fields[3] == master_id:
            return node
    raise LookupError(f"{master.pod} has no replica")


def remove_node_dir(node: LocalNode) -> None:
    """Deletes a stopped node's directory (its "PVC")."""
    if node.is_running():
        raise RuntimeError(f"{node.pod} is still running")
    shutil.rmtree(node.root, ignore_errors=True)
