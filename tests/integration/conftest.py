"""Shared fixtures for the tests that run real redis-server processes as local "pods".

Addresses come from 127.0.10.0/24 to 127.0.19.0/24 (other suites use 127.0.20.0/24 and up),
locked per address so parallel runs never collide. Every node a test creates is killed by
pid (its whole session) when the test ends, failed or not.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytest

from components.stack_settings import StackSettings, parse_settings
from sandbox.local_nodes import LocalNode, LoopbackAddresses, create_cluster, session_members

PASSWORD = "sandbox-Passw0rd.for_tests-only"
# A short node timeout keeps failure detection, and so the tests, fast.
FAST_SETTINGS = parse_settings({"nodeTimeoutMs": "2000"})
THIRD_OCTETS = range(10, 20)


def _dash() -> str:
    dash = shutil.which("dash")
    if dash is None:
        pytest.fail("dash is not installed: the scripts must be tested under dash, the sh of the redis image")
    return dash


for tool in ("redis-server", "redis-cli"):
    if shutil.which(tool) is None:
        raise RuntimeError(f"{tool} is not installed: the integration tests need it (apt-get install redis-server)")


@pytest.fixture(scope="session")
def loopback() -> Iterator[LoopbackAddresses]:
    # Session-wide: an address is never handed out twice in a run, so a test never meets a
    # previous test's node (or its lingering connections) at the same address.
    with LoopbackAddresses(THIRD_OCTETS) as addresses:
        yield addresses


class NodeFactory:
    """Creates `LocalNode`s under one root and kills all of them at the end of the test."""

    def __init__(self, root: Path, loopback: LoopbackAddresses) -> None:
        self.root = root
        self.loopback = loopback
        self.nodes: list[LocalNode] = []
        self.shell = _dash()

    def new(
        self,
        pod: Optional[str] = None,
        ip: Optional[str] = None,
        settings: StackSettings = FAST_SETTINGS,
        peers: Sequence[str] = (),
        extra_env: Optional[dict[str, str]] = None,
        password: str = PASSWORD,
    ) -> LocalNode:
        pod = pod or f"redis-cluster-{len(self.nodes)}"
        node = LocalNode(
            pod=pod,
            ip=ip or self.loopback.allocate(),
            port=6379,
            root=self.root / pod,
            settings=settings,
            password=password,
            peers=tuple(peers),
            extra_env=dict(extra_env or {}),
            shell=self.shell,
        )
        self.nodes.append(node)
        return node

    def started(self, count: int, **kwargs) -> list[LocalNode]:
        nodes = [self.new(**kwargs) for _ in range(count)]
        for node in nodes:
            node.start()
        return nodes

    def cluster(self, shards: int = 3, replicas_per_shard: int = 1, **kwargs) -> list[LocalNode]:
        """A formed cluster: `shards` masters with `replicas_per_shard` replicas each."""
        nodes = self.started(shards * (1 + replicas_per_shard), **kwargs)
        create_cluster(nodes, replicas_per_shard)
        return nodes

    def cleanup(self) -> list[str]:
        leftovers = []
        for node in self.nodes:
            if node.process is None:
                continue
            pid = node.process.pid
            node.kill()
            if session_members(pid):
                leftovers.append(f"{node.pod} (session {pid})")
        return leftovers


@pytest.fixture
def password() -> str:
    return PASSWORD


@pytest.fixture
def nodes(tmp_path: Path, loopback: LoopbackAddresses) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path / "nodes", loopback)
    try:
        yield factory
    finally:
        leftovers = factory.cleanup()
        assert not leftovers, f"processes survived the cleanup: {leftovers}"
