"""Fixtures for the cluster bootstrap tests: plain redis-server nodes on loopback, and a
client for the SDK's own dynamic provider server (`python -m pulumi.dynamic`) over gRPC.

Every node is started by pid and stopped by pid; `RedisNodes` is a context manager so a
failing test still stops what it started.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import redis

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "test-Passw0rd.for_bootstrap-only"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisNode:
    pod: str
    host: str
    port: int
    zone: str
    directory: Path
    process: Optional[subprocess.Popen] = None

    def as_input(self) -> dict[str, Any]:
        return {"pod": self.pod, "host": self.host, "port": self.port, "zone": self.zone}

    def client(self, password: str = PASSWORD, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=password, socket_timeout=10, **kwargs)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class RedisNodes:
    """A set of redis-server processes, one per address, each in its own directory."""

    nodes: list[RedisNode]
    password: str = PASSWORD
    node_timeout_ms: int = 2000
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bootstrap-nodes-")))

    @classmethod
    def on_subnet(
        cls,
        subnet: int,
        count: int,
        zones: Sequence[str] = ("zone-a", "zone-b", "zone-c"),
        stateful_set: str = "redis-cluster",
        first_host: int = 1,
        **kwargs: Any,
    ) -> "RedisNodes":
        """`count` nodes on 127.0.<subnet>.<first_host + i>:6379, pod i in zone i % len(zones)
        (the round-robin spread a topology spread constraint gives a StatefulSet)."""
        if not 20 <= subnet <= 39:
            raise ValueError("bootstrap tests use 127.0.20.0/24 to 127.0.39.0/24 only")
        nodes = [
            RedisNode(
                pod=f"{stateful_set}-{i}",
                host=f"127.0.{subnet}.{first_host + i}",
                port=6379,
                zone=zones[i % len(zones)],
                directory=Path(),
            )
            for i in range(count)
        ]
        return cls(nodes=nodes, **kwargs)

    def __enter__(self) -> "RedisNodes":
        try:
            self.start(self.nodes)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self, nodes: Iterable[RedisNode]) -> None:
        started = []
        for node in nodes:
            node.directory = self.root / f"{node.host}-{node.port}"
            # A restart of a node keeps nothing: the tests want fresh, empty nodes.
            shutil.rmtree(node.directory, ignore_errors=True)
            node.directory.mkdir(parents=True)
            argv = [
                REDIS_SERVER,
                "--bind", node.host,
                "--bind-source-addr", node.host,
                "--port", str(node.port),
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node.directory / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--requirepass", self.password,
                "--masterauth", self.password,
                "--appendonly", "no",
                "--save", "",
                "--dir", str(node.directory),
                "--logfile", str(node.directory / "redis.log"),
                "--daemonize", "no",
                "--protected-mode", "no",
                "--repl-diskless-sync", "yes",
                "--repl-diskless-sync-delay", "0",
            ]
            node.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            started.append(node)
        for node in started:
            self._wait_accepting(node)

    def _wait_accepting(self, node: RedisNode, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if node.process is not None and node.process.poll() is not None:
                log = (node.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server for {node.pod} exited: {log}")
            try:
                with socket.create_connection((node.host, node.port), timeout=0.2):
                    pass
                if node.client(socket_connect_timeout=0.5).ping():
                    return
            except (OSError, redis.RedisError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def kill(self, node: RedisNode) -> None:
        """Stops one node abruptly, as a crashed pod would."""
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(timeout=10)

    def stop(self) -> None:
        for node in self.nodes:
            proc = node.process
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
        for node in self.nodes:
            proc = node.process
            if proc is None:
                continue
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def inputs(self) -> list[dict[str, Any]]:
        return [node.as_input() for node in self.nodes]

    def by_pod(self, pod: str) -> RedisNode:
        return next(node for node in self.nodes if node.pod == pod)


def count_keys(nodes: Sequence[RedisNode], password: str = PASSWORD) -> int:
    """Keys held by masters (replicas hold copies)."""
    total = 0
    for node in nodes:
        if not node.alive:
            continue
        client = node.client(password)
        if client.info("replication")["role"] == "master":
            total += client.dbsize()
    return total


# ---------------------------------------------------------------------------------------
# The SDK's dynamic provider server, driven over gRPC as the engine drives it.
# ---------------------------------------------------------------------------------------

SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
SIG_KEY = "4dabf18193072939515e22adb298388d"


def secret(value: Any) -> dict[str, Any]:
    """A property value marked secret the way the engine marks it on the wire."""
    return {SIG_KEY: SECRET_SIG, "value": value}


class ProviderServer:
    """`python -m pulumi.dynamic` in its own process, as the engine launches it."""

    def __init__(self) -> None:
        self.process: Optional[subprocess.Popen] = None
        self.channel: Any = None
        self.stub: Any = None

    def __enter__(self) -> "ProviderServer":
        import grpc
        from pulumi.runtime.proto import provider_pb2_grpc

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pulumi.dynamic"],
            cwd=str(REPO_ROOT),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.isdigit():
            err = self.process.stderr.read().decode() if self.process.stderr else ""
            self.__exit__()
            raise RuntimeError(f"provider server did not print its port: {line!r} {err}")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{line}")
        self.stub = provider_pb2_grpc.ResourceProviderStub(self.channel)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    # -- wire helpers -------------------------------------------------------------------

    @staticmethod
    def to_struct(props: Mapping[str, Any]) -> Any:
        from google.protobuf import struct_pb2

        struct = struct_pb2.Struct()
        struct.update(_jsonable(props))
        return struct

    @staticmethod
    def from_struct(struct: Any, unwrap: bool = False) -> dict[str, Any]:
        from google.protobuf import json_format

        data = json_format.MessageToDict(struct)
        return _unwrap_secrets(data) if unwrap else data

    def call(self, method: str, **fields: Any) -> Any:
        from pulumi.runtime.proto import provider_pb2

        request_type = {
            "Check": provider_pb2.CheckRequest,
            "Diff": provider_pb2.DiffRequest,
            "Create": provider_pb2.CreateRequest,
            "Read": provider_pb2.ReadRequest,
            "Update": provider_pb2.UpdateRequest,
            "Delete": provider_pb2.DeleteRequest,
        }[method]
        return getattr(self.stub, method)(request_type(**fields), timeout=600)

    def check(self, olds: Mapping[str, Any], news: Mapping[str, Any]) -> Any:
        return self.call("Check", urn=URN, olds=self.to_struct(olds), news=self.to_struct(news))

    def diff(self, id_: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> Any:
        return self.call("Diff", id=id_, urn=URN, olds=self.to_struct(olds), news=self.to_struct(news))

    def create(self, props: Mapping[str, Any]) -> Any:
        return self.call("Create", urn=URN, properties=self.to_struct(props), timeout=600)

    def read(self, id_: str, props: Mapping[str, Any]) -> Any:
        return self.call("Read", id=id_, urn=URN, properties=self.to_struct(props))

    def update(self, id_: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> Any:
        return self.call("Update", id=id_, urn=URN, olds=self.to_struct(olds), news=self.to_struct(news), timeout=600)

    def delete(self, id_: str, props: Mapping[str, Any]) -> Any:
        return self.call("Delete", id=id_, urn=URN, properties=self.to_struct(props))


URN = "urn:pulumi:test::redis-eks::pulumi-python:dynamic/redis:ClusterBootstrap::bootstrap"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _unwrap_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return _unwrap_secrets(value.get("value"))
        return {k: _unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap_secrets(v) for v in value]
    return value


def plain_strings(value: Any) -> list[str]:
    """Every string in a decoded property tree that is NOT inside a secret."""
    found: list[str] = []
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return found
        for k, v in value.items():
            found.append(str(k))
            found.extend(plain_strings(v))
    elif isinstance(value, list):
        for v in value:
            found.extend(plain_strings(v))
    elif isinstance(value, str):
        found.append(value)
    return found


def serialized_provider() -> str:
    """The provider as `pulumi.dynamic.Resource` puts it in `__provider`."""
    from pulumi.dynamic.dynamic import serialize_provider

    from components.cluster_bootstrap import ClusterBootstrapProvider

    return serialize_provider(ClusterBootstrapProvider())


def run_async(coro: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def local_port_forward(addresses: Mapping[str, tuple[str, int]]) -> Callable[[str, str, int], Any]:
    """A stand-in for the API port-forward that connects straight to a local address;
    for exercising `KubernetesTransport` against local redis-server processes."""

    def forward(namespace: str, pod: str, port: int) -> Any:
        host, real_port = addresses[pod]
        return socket.create_connection((host, real_port), timeout=5)

    return forward
