"""Run Redis "pods" as local processes, each on a loopback address of its own.

A `LocalNode` gets what Kubernetes gives a pod: a conf dir with the ConfigMap's files
(`config_files`, scripts mode 0755), a secret dir with `secret_files` (`password`,
`users.acl`, `auth.conf`; mode 0600), a data dir that survives restarts, POD_IP and `script_environment` in its
environment, and `sh entrypoint.sh <engine>-server redis.conf` as its command, the engine's
binaries first on its PATH. So the sandbox runs the very files a pod runs; only the paths
and a `bind` line differ. With TLS on (`settings.tls`) it also gets a TLS dir with its
`TlsFiles` (the TLS Secret's mount: `tls.crt`, `tls.key`, `ca.crt`), `REDIS_ANNOUNCE_HOSTNAME`
(its stable DNS name, as the StatefulSet sets it) and the scripts' TLS environment; its
`tmp/` is the pod's /tmp (an emptyDir), the scripts' TMPDIR.

Each node runs in a session of its own: the entrypoint exec's the server, which thereby
becomes the session leader (its pid is `LocalNode.pid`), and the background peer-recovery
and every CLI it starts stay in that session even when `timeout` moves them to a process
group of their own. Stopping a node ends the whole session, as a container's end
would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cluster_logic.credentials import Credential
from components.redis_node_files import (
    BUS_PORT,
    PRESTOP_TIMEOUT_SECONDS,
    REDIS_CONF_FILE,
    REDIS_PORT,
    SCRIPT_NAMES,
    TLS_CA_FILE,
    NodePaths,
    announced_hostname,
    config_files,
    node_credentials,
    script_environment,
    secret_files,
)
from components.stack_settings import StackSettings
from sandbox.certificates import HEADLESS_SERVICE, TlsFiles
from sandbox.engine_binaries import EngineBinaries, find_binaries
from sandbox.processes import kill_and_reap, kill_session, stop_like_the_kubelet

LOG_FILE = "redis.log"
# What entrypoint.sh writes into the pod's TMPDIR while it holds the server back.
HOLDING_FILE = "entrypoint-holding"


class NodeStartError(RuntimeError):
    """A node's process ended, or never accepted connections, when it was started."""


def ports_free(address: str, ports: Sequence[int] = (REDIS_PORT, BUS_PORT)) -> bool:
    """Whether a node could listen on `ports` of `address` now."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As the server does: a port lingering in TIME_WAIT is free to listen on.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                return False
    return True


@dataclass
class LocalNode:
    """One Redis "pod": a server process of the settings' engine started through entrypoint.sh.

    `root` is the node's directory (conf/, secret/, data/, redis.log); data/ survives
    stop/start like a PersistentVolume. `peers` is what the ConfigMap's peers file lists.
    `extra_env` adds to or overrides the scripts' environment (e.g. shorter timeouts).
    `shell` runs the scripts; the images' sh is dash, so tests pass "dash".
    `binaries` are the engine's server and CLI (default: `find_binaries(settings.engine)`);
    a version roll starts the node again with another release's.
    `credentials` are the users its Secret holds (default: the admin with `password`, and
    the replication user); a rotation rewrites them as a Secret update would.
    `tls_files` are what its TLS Secret holds; required when `settings.tls`.
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
    binaries: Optional[EngineBinaries] = None
    credentials: Optional[Sequence[Credential]] = field(default=None, repr=False)
    tls_files: Optional[TlsFiles] = field(default=None, repr=False)
    process: Optional[subprocess.Popen] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.binaries is None:
            self.binaries = find_binaries(self.settings.engine_spec)
        if self.binaries.engine != self.settings.engine_spec:
            raise ValueError(f"{self.pod}: {self.binaries.engine.name} binaries for a {self.settings.engine} stack")
        if self.settings.tls and self.tls_files is None:
            raise ValueError(f"{self.pod}: TLS is on, but the node has no certificate (tls_files)")

    @property
    def paths(self) -> NodePaths:
        return NodePaths(
            conf_dir=str(self.root / "conf"),
            secret_dir=str(self.root / "secret"),
            data_dir=str(self.root / "data"),
            tls_dir=str(self.root / "tls"),
        )

    @property
    def tls(self) -> bool:
        return self.settings.tls

    @property
    def tls_ca_file(self) -> Optional[str]:
        """The CA certificate clients verify this node with (its own mount's ca.crt), when TLS is on."""
        return f"{self.paths.tls_dir}/{TLS_CA_FILE}" if self.tls else None

    @property
    def announced_hostname(self) -> str:
        """The stable DNS name the node announces (the StatefulSet's pod name behind the
        headless Service, in the stack's namespace)."""
        return announced_hostname(self.pod, HEADLESS_SERVICE, self.settings.namespace)

    @property
    def tmp_dir(self) -> Path:
        """The pod's /tmp (an emptyDir): the scripts' TMPDIR."""
        return self.root / "tmp"

    @property
    def log_path(self) -> Path:
        return self.root / LOG_FILE

    @property
    def pid(self) -> Optional[int]:
        """The pid of the server (the entrypoint's sh exec's into it), while running."""
        return self.process.pid if self.is_running() else None

    def environment(self) -> dict[str, str]:
        """What the container's environment would hold: POD_IP and the script settings."""
        env = {"PATH": self.binaries.search_path(), "POD_IP": self.ip, "TMPDIR": str(self.tmp_dir)}
        env.update(script_environment(self.settings.engine_spec, self.paths, tls=self.tls))
        env["REDIS_ANNOUNCE_HOSTNAME"] = self.announced_hostname
        env["REDIS_PORT"] = str(self.port)
        env.update(self.extra_env)
        return env

    def write_files(self) -> None:
        """(Re)writes conf/ and secret/ as the ConfigMap and Secret mounts would hold them."""
        paths = self.paths
        conf_dir, secret_dir, data_dir = Path(paths.conf_dir), Path(paths.secret_dir), Path(paths.data_dir)
        for directory in (conf_dir, secret_dir, data_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for name, content in config_files(self.settings, paths, bind_address=self.ip, peers=self.peers).items():
            _write(conf_dir / name, content, 0o755 if name in SCRIPT_NAMES else 0o644)
        secret_dir.chmod(0o700)
        self.write_secret()
        if self.tls:
            self.write_tls(self.tls_files)

    def write_tls(self, files: TlsFiles) -> None:
        """(Re)writes the TLS dir as the kubelet updates a Secret's mount: all files swapped at
        once. A running server goes on with what it loaded until its TLS is reloaded."""
        self.tls_files = files
        files.write(Path(self.paths.tls_dir))

    def write_secret(self) -> None:
        """(Re)writes secret/ as the Secret's mount holds it; a running node reads only what
        its scripts read from it, as a pod whose Secret changed."""
        credentials = self.credentials or node_credentials(self.settings, self.password)
        for name, content in secret_files(credentials).items():
            _write(Path(self.paths.secret_dir) / name, content, 0o600)

    def start(self, timeout: float = 15.0) -> int:
        """Starts the node and waits until its port accepts connections, or until its
        entrypoint says it holds the server back (`holding`: a full volume, a lost
        identity), as a pod's container runs either way; returns the pid."""
        if self.is_running():
            raise RuntimeError(f"{self.pod} is already running as pid {self.process.pid}")
        self.write_files()
        conf_dir = Path(self.paths.conf_dir)
        argv = [self.shell, str(conf_dir / "entrypoint.sh"), self.binaries.server, str(conf_dir / REDIS_CONF_FILE)]
        if self.port != REDIS_PORT:
            # Arguments after the file override it; the bus port follows as port + 10000.
            argv += ["--tls-port" if self.tls else "--port", str(self.port)]
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
                raise NodeStartError(f"{self.pod} exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.holding() is not None:
                return
            try:
                with socket.create_connection((self.ip, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise NodeStartError(
                        f"{self.pod} does not accept on {self.ip}:{self.port} after {timeout:.0f}s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.02)

    def holding(self) -> Optional[str]:
        """Why the entrypoint holds the server back, while it does (else None)."""
        try:
            return (self.tmp_dir / HOLDING_FILE).read_text().strip()
        except FileNotFoundError:
            return None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, prestop: bool = False, timeout: float = 30.0) -> Optional[subprocess.CompletedProcess]:
        """Stops the node as the kubelet does: preStop hook (if asked), then SIGTERM, and
        SIGKILL of everything left after `timeout`. Returns the pre-stop run, if there was one."""
        hook = None
        if self.is_running() and prestop:
            hook = self.run_script("pre-stop.sh", timeout=PRESTOP_TIMEOUT_SECONDS + 15)
        if self.process is None:
            return hook
        if self.process.poll() is None:
            stop_like_the_kubelet(self.process.pid, grace=timeout)
        self.kill()
        return hook

    def kill(self) -> None:
        """Ends every process of the node at once (SIGKILL), as a crashed pod."""
        if self.process is None:
            return
        kill_and_reap(self.process, self.pod)
        kill_session(self.process.pid)

    def run_script(
        self, name: str, timeout: float = 30.0, env: Optional[Mapping[str, str]] = None
    ) -> subprocess.CompletedProcess:
        """Runs one of the node's scripts as the kubelet runs a probe or hook: `sh <script>`."""
        return subprocess.run(
            [self.shell, str(Path(self.paths.conf_dir) / name)],
            env={**self.environment(), **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def client(self, **kwargs: object) -> redis.Redis:
        # No retries by default: callers poll, and a node that is down should say so at once.
        options = {
            "password": self.password,
            "socket_timeout": 10,
            "socket_connect_timeout": 2,
            "decode_responses": True,
            "retry": Retry(NoBackoff(), 0),
            **self.tls_client_options(),
        }
        options.update(kwargs)
        return redis.Redis(host=self.ip, port=self.port, **options)

    def tls_client_options(self) -> dict[str, object]:
        """redis-py options that reach this node over TLS when it speaks it: the chain verified
        against the cluster CA; the host name not, since the client dials the node's IP, which
        no certificate covers (tests/integration/test_tls.py verifies names for real)."""
        if not self.tls:
            return {}
        return {"ssl": True, "ssl_ca_certs": self.tls_ca_file, "ssl_cert_reqs": "required", "ssl_check_hostname": False}

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
