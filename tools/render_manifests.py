"""Render every Kubernetes object of a stack to YAML, like `helm template`, for review.

It runs the real program (`__main__.py`) with the Pulumi runtime's mocks instead of an
engine, so what it prints comes from the same code path as `pulumi up`: the same settings
validation, the same components, the same typed Kubernetes args. Cloud resources are
faked (no AWS call is made); Secret values are masked.

    python -m tools.render_manifests --stack dev [--set shards=4 ...] > manifests.yaml

The unit tests use `run_program` to build whole stacks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import runpy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks

from components.stack_settings import SettingsError

PROJECT_DIR = Path(__file__).resolve().parent.parent
PROJECT = "redis-eks"
MASK = "<secret: masked>"
MOCK_ACCOUNT = "123456789012"
# How Pulumi's wire format marks a secret value: {SECRET_SIG: SECRET_SIG_VALUE, "value": ...}.
SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_SIG_VALUE = "1b47061264138c4ac30d75fd1eb44270"

# A kubeconfig as pulumi-eks returns it (exec auth through the aws CLI).
MOCK_KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "mock", "cluster": {"server": "https://mock.eks.amazonaws.com", "certificate-authority-data": "bW9jaw=="}}],
    "contexts": [{"name": "aws", "context": {"cluster": "mock", "user": "aws"}}],
    "current-context": "aws",
    "users": [{"name": "aws", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws", "args": ["eks", "get-token", "--cluster-name", "mock"]}}}],
}


@dataclass
class RegisteredResource:
    type: str
    name: str
    inputs: dict[str, Any]
    # What the fake cloud answered (inputs plus faked outputs such as `arn`).
    outputs: dict[str, Any]
    urn: str
    parent: str
    provider: str
    dependencies: list[str]
    retain_on_delete: bool = False


@dataclass
class StackOutput:
    value: Any
    secret: bool


@dataclass
class ProgramRun:
    resources: list[RegisteredResource] = field(default_factory=list)
    outputs: dict[str, StackOutput] = field(default_factory=dict)

    def of_type(self, type_token: str) -> list[RegisteredResource]:
        return [r for r in self.resources if r.type == type_token]

    def one(self, type_token: str) -> RegisteredResource:
        found = self.of_type(type_token)
        if len(found) != 1:
            raise AssertionError(f"expected one {type_token}, found {[r.name for r in found]}")
        return found[0]

    def by_urn(self, urn: str) -> RegisteredResource:
        return next(r for r in self.resources if r.urn == urn)


class _FakeCloud(pulumi.runtime.Mocks):
    """Answers what the program reads back from AWS and the remote components."""

    def __init__(self):
        self.inputs_by_name: dict[tuple[str, str], dict[str, Any]] = {}
        self.outputs_by_name: dict[tuple[str, str], dict[str, Any]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.inputs_by_name[(args.typ, args.name)] = args.inputs
        name = args.name
        typ = args.typ
        # A remote component's outputs are not its inputs (awsx's `natGateways` goes in as
        # a strategy and comes out as resources): give it only the outputs the program reads.
        state = {} if typ.startswith(("awsx:", "eks:")) else dict(args.inputs)
        if typ == "awsx:ec2:Vpc":
            state.update(
                vpcId="vpc-0123456789abcdef0",
                privateSubnetIds=[f"subnet-0000000000000000{i}" for i in range(3)],
                publicSubnetIds=[f"subnet-1000000000000000{i}" for i in range(3)],
            )
        elif typ == "eks:index:Cluster":
            state.update(
                kubeconfigJson=json.dumps(MOCK_KUBECONFIG),
                kubeconfig=MOCK_KUBECONFIG,
                oidcProviderArn=f"arn:aws:iam::{MOCK_ACCOUNT}:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/MOCK",
                oidcProviderUrl="https://oidc.eks.eu-west-1.amazonaws.com/id/MOCK",
            )
        elif typ == "aws:kms/key:Key":
            state["arn"] = f"arn:aws:kms:eu-west-1:{MOCK_ACCOUNT}:key/{name}"
        elif typ == "aws:iam/role:Role":
            state.update(arn=f"arn:aws:iam::{MOCK_ACCOUNT}:role/{name}", name=name)
        elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
            state["latestVersion"] = 1

        elif typ == "random:index/randomPassword:RandomPassword":
            state["result"] = "MockPassword-" + "x" * 27
        elif typ.startswith("pulumi-python:dynamic"):
            state.update(state="ok", nodeCount=0, masters=[], replicas=[], placement={})
        self.outputs_by_name[(typ, name)] = state
        return f"{name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws", "reverseDnsPrefix": "com.amazonaws"}
        return {}


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, also keeping each registration's parent, provider and dependencies."""

    def __init__(self, run: ProgramRun):
        self.cloud = _FakeCloud()
        super().__init__(self.cloud)
        self.run = run

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.run.resources.append(
                RegisteredResource(
                    type=request.type,
                    name=request.name,
                    inputs=self.cloud.inputs_by_name[(request.type, request.name)],
                    outputs=self.cloud.outputs_by_name[(request.type, request.name)],
                    urn=response.urn,
                    parent=request.parent,
                    provider=request.provider,
                    dependencies=list(request.dependencies),
                    retain_on_delete=bool(request.retainOnDelete),
                )
            )
        return response


def load_stack_config(stack: str) -> dict[str, str]:
    """The `config:` block of Pulumi.<stack>.yaml, as the engine hands it to the program."""
    document = yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text()) or {}
    config = {}
    for key, value in (document.get("config") or {}).items():
        if isinstance(value, dict) and "secure" in value:
            raise ValueError(f"{key} is encrypted; rendering needs plain values (use --set)")
        config[key] = value if isinstance(value, str) else json.dumps(value)
    return config


def run_program(
    config: dict[str, str],
    stack: str = "dev",
    program: Optional[Callable[[], None]] = None,
    run: Optional[ProgramRun] = None,
) -> ProgramRun:
    """Run `__main__.py` (or `program`) under mocks with this config (full keys, e.g. `redis-eks:shards`).

    Registrations are recorded into `run` (a new one by default), which a caller can
    inspect even when the program raises.
    """
    run = ProgramRun() if run is None else run
    monitor = _RecordingMonitor(run)
    pulumi.runtime.set_mocks(monitor.cloud, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(dict(config), [])
    root = pulumi.runtime.settings.get_root_resource()
    root.outputs.clear()

    def program_and_outputs():
        if program is None:
            runpy.run_path(str(PROJECT_DIR / "__main__.py"), run_name="__main__")
        else:
            program()
        exports = dict(root.outputs)

        async def resolve() -> None:
            for name, value in exports.items():
                output = pulumi.Output.from_input(value)
                run.outputs[name] = StackOutput(await output.future(), await output.is_secret())

        return asyncio.ensure_future(resolve())

    pulumi.runtime.test(program_and_outputs)()
    return run


def kubernetes_manifests(run: ProgramRun) -> list[dict[str, Any]]:
    """The Kubernetes objects of a run, as the API server would receive them."""
    manifests = []
    for resource in run.resources:
        if not resource.type.startswith("kubernetes:") or resource.type == "pulumi:providers:kubernetes":
            continue
        group_version, kind = resource.type.split(":")[1:]
        group, version = group_version.split("/")
        api_version = version if group == "core" else f"{group}/{version}"
        body = {key: _plain(value) for key, value in resource.inputs.items() if not key.startswith("__")}
        manifest = {"apiVersion": api_version, "kind": kind, **body}
        if kind == "Secret":
            for key in ("data", "stringData"):
                if key in manifest:
                    manifest[key] = {name: MASK for name in manifest[key]}
        manifests.append(_whole_numbers(manifest))
    return manifests


def _plain(value: Any) -> Any:
    """The value without Pulumi's secret wrappers ({SECRET_SIG: ..., "value": ...})."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == SECRET_SIG_VALUE:
            return _plain(value["value"])
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _whole_numbers(value: Any) -> Any:
    # Pulumi's wire format (protobuf Struct) carries every number as a double; the API
    # server's schemas want integers where they are whole (replicas: 6, not 6.0).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default="dev", help="the stack whose Pulumi.<stack>.yaml to render (default dev)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a redis-eks: setting, e.g. shards=4"
    )
    options = parser.parse_args(argv)
    config = load_stack_config(options.stack)
    for assignment in options.set:
        key, _, value = assignment.partition("=")
        config[key if ":" in key else f"{PROJECT}:{key}"] = value
    try:
        run = run_program(config, stack=options.stack)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    yaml.safe_dump_all(kubernetes_manifests(run), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
