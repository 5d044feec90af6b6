"""Shared fixtures for the tests that run real servers of the engine under test (`--engine`,
tests/conftest.py) as local "pods".

Addresses come from 127.0.10.0/24 to 127.0.19.0/24 (`testkit.redis_nodes.TEST_OCTETS`),
locked per address so parallel runs never collide. Every node a test creates is killed by
pid (its whole session) when the test ends, failed or not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

import pytest

from components.stack_settings import StackSettings
from sandbox.engine_binaries import EngineBinaries
from testkit.redis_nodes import TEST_OCTETS, LocalNodes, LoopbackAddresses, dash, fast_settings
from testkit.sandbox_support import ManagedSandbox


@pytest.fixture(scope="session")
def loopback() -> Iterator[LoopbackAddresses]:
    # Session-wide: an address is never handed out twice in a run, so a test never meets a
    # previous test's node (or its lingering connections) at the same address.
    with LoopbackAddresses(TEST_OCTETS) as addresses:
        yield addresses


@pytest.fixture
def nodes(tmp_path: Path, loopback: LoopbackAddresses, engine: EngineBinaries) -> Iterator[LocalNodes]:
    """The test's nodes (`LocalNodes`) of the engine under test, their scripts run under
    dash as in the image."""
    try:
        shell = dash()
    except RuntimeError as error:
        pytest.fail(str(error))
    group = LocalNodes(tmp_path / "nodes", loopback, shell=shell, binaries=engine)
    try:
        yield group
    finally:
        leftovers = group.close()
        assert not leftovers, f"processes survived the cleanup: {leftovers}"


@pytest.fixture
def engine_settings(engine: EngineBinaries):
    """`parse_settings` for the engine under test: `engine_settings(shards="4")`."""

    def settings(**values: str) -> StackSettings:
        return fast_settings(engine.engine.name, **values)

    return settings


@pytest.fixture
def make_sandbox(tmp_path: Path, engine: EngineBinaries) -> Iterator[Callable[..., ManagedSandbox]]:
    """Sandboxes of the engine under test on 127.0.<octet>.0/24, each stopped by pid (and any
    partition healed) when the test ends (`ManagedSandbox`); the suites that use it own their
    octets. `make(octet, config={"durability": "bounded"})`: stack settings besides the dev
    stack's."""
    created: list[ManagedSandbox] = []

    def make(octet: int, config: Optional[Mapping[str, str]] = None) -> ManagedSandbox:
        managed = ManagedSandbox(tmp_path / f"sandbox-{octet}", octet, engine=engine.engine.name, config=config)
        created.append(managed)
        return managed

    yield make
    problems = []
    for managed in created:
        problems += managed.close()
    assert not problems, f"processes outlived Sandbox.down: {problems}"
