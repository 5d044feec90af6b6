"""Where the sandbox, the tests and the benchmarks find an engine's server and CLI, and which
release they are: the folder `tools/fetch-engines.sh` fills (`.engines/current/<engine>/bin`, the
lines the product deploys), else this machine's PATH."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from components.engines import ENGINES, Engine, Version, format_version
from components.stack_settings import PROJECT_DIR

# tools/fetch-engines.sh keeps the build in use behind this link.
ENGINES_DIR = PROJECT_DIR / ".engines" / "current"

# `Redis server v=8.0.6 sha=...`, `Valkey server v=9.1.2 sha=...`
_BANNER = re.compile(r"^(Redis|Valkey) server v=(\d+)\.(\d+)\.(\d+)\b")


class EngineNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class EngineBinaries:
    """One engine's `<engine>-server` and `<engine>-cli`, side by side in `bin_dir`."""

    engine: Engine
    bin_dir: Path

    @property
    def server(self) -> str:
        return str(self.bin_dir / self.engine.server)

    @property
    def cli(self) -> str:
        return str(self.bin_dir / self.engine.cli)

    @property
    def version(self) -> Version:
        return _server_version(self.server, self.engine.name)

    def describe(self) -> str:
        """`valkey 9.1.2 (/work/main/.engines/current/valkey/bin)`"""
        return f"{self.engine.name} {format_version(self.version)} ({self.bin_dir})"

    def search_path(self, path: Optional[str] = None) -> str:
        """PATH with `bin_dir` first, so that a script's `$ENGINE_CLI` is this engine's CLI."""
        rest = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin") if path is None else path
        return f"{self.bin_dir}{os.pathsep}{rest}"


@functools.cache
def _server_version(server: str, engine: str) -> Version:
    try:
        banner = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError as error:
        raise EngineNotFound(f"{server} does not run: {error}") from None
    match = _BANNER.match(banner)
    if match is None or match[1].lower() != engine:
        raise EngineNotFound(f"{server} --version says {banner!r}, not a {engine} server")
    return int(match[2]), int(match[3]), int(match[4])


def find_binaries(engine: Engine | str, engines_dir: Path = ENGINES_DIR) -> EngineBinaries:
    """The engine's binaries from `.engines/`, else from PATH (server and CLI in one folder)."""
    spec = ENGINES[engine] if isinstance(engine, str) else engine
    local = engines_dir / spec.name / "bin"
    if (local / spec.server).is_file() and (local / spec.cli).is_file():
        return EngineBinaries(spec, local)
    found = shutil.which(spec.server)
    if found and (Path(found).parent / spec.cli).is_file():
        return EngineBinaries(spec, Path(found).parent)
    raise EngineNotFound(
        f"no {spec.server} and {spec.cli} in {local} or on PATH: run `make setup`, whose "
        "tools/fetch-engines.sh brings Redis and Valkey into .engines/"
    )
