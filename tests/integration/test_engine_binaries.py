"""The binaries the integration suite runs are the lines the stack deploys: each engine's
server and CLI from .engines/ (tools/fetch-engines.sh) at its tested line, which is the
default image's line unless the README states the gap; the metrics exporter at the release
of the exporter image, and promtool, which checks the alerting rules."""

from __future__ import annotations

import subprocess
import warnings

import pytest

from components.engines import ENGINES, Engine, format_version, image_version
from components.stack_settings import DEFAULT_EXPORTER_IMAGE
from sandbox.engine_binaries import ENGINES_DIR, find_binaries
from testkit.exporter import EXPORTER, PROMTOOL, exporter_version
from tools.render_manifests import PROJECT_DIR

pytestmark = pytest.mark.integration


def _line(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version[:2]))


@pytest.mark.parametrize("engine", ENGINES.values(), ids=ENGINES)
def test_the_binary_runs_the_tested_line_of_the_engine(engine: Engine) -> None:
    binaries = find_binaries(engine)
    assert binaries.bin_dir == ENGINES_DIR / engine.name / "bin", "the suite must run the fetched engine, not PATH's"
    version = binaries.version
    assert version[:2] == engine.tested_line, (
        f"{binaries.server} is {engine.name} {format_version(version)}, but the suite is to test the "
        f"{_line(engine.tested_line)} line (default image {engine.default_image}): move the image pin "
        "and tested_line in components/engines.py together with what tools/fetch-engines.sh brings"
    )
    cli = subprocess.run([binaries.cli, "--version"], capture_output=True, text=True, check=True).stdout
    assert format_version(version) in cli, f"{binaries.cli} says {cli!r}, not {format_version(version)}"


@pytest.mark.parametrize("engine", ENGINES.values(), ids=ENGINES)
def test_a_gap_between_the_tested_and_the_deployed_line_is_stated_in_the_readme(engine: Engine) -> None:
    deployed = image_version(engine.default_image)
    assert deployed is not None
    if deployed[:2] == engine.tested_line:
        return
    readme = (PROJECT_DIR / "README.md").read_text()
    row = next((line for line in readme.splitlines() if line.startswith(f"| {engine.name.capitalize()} ")), "")
    assert engine.default_image in row and f"{_line(engine.tested_line)}." in row, (
        f"the README's engine table must say that {engine.name} deploys {engine.default_image} "
        f"but is tested on {_line(engine.tested_line)}: {row!r}"
    )


def test_the_exporter_is_the_release_of_the_exporter_image_and_promtool_runs() -> None:
    for binary in (EXPORTER, PROMTOOL):
        assert binary.is_file(), f"{binary} is missing: run `sh tools/fetch-engines.sh`"
    deployed = image_version(DEFAULT_EXPORTER_IMAGE)
    assert deployed is not None, DEFAULT_EXPORTER_IMAGE
    version = exporter_version()
    assert version[:2] == deployed[:2], (
        f"{EXPORTER} is redis_exporter {format_version(version)}, but the pods run {DEFAULT_EXPORTER_IMAGE}: "
        "tests/integration/test_exporter.py would vouch for another release's metric names and commands; "
        "move DEFAULT_EXPORTER_IMAGE (components/stack_settings.py) to what tools/fetch-engines.sh brings"
    )
    if version != deployed:
        # Unstable moves on by patch releases; the line is what the metric names follow.
        warnings.warn(
            f"redis_exporter {format_version(version)} here, {DEFAULT_EXPORTER_IMAGE} in the pods", stacklevel=1
        )
    promtool = subprocess.run([str(PROMTOOL), "--version"], capture_output=True, text=True, timeout=30)
    assert promtool.returncode == 0 and promtool.stdout.startswith("promtool, version "), promtool
