"""The nodes are reachable from this process (the local sandbox, the tests, the
benchmarks): redis-py connects to host:port, and `redis-cli` runs here with the password in
`REDISCLI_AUTH`, never in its argv."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import redis

from cluster_logic.commands import short_error
from cluster_logic.model import NodeAddress, ordinal_prefix
from cluster_logic.transports.base import (
    COMMAND_TIMEOUT_SECONDS,
    AuthenticationFailed,
    CliResult,
    NodeTransport,
    PodStatus,
    TlsOptions,
    TransportError,
)


class DirectTransport(NodeTransport):
    poll_interval = 0.1

    def __init__(
        self,
        nodes: Iterable[Mapping[str, Any] | NodeAddress],
        password: str,
        cli: str = "redis-cli",
        tls: Optional[TlsOptions] = None,
        readiness: Optional[Callable[[NodeAddress], Optional[str]]] = None,
    ) -> None:
        """`readiness`: what stands in for a pod's readiness probe, given a node that answers
        PING: why it is not ready, or None (the sandbox runs the pod's own probe script)."""
        super().__init__(password, tls)
        addresses = [n if isinstance(n, NodeAddress) else _address_from_mapping(n) for n in nodes]
        self._nodes = sorted(addresses, key=lambda n: (n.ordinal, n.pod))
        # The engine's own CLI (redis-cli, valkey-cli), a name on PATH or a path.
        self._cli = cli
        self._readiness = readiness

    @property
    def nodes(self) -> list[NodeAddress]:
        return list(self._nodes)

    def _tls_options(self) -> dict[str, Any]:
        return self._tls.redis_options() if self._tls else {}

    def running_nodes(self, count: int) -> list[NodeAddress]:
        return self._nodes[:count]

    def _make_client(self, node: NodeAddress, password: Optional[str] = None) -> redis.Redis:
        return redis.Redis(
            host=node.host,
            port=node.port,
            password=password or self._password,
            socket_timeout=COMMAND_TIMEOUT_SECONDS,
            socket_connect_timeout=2.0,
            max_connections=64,
            **self._tls_options(),
        )

    def pod_statuses(self, count: int) -> list[PodStatus]:
        with ThreadPoolExecutor(max_workers=min(16, max(1, count))) as pool:
            statuses = list(pool.map(self._probe, self._nodes[:count]))
        declared = {n.pod for n in self._nodes}
        # The node list is the whole inventory: a missing entry will never become ready.
        if len(self._nodes) < count:
            prefix = ordinal_prefix(self._nodes[0].pod) if self._nodes else ""
            for ordinal in range(count):
                pod = f"{prefix}{ordinal}" if prefix else f"node #{ordinal}"
                if pod not in declared and len(statuses) < count:
                    statuses.append(PodStatus(pod, False, "not in the nodes input"))
        return statuses

    def _probe(self, node: NodeAddress) -> PodStatus:
        probe = redis.Redis(
            host=node.host,
            port=node.port,
            password=self._password,
            socket_timeout=1.0,
            socket_connect_timeout=0.5,
            **self._tls_options(),
        )
        try:
            probe.ping()
            reason = self._readiness(node) if self._readiness is not None else None
            return PodStatus(node.pod, reason is None, reason or "", node=node)
        except redis.AuthenticationError:
            raise AuthenticationFailed(f"{node.pod} ({node.endpoint}) rejected the cluster password") from None
        except redis.ResponseError as error:
            if "WRONGPASS" in str(error) or "NOAUTH" in str(error):
                raise AuthenticationFailed(f"{node.pod} ({node.endpoint}) rejected the cluster password") from None
            return PodStatus(node.pod, False, short_error(error))
        except (redis.RedisError, OSError) as error:
            return PodStatus(node.pod, False, f"{node.endpoint}: {short_error(error)}")
        finally:
            probe.close()

    def run_cli(self, args: Sequence[str], timeout: float, via: NodeAddress) -> CliResult:
        env = dict(os.environ)
        env["REDISCLI_AUTH"] = self._password
        try:
            done = subprocess.run(
                [self._cli, *(self._tls.cli_args() if self._tls else []), *args],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise TransportError(
                f"redis-cli {args[0] if args else ''} {args[1] if len(args) > 1 else ''} "
                f"did not finish within {timeout:.0f}s"
            ) from None
        return CliResult(done.returncode, done.stdout, done.stderr)


def _address_from_mapping(item: Mapping[str, Any]) -> NodeAddress:
    try:
        return NodeAddress(
            pod=str(item["pod"]),
            host=str(item["host"]),
            port=int(item.get("port", 6379)),
            zone=str(item.get("zone") or ""),
        )
    except (KeyError, TypeError, ValueError):
        raise ValueError("each node needs pod, host and optionally port and zone") from None
