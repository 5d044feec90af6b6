"""The engine the integration tests run: `pytest --engine redis|valkey` (default redis);
`make test` runs the integration suite once per engine."""

from __future__ import annotations

from typing import Iterator

import pytest

from components.engines import DEFAULT_ENGINE, ENGINES
from sandbox.engine_binaries import EngineBinaries, EngineNotFound, find_binaries


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine",
        choices=tuple(ENGINES),
        default=DEFAULT_ENGINE,
        help=f"the engine whose server and CLI the integration tests run (default {DEFAULT_ENGINE})",
    )
    parser.addoption(
        "--every-variant",
        action="store_true",
        help="run the variants marked engine_pass for another engine too (CI alternates them)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "engine_pass(name): run this variant in that engine's pass only. Variants of one fault "
        "that differ in how it is injected alternate between the passes, so that CI covers each "
        "once and stays short; `make bench` (benchmarks/fault_benchmark.py) runs every variant "
        "on both engines.",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--every-variant"):
        return
    running = config.getoption("--engine")
    for item in items:
        marker = item.get_closest_marker("engine_pass")
        if marker is not None and marker.args[0] != running:
            item.add_marker(pytest.mark.skip(reason=f"runs in the {marker.args[0]} pass (engine_pass)"))


def pytest_report_header(config: pytest.Config) -> str:
    try:
        return f"engine: {find_binaries(config.getoption('--engine')).describe()}"
    except EngineNotFound as error:
        return f"engine: {config.getoption('--engine')}, not found: {error}"


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> Iterator[EngineBinaries]:
    """The server and CLI of the engine under test, first on this process's PATH for the
    session: whatever runs a CLI by its name (the provider server the tests start, a
    transport) runs this engine's."""
    try:
        binaries = find_binaries(request.config.getoption("--engine"))
    except EngineNotFound as error:
        pytest.fail(str(error), pytrace=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", binaries.search_path())
        yield binaries
