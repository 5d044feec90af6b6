"""The bootstrap's dynamic providers behind the SDK's own provider server, driven over gRPC as the engine drives them.

`ProviderServer` launches the server and calls Check/Diff/Create/Read/Update/Delete with
properties on the wire format; `serialized_provider()` and `serialized_guard()` are what
`pulumi.dynamic.Resource` puts in `__provider`; `secret()` marks a value secret the way the
engine does, and `plain_strings()` lists what a response holds outside secrets.
`local_port_forward()` stands in for the Kubernetes API's port-forward with a local socket.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any, Callable, Mapping, Optional

from components.stack_settings import PROJECT_DIR
from tools.render_manifests import SECRET_SIG, SECRET_SIG_VALUE

URN = "urn:pulumi:test::redis-eks::pulumi-python:dynamic/redis:ClusterBootstrap::bootstrap"


def secret(value: Any) -> dict[str, Any]:
    """A property value marked secret the way the engine marks it on the wire."""
    return {SECRET_SIG: SECRET_SIG_VALUE, "value": value}


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_SIG_VALUE


class ProviderServer:
    """`python -m pulumi.dynamic` in its own process, as the engine launches it."""

    def __init__(self) -> None:
        self.process: Optional[subprocess.Popen] = None
        self.channel: Any = None
        self.stub: Any = None

    def __enter__(self) -> ProviderServer:
        import grpc
        from pulumi.runtime.proto import provider_pb2_grpc

        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_DIR), env.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pulumi.dynamic"],
            cwd=str(PROJECT_DIR),
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


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _unwrap_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        if _is_secret(value):
            return _unwrap_secrets(value.get("value"))
        return {k: _unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap_secrets(v) for v in value]
    return value


def plain_strings(value: Any) -> list[str]:
    """Every string in a decoded property tree that is NOT inside a secret."""
    found: list[str] = []
    if isinstance(value, dict):
        if _is_secret(value):
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
    """The bootstrap provider as `pulumi.dynamic.Resource` puts it in `__provider`."""
    from pulumi.dynamic.dynamic import serialize_provider

    from components.cluster_bootstrap import ClusterBootstrapProvider

    return serialize_provider(ClusterBootstrapProvider())


def serialized_guard() -> str:
    """The change guard's provider, serialized the same way."""
    from pulumi.dynamic.dynamic import serialize_provider

    from components.cluster_bootstrap import ClusterChangeGuardProvider

    return serialize_provider(ClusterChangeGuardProvider())


def serialized_scale_in() -> str:
    """The scale-in step's provider, serialized the same way."""
    from pulumi.dynamic.dynamic import serialize_provider

    from components.cluster_scale_in import ClusterScaleInProvider

    return serialize_provider(ClusterScaleInProvider())


def serialized_rotation() -> str:
    """The credential rotation's provider, serialized the same way."""
    from pulumi.dynamic.dynamic import serialize_provider

    from components.credential_rotation import CredentialRotationProvider

    return serialize_provider(CredentialRotationProvider())


def local_port_forward(addresses: Mapping[str, tuple[str, int]]) -> Callable[[str, str, int], Any]:
    """A stand-in for the API port-forward that connects straight to a local address;
    for exercising `KubernetesTransport` against local redis-server processes."""

    def forward(namespace: str, pod: str, port: int) -> Any:
        host, real_port = addresses[pod]
        return socket.create_connection((host, real_port), timeout=5)

    return forward
