"""Every stack setting, read and validated in one place.

`load_settings()` reads the whole config of the current stack, as the engine hands it to the
program, into one frozen `StackSettings`, through `read_stack_config()`: the `redis-eks:`
keys, keys in a namespace that looks like it but is not (`redis:tls`), whether the secrets
were set as secrets, and what the stack as a whole must hold (the pods fit the nodes, no
zone holds a majority of the masters, risks accepted by name). `parse_settings()` does the
part that needs only the `redis-eks:` values, for the sandbox and the tests. A refusal is a
`SettingsError`, a `pulumi.RunError` (the language host prints it without a traceback),
naming the key, the value and what is allowed, for every problem of the run at once: this
happens while the program runs, i.e. during `pulumi preview`, before anything is created.
`load_stack_config()` reads a `Pulumi.<stack>.yaml` the way the engine would hand it over,
for the tools, the sandbox and the tests that run without an engine.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping, Optional

import pulumi
import yaml

from cluster_logic.credentials import UserAccess
from components import metrics_exporter
from components.acl_rules import dangerous_grant
from components.engines import DEFAULT_ENGINE, ENGINES, Engine, Version, image_problems, image_version
from components.instance_types import INSTANCE_TYPES, InstanceType
from components.memory_budget import maxmemory_bytes
from components.setting_values import (
    DNS_LABEL,
    GIB,
    MIB,
    PASSWORD_PATTERN,
    PASSWORD_RULE,
    RESERVED_NAMESPACES,
    ValueProblems,
    as_backup_schedule,
    as_bool,
    as_cert_manager_issuer,
    as_cidr_list,
    as_cpu,
    as_image,
    as_int,
    as_kms_key_arn,
    as_labels,
    as_principal_list,
    as_size,
    as_string_list,
    as_users,
    aws_region,
    cpu_millicores,
    format_bytes,
    json_object,
    manual_change,
    matching,
    one_of,
    quantity_gib_rounded_up,
    region_partition,
    size_bytes,
    subnet_id,
)

NAMESPACE = "redis-eks"
# Where Pulumi.yaml and the Pulumi.<stack>.yaml files live.
PROJECT_DIR = Path(__file__).resolve().parent.parent

# EKS minor versions in standard support on the date this was pinned (1.34 leaves standard
# support on 2026-12-02). Add a version here once it has been tried on a dev stack.
SUPPORTED_CLUSTER_VERSIONS = ("1.35", "1.36")
DEFAULT_CLUSTER_VERSION = "1.35"


# The metrics sidecar's image: the release tests/integration/test_exporter.py scrapes for
# real (Debian's prometheus-redis-exporter at the same version, from tools/fetch-engines.sh).
DEFAULT_EXPORTER_IMAGE = "oliver006/redis_exporter:v1.86.0"
# Daily at 03:00 UTC, a week kept: what ElastiCache offers as its backup window, by default.
DEFAULT_BACKUP_SCHEDULE = "cron(0 3 * * ? *)"
MAX_BACKUP_RETENTION_COUNT = 1000  # DLM's limit per schedule
# prometheusOperatorCrds: the stack installs the ServiceMonitor and PrometheusRule CRDs, or the
# cluster has them already (a Prometheus Operator of its own); components/monitoring_crds.py.
PROMETHEUS_OPERATOR_CRD_MODES = ("install", "existing")
# nodeGroupForm: where the node group's instance type is (components/eks_platform/nodes.py):
# in its launch template, on the group (stacks created before), or both groups while moving.
NODE_GROUP_FORMS = ("launchTemplate", "instanceTypes", "moving")
# Where the alerts' runbook_url values lead: the repository's tree, to which each rule's
# relative docs/operations.md#alert-... link is joined. Replace it by your copy's URL.
DEFAULT_RUNBOOK_BASE_URL = "https://github.com/redis-eks/redis-eks/blob/main/"

# durability: what a master's acknowledgement of a plain write is worth when it is cut off
# (components/redis_node_files.py renders it; docs/operations.md, "What you can lose"):
# `cache` acknowledges until the node timeout tells it that it is in a minority, `bounded`
# stops within about 2 s of losing its last replica (min-replicas-to-write).
DURABILITY_MODES = ("cache", "bounded")

PLATFORMS = ("eks", "existing")
NAT_GATEWAY_STRATEGIES = ("single", "onePerAz")
MAXMEMORY_POLICIES = (
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)
CONTROL_PLANE_LOG_TYPES = ("api", "audit", "authenticator", "controllerManager", "scheduler")
EBS_PROVISIONER = "ebs.csi.aws.com"

GP3_IOPS_RANGE = (3000, 80000)
GP3_THROUGHPUT_RANGE = (125, 2000)
# EC2 refuses a gp3 volume with more than 500 IOPS per GiB (the 3000 baseline comes with
# any size).
GP3_MAX_IOPS_PER_GIB = 500

# Redis Cluster needs at least three masters to hold a majority through one failure.
MIN_SHARDS = 3
MAX_SHARDS = 100
MAX_REPLICAS_PER_SHARD = 5

# gp3's volume sizes (and the bounds for any other provisioner too).
STORAGE_SIZE_RANGE = (GIB, 16 * 2**40)
# Redis needs headroom beyond maxmemory (redis_node_files); below this it has none.
MIN_MEMORY_LIMIT = 256 * MIB
MAX_MEMORY = 2**40
MAX_MILLICORES = 256_000
# With AOF on (always: redis_node_files), a rewrite writes a new base file beside the old
# one and its tail, and a replica's full sync writes an RDB beside the data: the volume
# needs about twice the data set, which maxmemory caps.
STORAGE_PER_MAXMEMORY = 2

# What a stack may accept by name in `acceptRisks`, each a refusal otherwise.
RISKS = {
    "publicEndpointOpenToInternet": "the EKS API endpoint admits the whole internet",
    "noReplicas": "replicasPerShard = 0: a node drain or failure takes a master's keys offline",
    "zoneMajority": "one zone holds more than half the masters: losing it stops failover",
    "singleNode": "every pod on one node: losing it loses the cluster",
    "allPodsAsClients": "clientPodLabels = {}: every pod of the allowed namespaces may connect",
}
DANGEROUS_COMMANDS_RISK = "dangerousCommands"
# The namespaces of the providers the program uses: their keys are not near misses.
PROVIDER_NAMESPACES = ("aws", "awsx", "eks", "kubernetes", "random", "tls", "pulumi", "docker")
SECRET_KEYS = ("password", "kubeconfig", "userPasswords")

# runbookBaseUrl: an https URL of a host and path segments, each ending in "/" so that a rule's
# relative link joins below it; no query or fragment, which the join would drop or misplace.
RUNBOOK_BASE_URL = re.compile(
    r"https://[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?){0,20}(?::[0-9]{1,5})?"
    r"/(?:[A-Za-z0-9._~%!$&'()*+,;=:@-]{1,255}/){0,32}"
)
# An EKS add-on build, as `aws eks describe-addon-versions` names them (kube-proxy's have a
# variant: v1.35.0-minimal-eksbuild.2).
ADDON_BUILD = matching(
    re.compile(r"v[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?:-[a-z]{1,20})?-eksbuild\.[0-9]{1,3}"),
    "an add-on build such as v1.66.0-eksbuild.1",
)


class SettingsError(pulumi.RunError, ValueError):
    """Stack settings have values the program cannot deploy: every problem of one run, together.

    A `pulumi.RunError`, which the Python language host reports as its message alone (no
    traceback); a ValueError too, for the callers that catch one."""

    def __init__(self, problems: str | list[str] | tuple[str, ...]):
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} stack settings are not valid:\n" + "\n".join(
                f"- {problem}" for problem in self.problems
            )
        super().__init__(message)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "...'"


def _fail(key: str, value: Any, allowed: str) -> str:
    """One problem's message: the key, the value and what is allowed."""
    return f"{NAMESPACE}:{key} = {_shown(value)} is not valid: {allowed}"


@dataclass(frozen=True)
class StackSettings:
    # Platform
    platform: str = "eks"
    cluster_version: str = DEFAULT_CLUSTER_VERSION
    node_instance_type: str = "t3.large"
    node_min_size: int = 3
    node_desired_size: int = 3
    node_max_size: int = 6
    vpc_id: Optional[str] = None
    private_subnet_ids: tuple[str, ...] = ()
    availability_zone_count: int = 3
    nat_gateways: str = "single"
    endpoint_public_access: bool = True
    # Required while the public endpoint is on (README, publicAccessCidrs).
    public_access_cidrs: tuple[str, ...] = ()
    # A pinned build of the aws-ebs-csi-driver add-on, or None: the one EKS names for the
    # cluster's Kubernetes version (components/eks_platform/addons.py).
    ebs_csi_driver_version: Optional[str] = None
    storage_kms_key_arn: Optional[str] = None
    storage_provisioner: str = EBS_PROVISIONER
    storage_size: str = "5Gi"
    storage_iops: int = 3000
    storage_throughput: int = 125
    # Redis workload
    namespace: str = "redis"
    shards: int = 3
    replicas_per_shard: int = 1
    engine: str = DEFAULT_ENGINE
    # The engine's default image unless `image` names another.
    image: str = ENGINES[DEFAULT_ENGINE].default_image
    node_timeout_ms: int = 2000
    durability: str = DURABILITY_MODES[0]
    maxmemory_policy: str = "noeviction"
    cpu_request: str = "250m"
    cpu_limit: str = "1"
    memory_request: str = "1Gi"
    memory_limit: str = "1Gi"
    client_pod_labels: tuple[tuple[str, str], ...] = (("redis-client", "true"),)
    client_namespace_labels: tuple[tuple[str, str], ...] = ()
    bootstrap_timeout_seconds: int = 600
    # Security: TLS for clients, replication and the cluster bus; who signs the nodes'
    # certificate ((kind, name) of a cert-manager issuer; None: a CA of the stack's own).
    tls: bool = False
    cert_manager_issuer: Optional[tuple[str, str]] = None
    # Named ACL users besides the admin (`default`) and the replication user.
    users: tuple[UserAccess, ...] = ()
    # How long a replaced password keeps working after the new one is on every node and in
    # the Secret, for clients to switch.
    rotation_grace_seconds: int = 60
    # Metrics: the exporter sidecar always runs; `monitoring` adds the Prometheus Operator's
    # ServiceMonitor and PrometheusRule (their CRDs the stack installs or finds: prometheusOperatorCrds).
    monitoring: bool = False
    exporter_image: str = DEFAULT_EXPORTER_IMAGE
    # Where Prometheus runs (its pods may reach the metrics port), and the labels its
    # Prometheus Operator selects ServiceMonitors and PrometheusRules by.
    monitoring_namespace: str = "monitoring"
    monitoring_labels: tuple[tuple[str, str], ...] = ()
    # Scheduled EBS snapshots of the data volumes (platform=eks): a DLM cron expression, or
    # None for none; how many to keep; optionally a region to copy each to, kept for days.
    backup_schedule: Optional[str] = DEFAULT_BACKUP_SCHEDULE
    backup_retention_count: int = 7
    backup_copy_region: Optional[str] = None
    backup_copy_retention_days: int = 7
    # The one-off opt-in after a scale-in done by hand on the nodes, or to go back to an
    # image that never started, naming what it accepts ("shards=3", "image=<image>").
    accept_manual_change: tuple[str, ...] = ()
    # Risks the stack takes on purpose, by name (RISKS, and dangerousCommands=<user>).
    accept_risks: tuple[str, ...] = ()
    # IAM roles and users given cluster admin through EKS access entries, besides the
    # cluster's creator (platform=eks only).
    cluster_admin_arns: tuple[str, ...] = ()
    # What a first deploy and the day-2 changes of a production stack need (README, "Deploying
    # on AWS"): the Prometheus Operator CRDs installed by the stack or already in the cluster.
    prometheus_operator_crds: str = PROMETHEUS_OPERATOR_CRD_MODES[0]
    # Pinned builds of the other EKS add-ons, or None: the build EKS names for the cluster's
    # Kubernetes version; each pin is checked against what EKS offers for it, at preview.
    coredns_version: Optional[str] = None
    kube_proxy_version: Optional[str] = None
    vpc_cni_version: Optional[str] = None
    node_group_form: str = NODE_GROUP_FORMS[0]
    # The EKS cluster refuses deletion until this is turned off again (on in the prod example).
    deletion_protection: bool = False
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL
    # Secrets: Pulumi secret Outputs once `load_settings` returns them, or None when unset.
    password: Any = field(default=None, repr=False, compare=False)
    kubeconfig: Any = field(default=None, repr=False, compare=False)
    # name -> password of the named users that set theirs (the others get a random one):
    # JSON text once parsed, a dict of secret Outputs once `load_settings` returns it.
    user_passwords: Any = field(default=None, repr=False, compare=False)
    # What is allowed but worth a second look (README, "Warnings"): logged by load_settings.
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def pod_count(self) -> int:
        return self.shards * (1 + self.replicas_per_shard)

    @property
    def engine_spec(self) -> Engine:
        return ENGINES[self.engine]

    @property
    def engine_version(self) -> Version:
        """The release the image's tag names (the settings refuse an image without one)."""
        version = image_version(self.image)
        assert version is not None, self.image
        return version

    @property
    def memory_limit_bytes(self) -> int:
        return size_bytes(self.memory_limit)

    @property
    def instance_type(self) -> Optional[InstanceType]:
        return INSTANCE_TYPES.get(self.node_instance_type) if self.platform == "eks" else None


def _risk(item: str) -> None:
    name, _, user = item.partition("=")
    if item in RISKS or (name == DANGEROUS_COMMANDS_RISK and re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", user)):
        return
    raise ValueError(f"a list of {', '.join(RISKS)} or {DANGEROUS_COMMANDS_RISK}=<user>; {item!r} is not one")


def _namespace(raw: str) -> str:
    if raw in RESERVED_NAMESPACES:
        raise ValueError(f"a namespace of its own, not one of Kubernetes' ({', '.join(RESERVED_NAMESPACES)})")
    if raw in ("", "null", "~"):
        raise ValueError("a DNS-1123 label; the value is empty (a YAML null)")
    return matching(DNS_LABEL, "a DNS-1123 label: lower-case letters, digits and '-', at most 63")(raw)


_DNS_LABEL_RULE = "a DNS-1123 label: lower-case letters, digits and '-', at most 63"

# Config key -> (dataclass field, parser): the parsers are in `setting_values`.
_FIELDS: dict[str, tuple[str, Any]] = {
    "platform": ("platform", one_of(PLATFORMS)),
    "clusterVersion": ("cluster_version", one_of(SUPPORTED_CLUSTER_VERSIONS)),
    "nodeInstanceType": (
        "node_instance_type",
        matching(
            re.compile("|".join(re.escape(name) for name in INSTANCE_TYPES)),
            "an x86_64 EC2 instance type of the table in components/instance_types.py, such as m6i.large, "
            "r6i.xlarge or t3.large (medium to 8xlarge of t3, t3a, m5-m7, r5-r7, c6-c7)",
        ),
    ),
    "nodeMinSize": ("node_min_size", as_int(1, 100)),
    "nodeDesiredSize": ("node_desired_size", as_int(1, 100)),
    "nodeMaxSize": ("node_max_size", as_int(1, 100)),
    "vpcId": (
        "vpc_id",
        matching(re.compile(r"vpc-(?:[0-9a-f]{8}|[0-9a-f]{17})"), "a VPC ID (vpc- and 8 or 17 hex digits)"),
    ),
    "privateSubnetIds": ("private_subnet_ids", as_string_list(subnet_id, '["subnet-0123456789abcdef0", "..."]')),
    "availabilityZoneCount": ("availability_zone_count", as_int(2, 6)),
    "natGateways": ("nat_gateways", one_of(NAT_GATEWAY_STRATEGIES)),
    "endpointPublicAccess": ("endpoint_public_access", as_bool),
    "publicAccessCidrs": ("public_access_cidrs", as_cidr_list),
    "ebsCsiDriverVersion": ("ebs_csi_driver_version", ADDON_BUILD),
    "storageKmsKeyArn": ("storage_kms_key_arn", as_kms_key_arn),
    "storageProvisioner": (
        "storage_provisioner",
        matching(
            re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?(?:/[a-z0-9.-]{1,63})?"),
            "a CSI provisioner name such as ebs.csi.aws.com",
        ),
    ),
    "storageSize": ("storage_size", as_size(*STORAGE_SIZE_RANGE)),
    "storageIops": ("storage_iops", as_int(*GP3_IOPS_RANGE)),
    "storageThroughput": ("storage_throughput", as_int(*GP3_THROUGHPUT_RANGE)),
    "namespace": ("namespace", _namespace),
    "shards": ("shards", as_int(MIN_SHARDS, MAX_SHARDS, "Redis Cluster needs at least 3 masters to elect a failover")),
    "replicasPerShard": ("replicas_per_shard", as_int(0, MAX_REPLICAS_PER_SHARD)),
    "engine": ("engine", one_of(tuple(ENGINES))),
    "image": ("image", as_image),
    "nodeTimeoutMs": ("node_timeout_ms", as_int(1000, 60000)),
    "durability": ("durability", one_of(DURABILITY_MODES)),
    "maxmemoryPolicy": ("maxmemory_policy", one_of(MAXMEMORY_POLICIES)),
    "cpuRequest": ("cpu_request", as_cpu(10, MAX_MILLICORES)),
    "cpuLimit": ("cpu_limit", as_cpu(100, MAX_MILLICORES)),
    "memoryRequest": ("memory_request", as_size(64 * MIB, MAX_MEMORY)),
    "memoryLimit": ("memory_limit", as_size(MIN_MEMORY_LIMIT, MAX_MEMORY)),
    "clientPodLabels": ("client_pod_labels", as_labels),
    "clientNamespaceLabels": ("client_namespace_labels", as_labels),
    "bootstrapTimeoutSeconds": ("bootstrap_timeout_seconds", as_int(30, 3600)),
    "tls": ("tls", as_bool),
    "certManagerIssuer": ("cert_manager_issuer", as_cert_manager_issuer),
    "users": ("users", as_users),
    "rotationGraceSeconds": ("rotation_grace_seconds", as_int(0, 3600)),
    "monitoring": ("monitoring", as_bool),
    "exporterImage": ("exporter_image", as_image),
    "monitoringNamespace": ("monitoring_namespace", matching(DNS_LABEL, _DNS_LABEL_RULE)),
    "monitoringLabels": ("monitoring_labels", as_labels),
    "backupSchedule": ("backup_schedule", as_backup_schedule),
    "backupRetentionCount": ("backup_retention_count", as_int(1, MAX_BACKUP_RETENTION_COUNT)),
    "backupCopyRegion": ("backup_copy_region", aws_region),
    "backupCopyRetentionDays": ("backup_copy_retention_days", as_int(1, 3650)),
    "acceptManualChange": ("accept_manual_change", as_string_list(manual_change, '["namespace=cache"]')),
    "acceptRisks": ("accept_risks", as_string_list(_risk, '["noReplicas"]')),
    "clusterAdminArns": ("cluster_admin_arns", as_principal_list),
    "prometheusOperatorCrds": ("prometheus_operator_crds", one_of(PROMETHEUS_OPERATOR_CRD_MODES)),
    "corednsVersion": ("coredns_version", ADDON_BUILD),
    "kubeProxyVersion": ("kube_proxy_version", ADDON_BUILD),
    "vpcCniVersion": ("vpc_cni_version", ADDON_BUILD),
    "nodeGroupForm": ("node_group_form", one_of(NODE_GROUP_FORMS)),
    "deletionProtection": ("deletion_protection", as_bool),
    "runbookBaseUrl": (
        "runbook_base_url",
        matching(
            RUNBOOK_BASE_URL,
            "an https URL ending in /, the repository's tree such as https://github.com/<org>/redis-eks/blob/main/ "
            "(a lower-case host name, path segments of URL characters, no query or fragment)",
        ),
    ),
}
# Keys that only mean something when this program builds the cluster.
_EKS_ONLY_KEYS = (
    "clusterVersion",
    "ebsCsiDriverVersion",
    "availabilityZoneCount",
    "natGateways",
    "endpointPublicAccess",
    "publicAccessCidrs",
    "vpcId",
    "privateSubnetIds",
    "nodeInstanceType",
    "nodeMinSize",
    "nodeDesiredSize",
    "nodeMaxSize",
    "clusterAdminArns",
    "backupSchedule",
    "backupRetentionCount",
    "backupCopyRegion",
    "backupCopyRetentionDays",
    "corednsVersion",
    "kubeProxyVersion",
    "vpcCniVersion",
    "nodeGroupForm",
    "deletionProtection",
)
# Keys that only shape a VPC this program creates.
_NEW_VPC_ONLY_KEYS = ("availabilityZoneCount", "natGateways")
_SECRET_KEYS = {"password": "password", "kubeconfig": "kubeconfig", "userPasswords": "user_passwords"}
KNOWN_KEYS = tuple(_FIELDS) + tuple(_SECRET_KEYS)


def parse_settings(values: Mapping[str, Any]) -> StackSettings:
    """Validate raw config values (key -> string, without the namespace) into settings.

    Every problem of the run is reported in one `SettingsError`, so that one `pulumi preview`
    names them all. Secret values (`password`, `kubeconfig`) arrive in plain text to be
    checked; `load_settings` turns them into Pulumi secrets before anything else sees them.
    What needs the whole stack (its risks, its nodes, its secrets) is `read_stack_config`'s.
    """
    settings, problems, _bad = _parse(values)
    if problems:
        raise SettingsError(problems)
    return settings


def _parse(values: Mapping[str, Any]) -> tuple[StackSettings, list[str], set[str]]:
    problems: list[str] = []
    # Keys whose value could not be parsed: checks that relate them to others are skipped,
    # as they would judge the default in their place.
    bad: set[str] = set()
    parsed: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = f"did you mean {NAMESPACE}:{close[0]}?" if close else "known keys: " + ", ".join(KNOWN_KEYS)
            problems.append(f"{NAMESPACE}:{_shown(key)[1:-1]} is not a setting of this program; {hint}")
            bad.add(key)
            continue
        if key in _SECRET_KEYS:
            parsed[_SECRET_KEYS[key]] = raw
            continue
        attribute, parse = _FIELDS[key]
        try:
            parsed[attribute] = parse(raw)
        except ValueProblems as error:
            problems.extend(_fail(key, raw, f"expected {problem}") for problem in error.problems)
            bad.add(key)
        except ValueError as error:
            problems.append(_fail(key, raw, f"expected {error}"))
            bad.add(key)

    if "engine" in parsed and "image" not in values:
        parsed["image"] = ENGINES[parsed["engine"]].default_image
    if parsed.get("platform") == "existing" and "storageProvisioner" not in values:
        problems.append(
            _fail(
                "storageProvisioner",
                None,
                "platform=existing needs the provisioner of the cluster's CSI driver, "
                "e.g. rancher.io/local-path on kind or ebs.csi.aws.com on an EKS made elsewhere",
            )
        )
    if (
        parsed.get("platform") == "existing"
        and parsed.get("monitoring")
        and "prometheusOperatorCrds" not in values
        and "prometheusOperatorCrds" not in bad
    ):
        # On a cluster made elsewhere, either default is a guess: `install` fails with
        # AlreadyExists where a Prometheus Operator brought the CRDs (pulumi-kubernetes does not
        # adopt), and `existing` leaves the ServiceMonitor without its kind where none did.
        problems.append(
            _fail(
                "prometheusOperatorCrds",
                None,
                "platform=existing with monitoring = true needs it set: 'existing' if the cluster runs a "
                "Prometheus Operator (kube-prometheus-stack brings the ServiceMonitor and PrometheusRule "
                "CRDs; `kubectl get crd servicemonitors.monitoring.coreos.com` finds them), 'install' if it "
                "runs none and the stack should install the CRDs",
            )
        )
    settings = StackSettings(**parsed)
    found, warnings = _relation_problems(settings, values, bad)
    problems.extend(found)
    return dataclasses.replace(settings, warnings=tuple(warnings)), problems, bad


def _relation_problems(s: StackSettings, values: Mapping[str, Any], bad: set[str]) -> tuple[list[str], list[str]]:
    """What is wrong between settings (and with the secrets), for the keys that parsed; and
    what is allowed but worth a warning."""
    problems: list[str] = []
    warnings: list[str] = []

    def parsed(*keys: str) -> bool:
        return not bad.intersection(keys)

    if parsed("engine", "image"):
        problems.extend(
            f"{NAMESPACE}:image = {s.image!r} is not valid with {NAMESPACE}:engine = {s.engine!r}: expected {problem}"
            for problem in image_problems(s.engine_spec, s.image)
        )
    if parsed("exporterImage", "image", "engine") and s.exporter_image == s.image:
        problems.append(
            _fail("exporterImage", s.exporter_image, "the metrics exporter's image (redis_exporter), not the server's")
        )
    if parsed("nodeMinSize", "nodeDesiredSize", "nodeMaxSize") and not (
        s.node_min_size <= s.node_desired_size <= s.node_max_size
    ):
        problems.append(
            f"{NAMESPACE}:nodeMinSize ({s.node_min_size}) <= {NAMESPACE}:nodeDesiredSize ({s.node_desired_size}) "
            f"<= {NAMESPACE}:nodeMaxSize ({s.node_max_size}) must hold"
        )
    if parsed("vpcId", "privateSubnetIds") and bool(s.vpc_id) != bool(s.private_subnet_ids):
        problems.append(
            f"{NAMESPACE}:vpcId and {NAMESPACE}:privateSubnetIds go together: set both to use an "
            "existing VPC, or neither to create one"
        )
    if s.private_subnet_ids and len(s.private_subnet_ids) < 2:
        problems.append(
            _fail("privateSubnetIds", list(s.private_subnet_ids), "EKS needs subnets in at least 2 availability zones")
        )
    if s.private_subnet_ids and len(set(s.private_subnet_ids)) != len(s.private_subnet_ids):
        problems.append(_fail("privateSubnetIds", list(s.private_subnet_ids), "each subnet once"))
    if parsed("platform") and s.platform == "existing":
        if s.kubeconfig is None:
            problems.append(
                f"{NAMESPACE}:platform = 'existing' needs {NAMESPACE}:kubeconfig, set as a secret: "
                f'pulumi config set --secret {NAMESPACE}:kubeconfig "$(cat ~/.kube/config)"'
            )
        problems.extend(
            f"{NAMESPACE}:{key} only applies to platform=eks; remove it for platform=existing"
            for key in _EKS_ONLY_KEYS
            if key in values
        )
    if parsed("platform") and s.platform == "eks" and "kubeconfig" in values:
        problems.append(
            f"{NAMESPACE}:kubeconfig only applies to platform=existing (with platform=eks the program builds "
            "the cluster and its kubeconfig); remove it"
        )
    if parsed("vpcId") and s.vpc_id and s.platform == "eks":
        problems.extend(
            f"{NAMESPACE}:{key} only shapes a VPC this program creates; remove it with {NAMESPACE}:vpcId "
            "(the existing VPC has its own zones and NAT gateways)"
            for key in _NEW_VPC_ONLY_KEYS
            if key in values
        )
    if parsed("endpointPublicAccess") and not s.endpoint_public_access and "publicAccessCidrs" in values:
        problems.append(
            f"{NAMESPACE}:publicAccessCidrs does nothing with {NAMESPACE}:endpointPublicAccess = false; remove it"
        )
    if parsed("platform", "storageProvisioner") and s.platform == "eks" and s.storage_provisioner != EBS_PROVISIONER:
        problems.append(_fail("storageProvisioner", s.storage_provisioner, f"platform=eks uses {EBS_PROVISIONER}"))
    if parsed("storageThroughput", "storageIops") and s.storage_throughput > s.storage_iops // 4:
        problems.append(
            _fail(
                "storageThroughput",
                s.storage_throughput,
                f"gp3 allows at most 0.25 MiB/s per provisioned IOPS ({s.storage_iops // 4} MiB/s for {s.storage_iops} IOPS)",
            )
        )
    if parsed("storageIops", "storageSize", "storageProvisioner"):
        problems.extend(_iops_size_problems(s))
    problems.extend(_resource_problems(s, values, parsed, warnings))
    # Secret values are checked without echoing them.
    if s.password is not None and not PASSWORD_PATTERN.fullmatch(str(s.password)):
        problems.append(f"{NAMESPACE}:password is not valid: expected {PASSWORD_RULE}")
    if s.kubeconfig is not None:
        problems.extend(_kubeconfig_problems(s.kubeconfig))
    if s.user_passwords is not None and parsed("users"):
        problems.extend(_user_password_problems(s))
    if (
        parsed("rotationGraceSeconds", "bootstrapTimeoutSeconds")
        and s.rotation_grace_seconds >= s.bootstrap_timeout_seconds
    ):
        problems.append(
            _fail(
                "rotationGraceSeconds",
                s.rotation_grace_seconds,
                f"less than {NAMESPACE}:bootstrapTimeoutSeconds ({s.bootstrap_timeout_seconds}), "
                "which the grace period is part of; raise that or lower this",
            )
        )
    if parsed("backupSchedule", "backupCopyRegion") and s.backup_copy_region and s.backup_schedule is None:
        problems.append(
            _fail("backupCopyRegion", s.backup_copy_region, f"only with a {NAMESPACE}:backupSchedule (it is off)")
        )
    if "backupCopyRetentionDays" in values and not s.backup_copy_region and parsed("backupCopyRegion"):
        problems.append(
            _fail(
                "backupCopyRetentionDays",
                values["backupCopyRetentionDays"],
                f"only with {NAMESPACE}:backupCopyRegion, which names where the copies go",
            )
        )
    problems.extend(
        _fail(key, values[key], f"only with {NAMESPACE}:monitoring = true")
        for key in ("monitoringLabels", "prometheusOperatorCrds", "runbookBaseUrl")
        if key in values and parsed("monitoring") and not s.monitoring
    )
    if parsed("tls", "certManagerIssuer") and s.cert_manager_issuer and not s.tls:
        problems.append(
            _fail("certManagerIssuer", "/".join(s.cert_manager_issuer), f"only with {NAMESPACE}:tls = true")
        )
    if parsed("durability", "replicasPerShard") and s.durability == "bounded":
        if s.replicas_per_shard == 0:
            problems.append(
                _fail(
                    "durability",
                    s.durability,
                    f"cache while {NAMESPACE}:replicasPerShard = 0 (a bounded master refuses writes while no replica "
                    "is in sync, so with none it would refuse every write); add replicas for bounded",
                )
            )
        elif s.replicas_per_shard == 1:
            warnings.append(
                f"{NAMESPACE}:durability = 'bounded' with {NAMESPACE}:replicasPerShard = 1: a shard refuses writes "
                "(NOREPLICAS) whenever its one replica is away: restarted by a rolling update or a node drain, "
                "resyncing, or gone after a failover until the old master is back as a replica; replicasPerShard = 2 "
                "keeps writes while one replica is away"
            )
    if parsed("maxmemoryPolicy") and s.maxmemory_policy != "noeviction":
        warnings.append(
            f"{NAMESPACE}:maxmemoryPolicy = {s.maxmemory_policy!r} evicts keys when memory is full: right for a "
            "cache, wrong for a data store (the default, noeviction, refuses writes instead)"
        )
    return problems, warnings


def _resource_problems(s: StackSettings, values: Mapping[str, Any], parsed, warnings: list[str]) -> list[str]:
    """Requests within limits, and a volume that holds an AOF rewrite of a full data set."""
    problems = []
    if parsed("cpuRequest", "cpuLimit") and cpu_millicores(s.cpu_request) > cpu_millicores(s.cpu_limit):
        problems.append(_fail("cpuRequest", s.cpu_request, f"at most cpuLimit ({s.cpu_limit})"))
    memory_ok = parsed("memoryRequest", "memoryLimit")
    if memory_ok and size_bytes(s.memory_request) > size_bytes(s.memory_limit):
        problems.append(_fail("memoryRequest", s.memory_request, f"at most memoryLimit ({s.memory_limit})"))
    elif memory_ok and size_bytes(s.memory_request) < size_bytes(s.memory_limit):
        warnings.append(
            f"{NAMESPACE}:memoryRequest ({s.memory_request}) is below memoryLimit ({s.memory_limit}): the pods "
            "may be placed on nodes without the memory they can use, and are the first evicted under memory "
            "pressure; set them equal for production"
        )
    if parsed("memoryLimit", "storageSize"):
        needed = STORAGE_PER_MAXMEMORY * maxmemory_bytes(s.memory_limit_bytes)
        if size_bytes(s.storage_size) < needed:
            problems.append(
                _fail(
                    "storageSize",
                    s.storage_size,
                    f"at least {STORAGE_PER_MAXMEMORY} x maxmemory ({format_bytes(needed)} for memoryLimit "
                    f"{s.memory_limit}): an AOF rewrite and a replica's full sync write a copy of the data set "
                    "beside the data",
                )
            )
    return problems


def _user_password_problems(s: StackSettings) -> list[str]:
    """userPasswords: a JSON object of user name -> password, for users that exist, no two
    the same and none the admin's. Checked without echoing any value."""
    try:
        value = json_object(s.user_passwords)
    except ValueError as error:
        return [f"{NAMESPACE}:userPasswords is not valid: expected {str(error).split(';')[0]} (a user given twice)"]
    if not isinstance(value, dict):
        return [
            f"{NAMESPACE}:userPasswords is not valid: expected a JSON object of user name -> password, set as a secret"
        ]
    names = {user.name for user in s.users}
    problems = [
        f"{NAMESPACE}:userPasswords names {name!r}, which is not in {NAMESPACE}:users"
        for name in sorted(set(value) - names)
    ]
    problems += [
        f"{NAMESPACE}:userPasswords.{name} is not valid: expected {PASSWORD_RULE}"
        for name, password in sorted(value.items())
        if not isinstance(password, str) or not PASSWORD_PATTERN.fullmatch(password)
    ]
    holders: dict[str, list[str]] = {}
    if isinstance(s.password, str):
        holders.setdefault(s.password, []).append("the admin (password)")
    for name, password in sorted(value.items()):
        if isinstance(password, str):
            holders.setdefault(password, []).append(name)
    problems += [
        f"{NAMESPACE}:userPasswords gives {' and '.join(who)} the same password: expected one of its own for "
        "each user, so that one leaked or rotated password is one user's"
        for who in holders.values()
        if len(who) > 1
    ]
    return problems


def _iops_size_problems(s: StackSettings) -> list[str]:
    """gp3 above its 3000 IOPS baseline needs 1 GiB per 500 IOPS, or EC2 refuses every volume.

    The claims would then stay Pending until the StatefulSet's await times out; say so at
    preview instead. The EBS CSI driver rounds a claim up to whole GiB, so that is the size
    judged."""
    if s.storage_provisioner != EBS_PROVISIONER or s.storage_iops <= GP3_IOPS_RANGE[0]:
        return []
    size_gib = quantity_gib_rounded_up(s.storage_size)
    if s.storage_iops <= GP3_MAX_IOPS_PER_GIB * size_gib:
        return []
    needed_gib = math.ceil(s.storage_iops / GP3_MAX_IOPS_PER_GIB)
    return [
        f"{NAMESPACE}:storageIops {s.storage_iops} needs storageSize of at least {needed_gib}Gi "
        f"({GP3_MAX_IOPS_PER_GIB} IOPS per GiB); storageSize is {s.storage_size}: gp3 refuses the volume, "
        f"raise {NAMESPACE}:storageSize or lower storageIops to at most "
        f"{max(GP3_IOPS_RANGE[0], GP3_MAX_IOPS_PER_GIB * size_gib)}"
    ]


def _kubeconfig_problems(text: Any) -> list[str]:
    """A kubeconfig the Kubernetes provider and the bootstrap can use: clusters, contexts and
    users as lists of named mappings, and a current-context that names a context whose
    cluster and user exist. Never echoes the text."""
    what = f"{NAMESPACE}:kubeconfig is not valid: expected a kubeconfig (YAML or JSON)"
    try:
        document = yaml.safe_load(text) if isinstance(text, str) and len(text) <= 2**20 else None
    except (yaml.YAMLError, RecursionError, ValueError):
        # ValueError: an integer past Python's digit limit; RecursionError: deep nesting.
        document = None
    if not isinstance(document, dict) or not document.get("clusters") or not document.get("contexts"):
        return [f"{what} with clusters and contexts"]
    problems = []
    named: dict[str, dict[str, Any]] = {}
    for section, body in (("clusters", "cluster"), ("contexts", "context"), ("users", "user")):
        entries = document.get(section) or []
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get(body), dict) for e in entries
        ):
            problems.append(f"{what} whose {section} are each a mapping with a name and a {body} mapping")
            continue
        named[section] = {e["name"]: e[body] for e in entries}
    if problems:
        return problems
    current = document.get("current-context")
    context = named["contexts"].get(current) if isinstance(current, str) else None
    if context is None:
        return [
            f"{what} whose current-context names one of its contexts ({', '.join(sorted(named['contexts']))}); "
            f"it is {'unset' if current is None else 'another'}"
        ]
    if context.get("cluster") not in named["clusters"]:
        problems.append(f"{what} whose current context names one of its clusters")
    if context.get("user") is not None and context.get("user") not in named["users"]:
        problems.append(f"{what} whose current context names one of its users")
    return problems


# --- The whole stack ---------------------------------------------------------------------


def read_stack_config(
    config: Mapping[str, Any],
    secret_keys: Optional[Collection[str]] = None,
    region: Optional[str] = None,
) -> StackSettings:
    """The stack's settings from its whole config (full keys, every namespace), as the engine
    hands it to the program: what `parse_settings` checks, and what only the whole stack
    shows. `secret_keys` are the full keys set as secrets (None: not known, not checked);
    `region` the stack's AWS region (`aws:region`, else AWS_REGION)."""
    prefix = NAMESPACE + ":"
    values = {key[len(prefix) :]: value for key, value in config.items() if key.startswith(prefix)}
    problems = _namespace_problems(config)
    settings, found, bad = _parse(values)
    problems += found
    if secret_keys is not None:
        problems += [
            f"{NAMESPACE}:{key} is set in plain text: set it as a secret, "
            f"pulumi config set --secret {NAMESPACE}:{key} <value> (and remove the plain line)"
            for key in SECRET_KEYS
            if key in values and prefix + key not in secret_keys
        ]
    region = region or config.get("aws:region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    stack_problems, warnings = _stack_problems(settings, values, bad, region)
    problems += stack_problems
    if problems:
        raise SettingsError(problems)
    return dataclasses.replace(settings, warnings=settings.warnings + tuple(warnings))


def _namespace_problems(config: Mapping[str, Any]) -> list[str]:
    """Keys in a namespace that looks like this program's but is not (`redis:tls`,
    `redis_eks:tls`, `redisEks:tls`): they would do nothing, silently."""
    problems = []
    for key in config:
        namespace, _, name = str(key).partition(":")
        if namespace == NAMESPACE or namespace in PROVIDER_NAMESPACES or not name:
            continue
        folded = re.sub(r"[^a-z0-9]", "", namespace.lower())
        if folded == "redis" or difflib.SequenceMatcher(None, folded, "rediseks").ratio() >= 0.75:
            close = difflib.get_close_matches(name, KNOWN_KEYS, n=1, cutoff=0.6)
            meant = f"{NAMESPACE}:{close[0]}" if close else f"a key in {NAMESPACE}: (README, Configuration)"
            problems.append(
                f"{_shown(str(key))[1:-1]} is not read by this program, whose settings are in the {NAMESPACE}: "
                f"namespace; did you mean {meant}?"
            )
    return problems


def _stack_problems(
    s: StackSettings, values: Mapping[str, Any], bad: set[str], region: Optional[str]
) -> tuple[list[str], list[str]]:
    """What the stack as a whole must hold: its risks accepted by name, its pods on its nodes,
    its backup copies in another region of its partition."""
    problems: list[str] = []
    warnings: list[str] = []

    def parsed(*keys: str) -> bool:
        return not bad.intersection(keys)

    needed: dict[str, str] = {}  # risk -> why it is needed here
    if s.platform == "eks" and parsed("platform", "endpointPublicAccess", "publicAccessCidrs"):
        if s.endpoint_public_access and not s.public_access_cidrs:
            problems.append(
                f"{NAMESPACE}:publicAccessCidrs is required while {NAMESPACE}:endpointPublicAccess is true: list "
                "the ranges that may reach the Kubernetes API (your VPN, your CI runners), or set "
                "endpointPublicAccess false (the private endpoint is always on)"
            )
        elif s.endpoint_public_access and open_to_internet(s.public_access_cidrs):
            needed["publicEndpointOpenToInternet"] = (
                f"{NAMESPACE}:publicAccessCidrs = {list(s.public_access_cidrs)} admits the whole internet to the "
                "Kubernetes API"
            )
        elif s.endpoint_public_access and only_documentation_ranges(s.public_access_cidrs):
            # The example stacks' range: EKS takes it, but no client has such an address, so
            # the run that creates the cluster then times out on every Kubernetes object.
            warnings.append(
                f"{NAMESPACE}:publicAccessCidrs = {list(s.public_access_cidrs)} lists documentation ranges only "
                "(RFC 5737, RFC 3849), which no real address is in: unless `pulumi up` runs inside the VPC, "
                "the Kubernetes objects cannot be created once the EKS cluster is. List your VPN's and your "
                "CI runners' ranges (docs/operations.md, Who can reach the cluster)"
            )
    if parsed("replicasPerShard") and s.replicas_per_shard == 0:
        needed["noReplicas"] = (
            f"{NAMESPACE}:replicasPerShard = 0 leaves every master without a replica: a node drain or failure "
            "takes its slots offline, and a lost volume loses its keys"
        )
    if s.platform == "eks" and parsed(*_TOPOLOGY_KEYS):
        topology_needed, topology_warnings = _topology(s)
        needed.update(topology_needed)
        warnings += topology_warnings
        problems += _capacity_problems(s) if parsed(*_CAPACITY_KEYS) else []
    if parsed("clientPodLabels") and "clientPodLabels" in values and not s.client_pod_labels:
        needed["allPodsAsClients"] = (
            f"{NAMESPACE}:clientPodLabels = {{}} lets every pod of the client namespaces reach Redis"
        )
    if parsed("users"):
        for user in s.users:
            rule = dangerous_grant(user.commands)
            if rule:
                needed[f"{DANGEROUS_COMMANDS_RISK}={user.name}"] = (
                    f"{NAMESPACE}:users.{user.name} may run admin or dangerous commands ({rule!r}: CONFIG, ACL, "
                    'FLUSHALL, KEYS, DEBUG, SHUTDOWN and the like); end its commands with "-@dangerous"'
                )
    if parsed("acceptRisks"):
        for risk, why in needed.items():
            if risk not in s.accept_risks:
                problems.append(f"{why}; to take that risk, add {risk!r} to {NAMESPACE}:acceptRisks")
        problems += [
            _fail("acceptRisks", list(s.accept_risks), f"only risks the stack takes; {risk!r} is not one of them")
            for risk in s.accept_risks
            if risk not in needed
        ]
    if s.storage_kms_key_arn and region and parsed("storageKmsKeyArn"):
        # KMS keys are Regional (a multi-Region key's replica has an ARN of its Region): EBS
        # encrypts a volume with a key of the volume's Region only, so another Region's key
        # fails every claim, and DLM every snapshot (AWS KMS Developer Guide, "AWS KMS keys",
        # Regions; "Multi-Region keys in AWS KMS").
        key_region = s.storage_kms_key_arn.split(":")[3]
        if key_region != region:
            problems.append(
                _fail(
                    "storageKmsKeyArn",
                    s.storage_kms_key_arn,
                    f"a key of the stack's own region ({region}, aws:region), where the volumes are; for a "
                    "multi-Region key, its replica's ARN in that region",
                )
            )
    if s.backup_copy_region and region and parsed("backupCopyRegion"):
        if s.backup_copy_region == region:
            problems.append(
                _fail("backupCopyRegion", s.backup_copy_region, "another region than the stack's own (aws:region)")
            )
        elif region_partition(s.backup_copy_region) != region_partition(region):
            problems.append(
                _fail(
                    "backupCopyRegion",
                    s.backup_copy_region,
                    f"a region of the stack's partition ({region_partition(region)}, aws:region {region}): "
                    "DLM copies within a partition only",
                )
            )
    return problems, warnings


_TOPOLOGY_KEYS = ("platform", "shards", "nodeDesiredSize", "availabilityZoneCount", "privateSubnetIds", "vpcId")
_CAPACITY_KEYS = (*_TOPOLOGY_KEYS, "nodeInstanceType", "replicasPerShard", "cpuRequest", "cpuLimit")
_CAPACITY_KEYS += ("memoryRequest", "memoryLimit")


def zones_used(s: StackSettings) -> int:
    """How many zones the nodes are in: a managed node group spreads them over its subnets'
    zones (one zone per subnet assumed for an existing VPC)."""
    zones = len(s.private_subnet_ids) if s.vpc_id else s.availability_zone_count
    return max(1, min(zones, s.node_desired_size))


def _topology(s: StackSettings) -> tuple[dict[str, str], list[str]]:
    """The risks of where the masters land, at best spread evenly over the zones in use."""
    needed: dict[str, str] = {}
    warnings: list[str] = []
    if s.node_desired_size == 1:
        needed["singleNode"] = (
            f"{NAMESPACE}:nodeDesiredSize = 1 puts every pod on one node: losing it loses the whole cluster, "
            "replicas included"
        )
        return needed, warnings
    zones = zones_used(s)
    most = math.ceil(s.shards / zones)
    zone_key = "privateSubnetIds" if s.vpc_id else "availabilityZoneCount"
    where = (
        f"{NAMESPACE}:shards = {s.shards} masters over {NAMESPACE}:nodeDesiredSize = {s.node_desired_size} nodes "
        f"in {zones} zones ({NAMESPACE}:{zone_key}: {len(s.private_subnet_ids) if s.vpc_id else s.availability_zone_count})"
    )
    if most * 2 > s.shards:
        needed["zoneMajority"] = (
            f"{where} leave {most} in one zone, a majority: losing that zone leaves no majority to promote "
            "replicas, and the cluster stops; spread the nodes over 3 zones or more"
        )
    elif most * 2 == s.shards:
        warnings.append(
            f"{where} leave {most} in one zone, half of them: losing that zone leaves no majority to promote "
            f"replicas until it returns; an odd number of {NAMESPACE}:shards avoids it"
        )
    return needed, warnings


def _capacity_problems(s: StackSettings) -> list[str]:
    """Each pod fits a node of the type, and the nodes of the smallest zone hold that zone's
    share of the pods (the StatefulSet spreads them over the zones, DoNotSchedule)."""
    node = s.instance_type
    if node is None:
        return []
    pod_cpu = cpu_millicores(s.cpu_request) + cpu_millicores(metrics_exporter.REQUESTS["cpu"])
    pod_memory = size_bytes(s.memory_request) + size_bytes(metrics_exporter.REQUESTS["memory"])
    limit_cpu = cpu_millicores(s.cpu_limit) + cpu_millicores(metrics_exporter.LIMITS["cpu"])
    limit_memory = s.memory_limit_bytes + size_bytes(metrics_exporter.LIMITS["memory"])
    allocatable = (
        f"{node.name} has about {node.allocatable_millicores}m CPU and "
        f"{format_bytes(node.allocatable_memory_bytes)} memory for pods besides the system's"
    )
    problems = []
    if limit_memory > node.allocatable_memory_bytes:
        problems.append(_fail("memoryLimit", s.memory_limit, f"a limit a node can give: {allocatable}"))
    if limit_cpu > node.allocatable_millicores:
        problems.append(_fail("cpuLimit", s.cpu_limit, f"a limit a node can give: {allocatable}"))
    if problems:
        return problems
    per_node = min(
        node.allocatable_millicores // pod_cpu, node.allocatable_memory_bytes // pod_memory, node.pods_for_workloads
    )
    zones = zones_used(s)
    nodes_in_smallest_zone = s.node_desired_size // zones
    pods_per_zone = math.ceil(s.pod_count / zones)
    if per_node * nodes_in_smallest_zone < pods_per_zone:
        problems.append(
            f"{NAMESPACE}:nodeDesiredSize = {s.node_desired_size} of {NAMESPACE}:nodeInstanceType = "
            f"{s.node_instance_type!r} cannot hold the cluster: {s.pod_count} pods of {pod_cpu}m CPU and "
            f"{format_bytes(pod_memory)} each (with the exporter) over {zones} zones put {pods_per_zone} in a zone "
            f"of {nodes_in_smallest_zone} node(s), and a node holds {per_node} ({allocatable}, "
            f"{node.pods_for_workloads} pods); raise nodeDesiredSize (and nodeMaxSize), pick a larger "
            "nodeInstanceType, or lower cpuRequest/memoryRequest"
        )
    return problems


def open_to_internet(cidrs: Collection[str]) -> bool:
    """Whether the ranges together admit every public address: all of 0.0.0.0/0 but the
    private and reserved ranges, or all of IPv6's global unicast 2000::/3."""
    networks = [ipaddress.ip_network(c) for c in cidrs]
    v4 = [n for n in networks if n.version == 4]
    v6 = [n for n in networks if n.version == 6]
    public_v4 = [ipaddress.ip_network("0.0.0.0/0")]
    for reserved in _RESERVED_V4:
        public_v4 = [part for net in public_v4 for part in _without(net, reserved)]
    return _covered(public_v4, v4) or _covered([ipaddress.ip_network("2000::/3")], v6)


_DOCUMENTATION_RANGES = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)


def only_documentation_ranges(cidrs: Collection[str]) -> bool:
    """Whether every range lies in an address block reserved for documentation and examples."""
    networks = [ipaddress.ip_network(c) for c in cidrs]
    return bool(networks) and all(
        any(n.version == d.version and n.subnet_of(d) for d in _DOCUMENTATION_RANGES) for n in networks
    )


_RESERVED_V4 = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/3",
    )
)


def _without(network, reserved):
    if not network.overlaps(reserved):
        return [network]
    if reserved.supernet_of(network):
        return []
    return list(network.address_exclude(reserved))


def _covered(targets, ranges) -> bool:
    for target in targets:
        remaining = [target]
        for given in ranges:
            remaining = [part for net in remaining for part in _without(net, given)]
        if remaining:
            return False
    return True


def load_stack_config(stack: str, project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """The `config:` block of Pulumi.<stack>.yaml, as the engine hands it to the program."""
    document = yaml.safe_load((project_dir / f"Pulumi.{stack}.yaml").read_text()) or {}
    config = {}
    for key, value in (document.get("config") or {}).items():
        if isinstance(value, dict) and "secure" in value:
            raise SettingsError(f"{key} is encrypted; rendering needs plain values (use --set)")
        # The engine passes every value as a string, lists and objects as JSON.
        config[key] = value if isinstance(value, str) else json.dumps(value)
    return config


def load_settings() -> StackSettings:
    """Read the current stack's whole config into validated settings, its secrets as Pulumi
    secrets; warnings go to the engine's log."""
    from pulumi.runtime import config as runtime_config

    configured = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env() or {})
    config = {key: runtime_config.get_config(key) for key in configured}
    secret_keys = {key for key in configured if pulumi.runtime.is_config_secret(key)}
    secret_keys |= set(runtime_config.get_config_secret_keys_env())
    settings = read_stack_config(config, secret_keys=secret_keys)
    for warning in settings.warnings:
        pulumi.log.warn(warning)
    return dataclasses.replace(
        settings,
        password=None if settings.password is None else pulumi.Output.secret(settings.password),
        kubeconfig=None if settings.kubeconfig is None else pulumi.Output.secret(settings.kubeconfig),
        user_passwords=None
        if settings.user_passwords is None
        else {name: pulumi.Output.secret(value) for name, value in json.loads(settings.user_passwords).items()},
    )
