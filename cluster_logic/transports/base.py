"""What the cluster logic may do with the nodes, whatever the way to them: which pods are
ready (with their address and zone), a redis-py client per node, and the image's
`redis-cli` run with the cluster password, over TLS when the nodes speak it. No transport
ever puts the password in a process argv, a log line or an error."""

from __future__ import annotations

import ssl
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cluster_logic.model import NodeAddress

# redis-py waits this long for a reply. A live node answers every command the logic sends
# within it but MIGRATE, which gets a client of its own (`migrate_client`); it is how long a
# node that froze (a stopped process, a partition that drops packets) holds up the step
# that talks to it.
COMMAND_TIMEOUT_SECONDS = 8.0
# How long a node may take to answer PING when the logic asks whether it is there at all.
ANSWER_SECONDS = 2.0
# redis-py 8 retries a command on a connection error or a timeout 10 times with a backoff of
# up to 10 s: a dead node would hold a step for about a minute. The logic polls and judges
# nodes itself, so a client tries once more at once after a connection error (a pooled
# connection the server had closed) and never after a timeout (a node that froze stays so).
CLIENT_RETRY = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


@dataclass(frozen=True)
class PodStatus:
    pod: str
    ready: bool
    reason: str = ""
    node: Optional[NodeAddress] = None


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class TlsOptions:
    """How to reach nodes that speak TLS only: the cluster CA's certificate (a PEM file).

    The chain is verified, the host name is not: the cluster logic addresses each node by
    the IP (or the port-forward) it was listed at, never by a name a certificate could
    carry, and only a holder of a key the cluster's CA signed can answer."""

    ca_file: str

    def redis_options(self) -> dict[str, Any]:
        return {"ssl": True, "ssl_ca_certs": self.ca_file, "ssl_cert_reqs": "required", "ssl_check_hostname": False}

    def cli_args(self, ca_file: Optional[str] = None) -> list[str]:
        return ["--tls", "--cacert", ca_file or self.ca_file]

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        context.check_hostname = False
        return context


class TransportError(Exception):
    """A node could not be reached or a command could not be run; message holds no secret."""


class AuthenticationFailed(TransportError):
    pass


class NodeTransport(ABC):
    """What the cluster logic may do with the nodes; see the module docstring."""

    #: How often to re-list pods while waiting for readiness.
    poll_interval: float = 0.2
    #: Nodes probed at once. Threads pay off only when each round trip is slow.
    probe_concurrency: int = 1

    def __init__(self, password: str, tls: Optional[TlsOptions] = None) -> None:
        self._password = password
        self._tls = tls
        self._clients: dict[NodeAddress, redis.Redis] = {}
        self._lock = threading.Lock()

    @property
    def password(self) -> str:
        # MIGRATE ... AUTH needs it: the password goes to Redis in a command, never argv.
        return self._password

    @abstractmethod
    def pod_statuses(self, count: int) -> list[PodStatus]:
        """Status of the first `count` pods by ordinal (missing ones are not ready)."""

    @abstractmethod
    def running_nodes(self, count: int) -> list[NodeAddress]:
        """The first `count` nodes that run now, ready or not (a node whose users are being
        changed may fail its readiness probe meanwhile)."""

    @abstractmethod
    def _make_client(self, node: NodeAddress, password: Optional[str] = None) -> redis.Redis: ...

    def use_tls(self, tls: TlsOptions) -> None:
        """Speaks TLS from now on (before the first client is made)."""
        with self._lock:
            if self._clients:
                raise RuntimeError("use_tls must come before any client")
            self._tls = tls

    def mounted_password_hash(self, node: NodeAddress) -> Optional[str]:
        """The SHA-256 of the admin password file the pod's scripts read now, or None where
        that file is not behind a lagging mount (a local node's is written at once)."""
        return None

    def client_as(self, node: NodeAddress, password: str) -> redis.Redis:
        """A client of its own (the caller closes it) logged in with another admin password."""
        return self._new_client(node, password)

    def answers(self, node: NodeAddress, seconds: float = ANSWER_SECONDS) -> bool:
        """Whether `node` answers PING within `seconds`, on a connection of its own: what a
        step asks before it waits out the command timeout on a node that may be gone."""
        client = self._new_client(node, timeout=seconds)
        client.connection_pool.connection_kwargs["socket_connect_timeout"] = seconds
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            close_client(client)

    def migrate_client(self, node: NodeAddress, seconds: float) -> redis.Redis:
        """A client of its own (the caller closes it) that waits `seconds` for a reply: for
        MIGRATE, which blocks the node while it waits on another one."""
        return self._new_client(node, timeout=seconds)

    def _new_client(
        self, node: NodeAddress, password: Optional[str] = None, timeout: Optional[float] = None
    ) -> redis.Redis:
        client = self._make_client(node, password)
        # Before the pool has made a connection: each one it makes takes these.
        options = client.connection_pool.connection_kwargs
        options["retry"] = CLIENT_RETRY
        if timeout is not None:
            options["socket_timeout"] = timeout
        return client

    @abstractmethod
    def run_cli(self, args: Sequence[str], timeout: float, via: NodeAddress) -> CliResult:
        """Runs `redis-cli args...` authenticated with the cluster password, next to `via`."""

    def client(self, node: NodeAddress) -> redis.Redis:
        with self._lock:
            found = self._clients.get(node)
            if found is None:
                found = self._clients[node] = self._new_client(node)
            return found

    def forget(self, node: NodeAddress) -> None:
        """Drops the cached client of a node that failed, so the next use reconnects."""
        with self._lock:
            client = self._clients.pop(node, None)
        if client is not None:
            close_client(client)

    def release_idle(self, node: Optional[NodeAddress] = None) -> None:  # noqa: B027 - a hook, a no-op here
        """Lets go of the connections no call is using (to `node`, or to every node); a
        transport whose connections are costly to hold (a port-forward each) does, the
        others keep them for the next call."""

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            close_client(client)

    def __enter__(self) -> NodeTransport:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def close_client(client: redis.Redis) -> None:
    # A client built on a pool of our own does not close that pool (redis-py's
    # auto_close_connection_pool is off then): disconnect it, or its sockets wait for the
    # garbage collector.
    try:
        client.close()
        client.connection_pool.disconnect()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass
