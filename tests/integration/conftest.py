"""Shared fixtures for the tests that run real redis-server processes as local "pods".

Addresses come from 127.0.10.0/24 to 127.0.19.0/24 (`testkit.redis_nodes.TEST_OCTETS`),
locked per address so parallel runs never collide. Every node a test creates is killed by
pid (its whole session) when the test ends, failed or not.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from testkit.redis_nodes import TEST_OCTETS, LocalNodes, LoopbackAddresses, dash

for tool in ("redis-server", "redis-cli"):
    if shutil.which(tool) is None:
        raise RuntimeError(f"{tool} is not installed: the integration tests need it (apt-get install redis-server)")


@pytest.fixture(scope="session")
def loopback() -> Iterator[LoopbackAddresses]:
    # Session-wide: an address is never handed out twice in a run, so a test never meets a
    # previous test's node (or its lingering connections) at the same address.
    with LoopbackAddresses(TEST_OCTETS) as addresses:
        yield addresses


@pytest.fixture
def nodes(tmp_path: Path, loopback: LoopbackAddresses) -> Iterator[LocalNodes]:
    """The test's nodes (`LocalNodes`), their scripts run under dash as in the image."""
    try:
        shell = dash()
    except RuntimeError as error:
        pytest.fail(str(error))
    group = LocalNodes(tmp_path / "nodes", loopback, shell=shell)
    try:
        yield group
    finally:
        leftovers = group.close()
        assert not leftovers, f"processes survived the cleanup: {leftovers}"
