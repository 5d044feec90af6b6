"""The policy pack in policy/: each rule against resources the real program builds under mocks.

No `pulumi preview --policy-pack` can run here (no CLI, no engine), so the tests hand each
rule what pulumi_policy's analyzer would hand it: a resource's recorded inputs (for a stack
rule, every resource's outputs) through the analyzer's own path (a protobuf Struct, then
MessageToDict, `deserialize_properties` and `unknown_checking_proxy`, as in
`_PolicyAnalyzerServicer.Analyze`), in real ResourceValidationArgs / StackValidationArgs,
and collect what the rule reports. The last tests go through the analyzer servicer itself.

Every rule test holds a passing case and a failing one, so each fails with its rule switched
off. Where no setting makes the program produce the failing case (the settings refuse a
moving image tag, for one), the failing case is the program's own resource with its inputs
changed on a copy, and the test's docstring says so.

Production: the rules learn the stack from PULUMI_STACK, as the CLI sets it for a pack; the
`on_stack` fixture sets it.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import runpy
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Optional

import pulumi_policy
import pytest
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import proto
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.deserialize import deserialize_properties
from pulumi_policy.policy import _PolicyAnalyzerServicer
from pulumi_policy.proxy import unknown_checking_proxy

from components.stack_settings import PROJECT_DIR, load_stack_config
from policy import redis_eks_rules as rules
from tests.unit.conftest import build_stack, reveal
from tools.render_manifests import ProgramRun, RegisteredResource, run_program

POLICY_DIR = PROJECT_DIR / "policy"
POLICIES = {policy.name: policy for policy in rules.POLICIES}
# What the issue asks for, one rule each.
EXPECTED_RULES = {
    "storage-encrypted",
    "redis-tls-in-production",
    "redis-auth-required",
    "container-images-pinned",
    "container-resources-and-probes",
    "pod-disruption-budget-present",
    "egress-restricted",
    "eks-public-endpoint-restricted",
    "iam-least-privilege",
    "encryption-at-rest",
}
DIGEST = "sha256:" + "0123456789abcdef" * 4

STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
SECRET = "kubernetes:core/v1:Secret"
STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
EKS_CLUSTER = "eks:index:Cluster"


# --- Running the rules as the analyzer does ------------------------------------------------


@functools.cache
def stack(name: str, **overrides: str) -> ProgramRun:
    """A stack file with `redis-eks:` settings over it, built once per test session."""
    return build_stack(name, **overrides)


@pytest.fixture(autouse=True)
def no_stack_name(monkeypatch):
    # The analyzer reconfigures the Pulumi runtime when these three are set; the tests set
    # PULUMI_STACK alone.
    for name in ("PULUMI_STACK", "PULUMI_PROJECT", "PULUMI_DRY_RUN", "PULUMI_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def on_stack(monkeypatch) -> Callable[[str], None]:
    """Run the rules as the CLI runs the pack for this stack."""
    return lambda name: monkeypatch.setenv("PULUMI_STACK", name)


def analyzed(wire: Mapping[str, Any]) -> Mapping[str, Any]:
    """Properties as a rule sees them: through protobuf and pulumi_policy's deserializer,
    secrets unwrapped, internal `__` keys dropped (the engine's SkipInternalKeys)."""
    struct = struct_pb2.Struct()
    struct.update({key: value for key, value in wire.items() if not key.startswith("__")})
    return unknown_checking_proxy(deserialize_properties(json_format.MessageToDict(struct)))


def _options(resource: RegisteredResource) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
        parent=resource.parent or None,
    )


def check(policy_name: str, resource: RegisteredResource, config: Optional[dict] = None) -> list[str]:
    """What a resource rule reports on a resource's inputs."""
    policy = POLICIES[policy_name]
    assert isinstance(policy, ResourceValidationPolicy)
    args = ResourceValidationArgs(
        resource.type, analyzed(resource.inputs), resource.urn, resource.name, _options(resource), None, config
    )
    reported: list[str] = []
    assert policy.validate(args, lambda message, urn=None: reported.append(message)) is None
    return reported


def check_stack(policy_name: str, resources: list[RegisteredResource]) -> list[tuple[str, Optional[str]]]:
    """What a stack rule reports on these resources' outputs, as (message, urn)."""
    policy = POLICIES[policy_name]
    assert isinstance(policy, StackValidationPolicy)
    args = StackValidationArgs(
        [PolicyResource(r.type, analyzed(r.outputs), r.urn, r.name, _options(r), None, None, [], {}) for r in resources]
    )
    reported: list[tuple[str, Optional[str]]] = []
    assert policy.validate(args, lambda message, urn=None: reported.append((message, urn))) is None
    return reported


def changed(resource: RegisteredResource, change: Callable[[dict], Any]) -> RegisteredResource:
    """A copy of a resource whose inputs (and outputs, which mirror them for Kubernetes
    objects under the mocks) went through `change`."""
    inputs, outputs = copy.deepcopy(resource.inputs), copy.deepcopy(resource.outputs)
    change(inputs)
    if outputs:
        change(outputs)
    return replace(resource, inputs=inputs, outputs=outputs)


def synthetic(resource_type: str, name: str, inputs: dict) -> RegisteredResource:
    return RegisteredResource(
        type=resource_type,
        name=name,
        inputs=inputs,
        outputs=dict(inputs),
        urn=f"urn:pulumi:prod::redis-eks::{resource_type}::{name}",
        parent="",
        provider="",
        dependencies=[],
    )


# --- The program's resources -----------------------------------------------------------------


def redis_config_map(run: ProgramRun) -> RegisteredResource:
    [found] = [r for r in run.of_type(CONFIG_MAP) if "redis.conf" in (r.inputs.get("data") or {})]
    return found


def auth_secret(run: ProgramRun) -> RegisteredResource:
    """The Secret with the nodes' credentials (users.acl, auth.conf, password)."""
    found = [
        r
        for r in run.of_type(SECRET)
        if {"users.acl", "auth.conf", "password"} & set(reveal(r.inputs.get("stringData")) or {})
    ]
    assert len(found) == 1, [r.name for r in found]
    return found[0]


def redis_conf(inputs: dict) -> str:
    return inputs["data"]["redis.conf"]


def set_redis_conf(inputs: dict, text: str) -> None:
    inputs["data"]["redis.conf"] = text


def secret_files(inputs: dict) -> dict:
    return reveal(inputs["stringData"])


def pod_spec(inputs: dict) -> dict:
    return inputs["spec"]["template"]["spec"]


def redis_container(inputs: dict) -> dict:
    return next(c for c in pod_spec(inputs)["containers"] if c["name"] == "redis")


def without_lines(text: str, *directives: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if line.split(" ", 1)[0] not in directives)


# --- storage-encrypted -----------------------------------------------------------------------


@pytest.mark.parametrize("stack_name", ["dev", "prod"])
def test_storage_encrypted_program_class_passes_unencrypted_copy_fails(stack_name):
    """The program's gp3 StorageClass passes. No setting turns its encryption off, so the
    failing cases are that StorageClass with parameters.encrypted "false", and without it."""
    storage_class = stack(stack_name).one(STORAGE_CLASS)
    assert storage_class.inputs["provisioner"] == "ebs.csi.aws.com"
    assert check("storage-encrypted", storage_class) == []

    for change in (
        lambda inputs: inputs["parameters"].update(encrypted="false"),
        lambda inputs: inputs["parameters"].pop("encrypted"),
    ):
        [violation] = check("storage-encrypted", changed(storage_class, change))
        assert "unencrypted" in violation and "data" in violation


def test_storage_encrypted_leaves_other_provisioners_alone(existing_stack):
    """A cluster made elsewhere (rancher.io/local-path) passes: encryption is the disk's
    business there. The same StorageClass switched to the EBS driver, unencrypted, fails."""
    storage_class = existing_stack.one(STORAGE_CLASS)
    assert storage_class.inputs["provisioner"] == "rancher.io/local-path"
    assert check("storage-encrypted", storage_class) == []
    as_ebs = changed(
        storage_class, lambda inputs: inputs.update(provisioner="ebs.csi.aws.com", parameters={"type": "gp3"})
    )
    assert len(check("storage-encrypted", as_ebs)) == 1


def test_storage_encrypted_ebs_volume():
    """The program creates no aws.ebs.Volume (the CSI driver makes the volumes from the
    StorageClass), so both cases are written here: encrypted passes, unset or false fails."""
    volume = {"availabilityZone": "eu-west-1a", "size": 50, "type": "gp3"}
    assert check("storage-encrypted", synthetic("aws:ebs/volume:Volume", "data", {**volume, "encrypted": True})) == []
    for bad in (volume, {**volume, "encrypted": False}):
        [violation] = check("storage-encrypted", synthetic("aws:ebs/volume:Volume", "data", bad))
        assert "not encrypted" in violation


# --- redis-tls-in-production -----------------------------------------------------------------


def test_tls_prod_with_tls_passes_without_fails(on_stack):
    """The prod stack file with tls true passes; with tls false it fails on every point."""
    on_stack("prod")
    assert check("redis-tls-in-production", redis_config_map(stack("prod", tls="true"))) == []
    [violation] = check("redis-tls-in-production", redis_config_map(stack("prod", tls="false")))
    for problem in ("no tls-port", "plaintext port is open", "tls-replication is unset", "tls-cluster is unset"):
        assert problem in violation


def test_tls_prod_stack_file_passes_its_plaintext_copy_fails(prod_stack, on_stack):
    """Pulumi.prod.yaml turns TLS on, so its redis.conf passes as it is. The failing case is
    that redis.conf with the TLS lines taken out and the plaintext port back."""
    on_stack("prod")
    config_map = redis_config_map(prod_stack)
    assert check("redis-tls-in-production", config_map) == []

    def plaintext(inputs):
        text = without_lines(redis_conf(inputs), "port", "tls-port", "tls-replication", "tls-cluster")
        set_redis_conf(inputs, "port 6379\n" + text)

    [violation] = check("redis-tls-in-production", changed(config_map, plaintext))
    assert "stack prod is production" in violation


def test_tls_applies_to_production_stacks_only(dev_stack, on_stack):
    """The dev stack leaves TLS off (the default): its redis.conf passes on a stack named dev
    and fails on one named prod."""
    config_map = redis_config_map(dev_stack)
    on_stack("dev")
    assert check("redis-tls-in-production", config_map) == []
    on_stack("prod")
    assert len(check("redis-tls-in-production", config_map)) == 1


def test_tls_production_stacks_come_from_the_policy_config(dev_stack, on_stack):
    """productionStacks names the production stacks (a qualified name matches by its last
    part); `production` overrides the name either way. The plaintext dev redis.conf decides."""
    config_map = redis_config_map(dev_stack)
    also_eu = {"productionStacks": ["prod", "prod-eu"]}
    on_stack("prod-eu")
    assert check("redis-tls-in-production", config_map) == []
    assert len(check("redis-tls-in-production", config_map, also_eu)) == 1
    on_stack("acme/redis-eks/prod-eu")
    assert len(check("redis-tls-in-production", config_map, also_eu)) == 1
    on_stack("prod")
    assert check("redis-tls-in-production", config_map, {"production": False}) == []
    on_stack("dev")
    assert len(check("redis-tls-in-production", config_map, {"production": True})) == 1


def test_tls_without_a_stack_name_counts_as_production(dev_stack, on_stack):
    """A pack started without PULUMI_STACK applies the production rules (fails closed);
    the same redis.conf on a stack named dev passes."""
    config_map = redis_config_map(dev_stack)
    assert len(check("redis-tls-in-production", config_map)) == 1
    on_stack("dev")
    assert check("redis-tls-in-production", config_map) == []


# --- redis-auth-required ---------------------------------------------------------------------


@pytest.mark.parametrize("stack_name", ["dev", "prod"])
def test_auth_program_redis_conf_passes_without_auth_fails(stack_name):
    """The program's redis.conf passes. No setting turns authentication off, so the failing
    case is that redis.conf without its aclfile, include and requirepass lines."""
    config_map = redis_config_map(stack(stack_name))
    assert check("redis-auth-required", config_map) == []
    bare = changed(
        config_map, lambda i: set_redis_conf(i, without_lines(redis_conf(i), "aclfile", "include", "requirepass"))
    )
    [violation] = check("redis-auth-required", bare)
    assert "redis.conf: no authentication" in violation


@pytest.mark.parametrize(
    "auth_line",
    ["aclfile /etc/redis-secret/users.acl", "include /etc/redis-secret/auth.conf", "requirepass s3cr3t-s3cr3t-s3cr3t"],
)
def test_auth_counts_an_acl_file_an_include_or_requirepass(dev_stack, auth_line):
    """Both shapes of the program (today's `include .../auth.conf`, the ACL file's `aclfile`)
    and a plain requirepass count as authentication; the program's redis.conf is the base,
    with its own auth lines replaced by the one tested, and then by none."""
    config_map = redis_config_map(dev_stack)

    def only(line):
        return lambda i: set_redis_conf(
            i, without_lines(redis_conf(i), "aclfile", "include", "requirepass") + (line + "\n" if line else "")
        )

    assert check("redis-auth-required", changed(config_map, only(auth_line))) == []
    assert len(check("redis-auth-required", changed(config_map, only(None)))) == 1


@pytest.mark.parametrize("stack_name", ["dev", "prod"])
def test_auth_program_acl_passes_nopass_fails(stack_name):
    """The program's Secret passes: users.acl has `user default on #<sha256> ...`. No setting
    makes a user passwordless, so the failing case is that users.acl with the default user's
    password hashes replaced by nopass."""
    secret = auth_secret(stack(stack_name))
    acl = secret_files(secret.inputs)["users.acl"]
    assert re.search(r"^user default on #[0-9a-f]{64}", acl, flags=re.MULTILINE), acl
    assert check("redis-auth-required", secret) == []

    def nopass(inputs):
        files = secret_files(inputs)
        files["users.acl"] = re.sub(r"^(user default on)( #[0-9a-f]{64})+", r"\1 nopass", acl, flags=re.MULTILINE)

    [violation] = check("redis-auth-required", changed(secret, nopass))
    assert "users.acl: user default has nopass" in violation


def test_auth_acl_without_its_default_user_fails(dev_stack):
    """An ACL file that leaves out `user default` gets Redis's default user, `on nopass`. The
    program's users.acl passes; without its default line (no setting does that) it fails."""
    secret = auth_secret(dev_stack)
    assert check("redis-auth-required", secret) == []

    def drop_default(inputs):
        files = secret_files(inputs)
        lines = files["users.acl"].splitlines(keepends=True)
        files["users.acl"] = "".join(line for line in lines if not line.startswith("user default "))

    [violation] = check("redis-auth-required", changed(secret, drop_default))
    assert "no `user default` line" in violation


def test_auth_empty_requirepass_fails(dev_stack):
    """The program's Secret passes; the same Secret with an auth.conf whose requirepass is
    empty (which no setting renders: passwords are at least 16 characters) fails."""
    secret = auth_secret(dev_stack)
    assert check("redis-auth-required", secret) == []
    empty = changed(secret, lambda i: secret_files(i).update({"auth.conf": 'requirepass ""\n'}))
    [violation] = check("redis-auth-required", empty)
    assert "auth.conf: requirepass is empty" in violation


# --- container-images-pinned -----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{}, {"engine": "valkey"}, {"image": f"redis:8.10.2-trixie@{DIGEST}"}],
    ids=["redis", "valkey", "tag-and-digest"],
)
def test_images_program_passes_latest_fails(overrides):
    """The program's image passes, for either engine and with a digest. The settings refuse
    a moving tag, so the failing case is the program's StatefulSet with redis:latest."""
    stateful_set = stack("dev", **overrides).one(STATEFUL_SET)
    assert check("container-images-pinned", stateful_set) == []
    latest = changed(stateful_set, lambda i: redis_container(i).update(image="redis:latest"))
    [violation] = check("container-images-pinned", latest)
    assert "container 'redis'" in violation and "latest" in violation


@pytest.mark.parametrize(
    ("pinned", "moving"),
    [
        ("redis:8.10.2", "redis:latest"),
        ("redis:8.10.2-trixie", "redis:8.10-trixie"),
        ("redis:v8.10.2", "redis:v8"),
        ("redis:8.10.2-alpine", "redis:alpine"),
        (f"redis@{DIGEST}", "redis"),
        ("registry.example.com:5000/redis:8.10.2", "registry.example.com:5000/redis"),
        (f"redis:8.10.2@{DIGEST}", f"redis:latest@{DIGEST}"),
    ],
)
def test_images_pinned_reference_passes_moving_one_fails(dev_stack, pinned, moving):
    """An exact release or a digest passes; no tag, latest, or a major/minor line fails. The
    settings refuse some of these, so each is set on a copy of the program's StatefulSet."""
    stateful_set = dev_stack.one(STATEFUL_SET)
    with_image = lambda image: changed(stateful_set, lambda i: redis_container(i).update(image=image))  # noqa: E731
    assert check("container-images-pinned", with_image(pinned)) == []
    assert len(check("container-images-pinned", with_image(moving))) == 1


def test_images_init_containers_are_checked(dev_stack):
    """An init container is pinned like the others. The program has none: one is added to a
    copy of its StatefulSet, pinned (passes) and on latest (fails)."""
    stateful_set = dev_stack.one(STATEFUL_SET)

    def with_init(image):
        return changed(stateful_set, lambda i: pod_spec(i).update(initContainers=[{"name": "init", "image": image}]))

    assert check("container-images-pinned", with_init("busybox:1.37.0")) == []
    [violation] = check("container-images-pinned", with_init("busybox:latest"))
    assert "init container 'init'" in violation


# --- container-resources-and-probes ----------------------------------------------------------


@pytest.mark.parametrize("stack_name", ["dev", "prod"])
@pytest.mark.parametrize(
    "missing",
    [
        "readinessProbe",
        "livenessProbe",
        "resources.requests.cpu",
        "resources.requests.memory",
        "resources.limits.memory",
    ],
)
def test_resources_and_probes_program_passes_missing_one_fails(stack_name, missing):
    """The program's Redis container passes. No setting drops a probe or a request, so the
    failing case is that container without the one named."""
    stateful_set = stack(stack_name).one(STATEFUL_SET)
    assert check("container-resources-and-probes", stateful_set) == []

    def drop(inputs):
        *path, last = missing.split(".")
        target = redis_container(inputs)
        for key in path:
            target = target[key]
        del target[last]

    [violation] = check("container-resources-and-probes", changed(stateful_set, drop))
    assert f"no {missing.removeprefix('resources.')}" in violation


def test_resources_and_probes_init_containers_need_resources_not_probes(dev_stack):
    """An init container (added to a copy of the program's StatefulSet, which has none) passes
    with requests and a memory limit and no probes; without resources it fails, and so does a
    sidecar (restartPolicy Always) without probes."""
    stateful_set = dev_stack.one(STATEFUL_SET)
    resources = {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "16Mi"}}

    def with_init(**container):
        init = {"name": "init", "image": "busybox:1.37.0", **container}
        return changed(stateful_set, lambda i: pod_spec(i).update(initContainers=[init]))

    assert check("container-resources-and-probes", with_init(resources=resources)) == []
    [violation] = check("container-resources-and-probes", with_init())
    assert "init container 'init': no requests.cpu, no requests.memory, no limits.memory" in violation
    [violation] = check("container-resources-and-probes", with_init(resources=resources, restartPolicy="Always"))
    assert "no readinessProbe, no livenessProbe" in violation


# --- pod-disruption-budget-present -----------------------------------------------------------


@pytest.mark.parametrize("stack_name", ["dev", "prod", "existing"])
def test_pdb_program_passes_without_budget_fails(request, stack_name):
    """The program's PodDisruptionBudget covers its StatefulSet. No setting drops it, so the
    failing cases are the stack without it, and with its selector pointing elsewhere."""
    run = request.getfixturevalue(f"{stack_name}_stack")
    stateful_set = run.one(STATEFUL_SET)
    assert check_stack("pod-disruption-budget-present", run.resources) == []

    without = [r for r in run.resources if r.type != PDB]
    [(violation, urn)] = check_stack("pod-disruption-budget-present", without)
    assert "StatefulSet redis/redis-cluster has no PodDisruptionBudget" in violation
    assert urn == stateful_set.urn

    elsewhere = [
        changed(r, lambda i: i["spec"].update(selector={"matchLabels": {"app": "other"}})) if r.type == PDB else r
        for r in run.resources
    ]
    assert len(check_stack("pod-disruption-budget-present", elsewhere)) == 1


# --- egress-restricted -----------------------------------------------------------------------

ALLOW_ALL = {}
TO_INTERNET = {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": 443}]}


def with_network_policy(run: ProgramRun, change: Callable[[dict], Any]) -> list[RegisteredResource]:
    return [changed(r, change) if r.type == NETWORK_POLICY else r for r in run.resources]


def add_egress(rule: dict) -> Callable[[dict], None]:
    def change(inputs):
        spec = inputs["spec"]
        spec["policyTypes"] = sorted({*spec.get("policyTypes", []), "Egress"})
        spec["egress"] = [*spec.get("egress", []), rule]

    return change


@pytest.mark.parametrize("stack_name", ["dev", "prod"])
def test_egress_program_policy_passes_allow_all_fails(stack_name):
    """The program's NetworkPolicy restricts egress (DNS, the peers' 6379/16379). No setting
    opens it, so the failing case is that policy with a rule allowing all egress added."""
    run = stack(stack_name)
    [network_policy] = run.of_type(NETWORK_POLICY)
    assert "Egress" in network_policy.inputs["spec"]["policyTypes"]
    assert check_stack("egress-restricted", run.resources) == []
    [(violation, urn)] = check_stack("egress-restricted", with_network_policy(run, add_egress(ALLOW_ALL)))
    assert "has no `to` and no ports" in violation and urn == network_policy.urn


def test_egress_restricting_rules_pass_open_ones_fail(dev_stack):
    """The egress the Redis pods need (DNS to kube-system, the peers) passes: written on a copy
    of the program's NetworkPolicy, as the program does not render egress on every version.
    Adding a rule to 0.0.0.0/0 (any port list) or to ::/0 fails."""
    dns = {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    peers = {
        "to": [{"podSelector": {"matchLabels": dev_stack.one(STATEFUL_SET).inputs["spec"]["selector"]["matchLabels"]}}],
        "ports": [{"protocol": "TCP", "port": 6379}, {"protocol": "TCP", "port": 16379}],
    }

    def restricted(inputs):
        inputs["spec"].update(policyTypes=["Ingress", "Egress"], egress=[dns, peers])

    needed = with_network_policy(dev_stack, restricted)
    assert check_stack("egress-restricted", needed) == []
    for rule in (TO_INTERNET, {"to": [{"ipBlock": {"cidr": "::/0"}}]}):
        opened = [changed(r, add_egress(rule)) if r.type == NETWORK_POLICY else r for r in needed]
        [(violation, _urn)] = check_stack("egress-restricted", opened)
        assert "egress[2] allows" in violation


@pytest.mark.parametrize(
    "change",
    [
        lambda inputs: inputs["spec"].update(policyTypes=["Ingress"], egress=[]),
        lambda inputs: (inputs["spec"].pop("policyTypes"), inputs["spec"].update(egress=[ALLOW_ALL])),
        add_egress(TO_INTERNET),
    ],
    ids=["ingress-only", "default-types-allow-all", "to-internet"],
)
def test_egress_open_network_policy_fails(dev_stack, change):
    """Failing cases no setting produces, on copies of the program's NetworkPolicy: ingress
    only (egress unrestricted), policyTypes left to the API server's default with an allow-all
    rule, and a rule to 0.0.0.0/0."""
    [(violation, _urn)] = check_stack("egress-restricted", with_network_policy(dev_stack, change))
    assert "StatefulSet redis/redis-cluster" in violation


def test_egress_workload_without_network_policy_fails(dev_stack):
    """A stack without the program's NetworkPolicy (no setting drops it) fails on the
    StatefulSet, whose egress nothing restricts."""
    without = [r for r in dev_stack.resources if r.type != NETWORK_POLICY]
    [(violation, urn)] = check_stack("egress-restricted", without)
    assert "no NetworkPolicy selecting its pods has Egress" in violation
    assert urn == dev_stack.one(STATEFUL_SET).urn


# --- eks-public-endpoint-restricted ----------------------------------------------------------

OPEN = '["0.0.0.0/0"]'


def open_stack(cidrs: str = OPEN) -> ProgramRun:
    """The dev stack with its public endpoint open to these ranges, the risk accepted by name
    in its settings (the settings refuse it otherwise): what the pack must still stop."""
    return stack("dev", publicAccessCidrs=cidrs, acceptRisks='["publicEndpointOpenToInternet"]')


def test_public_endpoint_listed_ranges_pass_internet_fails(prod_stack, dev_stack, on_stack):
    """The prod and dev stack files admit 203.0.113.0/24 only and pass; the same stack with
    publicAccessCidrs ["0.0.0.0/0"] fails."""
    on_stack("prod")
    assert check("eks-public-endpoint-restricted", prod_stack.one(EKS_CLUSTER)) == []
    assert check("eks-public-endpoint-restricted", dev_stack.one(EKS_CLUSTER)) == []
    [violation] = check("eks-public-endpoint-restricted", open_stack().one(EKS_CLUSTER))
    assert "admits the whole internet (0.0.0.0/0) on stack prod" in violation


@pytest.mark.parametrize("stack_name", ["dev", "staging", "acme/redis-eks/sandbox", None])
def test_public_endpoint_applies_to_every_stack(on_stack, stack_name):
    """Whatever the stack is called (or with no name at all), an endpoint open to the
    internet fails; the policy's config no longer scopes it to production."""
    if stack_name:
        on_stack(stack_name)
    cluster = open_stack().one(EKS_CLUSTER)
    assert len(check("eks-public-endpoint-restricted", cluster)) == 1
    assert len(check("eks-public-endpoint-restricted", cluster, {"production": False})) == 1


@pytest.mark.parametrize(
    "cidrs",
    [
        '["0.0.0.0/1", "128.0.0.0/1"]',
        '["::/0"]',
        '["2000::/4", "3000::/4"]',
        '["0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/3", "203.0.113.0/24"]',
    ],
)
def test_public_endpoint_split_ranges_that_cover_the_internet_fail(on_stack, cidrs):
    """Ranges that together admit every public address are the internet too (the last list
    leaves out only 224.0.0.0/3, multicast and reserved)."""
    on_stack("dev")
    [violation] = check("eks-public-endpoint-restricted", open_stack(cidrs).one(EKS_CLUSTER))
    assert "admits the whole internet" in violation


def test_public_endpoint_large_but_partial_ranges_pass(on_stack):
    """Half the IPv4 space is not all of it: listed ranges, however wide, pass."""
    on_stack("dev")
    cluster = stack("dev", publicAccessCidrs='["0.0.0.0/1", "203.0.113.0/24"]').one(EKS_CLUSTER)
    assert check("eks-public-endpoint-restricted", cluster) == []


def test_public_endpoint_private_passes_public_without_cidrs_fails(on_stack):
    """endpointPublicAccess false passes (the program then leaves publicAccessCidrs out). The
    program never makes the endpoint public without a list, so the failing cases are that
    cluster with endpointPublicAccess turned back on: an omitted or empty list means
    0.0.0.0/0."""
    on_stack("dev")
    config = load_stack_config("dev") | {"redis-eks:endpointPublicAccess": "false"}
    del config["redis-eks:publicAccessCidrs"]
    cluster = run_program(config).one(EKS_CLUSTER)
    assert cluster.inputs.get("publicAccessCidrs") is None
    assert check("eks-public-endpoint-restricted", cluster) == []
    for public in (
        changed(cluster, lambda i: i.update(endpointPublicAccess=True)),
        changed(cluster, lambda i: i.update(endpointPublicAccess=True, publicAccessCidrs=[])),
    ):
        [violation] = check("eks-public-endpoint-restricted", public)
        assert "no publicAccessCidrs" in violation


def test_public_endpoint_aws_cluster(on_stack):
    """The aws.eks.Cluster that pulumi-eks creates inside its component is not registered
    under the mocks, so both cases are written here in its shape (vpcConfig): a listed range
    passes; vpcConfig without endpoint settings (public, open to all by default) fails."""
    on_stack("dev")
    listed = {"vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]}}
    assert check("eks-public-endpoint-restricted", synthetic("aws:eks/cluster:Cluster", "eks", listed)) == []
    default = {"vpcConfig": {"subnetIds": ["subnet-1", "subnet-2"]}}
    assert len(check("eks-public-endpoint-restricted", synthetic("aws:eks/cluster:Cluster", "eks", default))) == 1


# --- iam-least-privilege ----------------------------------------------------------------------

ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"


def with_statement(statement: dict) -> Callable[[dict], None]:
    """A change adding one statement to a RolePolicy's JSON document."""

    def change(inputs):
        document = json.loads(inputs["policy"])
        document["Statement"].append(statement)
        inputs["policy"] = json.dumps(document)

    return change


def test_iam_the_programs_policies_pass(dev_stack):
    """Every IAM policy and attachment the dev stack makes passes: the EBS CSI driver's and
    the node role's, each scoped to what it needs."""
    iam = [r for r in dev_stack.resources if r.type.startswith("aws:iam/")]
    assert {r.type for r in iam} >= {ROLE_POLICY, ATTACHMENT, "aws:iam/role:Role"}
    assert [v for r in iam for v in check("iam-least-privilege", r)] == []


@pytest.mark.parametrize(
    "statement, problem",
    [
        ({"Effect": "Allow", "Action": "*", "Resource": "*"}, "allows every action (*)"),
        ({"Effect": "Allow", "Action": ["ec2:DescribeVolumes", "*"], "Resource": "arn:aws:ec2:::x"}, "every action"),
        ({"Effect": "Allow", "Action": "iam:*", "Resource": "*"}, "all of iam:* on every resource"),
        ({"Effect": "Allow", "Action": ["s3:GetObject", "kms:*"], "Resource": ["*"]}, "all of kms:*"),
        ({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}, "NotAction"),
    ],
)
def test_iam_wildcards_fail(dev_stack, statement, problem):
    """The EBS CSI driver's RolePolicy, with one too-broad statement added, fails."""
    [policy] = [r for r in dev_stack.of_type(ROLE_POLICY) if r.name.endswith("-ebs-csi-ec2")]
    [violation] = check("iam-least-privilege", changed(policy, with_statement(statement)))
    assert problem in violation


def test_iam_scoped_service_wildcards_and_denies_pass(dev_stack):
    """A whole service on named resources, and a Deny of everything, are not grants of everything."""
    [policy] = [r for r in dev_stack.of_type(ROLE_POLICY) if r.name.endswith("-ebs-csi-ec2")]
    for statement in (
        {"Effect": "Allow", "Action": "kms:*", "Resource": "arn:aws:kms:eu-west-1:123456789012:key/k"},
        {"Effect": "Deny", "Action": "*", "Resource": "*"},
    ):
        assert check("iam-least-privilege", changed(policy, with_statement(statement))) == []


@pytest.mark.parametrize("name", ["AdministratorAccess", "IAMFullAccess"])
def test_iam_administrator_attachments_fail(dev_stack, name):
    """The node role's attachments pass; one of them switched to AdministratorAccess (or
    IAMFullAccess) fails, and so does a role with it among its managed policies."""
    attachment = dev_stack.of_type(ATTACHMENT)[0]
    admin = f"arn:aws:iam::aws:policy/{name}"
    [violation] = check("iam-least-privilege", changed(attachment, lambda i: i.update(policyArn=admin)))
    assert name in violation
    role = dev_stack.of_type("aws:iam/role:Role")[0]
    assert check("iam-least-privilege", role) == []
    assert len(check("iam-least-privilege", changed(role, lambda i: i.update(managedPolicyArns=[admin])))) == 1
    inline = [
        {"name": "all", "policy": json.dumps({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})}
    ]
    assert len(check("iam-least-privilege", changed(role, lambda i: i.update(inlinePolicies=inline)))) == 1


# --- encryption-at-rest -----------------------------------------------------------------------

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
DLM_POLICY = "aws:dlm/lifecyclePolicy:LifecyclePolicy"


def test_encryption_eks_secrets(dev_stack):
    """The program's cluster encrypts secrets with its own key; without the key ARN it
    fails. The aws.eks.Cluster shape (encryptionConfig) too, written here."""
    cluster = dev_stack.one(EKS_CLUSTER)
    assert check("encryption-at-rest", cluster) == []
    [violation] = check("encryption-at-rest", changed(cluster, lambda i: i.pop("encryptionConfigKeyArn", None)))
    assert "Kubernetes secrets are not encrypted" in violation
    encrypted = {"encryptionConfig": {"resources": ["secrets"], "provider": {"keyArn": "arn:aws:kms:x"}}}
    assert check("encryption-at-rest", synthetic("aws:eks/cluster:Cluster", "eks", encrypted)) == []
    assert len(check("encryption-at-rest", synthetic("aws:eks/cluster:Cluster", "eks", {"name": "eks"}))) == 1


def test_encryption_launch_template_volumes(dev_stack):
    """The nodes' launch template encrypts its root volume; "false", or no mapping at all
    (the AMI's own, unencrypted root volume), fails."""
    template = dev_stack.one(LAUNCH_TEMPLATE)
    assert check("encryption-at-rest", template) == []
    unencrypted = changed(template, lambda i: i["blockDeviceMappings"][0]["ebs"].update(encrypted="false"))
    [violation] = check("encryption-at-rest", unencrypted)
    assert "/dev/xvda is not encrypted" in violation
    [violation] = check("encryption-at-rest", changed(template, lambda i: i.pop("blockDeviceMappings")))
    assert "maps no block device" in violation


def test_encryption_dlm_cross_region_copies():
    """A stack copying its snapshots to another region encrypts the copies; a copy rule with
    encrypted false fails."""
    policy = stack("dev", backupCopyRegion="eu-central-1").one(DLM_POLICY)
    [schedule] = policy.inputs["policyDetails"]["schedules"]
    assert schedule["crossRegionCopyRules"][0]["encrypted"] is True
    assert check("encryption-at-rest", policy) == []
    clear = changed(
        policy, lambda i: i["policyDetails"]["schedules"][0]["crossRegionCopyRules"][0].update(encrypted=False)
    )
    [violation] = check("encryption-at-rest", clear)
    assert "the copy to eu-central-1 is not encrypted" in violation


# --- The pack --------------------------------------------------------------------------------


def test_pack_runs_every_rule_mandatory(monkeypatch):
    """policy/__main__.py, run as the CLI runs it (the directory, by runpy), builds a pack of
    every rule at the mandatory level. PolicyPack's constructor would start the analyzer's
    gRPC server and never return: a recorder stands in for it."""
    built: list[dict] = []

    class RecordingPolicyPack:
        def __init__(self, name, policies, enforcement_level=None, **options):
            built.append({"name": name, "policies": policies, "enforcement_level": enforcement_level, **options})

    monkeypatch.setattr(pulumi_policy, "PolicyPack", RecordingPolicyPack)
    try:
        runpy.run_path(str(POLICY_DIR), run_name="__main__")
    finally:
        # The run imported the rules as a top-level module, as the pack does; forget it.
        sys.modules.pop("redis_eks_rules", None)
    [pack] = built
    assert pack["name"] == rules.PACK_NAME
    assert pack["enforcement_level"] is EnforcementLevel.MANDATORY
    names = [policy.name for policy in pack["policies"]]
    assert names == [policy.name for policy in rules.POLICIES]
    assert set(names) == EXPECTED_RULES and len(names) == len(EXPECTED_RULES)
    assert all(policy.enforcement_level in (None, EnforcementLevel.MANDATORY) for policy in pack["policies"])


def analyzer() -> _PolicyAnalyzerServicer:
    """The servicer PolicyPack would serve over gRPC, without the server."""
    return _PolicyAnalyzerServicer(rules.PACK_NAME, "0.1.0", rules.POLICIES, rules.ENFORCEMENT_LEVEL)


def _struct(wire: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({key: value for key, value in wire.items() if not key.startswith("__")})
    return struct


def analyze_request(resource: RegisteredResource) -> proto.AnalyzeRequest:
    return proto.AnalyzeRequest(
        type=resource.type, properties=_struct(resource.inputs), urn=resource.urn, name=resource.name
    )


def stack_request(resources: list[RegisteredResource]) -> proto.AnalyzeStackRequest:
    return proto.AnalyzeStackRequest(
        resources=[
            proto.AnalyzerResource(type=r.type, properties=_struct(r.outputs), urn=r.urn, name=r.name, parent=r.parent)
            for r in resources
        ]
    )


def test_analyzer_info_lists_every_rule_mandatory_with_its_config():
    """What the CLI reads from the pack (GetAnalyzerInfo): every rule, mandatory, and the
    production config (productionStacks, default ["prod"]) on the production rule."""
    info = analyzer().GetAnalyzerInfo(None, None)
    assert info.name == rules.PACK_NAME and info.supportsConfig
    assert {policy.name for policy in info.policies} == EXPECTED_RULES
    assert {policy.enforcementLevel for policy in info.policies} == {proto.MANDATORY}
    configurable = {
        policy.name: json_format.MessageToDict(policy.configSchema.properties)
        for policy in info.policies
        if policy.configSchema.properties
    }
    assert set(configurable) == {"redis-tls-in-production"}
    for schema in configurable.values():
        assert schema["productionStacks"]["default"] == ["prod"]
        assert schema["production"]["type"] == "boolean"


def test_analyzer_reports_violations_as_mandatory_and_takes_config(dev_stack, on_stack):
    """Through the servicer's Analyze, as the CLI calls it: the program's StatefulSet gives no
    diagnostic, a copy on redis:latest a mandatory one; the dev redis.conf fails TLS on a
    stack made production by the pack's config (Configure), not by its name."""
    stateful_set = dev_stack.one(STATEFUL_SET)
    service = analyzer()
    assert list(service.Analyze(analyze_request(stateful_set), None).diagnostics) == []
    latest = changed(stateful_set, lambda i: redis_container(i).update(image="redis:latest"))
    [diagnostic] = service.Analyze(analyze_request(latest), None).diagnostics
    assert diagnostic.policyName == "container-images-pinned"
    assert diagnostic.enforcementLevel == proto.MANDATORY

    on_stack("prod-eu")
    config_map = redis_config_map(dev_stack)
    assert list(service.Analyze(analyze_request(config_map), None).diagnostics) == []
    properties = struct_pb2.Struct()
    properties.update({"productionStacks": ["prod-eu"]})
    service.Configure(
        proto.ConfigureAnalyzerRequest(
            policyConfig={
                "redis-tls-in-production": proto.PolicyConfig(enforcementLevel=proto.MANDATORY, properties=properties)
            }
        ),
        None,
    )
    [diagnostic] = service.Analyze(analyze_request(config_map), None).diagnostics
    assert diagnostic.policyName == "redis-tls-in-production"


@pytest.mark.parametrize("stack_name", ["dev", "prod"])
def test_the_stack_files_comply(request, on_stack, stack_name):
    """Every rule over every resource of the stack file as it is, on a stack of that name,
    through Analyze and AnalyzeStack: no diagnostic at all."""
    on_stack(stack_name)
    run = request.getfixturevalue(f"{stack_name}_stack")
    service = analyzer()
    diagnostics = [d for r in run.resources for d in service.Analyze(analyze_request(r), None).diagnostics]
    diagnostics += service.AnalyzeStack(stack_request(run.resources), None).diagnostics
    assert not diagnostics, [f"{d.policyName}: {d.message}" for d in diagnostics]
