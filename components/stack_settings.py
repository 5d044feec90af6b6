"""Every stack setting, read and validated in one place.

`load_settings()` reads the `redis-eks:` config namespace of the current stack into one
frozen `StackSettings`. `parse_settings()` does the actual work on a plain mapping so that
tests and the local sandbox can use it without a Pulumi engine. A bad value raises
`SettingsError` naming the key, the value and what is allowed, for every bad value of the
run at once: this happens while the program runs, i.e. during `pulumi preview`, before
anything is created.
`load_stack_config()` reads a `Pulumi.<stack>.yaml` the way the engine would hand it over,
for the tools, the sandbox and the tests that run without an engine.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from cluster_logic.credentials import UserAccess
from components.engines import DEFAULT_ENGINE, ENGINES, Engine, Version, image_problems, image_version
from components.setting_values import (
    DNS_LABEL,
    INSTANCE_TYPE,
    PASSWORD_PATTERN,
    as_backup_schedule,
    as_bool,
    as_cert_manager_issuer,
    as_image,
    as_int,
    as_kms_key_arn,
    as_labels,
    as_principal_list,
    as_quantity,
    as_string_list,
    as_users,
    aws_region,
    cidr,
    manual_change,
    matching,
    one_of,
    parse_quantity,
    quantity_gib_rounded_up,
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


# An EKS add-on build, as `aws eks describe-addon-versions` names them.
ADDON_BUILD = matching(
    re.compile(r"^v\d+\.\d+\.\d+(-[a-z]+)?-eksbuild\.\d+$"), "an add-on build such as v1.66.0-eksbuild.1"
)


class SettingsError(ValueError):
    """Stack settings have values the program cannot deploy: every problem of one run, together."""

    def __init__(self, problems: str | list[str] | tuple[str, ...]):
        self.problems = (problems,) if isinstance(problems, str) else tuple(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} stack settings are not valid:\n" + "\n".join(
                f"- {problem}" for problem in self.problems
            )
        super().__init__(message)


def _fail(key: str, value: Any, allowed: str) -> str:
    """One problem's message: the key, the value and what is allowed."""
    return f"{NAMESPACE}:{key} = {value!r} is not valid: {allowed}"


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
    public_access_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
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
    node_timeout_ms: int = 5000
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
    # ServiceMonitor and PrometheusRule (their CRDs must be installed).
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
        return int(parse_quantity(self.memory_limit))


# Config key -> (dataclass field, parser): the parsers are in `setting_values`.
_FIELDS: dict[str, tuple[str, Any]] = {
    "platform": ("platform", one_of(PLATFORMS)),
    "clusterVersion": ("cluster_version", one_of(SUPPORTED_CLUSTER_VERSIONS)),
    "nodeInstanceType": ("node_instance_type", matching(INSTANCE_TYPE, "an EC2 instance type such as m6i.large")),
    "nodeMinSize": ("node_min_size", as_int(1, 100)),
    "nodeDesiredSize": ("node_desired_size", as_int(1, 100)),
    "nodeMaxSize": ("node_max_size", as_int(1, 100)),
    "vpcId": ("vpc_id", matching(re.compile(r"^vpc-[0-9a-f]{8,17}$"), "a VPC ID (vpc-...)")),
    "privateSubnetIds": ("private_subnet_ids", as_string_list(subnet_id)),
    "availabilityZoneCount": ("availability_zone_count", as_int(2, 6)),
    "natGateways": ("nat_gateways", one_of(NAT_GATEWAY_STRATEGIES)),
    "endpointPublicAccess": ("endpoint_public_access", as_bool),
    "publicAccessCidrs": ("public_access_cidrs", as_string_list(cidr)),
    "ebsCsiDriverVersion": ("ebs_csi_driver_version", ADDON_BUILD),
    "storageKmsKeyArn": ("storage_kms_key_arn", as_kms_key_arn),
    "storageProvisioner": (
        "storage_provisioner",
        matching(re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(/[a-z0-9.-]+)?$"), "a CSI provisioner name"),
    ),
    "storageSize": ("storage_size", as_quantity),
    "storageIops": ("storage_iops", as_int(*GP3_IOPS_RANGE)),
    "storageThroughput": ("storage_throughput", as_int(*GP3_THROUGHPUT_RANGE)),
    "namespace": ("namespace", matching(DNS_LABEL, "a DNS-1123 label: lower-case letters, digits and '-'")),
    "shards": ("shards", as_int(MIN_SHARDS, MAX_SHARDS, "Redis Cluster needs at least 3 masters to elect a failover")),
    "replicasPerShard": ("replicas_per_shard", as_int(0, MAX_REPLICAS_PER_SHARD)),
    "engine": ("engine", one_of(tuple(ENGINES))),
    "image": ("image", as_image),
    "nodeTimeoutMs": ("node_timeout_ms", as_int(1000, 60000)),
    "maxmemoryPolicy": ("maxmemory_policy", one_of(MAXMEMORY_POLICIES)),
    "cpuRequest": ("cpu_request", as_quantity),
    "cpuLimit": ("cpu_limit", as_quantity),
    "memoryRequest": ("memory_request", as_quantity),
    "memoryLimit": ("memory_limit", as_quantity),
    "clientPodLabels": ("client_pod_labels", as_labels),
    "clientNamespaceLabels": ("client_namespace_labels", as_labels),
    "bootstrapTimeoutSeconds": ("bootstrap_timeout_seconds", as_int(30, 3600)),
    "tls": ("tls", as_bool),
    "certManagerIssuer": ("cert_manager_issuer", as_cert_manager_issuer),
    "users": ("users", as_users),
    "rotationGraceSeconds": ("rotation_grace_seconds", as_int(0, 3600)),
    "monitoring": ("monitoring", as_bool),
    "exporterImage": ("exporter_image", as_image),
    "monitoringNamespace": (
        "monitoring_namespace",
        matching(DNS_LABEL, "a DNS-1123 label: lower-case letters, digits and '-'"),
    ),
    "monitoringLabels": ("monitoring_labels", as_labels),
    "backupSchedule": ("backup_schedule", as_backup_schedule),
    "backupRetentionCount": ("backup_retention_count", as_int(1, MAX_BACKUP_RETENTION_COUNT)),
    "backupCopyRegion": ("backup_copy_region", aws_region),
    "backupCopyRetentionDays": ("backup_copy_retention_days", as_int(1, 3650)),
    "acceptManualChange": ("accept_manual_change", as_string_list(manual_change)),
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
            re.compile(r"^https://[^\s/]+(/[^\s]*)?/$"),
            "an https URL ending in /, the repository's tree such as https://github.com/<org>/redis-eks/blob/main/",
        ),
    ),
}
# Keys that only mean something when this program builds the cluster.
_EKS_ONLY_KEYS = (
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
    "ebsCsiDriverVersion",
    "corednsVersion",
    "kubeProxyVersion",
    "vpcCniVersion",
    "nodeGroupForm",
    "deletionProtection",
)
_SECRET_KEYS = {"password": "password", "kubeconfig": "kubeconfig", "userPasswords": "user_passwords"}
KNOWN_KEYS = tuple(_FIELDS) + tuple(_SECRET_KEYS)


def parse_settings(values: Mapping[str, Any]) -> StackSettings:
    """Validate raw config values (key -> string, without the namespace) into settings.

    Every problem of the run is reported in one `SettingsError`, so that one `pulumi preview`
    names them all. Secret values (`password`, `kubeconfig`) arrive in plain text to be
    checked; `load_settings` turns them into Pulumi secrets before anything else sees them.
    """
    problems: list[str] = []
    # Keys whose value could not be parsed: checks that relate them to others are skipped,
    # as they would judge the default in their place.
    bad: set[str] = set()
    parsed: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
            hint = f"did you mean {NAMESPACE}:{close[0]}?" if close else "known keys: " + ", ".join(KNOWN_KEYS)
            problems.append(f"{NAMESPACE}:{key} is not a setting of this program; {hint}")
            bad.add(key)
            continue
        if key in _SECRET_KEYS:
            parsed[_SECRET_KEYS[key]] = raw
            continue
        attribute, parse = _FIELDS[key]
        try:
            parsed[attribute] = parse(raw)
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
    settings = StackSettings(**parsed)
    problems.extend(_relation_problems(settings, values, bad))
    if problems:
        raise SettingsError(problems)
    return settings


def _relation_problems(s: StackSettings, values: Mapping[str, Any], bad: set[str]) -> list[str]:
    """What is wrong between settings (and with the secrets), for the keys that parsed."""
    problems: list[str] = []

    def parsed(*keys: str) -> bool:
        return not bad.intersection(keys)

    if parsed("engine", "image"):
        problems.extend(
            f"{NAMESPACE}:image = {s.image!r} is not valid with {NAMESPACE}:engine = {s.engine!r}: expected {problem}"
            for problem in image_problems(s.engine_spec, s.image)
        )
    if parsed("nodeMinSize", "nodeDesiredSize", "nodeMaxSize") and not (
        s.node_min_size <= s.node_desired_size <= s.node_max_size
    ):
        problems.append(
            f"{NAMESPACE}:nodeMinSize ({s.node_min_size}) <= nodeDesiredSize ({s.node_desired_size}) "
            f"<= nodeMaxSize ({s.node_max_size}) must hold"
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
    if parsed("storageIops", "storageSize"):
        problems.extend(_iops_size_problems(s))
    if parsed("cpuRequest", "cpuLimit") and parse_quantity(s.cpu_request) > parse_quantity(s.cpu_limit):
        problems.append(_fail("cpuRequest", s.cpu_request, f"at most cpuLimit ({s.cpu_limit})"))
    if parsed("memoryRequest", "memoryLimit") and parse_quantity(s.memory_request) > parse_quantity(s.memory_limit):
        problems.append(_fail("memoryRequest", s.memory_request, f"at most memoryLimit ({s.memory_limit})"))
    if parsed("memoryLimit") and s.memory_limit_bytes < 256 * 2**20:
        problems.append(_fail("memoryLimit", s.memory_limit, "at least 256Mi: Redis needs headroom beyond maxmemory"))
    # Secret values are checked without echoing them.
    if s.password is not None and not PASSWORD_PATTERN.match(s.password):
        problems.append(f"{NAMESPACE}:password is not valid: expected 16 to 512 characters from A-Z a-z 0-9 _ . ~ -")
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
    if "backupCopyRetentionDays" in values and not s.backup_copy_region:
        problems.append(
            _fail(
                "backupCopyRetentionDays",
                values["backupCopyRetentionDays"],
                f"only with {NAMESPACE}:backupCopyRegion, which names where the copies go",
            )
        )
    problems.extend(
        _fail(key, values[key], f"only with {NAMESPACE}:monitoring = true")
        for key in ("monitoringLabels", "prometheusOperatorCrds")
        if key in values and parsed("monitoring") and not s.monitoring
    )
    if parsed("tls", "certManagerIssuer") and s.cert_manager_issuer and not s.tls:
        problems.append(
            _fail("certManagerIssuer", "/".join(s.cert_manager_issuer), f"only with {NAMESPACE}:tls = true")
        )
    return problems


def _user_password_problems(s: StackSettings) -> list[str]:
    """userPasswords: a JSON object of user name -> password, for users that exist. Checked
    without echoing any value."""
    try:
        value = json.loads(s.user_passwords)
    except (TypeError, ValueError):
        value = None
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
        f"{NAMESPACE}:userPasswords.{name} is not valid: expected 16 to 512 characters from A-Z a-z 0-9 _ . ~ -"
        for name, password in sorted(value.items())
        if not isinstance(password, str) or not PASSWORD_PATTERN.match(password)
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


def _kubeconfig_problems(text: str) -> list[str]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        document = None
    if not isinstance(document, dict) or not document.get("clusters") or not document.get("contexts"):
        return [f"{NAMESPACE}:kubeconfig is not valid: expected a kubeconfig (YAML or JSON) with clusters and contexts"]
    return []


def load_stack_config(stack: str, project_dir: Path = PROJECT_DIR) -> dict[str, str]:
    """The `config:` block of Pulumi.<stack>.yaml, as the engine hands it to the program."""
    document = yaml.safe_load((project_dir / f"Pulumi.{stack}.yaml").read_text()) or {}
    config = {}
    for key, value in (document.get("config") or {}).items():
        if isinstance(value, dict) and "secure" in value:
            raise ValueError(f"{key} is encrypted; rendering needs plain values (use --set)")
        # The engine passes every value as a string, lists and objects as JSON.
        config[key] = value if isinstance(value, str) else json.dumps(value)
    return config


def load_settings() -> StackSettings:
    """Read the current stack's `redis-eks:` config into validated settings."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    config = pulumi.Config(NAMESPACE)
    prefix = NAMESPACE + ":"
    configured = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env() or {})
    values = {key[len(prefix) :]: config.get(key[len(prefix) :]) for key in configured if key.startswith(prefix)}
    settings = parse_settings(values)
    return dataclasses.replace(
        settings,
        password=None if settings.password is None else pulumi.Output.secret(settings.password),
        kubeconfig=None if settings.kubeconfig is None else pulumi.Output.secret(settings.kubeconfig),
        user_passwords=None
        if settings.user_passwords is None
        else {name: pulumi.Output.secret(value) for name, value in json.loads(settings.user_passwords).items()},
    )
