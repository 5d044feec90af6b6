"""Render every Kubernetes object of a stack to YAML, like `helm template`, for review.

It runs the real program (`__main__.py`) with the Pulumi runtime's mocks instead of an
engine, so what it prints comes from the same code path as `pulumi up`: the same settings
validation, the same components, the same typed Kubernetes args. Cloud resources are
faked (no AWS call is made); Secret values are masked. The output is deterministic
(objects in a fixed order, keys sorted), so two renders can be diffed.

    python -m tools.render_manifests --stack dev [--set shards=4 ...] > manifests.yaml

    python -m tools.render_manifests --update-golden    # what `make golden` runs

`--update-golden` rewrites tests/golden/<stack>/manifests.yaml (what `--stack <stack>`
prints) and tests/golden/<stack>/redis.conf (the redis.conf every pod of the stack runs)
for the dev and prod stacks; tests/unit/test_golden_renders.py fails until they match, so
every change to what reaches a cluster shows up in review as a diff of those files.

A golden file records a stack file as it is, so `--update-golden` takes no `--set`. The
one exception is defined here, in GOLDEN_VARIANTS, not on the command line:
tests/golden/dev-valkey/ is the dev stack file with `engine=valkey` (what
`--stack dev --set engine=valkey` prints), so that the Valkey rendering is reviewed too.

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
from typing import Any, Callable, Iterable, Optional

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks

from components.redis_node_files import render_redis_conf
from components.stack_settings import (
    NAMESPACE,
    PROJECT_DIR,
    SECRET_KEYS,
    SettingsError,
    load_stack_config,
    parse_settings,
)

PROJECT = "redis-eks"
GOLDEN_DIR = PROJECT_DIR / "tests" / "golden"
GOLDEN_STACKS = ("dev", "prod")
# Golden directory -> (stack file, `redis-eks:` settings over it): the only golden renders
# that are not a stack file as it is (see the module docstring).
GOLDEN_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "dev-valkey": ("dev", {"engine": "valkey"}),
}
# Every directory under tests/golden/.
GOLDEN_RENDERS = GOLDEN_STACKS + tuple(GOLDEN_VARIANTS)
# Objects print in this order, those that others refer to first; any other kind follows,
# by kind and name.
KIND_ORDER = (
    "Namespace",
    "StorageClass",
    "Secret",
    "ConfigMap",
    "Service",
    "StatefulSet",
    "PodDisruptionBudget",
    "NetworkPolicy",
)
MASK = "<secret: masked>"
MOCK_ACCOUNT = "123456789012"
# How Pulumi's wire format marks a secret value: {SECRET_SIG: SECRET_SIG_VALUE, "value": ...}.
SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_SIG_VALUE = "1b47061264138c4ac30d75fd1eb44270"

# A kubeconfig as pulumi-eks returns it (exec auth through the aws CLI).
MOCK_KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [
        {
            "name": "mock",
            "cluster": {"server": "https://mock.eks.amazonaws.com", "certificate-authority-data": "bW9jaw=="},
        }
    ],
    "contexts": [{"name": "aws", "context": {"cluster": "mock", "user": "aws"}}],
    "current-context": "aws",
    "users": [
        {
            "name": "aws",
            "user": {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1beta1",
                    "command": "aws",
                    "args": ["eks", "get-token", "--cluster-name", "mock"],
                }
            },
        }
    ],
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
    ignore_changes: list[str] = field(default_factory=list)
    # customTimeouts (create, update, delete) as the engine receives them, "" when unset.
    custom_timeouts: tuple[str, str, str] = ("", "", "")


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


def _mock_pem(label: str, name: str) -> str:
    """A stand-in PEM block naming the resource it came from (nothing here is a real key)."""
    return f"-----BEGIN {label}-----\nMOCK-{name}\n-----END {label}-----\n"


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

        elif typ == "tls:index/privateKey:PrivateKey":
            state["privateKeyPem"] = _mock_pem("PRIVATE KEY", name)
        elif typ in ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"):
            state["certPem"] = _mock_pem("CERTIFICATE", name)
        elif typ == "tls:index/certRequest:CertRequest":
            state["certRequestPem"] = _mock_pem("CERTIFICATE REQUEST", name)
        elif typ == "random:index/randomPassword:RandomPassword":
            state["result"] = "MockPassword-" + "x" * 27
        elif typ.startswith("pulumi-python:dynamic"):
            state.update(state="ok", nodeCount=0, masters=[], replicas=[], placement={})
        self.outputs_by_name[(typ, name)] = state
        return f"{name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws", "reverseDnsPrefix": "com.amazonaws"}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "accountId": MOCK_ACCOUNT,
                "arn": f"arn:aws:iam::{MOCK_ACCOUNT}:user/mock",
                "userId": "AIDAMOCK",
                "id": MOCK_ACCOUNT,
            }
        if args.token == "aws:index/getRegion:getRegion":
            return {
                "region": "eu-west-1",
                "name": "eu-west-1",
                "id": "eu-west-1",
                "endpoint": "ec2.eu-west-1.amazonaws.com",
            }
        if args.token == "aws:eks/getClusters:getClusters":
            # A fresh account: the stack's cluster does not exist yet.
            return {"id": "eu-west-1", "names": [], "region": "eu-west-1"}
        if args.token == "aws:iam/getSessionContext:getSessionContext":
            return session_context(args.args["arn"])
        if args.token == "aws:eks/getAddonVersion:getAddonVersion":
            default, newest = FAKE_ADDON_BUILDS[args.args["addonName"]]
            build = newest if args.args.get("mostRecent") else default
            return {**args.args, "id": args.args["addonName"], "version": build}
        return {}


# The builds this fake cloud answers per add-on, (default, newest), for any Kubernetes version:
# stand-ins in EKS's format for the renders and tests, not what EKS offers.
FAKE_ADDON_BUILDS = {
    "aws-ebs-csi-driver": ("v1.66.0-eksbuild.1", "v1.69.0-eksbuild.1"),
    "coredns": ("v1.12.1-eksbuild.2", "v1.12.4-eksbuild.1"),
    "kube-proxy": ("v1.35.0-eksbuild.2", "v1.35.2-eksbuild.1"),
    "vpc-cni": ("v1.20.1-eksbuild.1", "v1.21.0-eksbuild.2"),
}


def session_context(arn: str) -> dict[str, str]:
    """What aws.iam.get_session_context answers: an STS assumed-role session's role (AWS adds
    the role's path, which this fake does not know), any other ARN as it is."""
    partition, _, _, account, resource = arn.split(":", 5)[1:]
    kind, _, rest = resource.partition("/")
    if arn.split(":")[2] == "sts" and kind == "assumed-role":
        role, session = rest.rsplit("/", 1)
        issuer = f"arn:{partition}:iam::{account}:role/{role}"
        return {"arn": arn, "id": arn, "issuerArn": issuer, "issuerName": role, "sessionName": session}
    return {"arn": arn, "id": arn, "issuerArn": arn, "issuerName": rest.rsplit("/", 1)[-1], "sessionName": ""}


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
                    ignore_changes=list(request.ignoreChanges),
                    custom_timeouts=(
                        request.customTimeouts.create,
                        request.customTimeouts.update,
                        request.customTimeouts.delete,
                    ),
                )
            )
        return response


def run_program(
    config: dict[str, str],
    stack: str = "dev",
    program: Optional[Callable[[], None]] = None,
    run: Optional[ProgramRun] = None,
    secret_keys: Iterable[str] = (),
) -> ProgramRun:
    """Run `__main__.py` (or `program`) under mocks with this config (full keys, e.g. `redis-eks:shards`).

    `secret_keys` are the keys set as secrets (`pulumi config set --secret`), as the
    language host hands them to the program. Registrations are recorded into `run` (a new
    one by default), which a caller can inspect even when the program raises.
    """
    run = ProgramRun() if run is None else run
    monitor = _RecordingMonitor(run)
    pulumi.runtime.set_mocks(monitor.cloud, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(dict(config), list(secret_keys))
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


def secret_config_keys(config: dict[str, str]) -> list[str]:
    """The keys of this config that a stack holds as secrets (password, kubeconfig, userPasswords)."""
    return [key for key in config if key in {f"{NAMESPACE}:{name}" for name in SECRET_KEYS}]


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
        manifests.append(_canonical(_whole_numbers(manifest)))
    # Registration order depends on how the program's outputs resolve, so it varies
    # between runs; a fixed order keeps renders diffable.
    return sorted(manifests, key=_manifest_order)


def manifests_yaml(manifests: list[dict[str, Any]]) -> str:
    """The manifests as one multi-document YAML text, multi-line values as literal blocks."""
    return yaml.dump_all(manifests, Dumper=_ReviewDumper, sort_keys=False)


def stack_redis_conf(config: dict[str, str]) -> str:
    """The redis.conf every pod of a stack with this config runs."""
    prefix = NAMESPACE + ":"
    values = {key[len(prefix) :]: value for key, value in config.items() if key.startswith(prefix)}
    return render_redis_conf(parse_settings(values))


def golden_config(name: str) -> tuple[str, dict[str, str]]:
    """The stack and config a golden directory records: a stack file as it is, or for a
    variant (GOLDEN_VARIANTS) its stack file with the variant's settings over it."""
    if name not in GOLDEN_RENDERS:
        raise ValueError(f"no golden render {name!r}; there are {', '.join(GOLDEN_RENDERS)}")
    stack, overrides = GOLDEN_VARIANTS.get(name, (name, {}))
    config = load_stack_config(stack)
    config.update({f"{NAMESPACE}:{key}": value for key, value in overrides.items()})
    return stack, config


def golden_renders(name: str) -> dict[Path, str]:
    """Golden file -> its expected content, for one golden directory (a stack or a variant)."""
    stack, config = golden_config(name)
    manifests = kubernetes_manifests(run_program(config, stack=stack))
    directory = GOLDEN_DIR / name
    return {directory / "manifests.yaml": manifests_yaml(manifests), directory / "redis.conf": stack_redis_conf(config)}


def _manifest_order(manifest: dict[str, Any]) -> tuple:
    kind = manifest["kind"]
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    metadata = manifest.get("metadata") or {}
    return (rank, kind, metadata.get("namespace") or "", metadata.get("name") or "")


def _canonical(manifest: dict[str, Any]) -> dict[str, Any]:
    # Key order comes out of Pulumi's wire format differently on every run. kubectl's
    # order (alphabetical) is one a reader knows, with the object's header on top.
    head = [key for key in ("apiVersion", "kind", "metadata") if key in manifest]
    rest = sorted(key for key in manifest if key not in head)
    return {key: _sorted_keys(manifest[key]) for key in head + rest}


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


class _ReviewDumper(yaml.SafeDumper):
    """Safe YAML whose multi-line strings (redis.conf, the scripts) read like the files."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # PyYAML falls back to a quoted style by itself when a block cannot hold the value
    # (trailing spaces, control characters).
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReviewDumper.add_representer(str, _represent_str)


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
    parser.add_argument(
        "--update-golden",
        action="store_true",
        help=f"rewrite the golden renders under tests/golden/ ({', '.join(GOLDEN_RENDERS)})",
    )
    options = parser.parse_args(argv)
    if options.update_golden:
        if options.set:
            # A golden file records a stack file as it is; an override would hide a change.
            parser.error("--update-golden renders the stack files as they are; it takes no --set")
        return update_golden()
    config = load_stack_config(options.stack)
    for assignment in options.set:
        key, _, value = assignment.partition("=")
        config[key if ":" in key else f"{PROJECT}:{key}"] = value
    try:
        # A secret given on the command line stands for one the stack sets with --secret.
        run = run_program(config, stack=options.stack, secret_keys=secret_config_keys(config))
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(manifests_yaml(kubernetes_manifests(run)))
    return 0


def update_golden() -> int:
    for name in GOLDEN_RENDERS:
        for path, text in golden_renders(name).items():
            path.parent.mkdir(parents=True, exist_ok=True)
            changed = not path.exists() or path.read_text() != text
            path.write_text(text)
            print(f"{'updated' if changed else 'unchanged'}: {path.relative_to(PROJECT_DIR)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
