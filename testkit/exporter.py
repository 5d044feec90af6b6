"""redis_exporter beside a local node as the pod runs it (its arguments from
`components.metrics_exporter`, the Secret's password file), scraped over HTTP and stopped by
pid, and the Prometheus text format it serves, parsed.

The binary is Debian's prometheus-redis-exporter at the release of the pod's image, from
`.engines/current/monitoring/bin/` (tools/fetch-engines.sh). In the pod the exporter dials
`localhost`, the name the node certificate covers; here every node has a loopback address
of its own, so each exporter resolves `localhost` to its node's address through a hosts
file of its own (nss_wrapper, `sandbox.name_resolution`). Go's own resolver reads
/etc/hosts and would ignore that file, hence `GODEBUG=netdns=cgo`, which has Go ask libc
(where nss_wrapper sits). The arguments stay exactly the pod's but for the listen address:
each exporter listens on its node's address, as on the pod's IP.
"""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from components.metrics_exporter import CLUSTER_VIEW_SCRIPT, EXPORTER_PORT, METRICS_PATH, exporter_args, password_file
from sandbox.engine_binaries import ENGINES_DIR
from sandbox.name_resolution import resolving_environment, write_hosts
from sandbox.processes import alive, kill_and_reap

EXPORTER = ENGINES_DIR / "monitoring" / "bin" / "redis_exporter"
PROMTOOL = ENGINES_DIR / "monitoring" / "bin" / "promtool"
# `Redis Metrics Exporter 1.86.0-1    build date: ...` (Debian's build; upstream's says v1.86.0)
_BANNER = re.compile(r"Redis Metrics Exporter v?(\d+)\.(\d+)\.(\d+)")
PASSWORD_FILE = "exporter-passwords.json"
LOG_FILE = "exporter.log"

# ---------------------------------------------------------------------------------------
# The text format.
# ---------------------------------------------------------------------------------------

# name{labels} value [timestamp]; label values are quoted with \\, \" and \n escaped.
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Metrics:
    """One scrape: every sample, in the order served."""

    samples: tuple[Sample, ...]

    def names(self) -> set[str]:
        return {sample.name for sample in self.samples}

    def series(self, name: str) -> list[Sample]:
        return [sample for sample in self.samples if sample.name == name]

    def value(self, name: str, **labels: str) -> Optional[float]:
        """The value of the one sample of `name` whose labels include `labels`; None when
        there is none (more than one is a mistake of the caller's)."""
        found = [s for s in self.series(name) if all(s.labels.get(k) == v for k, v in labels.items())]
        if len(found) > 1:
            raise ValueError(f"{len(found)} samples of {name} match {labels}: {found}")
        return found[0].value if found else None

    def labels(self, name: str) -> Optional[Mapping[str, str]]:
        """The labels of the one sample of `name` (None when there is none)."""
        found = self.series(name)
        if len(found) > 1:
            raise ValueError(f"{len(found)} samples of {name}: {found}")
        return found[0].labels if found else None


def parse_metrics(text: str) -> Metrics:
    """The samples of a scrape in the Prometheus text format (comments and types skipped)."""
    samples = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"not a sample line: {line!r}")
        name, label_text, value = match.groups()
        samples.append(Sample(name, _parse_labels(label_text or "", line), _parse_value(value)))
    return Metrics(tuple(samples))


def _parse_labels(text: str, line: str) -> dict[str, str]:
    labels = {}
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        if match is None:
            raise ValueError(f"bad labels in {line!r}")
        labels[match[1]] = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m[0]], match[2])
        position = match.end()
    return labels


def _parse_value(text: str) -> float:
    special = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    return special[text] if text in special else float(text)


# ---------------------------------------------------------------------------------------
# The process.
# ---------------------------------------------------------------------------------------


def exporter_version(binary: Path = EXPORTER) -> tuple[int, int, int]:
    """The release the binary says it is (it logs its banner on `--version`)."""
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    match = _BANNER.search(done.stdout + done.stderr)
    if match is None:
        raise RuntimeError(f"{binary} --version says {(done.stdout + done.stderr).strip()!r}")
    return int(match[1]), int(match[2]), int(match[3])


@dataclass
class LocalExporter:
    """One exporter for the node at `node_host:redis_port`, run from `work_dir` (its password
    file, hosts file and log)."""

    pod: str
    node_host: str
    redis_port: int
    password: str
    work_dir: Path
    tls_ca_file: Optional[str] = None
    # What the exporter dials: `localhost` as in the pod, resolved to `resolves_to`
    # (default: the node's address).
    host: str = "localhost"
    resolves_to: Optional[str] = None
    # Where it listens, port EXPORTER_PORT (default: the node's address, as on the pod's IP).
    listen_host: Optional[str] = None
    process: Optional[subprocess.Popen] = field(default=None, init=False, repr=False)

    @property
    def listen_address(self) -> str:
        return f"{self.listen_host or self.node_host}:{EXPORTER_PORT}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / LOG_FILE

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    def args(self) -> list[str]:
        return exporter_args(
            self.redis_port,
            self.tls_ca_file,
            str(self.work_dir / PASSWORD_FILE),
            host=self.host,
            listen_address=self.listen_address,
            script_path=str(CLUSTER_VIEW_SCRIPT),
        )

    def start(self, timeout: float = 15.0) -> int:
        """Starts the exporter and waits until it accepts HTTP connections; returns its pid."""
        if not EXPORTER.is_file():
            raise FileNotFoundError(f"{EXPORTER} is missing: run `sh tools/fetch-engines.sh`")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        secret = self.work_dir / PASSWORD_FILE
        secret.unlink(missing_ok=True)
        descriptor = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            # The Secret's file as the pod mounts it: keyed by the address the pod's exporter dials.
            handle.write(password_file(self.password, self.redis_port, bool(self.tls_ca_file), self.host))
        hosts = self.work_dir / "hosts"
        write_hosts(hosts, {self.host: self.resolves_to or self.node_host})
        # A fresh environment: the exporter takes REDIS_* and REDIS_EXPORTER_* variables as
        # defaults for its flags, and none of this process's may leak in.
        env = resolving_environment(hosts, {"PATH": "/usr/bin:/bin", "GODEBUG": "netdns=cgo"})
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(EXPORTER), *self.args()],
                cwd=self.work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the exporter of {self.pod} exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection((self.listen_host or self.node_host, EXPORTER_PORT), timeout=0.5):
                    return self.process.pid
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"the exporter of {self.pod} does not listen on {self.listen_address}") from None
                time.sleep(0.05)

    def scrape(self, timeout: float = 10.0) -> Metrics:
        """One scrape of /metrics, as Prometheus makes it (each makes the exporter query its node)."""
        # No proxy: an http_proxy of the environment must not carry a loopback scrape away.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{self.listen_address}{METRICS_PATH}", timeout=timeout) as response:
            return parse_metrics(response.read().decode())

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Kills the exporter by its pid (its session: it is the session's leader)."""
        if self.process is None:
            return
        kill_and_reap(self.process, f"the exporter of {self.pod}")

    def is_running(self) -> bool:
        return self.process is not None and alive(self.process.pid)
