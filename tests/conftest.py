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
