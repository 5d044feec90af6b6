"""The rules of the policy pack, as plain functions, and the policies built from them.

`__main__.py` only hands POLICIES to a PolicyPack (whose constructor starts a gRPC server
and never returns), so tests import this module and call the rules directly.

What a rule receives is what pulumi_policy's analyzer gives it: a resource's inputs (or, for
a stack rule, every resource's outputs) with secrets unwrapped, as read-only Mapping and
Sequence proxies, not dicts and lists. Reading a value that is not known yet (during a
preview, e.g. a password made by the same run) raises pulumi_policy's UnknownValueError,
which the analyzer turns into an advisory "can't run policy during preview"; `pulumi up`
runs the rule again once the value is known, before the resource is created.

The pack stays self-contained: it imports nothing of the Pulumi program, so it runs the same
from this repository, from a CI checkout of policy/ alone or published to Pulumi Cloud.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

PACK_NAME = "redis-eks-policies"
ENFORCEMENT_LEVEL = EnforcementLevel.MANDATORY

# --- Which stacks are production -------------------------------------------------------------
#
# The CLI starts a Python policy pack with PULUMI_STACK (and PULUMI_PROJECT, PULUMI_DRY_RUN,
# PULUMI_CONFIG) in its environment: `constructEnv` in pulumi's
# sdk/go/common/resource/plugin/analyzer_plugin.go. pulumi_policy itself reads the same
# variables to set up `pulumi.get_stack()` before each check; this module reads the variable
# directly, so that nothing depends on the Pulumi runtime's global settings (which the unit
# tests' mocks also write). The stack name is the short one (`prod`); a qualified
# `org/project/prod` is matched by its last part too.
STACK_ENV = "PULUMI_STACK"
DEFAULT_PRODUCTION_STACKS = ("prod",)
PRODUCTION_CONFIG = PolicyConfigSchema(
    properties={
        "productionStacks": {
            "type": "array",
            "items": {"type": "string"},
            "default": list(DEFAULT_PRODUCTION_STACKS),
            "description": "Stack names this rule treats as production.",
        },
        "production": {
            "type": "boolean",
            "description": (
                "Overrides the stack name: true applies the rule to every stack the pack runs on "
                "(a production policy group), false to none."
            ),
        },
    }
)


def stack_name() -> Optional[str]:
    """The name of the stack being previewed or updated, as the CLI passes it to the pack."""
    return os.environ.get(STACK_ENV) or None


def is_production(config: Mapping[str, Any]) -> bool:
    """Whether the production-only rules apply, from the policy's config and the stack name.

    Without a stack name (a pack started by something other than the CLI) the answer is yes:
    a mandatory production rule that silently stops applying is worse than one that has to be
    switched off with `"production": false`."""
    forced = config.get("production")
    if isinstance(forced, bool):
        return forced
    stacks = config.get("productionStacks", DEFAULT_PRODUCTION_STACKS)
    names = {str(name) for name in stacks} if isinstance(stacks, Sequence) and not isinstance(stacks, str) else set()
    name = stack_name()
    if name is None:
        return True
    return name in names or name.rsplit("/", 1)[-1] in names


# --- Reading resources -----------------------------------------------------------------------


def _get(value: Any, *path: Any, default: Any = None) -> Any:
    """value[path[0]][path[1]]..., or `default` where a key is missing or a value is null."""
    for key in path:
        if not _has(value, key):
            return default
        value = value[key]
        if value is None:
            return default
    return value


def _has(value: Any, key: Any) -> bool:
    if isinstance(key, int):
        return _is_list(value) and -len(value) <= key < len(value)
    return isinstance(value, Mapping) and key in value


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _items(value: Any) -> list[Any]:
    return list(value) if _is_list(value) else []


def kubernetes_kind(resource_type: str) -> Optional[tuple[str, str]]:
    """`kubernetes:apps/v1:StatefulSet` -> ("apps", "StatefulSet"); None for any other provider."""
    parts = resource_type.split(":")
    if len(parts) != 3 or parts[0] != "kubernetes":
        return None
    return parts[1].split("/")[0], parts[2]


def _kind(resource_type: str) -> Optional[str]:
    found = kubernetes_kind(resource_type)
    return found[1] if found else None


# Where each kind that runs pods keeps its pod spec.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "PodTemplate": ("template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
# Workloads that keep pods running, and so need a disruption budget and a network policy.
LONG_RUNNING_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def pod_spec(resource_type: str, props: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    kind = _kind(resource_type)
    if kind not in POD_SPEC_PATHS:
        return None
    spec = _get(props, *POD_SPEC_PATHS[kind])
    return spec if isinstance(spec, Mapping) else None


def _containers(spec: Mapping[str, Any], *fields: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for field in fields:
        for container in _items(_get(spec, field)):
            if isinstance(container, Mapping):
                yield field, container


def _describe(field: str, container: Mapping[str, Any]) -> str:
    kind = {"containers": "container", "initContainers": "init container"}.get(field, "ephemeral container")
    return f"{kind} {_get(container, 'name', default='<unnamed>')!r}"


def _object_name(props: Mapping[str, Any], fallback: str) -> str:
    namespace = _get(props, "metadata", "namespace")
    name = _get(props, "metadata", "name", default=fallback)
    return f"{namespace}/{name}" if isinstance(namespace, str) and namespace else str(name)


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


# --- Redis configuration files -----------------------------------------------------------------

REDIS_CONF_KEYS = ("redis.conf", "valkey.conf")


def config_directives(text: str) -> list[tuple[str, list[str]]]:
    """A redis.conf (or an ACL file) as (directive, arguments) pairs; comments and blanks dropped."""
    directives = []
    for line in text.splitlines():
        words = line.strip().split()
        if words and not words[0].startswith("#"):
            directives.append((words[0].lower(), words[1:]))
    return directives


def _last(directives: list[tuple[str, list[str]]], name: str) -> Optional[list[str]]:
    # Redis keeps the last value of a directive given twice.
    found = [arguments for directive, arguments in directives if directive == name]
    return found[-1] if found else None


def _unquoted(word: str) -> str:
    return word[1:-1] if len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'" else word


def object_files(resource_type: str, props: Mapping[str, Any]) -> dict[str, str]:
    """File name -> text of a ConfigMap (`data`) or a Secret (`stringData`, and `data` decoded)."""
    kind = _kind(resource_type)
    files: dict[str, str] = {}
    if kind == "ConfigMap":
        for name, text in (_get(props, "data", default={}) or {}).items():
            if isinstance(text, str):
                files[name] = text
    elif kind == "Secret":
        for name, encoded in (_get(props, "data", default={}) or {}).items():
            if isinstance(encoded, str):
                try:
                    files[name] = base64.b64decode(encoded, validate=True).decode("utf-8", "replace")
                except (binascii.Error, ValueError):
                    files[name] = encoded
        # As the API server does, stringData wins over data.
        for name, text in (_get(props, "stringData", default={}) or {}).items():
            if isinstance(text, str):
                files[name] = text
    return files


def redis_confs(resource_type: str, props: Mapping[str, Any]) -> dict[str, str]:
    """The redis.conf files a ConfigMap carries (what the pods run), by file name."""
    if _kind(resource_type) != "ConfigMap":
        return {}
    return {name: text for name, text in object_files(resource_type, props).items() if name in REDIS_CONF_KEYS}


# --- Rule: storage encrypted ---------------------------------------------------------------------

EBS_PROVISIONERS = ("ebs.csi.aws.com", "kubernetes.io/aws-ebs")


def check_storage_encrypted(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """EBS StorageClasses set `encrypted: "true"`; aws.ebs.Volume sets `encrypted: true`."""
    props = args.props
    if args.resource_type == "aws:ebs/volume:Volume":
        if _get(props, "encrypted") is not True:
            report_violation(
                f"EBS volume {args.name} is not encrypted: set encrypted=True (and kmsKeyId for a key of your own).",
                None,
            )
        return
    if _kind(args.resource_type) != "StorageClass" or _get(props, "provisioner") not in EBS_PROVISIONERS:
        return
    encrypted = _get(props, "parameters", "encrypted")
    if not (isinstance(encrypted, str) and encrypted.strip().lower() == "true"):
        report_violation(
            f"StorageClass {_object_name(props, args.name)} ({_get(props, 'provisioner')}) provisions unencrypted "
            f'volumes: parameters.encrypted is {encrypted!r}, not "true".',
            None,
        )


# --- Rule: TLS in production ---------------------------------------------------------------------

TLS_DIRECTIVES = (("tls-replication", "yes"), ("tls-cluster", "yes"))


def check_tls_in_production(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """In a production stack, every redis.conf serves TLS only: clients, replication and the cluster bus."""
    confs = redis_confs(args.resource_type, args.props)
    if not confs or not is_production(args.get_config()):
        return
    where = f"ConfigMap {_object_name(args.props, args.name)}"
    for file_name, text in confs.items():
        directives = config_directives(text)
        problems = []
        tls_port = _last(directives, "tls-port")
        if not tls_port or tls_port[0] == "0":
            problems.append("no tls-port (clients would talk plaintext)")
        port = _last(directives, "port")
        if not port or port[0] != "0":
            # An absent `port` means the default 6379, in plaintext.
            problems.append(f"the plaintext port is open (port {port[0] if port else '6379 by default'}, not 0)")
        for name, wanted in TLS_DIRECTIVES:
            value = _last(directives, name)
            if not value or value[0].lower() != wanted:
                problems.append(f"{name} is {value[0] if value else 'unset'}, not {wanted}")
        if problems:
            report_violation(
                f"{where}, {file_name}: stack {stack_name() or '<unknown>'} is production and needs TLS; "
                + "; ".join(problems)
                + ".",
                None,
            )


# --- Rule: auth required -------------------------------------------------------------------------

AUTH_FILE_SUFFIXES = (".conf", ".acl")


def acl_problems(file_name: str, text: str) -> list[str]:
    """What lets a client in without a password in an ACL file (or ACL lines of a config)."""
    problems = []
    users = [arguments for directive, arguments in config_directives(text) if directive == "user" and arguments]
    for arguments in users:
        user, rules = arguments[0], [rule.lower() for rule in arguments[1:]]
        if "nopass" in rules:
            problems.append(f"{file_name}: user {user} has nopass")
    if file_name.endswith(".acl") and not any(arguments[0] == "default" for arguments in users):
        # Redis creates a default user missing from the ACL file as `on nopass ~* &* +@all`.
        problems.append(f"{file_name}: no `user default` line, so Redis creates the default user with nopass")
    return problems


def _conf_auth_problems(file_name: str, text: str) -> list[str]:
    directives = config_directives(text)
    problems = acl_problems(file_name, text)
    requirepass = [arguments for directive, arguments in directives if directive == "requirepass"]
    for arguments in requirepass:
        if not arguments or not _unquoted(arguments[0]):
            problems.append(f"{file_name}: requirepass is empty")
    return problems


def check_auth_required(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Every redis.conf turns authentication on, and no ACL lets a user in without a password.

    A redis.conf counts as authenticated with `aclfile <file>`, a non-empty `requirepass`, or
    `include <file>` (the program's auth.conf from the Secret, holding requirepass and
    masterauth). The files those point at are checked where they live: every `*.conf` and
    `*.acl` file of a ConfigMap or Secret, for nopass users, an ACL file without its default
    user, and an empty requirepass."""
    kind = _kind(args.resource_type)
    if kind not in ("ConfigMap", "Secret"):
        return
    where = f"{kind} {_object_name(args.props, args.name)}"
    confs = redis_confs(args.resource_type, args.props)
    for file_name, text in confs.items():
        directives = config_directives(text)
        names = {directive for directive, _arguments in directives}
        if not names & {"aclfile", "requirepass", "include"}:
            report_violation(
                f"{where}, {file_name}: no authentication; set `aclfile <file>` (users with passwords) or "
                "`requirepass`, directly or in an included file.",
                None,
            )
    for file_name, text in object_files(args.resource_type, args.props).items():
        # Config and ACL files only: a script's lines are no directives.
        if file_name.endswith(AUTH_FILE_SUFFIXES):
            for problem in _conf_auth_problems(file_name, text):
                report_violation(f"{where}, {problem}.", None)


# --- Rule: images pinned -------------------------------------------------------------------------

_DIGEST = re.compile(r"@[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}$")
# A tag that names one release: major.minor.patch, optionally with a variant (8.10.2-trixie,
# v1.2.3, 1.2.3.4). `8`, `8.10`, `latest`, `alpine` or `stable` move to new releases.
_RELEASE_TAG = re.compile(r"^v?[0-9]+\.[0-9]+\.[0-9]+(?:[-+._][A-Za-z0-9_.+-]*)?$")


def image_problem(image: Any) -> Optional[str]:
    """Why an image reference is not pinned to one release, or None when it is."""
    if not isinstance(image, str) or not image.strip():
        return "names no image"
    name = image.split("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    # A colon before the last slash belongs to a registry's port (registry:5000/redis).
    tag = name[colon + 1 :] if colon > slash else None
    if tag == "latest":
        return f"{image!r} uses the tag latest"
    if _DIGEST.search(image):
        return None
    if tag is None:
        return f"{image!r} names no tag, which means latest"
    if not _RELEASE_TAG.match(tag):
        return f"{image!r}: the tag {tag!r} moves to new releases; use a full version (8.10.2) or a digest"
    return None


def check_images_pinned(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Every container image names one release: an exact version tag or a digest, never latest."""
    spec = pod_spec(args.resource_type, args.props)
    if spec is None:
        return
    for field, container in _containers(spec, "initContainers", "containers", "ephemeralContainers"):
        problem = image_problem(_get(container, "image"))
        if problem:
            report_violation(
                f"{_kind(args.resource_type)} {_object_name(args.props, args.name)}, "
                f"{_describe(field, container)}: {problem}.",
                None,
            )


# --- Rule: resources and probes ------------------------------------------------------------------


def container_problems(container: Mapping[str, Any], probes: bool) -> list[str]:
    problems = []
    for section, resource in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
        value = _get(container, "resources", section, resource)
        if value is None or (isinstance(value, str) and not value.strip()):
            problems.append(f"no {section}.{resource}")
    if probes:
        for probe in ("readinessProbe", "livenessProbe"):
            if not isinstance(_get(container, probe), Mapping) or not _get(container, probe):
                problems.append(f"no {probe}")
    return problems


def check_resources_and_probes(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Every container requests cpu and memory, caps memory, and has readiness and liveness probes.

    Init containers run to completion, and Kubernetes takes no probes on them: they need the
    resources only, unless they are sidecars (restartPolicy Always), which run alongside."""
    spec = pod_spec(args.resource_type, args.props)
    if spec is None:
        return
    for field, container in _containers(spec, "initContainers", "containers"):
        sidecar = field == "initContainers" and _get(container, "restartPolicy") == "Always"
        problems = container_problems(container, probes=field == "containers" or sidecar)
        if problems:
            report_violation(
                f"{_kind(args.resource_type)} {_object_name(args.props, args.name)}, "
                f"{_describe(field, container)}: {', '.join(problems)}.",
                None,
            )


# --- Stack rules: selecting pods -------------------------------------------------------------


def selector_matches(selector: Any, labels: Mapping[str, Any]) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions) selects pods with these labels.
    An empty selector selects every pod; a missing one (None) selects none."""
    if not isinstance(selector, Mapping):
        return False
    for key, value in (_get(selector, "matchLabels", default={}) or {}).items():
        if labels.get(key) != value:
            return False
    for expression in _items(_get(selector, "matchExpressions")):
        key, operator = _get(expression, "key"), _get(expression, "operator")
        values = {str(v) for v in _items(_get(expression, "values"))}
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _same_namespace(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    # Unset on both means the provider's default namespace, the same for both.
    return _get(a, "metadata", "namespace") == _get(b, "metadata", "namespace")


def _workloads(args: StackValidationArgs) -> Iterator[tuple[Any, Mapping[str, Any]]]:
    """Each long-running workload of the stack, with its pods' labels."""
    for resource in args.resources:
        if _kind(resource.resource_type) in LONG_RUNNING_KINDS:
            labels = _get(resource.props, "spec", "template", "metadata", "labels", default={}) or {}
            yield resource, dict(labels.items())


def _of_kind(args: StackValidationArgs, kind: str) -> list[Any]:
    return [resource for resource in args.resources if _kind(resource.resource_type) == kind]


# --- Rule: PodDisruptionBudget present -------------------------------------------------------


def check_pod_disruption_budgets(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """Every Deployment, StatefulSet and DaemonSet has a PodDisruptionBudget selecting its pods."""
    budgets = _of_kind(args, "PodDisruptionBudget")
    for workload, labels in _workloads(args):
        covered = any(
            _same_namespace(budget.props, workload.props)
            and selector_matches(_get(budget.props, "spec", "selector"), labels)
            for budget in budgets
        )
        if not covered:
            report_violation(
                f"{_kind(workload.resource_type)} {_object_name(workload.props, workload.name)} has no "
                "PodDisruptionBudget selecting its pods: a node drain may evict all of them at once.",
                workload.urn,
            )


# --- Rule: egress restricted -----------------------------------------------------------------

OPEN_CIDRS = ("0.0.0.0/0", "::/0")


def policy_types(spec: Mapping[str, Any]) -> list[str]:
    """The policy's types, with the API server's default when they are not given."""
    given = _items(_get(spec, "policyTypes"))
    if given:
        return [str(t) for t in given]
    return ["Ingress", "Egress"] if _items(_get(spec, "egress")) else ["Ingress"]


def open_egress_rules(spec: Mapping[str, Any]) -> list[str]:
    """The egress rules of a NetworkPolicy spec that let the pods reach anything."""
    problems = []
    for index, rule in enumerate(_items(_get(spec, "egress"))):
        peers, ports = _items(_get(rule, "to")), _items(_get(rule, "ports"))
        if not peers and not ports:
            problems.append(f"egress[{index}] has no `to` and no ports: it allows all egress")
        for peer in peers:
            cidr = _get(peer, "ipBlock", "cidr")
            if cidr in OPEN_CIDRS:
                problems.append(f"egress[{index}] allows {cidr}")
    return problems


def check_egress_restricted(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """The pods of every long-running workload are under a NetworkPolicy that restricts egress
    (Egress in policyTypes), and no NetworkPolicy selecting them opens egress to everything."""
    policies = _of_kind(args, "NetworkPolicy")
    for workload, labels in _workloads(args):
        name = f"{_kind(workload.resource_type)} {_object_name(workload.props, workload.name)}"
        selecting = [
            policy
            for policy in policies
            if _same_namespace(policy.props, workload.props)
            # A NetworkPolicy's podSelector is required; an empty one selects every pod.
            and selector_matches(_get(policy.props, "spec", "podSelector", default={}), labels)
        ]
        restricting = [
            policy for policy in selecting if "Egress" in policy_types(_get(policy.props, "spec", default={}))
        ]
        if not restricting:
            report_violation(
                f"{name}: no NetworkPolicy selecting its pods has Egress in policyTypes, so their egress is "
                "unrestricted; allow DNS and the peers the pods need, nothing else.",
                workload.urn,
            )
        for policy in restricting:
            for problem in open_egress_rules(_get(policy.props, "spec", default={})):
                report_violation(
                    f"{name}: NetworkPolicy {_object_name(policy.props, policy.name)} {problem}.", policy.urn
                )


# --- Rule: no public endpoint open to the internet --------------------------------------------

# Ranges no internet client comes from: what a list of CIDRs may leave out and still admit
# "the internet". Ranges that together cover every other IPv4 address, or IPv6's global
# unicast 2000::/3, admit the internet as surely as 0.0.0.0/0 does.
_NOT_INTERNET_V4 = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/3",
)


def _minus(networks: list, taken: Any) -> list:
    kept = []
    for network in networks:
        if network.version != taken.version or not network.overlaps(taken):
            kept.append(network)
        elif not taken.supernet_of(network):
            kept.extend(network.address_exclude(taken))
    return kept


def admits_internet(cidrs: list[str]) -> bool:
    """Whether these CIDRs together admit every public IPv4 address, or every global IPv6 one."""
    given = []
    for cidr in cidrs:
        try:
            given.append(ipaddress.ip_network(str(cidr), strict=False))
        except ValueError:
            continue
    internet_v4 = [ipaddress.ip_network("0.0.0.0/0")]
    for reserved in _NOT_INTERNET_V4:
        internet_v4 = _minus(internet_v4, ipaddress.ip_network(reserved))
    for internet in (internet_v4, [ipaddress.ip_network("2000::/3")]):
        left = internet
        for network in given:
            left = _minus(left, network)
        if not left:
            return True
    return False


def check_public_endpoint(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """An EKS API endpoint that is public admits listed CIDRs only, never the internet, on
    every stack.

    pulumi-eks's Cluster takes endpointPublicAccess and publicAccessCidrs itself; the AWS
    provider's under vpcConfig. Public access defaults to on, and an omitted or empty CIDR
    list to 0.0.0.0/0, in both (as in the EKS API)."""
    if args.resource_type == "eks:index:Cluster":
        settings: Any = args.props
    elif args.resource_type == "aws:eks/cluster:Cluster":
        settings = _get(args.props, "vpcConfig", default={})
    else:
        return
    public = _get(settings, "endpointPublicAccess", default=True)
    if not _truthy(public):
        return
    cidrs = [str(cidr) for cidr in _items(_get(settings, "publicAccessCidrs"))]
    if not cidrs:
        report_violation(
            f"EKS cluster {args.name}: the public endpoint is on with no publicAccessCidrs, which EKS reads as "
            "0.0.0.0/0; list the ranges that may reach it, or set endpointPublicAccess false.",
            None,
        )
        return
    if admits_internet(cidrs):
        report_violation(
            f"EKS cluster {args.name}: the public endpoint admits the whole internet ({', '.join(cidrs)}) on stack "
            f"{stack_name() or '<unknown>'}; list the ranges that may reach it, or set endpointPublicAccess false.",
            None,
        )


# --- Rule: IAM least privilege ---------------------------------------------------------------

IAM_POLICY_TYPES = {
    "aws:iam/policy:Policy",
    "aws:iam/rolePolicy:RolePolicy",
    "aws:iam/userPolicy:UserPolicy",
    "aws:iam/groupPolicy:GroupPolicy",
}
IAM_ATTACHMENT_TYPES = {
    "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
    "aws:iam/userPolicyAttachment:UserPolicyAttachment",
    "aws:iam/groupPolicyAttachment:GroupPolicyAttachment",
    "aws:iam/policyAttachment:PolicyAttachment",
}
# AWS managed policies that give everything, or the power to give oneself everything.
ADMIN_POLICIES = ("AdministratorAccess", "IAMFullAccess")
_ADMIN_POLICY_ARN = re.compile(r"arn:aws[a-z-]*:iam::aws:policy/(?:[\w+=,.@-]+/)*(" + "|".join(ADMIN_POLICIES) + r")")
_SERVICE_WILDCARD = re.compile(r"[A-Za-z0-9-]+:\*")


def _document(policy: Any) -> Any:
    if isinstance(policy, str):
        try:
            return json.loads(policy)
        except ValueError:
            return None
    return policy


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) or not _is_list(value) else list(value)


def wildcard_problems(policy: Any) -> list[str]:
    """What an IAM policy document allows too broadly: `*` actions, a whole service on `*`
    resources, or NotAction (every action but some) on `*`."""
    document = _document(policy)
    if not isinstance(document, Mapping):
        return []
    problems = []
    for index, statement in enumerate(_as_list(_get(document, "Statement"))):
        if not isinstance(statement, Mapping) or _get(statement, "Effect") != "Allow":
            continue
        actions = [str(a) for a in _as_list(_get(statement, "Action"))]
        resources = [str(r) for r in _as_list(_get(statement, "Resource"))]
        sid = _get(statement, "Sid", default=f"#{index}")
        if "*" in actions:
            problems.append(f"statement {sid} allows every action (*)")
        on_everything = "*" in resources
        services = [a for a in actions if _SERVICE_WILDCARD.fullmatch(a)]
        if services and on_everything:
            problems.append(f"statement {sid} allows all of {', '.join(services)} on every resource (*)")
        if _get(statement, "NotAction") is not None and on_everything:
            problems.append(f"statement {sid} allows every action but its NotAction list on every resource (*)")
    return problems


def check_iam_least_privilege(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """No IAM policy allows `*` actions, a whole service on `*`, or NotAction on `*`; no
    principal gets AdministratorAccess (or IAMFullAccess, which grants it) attached."""
    props = args.props
    documents: list[tuple[str, Any]] = []
    if args.resource_type in IAM_POLICY_TYPES:
        documents.append(("policy", _get(props, "policy")))
    elif args.resource_type == "aws:iam/role:Role":
        for inline in _items(_get(props, "inlinePolicies")):
            documents.append((f"inline policy {_get(inline, 'name', default='')}", _get(inline, "policy")))
        for arn in _items(_get(props, "managedPolicyArns")):
            if _ADMIN_POLICY_ARN.fullmatch(str(arn)):
                report_violation(f"IAM role {args.name} has {arn} attached: grant what it needs instead.", None)
    elif args.resource_type in IAM_ATTACHMENT_TYPES:
        arn = _get(props, "policyArn")
        if isinstance(arn, str) and _ADMIN_POLICY_ARN.fullmatch(arn):
            report_violation(f"{args.name} attaches {arn}: grant what the principal needs instead.", None)
        return
    else:
        return
    for where, document in documents:
        for problem in wildcard_problems(document):
            report_violation(f"IAM {args.resource_type.rsplit(':', 1)[-1]} {args.name}, {where}: {problem}.", None)


# --- Rule: encryption at rest ----------------------------------------------------------------


def check_encryption_at_rest(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Kubernetes secrets in EKS are envelope-encrypted with a KMS key; every EBS volume of a
    launch template (the nodes' root volumes) is encrypted; every cross-region copy of a DLM
    policy is encrypted."""
    props, kind = args.props, args.resource_type
    if kind == "eks:index:Cluster":
        if not _get(props, "encryptionConfigKeyArn"):
            report_violation(
                f"EKS cluster {args.name}: Kubernetes secrets are not encrypted with a KMS key; set "
                "encryptionConfigKeyArn.",
                None,
            )
    elif kind == "aws:eks/cluster:Cluster":
        configs = _items(_get(props, "encryptionConfig")) or (
            [_get(props, "encryptionConfig")] if isinstance(_get(props, "encryptionConfig"), Mapping) else []
        )
        if not any(
            "secrets" in [str(r) for r in _items(_get(c, "resources"))] and _get(c, "provider", "keyArn")
            for c in configs
        ):
            report_violation(
                f"EKS cluster {args.name}: Kubernetes secrets are not encrypted with a KMS key; set "
                "encryptionConfig (resources [secrets], provider.keyArn).",
                None,
            )
    elif kind == "aws:ec2/launchTemplate:LaunchTemplate":
        mappings = [m for m in _items(_get(props, "blockDeviceMappings")) if isinstance(m, Mapping)]
        if not mappings:
            report_violation(
                f"Launch template {args.name} maps no block device: the root volume is the AMI's, unencrypted "
                "unless the account encrypts new volumes by default; map it with ebs.encrypted true.",
                None,
            )
        for mapping in mappings:
            ebs = _get(mapping, "ebs")
            if isinstance(ebs, Mapping) and not _truthy(_get(ebs, "encrypted")):
                report_violation(
                    f"Launch template {args.name}: the volume {_get(mapping, 'deviceName', default='?')} is not "
                    "encrypted; set ebs.encrypted true.",
                    None,
                )
    elif kind == "aws:dlm/lifecyclePolicy:LifecyclePolicy":
        for schedule in _items(_get(props, "policyDetails", "schedules")):
            for rule in _items(_get(schedule, "crossRegionCopyRules")):
                if not _truthy(_get(rule, "encrypted")):
                    report_violation(
                        f"DLM policy {args.name}, schedule {_get(schedule, 'name', default='?')}: the copy to "
                        f"{_get(rule, 'target', default=_get(rule, 'targetRegion', default='?'))} is not "
                        "encrypted; set encrypted true.",
                        None,
                    )


# --- The policies ------------------------------------------------------------------------------

POLICIES = [
    ResourceValidationPolicy(
        name="storage-encrypted",
        description='EBS volumes are encrypted: EBS StorageClasses set encrypted "true", aws.ebs.Volume encrypted.',
        validate=check_storage_encrypted,
    ),
    ResourceValidationPolicy(
        name="redis-tls-in-production",
        description=(
            "In production stacks redis.conf serves TLS only: tls-port set, port 0, tls-replication and "
            "tls-cluster yes."
        ),
        validate=check_tls_in_production,
        config_schema=PRODUCTION_CONFIG,
    ),
    ResourceValidationPolicy(
        name="redis-auth-required",
        description=(
            "redis.conf requires authentication (aclfile, requirepass or an included auth file) and no ACL "
            "has a nopass user."
        ),
        validate=check_auth_required,
    ),
    ResourceValidationPolicy(
        name="container-images-pinned",
        description="Container images name one release: an exact version tag (8.10.2) or a digest, never latest.",
        validate=check_images_pinned,
    ),
    ResourceValidationPolicy(
        name="container-resources-and-probes",
        description="Containers request cpu and memory, limit memory, and have readiness and liveness probes.",
        validate=check_resources_and_probes,
    ),
    StackValidationPolicy(
        name="pod-disruption-budget-present",
        description="Every Deployment, StatefulSet and DaemonSet has a PodDisruptionBudget selecting its pods.",
        validate=check_pod_disruption_budgets,
    ),
    StackValidationPolicy(
        name="egress-restricted",
        description=(
            "Workload pods are under a NetworkPolicy with Egress in policyTypes, and none allows all egress "
            "(a rule with no `to` and no ports, or 0.0.0.0/0)."
        ),
        validate=check_egress_restricted,
    ),
    ResourceValidationPolicy(
        name="eks-public-endpoint-restricted",
        description=(
            "A public EKS API endpoint lists publicAccessCidrs, and together they do not admit the whole internet."
        ),
        validate=check_public_endpoint,
    ),
    ResourceValidationPolicy(
        name="iam-least-privilege",
        description=(
            "No IAM policy allows * actions, a whole service on * resources or NotAction on *; no "
            "AdministratorAccess or IAMFullAccess attachment."
        ),
        validate=check_iam_least_privilege,
    ),
    ResourceValidationPolicy(
        name="encryption-at-rest",
        description=(
            "EKS secrets are KMS-encrypted, launch-template volumes are encrypted, DLM cross-region copies are "
            "encrypted."
        ),
        validate=check_encryption_at_rest,
    ),
]
