"""What each setting change does to a running stack: the change-impact table, docs/change-impact.md.

For every setting, one or more sample changes are rendered twice under the Pulumi mocks of
tools/render_manifests.py (the real program, the same code path as `pulumi up`), before and
after, with the fake cloud answering as AWS would for a stack that runs (its EKS cluster, its
node groups). Every property whose input differs is classified by what the provider does with
it: replaced (a replace-forcing property of its resource type, as the provider's schema or
diff code says: REPLACE_FORCING below, each with its source), a new version the nodes roll to,
a new pod template the StatefulSet rolls the pods to, or an update in place. A property this
module does not know fails the render, so that a new input is classified before the table can
be regenerated. The guards' own checks (PlatformChangeGuard, ClusterChangeGuard, the bootstrap's
scale-in check) and the program's preview-time refusals (SettingsError) are then run on the
two renders: a change they refuse is refused at preview, before anything changes.

    python -m tools.change_impact             # print the table
    python -m tools.change_impact --update    # rewrite docs/change-impact.md

tests/unit/test_change_impact.py fails while docs/change-impact.md differs from what this
renders, while a setting has no row, and while a row replaces (or deletes) the EKS cluster, a
node group, a KMS key in use, the StorageClass, the StatefulSet or the namespace without being
refused at preview or named through acceptManualChange (the documented way).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional
from unittest import mock

from components import cluster_bootstrap, cluster_scale_in, credential_rotation, platform_change_guard
from components.eks_platform import kubeconfig_server
from components.eks_platform.cluster_access import CREATOR_TAG_KEY
from components.stack_settings import NAMESPACE, PROJECT_DIR, SettingsError, load_stack_config
from tools import render_manifests
from tools.render_manifests import MOCK_ACCOUNT, ProgramRun, RegisteredResource, run_program, secret_config_keys

DOC = PROJECT_DIR / "docs" / "change-impact.md"

# --- What a changed property does --------------------------------------------------------------

NOTHING = "nothing"
IN_PLACE = "updated in place"
ROLLS_PODS = "rolls the Redis pods"
ROLLS_NODES = "rolls the nodes"
REPLACED = "replaced"
CREATED = "created"
DELETED = "deleted"
KEPT = "leaves the stack, kept"
UNRENDERED = "not rendered"
# Worst first: a row's outcome is its worst effect.
SEVERITY = (REPLACED, DELETED, ROLLS_NODES, ROLLS_PODS, CREATED, KEPT, UNRENDERED, IN_PLACE, NOTHING)
# For the outcome, the replacement of a resource that holds nothing (a ConfigMap named by its
# content, a ServiceMonitor moved) ranks below a roll.
OTHER_REPLACED = "replaces resources that hold no data"
OUTCOME_SEVERITY = (ROLLS_NODES, ROLLS_PODS, OTHER_REPLACED, CREATED, DELETED, KEPT, UNRENDERED, IN_PLACE, NOTHING)


@dataclass(frozen=True)
class Effect:
    kind: str
    # What else it replaces (a resource type), where that is not the resource itself.
    replaces: str = ""
    note: str = ""


# The resources whose replacement (or deletion) loses data or every pod at once.
EKS_CLUSTER = "eks:index:Cluster"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
KMS_KEY = "aws:kms/key:Key"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"
NAMESPACE_KIND = "kubernetes:core/v1:Namespace"
K8S_PROVIDER = "pulumi:providers:kubernetes"
EVERY_K8S_OBJECT = "every Kubernetes object"
PROTECTED = (EKS_CLUSTER, NODE_GROUP, KMS_KEY, STORAGE_CLASS, STATEFUL_SET, NAMESPACE_KIND, EVERY_K8S_OBJECT)

# Where each rule was read. Which terraform-provider-aws commit pulumi-aws 7.51.1 (installed)
# bundles could not be determined here: npm's newest @pulumi/aws is 7.48.0, the snapshots of the
# pulumi-aws repository (its `upstream` submodule) and of terraform-provider-aws are over the
# fetch limit, and the Go module proxy is out of reach. So a rule cites the stored copy of the
# file it was read in (the code index's), by commit, and every property a rule names is held to
# the installed SDK's inputs of its resource (tests/unit/test_change_impact.py). pulumi-kubernetes
# 4.34.2 (installed) is newer than any release in the stored snapshot: its rules are read at
# v4.32.0, whose cited files are the same at the snapshot's newest commit (9497796, July 2026);
# pulumi-eks 4.4.0 likewise at v4.3.0 (cluster.ts the same at 7bf0c1b).
TF_AWS = "hashicorp/terraform-provider-aws"
PULUMI_K8S = "pulumi/pulumi-kubernetes@v4.32.0"
PULUMI_EKS = "pulumi/pulumi-eks@v4.3.0"


@dataclass(frozen=True)
class TypeRules:
    """What changes of a resource type's properties do, as its provider says (`source`).

    A path is a property path of the Pulumi inputs (`launchTemplate.version`, list items as
    `[]`); a rule names a property and everything under it. Only the properties listed are
    known: any other changed property fails the render (classify it first)."""

    source: str
    replace: tuple[str, ...] = ()
    rolls_nodes: tuple[str, ...] = ()
    in_place: tuple[str, ...] = ()


# The replace-forcing properties per AWS resource type (ForceNew in the Terraform provider the
# Pulumi AWS provider bridges), and the updatable ones this program sets.
REPLACE_FORCING: dict[str, TypeRules] = {
    NODE_GROUP: TypeRules(
        f"{TF_AWS} `internal/service/eks/node_group.go` @012e0a3 (ForceNew; `version`, `launch_template.version` "
        "and `release_version` go through UpdateNodegroupVersion, which EKS rolls node by node)",
        replace=(
            "amiType",
            "capacityType",
            "clusterName",
            "diskSize",
            "instanceTypes",
            "launchTemplate.id",
            "launchTemplate.name",
            "nodeGroupName",
            "nodeGroupNamePrefix",
            "nodeRoleArn",
            "remoteAccess",
            "subnetIds",
        ),
        rolls_nodes=("version", "launchTemplate.version", "releaseVersion"),
        in_place=("scalingConfig", "updateConfig", "labels", "taints", "tags"),
    ),
    "aws:ec2/launchTemplate:LaunchTemplate": TypeRules(
        f"{TF_AWS} `internal/service/ec2/ec2_launch_template.go` @025e4f8 (none of the properties this program "
        "sets is ForceNew: a change is a new version, the default with `update_default_version`; the node "
        "group follows its latest version, which EKS rolls node by node)",
        rolls_nodes=("instanceType", "metadataOptions", "blockDeviceMappings", "updateDefaultVersion"),
    ),
    "aws:eks/addon:Addon": TypeRules(
        f"{TF_AWS} `internal/service/eks/addon.go` @00a3530 (ForceNew: `addon_name`, `cluster_name`)",
        replace=("addonName", "clusterName"),
        in_place=(
            "addonVersion",
            "resolveConflictsOnCreate",
            "resolveConflictsOnUpdate",
            "preserve",
            "serviceAccountRoleArn",
            "configurationValues",
        ),
    ),
    "aws:eks/accessEntry:AccessEntry": TypeRules(
        f"{TF_AWS} `internal/service/eks/access_entry.go` @01f4311 (ForceNew: `cluster_name`, `principal_arn`, `type`)",
        replace=("clusterName", "principalArn", "type"),
    ),
    "aws:eks/accessPolicyAssociation:AccessPolicyAssociation": TypeRules(
        f"{TF_AWS} `internal/service/eks/access_policy_association.go` @01f4311 (ForceNew: `access_scope`, "
        "`cluster_name`, `policy_arn`, `principal_arn`)",
        replace=("accessScope", "clusterName", "policyArn", "principalArn"),
    ),
    KMS_KEY: TypeRules(
        f"{TF_AWS} `internal/service/kms/key.go` @00a3530 (ForceNew: `custom_key_store_id`, "
        "`customer_master_key_spec`, `key_usage`, `multi_region`, `xks_key_id`)",
        replace=("customKeyStoreId", "customerMasterKeySpec", "keyUsage", "multiRegion", "xksKeyId"),
        in_place=("policy", "description", "enableKeyRotation", "deletionWindowInDays", "tags"),
    ),
    "aws:iam/rolePolicy:RolePolicy": TypeRules(
        f"{TF_AWS} `internal/service/iam/role_policy.go` @02f97af (ForceNew: `name`, `name_prefix`, `role`)",
        replace=("name", "namePrefix", "role"),
        in_place=("policy",),
    ),
    "aws:dlm/lifecyclePolicy:LifecyclePolicy": TypeRules(
        f"{TF_AWS} `internal/service/dlm/lifecycle_policy.go` @cc0fff0 (ForceNew within a schedule: `copy_tags`; "
        "`policy_details`, `execution_role_arn`, `state`, `description` are updated)",
        replace=("policyDetails.schedules[].copyTags",),
        in_place=("policyDetails", "executionRoleArn", "state", "description", "tags"),
    ),
}

# pulumi-eks's Cluster component: what each input this program sets becomes (its
# `nodejs/eks/cluster/cluster.ts`, pulumi/pulumi-eks@v4.3.0), judged by the rules of the
# aws.eks.Cluster it makes (internal/service/eks/cluster.go @00555dc: ForceNew `name`,
# `role_arn`, `bootstrap_self_managed_addons`, `access_config.bootstrap_cluster_creator_admin_
# permissions`, `kubernetes_network_config.ip_family`/`service_ipv4_cidr`, `remote_network_config`,
# and the removal of `encryption_config`).
SUBNETS_NOTE = (
    "the control plane's subnets, vpcConfig.subnetIds: UpdateClusterConfig in cluster.go @00555dc, ForceNew in "
    "older versions (pulumi/terraform-provider-aws@59d4b28); the node group's follow and are ForceNew"
)
EKS_CLUSTER_INPUTS: dict[str, Effect] = {
    "name": Effect(REPLACED, note="the aws.eks.Cluster's `name` is ForceNew"),
    "version": Effect(
        ROLLS_NODES,
        note="the control plane is upgraded in place (UpdateClusterVersion), then the node group's `version` "
        "follows it: EKS rolls the nodes one at a time",
    ),
    "endpointPublicAccess": Effect(IN_PLACE, note="vpcConfig, UpdateClusterConfig"),
    "publicAccessCidrs": Effect(IN_PLACE, note="vpcConfig, UpdateClusterConfig"),
    "deletionProtection": Effect(
        IN_PLACE,
        note='UpdateClusterConfig (AWS, "Protect EKS clusters from accidental deletion"); the provider source '
        "read predates the field",
    ),
    "clusterTags": Effect(IN_PLACE, note="tags"),
    "tags": Effect(IN_PLACE),
    "privateSubnetIds": Effect(IN_PLACE, note=SUBNETS_NOTE),
    "publicSubnetIds": Effect(IN_PLACE, note=SUBNETS_NOTE),
    # With skipDefaultSecurityGroups, pulumi-eks only passes vpcId through to its outputs.
    "vpcId": Effect(NOTHING),
    "kubeProxyAddonOptions": Effect(IN_PLACE, note="pulumi-eks's kube-proxy add-on: addon_version is updatable"),
    "vpcCniOptions": Effect(IN_PLACE, note="pulumi-eks's VPC CNI add-on: addon_version is updatable"),
}

# awsx's Vpc component: its children are not rendered under mocks.
VPC_INPUTS: dict[str, Effect] = {
    "numberOfAvailabilityZones": Effect(
        REPLACED,
        replaces=NODE_GROUP,
        note="subnets are made or removed; the node group's `subnetIds` (ForceNew) follow, so EKS would replace it",
    ),
    "natGateways": Effect(
        UNRENDERED,
        note="awsx's NAT gateways, their Elastic IPs and the private routes to them (children of the awsx "
        "component, not rendered under mocks: read them in `pulumi preview --diff`)",
    ),
}

# pulumi-kubernetes replaces an object when one of these changes (diff.go's forceNew table;
# `.metadata.name` and `.metadata.namespace` for every kind). The ConfigMap and Secret are
# mutable (the provider's enableConfigMapMutable/enableSecretMutable), the PDB is policy/v1.
K8S_REPLACE: dict[str, tuple[str, ...]] = {
    "StatefulSet": (
        "spec.podManagementPolicy",
        "spec.revisionHistoryLimit",
        "spec.selector",
        "spec.serviceName",
        "spec.volumeClaimTemplates",
    ),
    "StorageClass": ("parameters", "provisioner"),
    "Service": ("spec.clusterIP",),
    "Secret": ("type",),
}
K8S_METADATA_REPLACE = ("metadata.name", "metadata.namespace")

DYNAMIC_PROVIDERS = {
    "pulumi-python:dynamic/redis:ClusterBootstrap": cluster_bootstrap.ClusterBootstrapProvider,
    "pulumi-python:dynamic/redis:ClusterChangeGuard": cluster_bootstrap.ClusterChangeGuardProvider,
    "pulumi-python:dynamic/redis:ClusterScaleIn": cluster_scale_in.ClusterScaleInProvider,
    "pulumi-python:dynamic/redis:CredentialRotation": credential_rotation.CredentialRotationProvider,
    "pulumi-python:dynamic/redis:PlatformChangeGuard": platform_change_guard.PlatformChangeGuardProvider,
}
# Components register no inputs; random and tls resources never change with a setting here.
COMPONENT_TYPES = ("redis-eks:index:",)


class Unclassified(Exception):
    """A changed property this module has no rule for."""


def _matches(path: str, rule: str) -> bool:
    return path == rule or path.startswith(rule + ".") or path.startswith(rule + "[") or rule.startswith(path + ".")


def property_effect(resource_type: str, path: str) -> Effect:
    """What the provider does when this property of a resource of this type changes."""
    if resource_type.startswith("kubernetes:"):
        kind = resource_type.rsplit(":", 1)[1]
        if any(_matches(path, rule) for rule in K8S_METADATA_REPLACE + K8S_REPLACE.get(kind, ())):
            return Effect(REPLACED)
        if kind == "StatefulSet" and _matches(path, "spec.template"):
            return Effect(ROLLS_PODS, note="a new pod template: the StatefulSet restarts the pods one at a time")
        return Effect(IN_PLACE)
    if resource_type == K8S_PROVIDER:
        if path == "clusterIdentifier":
            return Effect(
                REPLACED, replaces=EVERY_K8S_OBJECT, note="another clusterIdentifier (provider.go DiffConfig)"
            )
        # An unchanged clusterIdentifier makes any other change an update (DiffConfig).
        return Effect(IN_PLACE)
    if resource_type == EKS_CLUSTER:
        top = path.split(".", 1)[0].split("[", 1)[0]
        if top in EKS_CLUSTER_INPUTS:
            return EKS_CLUSTER_INPUTS[top]
        raise Unclassified(f"{resource_type}: {path}")
    if resource_type == "awsx:ec2:Vpc":
        top = path.split(".", 1)[0].split("[", 1)[0]
        if top in VPC_INPUTS:
            return VPC_INPUTS[top]
        raise Unclassified(f"{resource_type}: {path}")
    rules = REPLACE_FORCING.get(resource_type)
    if rules is None:
        raise Unclassified(f"{resource_type}: {path} (no rules for the type)")
    if any(_matches(path, rule) for rule in rules.replace):
        return Effect(REPLACED)
    if any(_matches(path, rule) for rule in rules.rolls_nodes):
        return Effect(ROLLS_NODES)
    if any(_matches(path, rule) for rule in rules.in_place):
        return Effect(IN_PLACE)
    raise Unclassified(f"{resource_type}: {path}")


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The property paths whose values differ (list items compared in order, as `[]`)."""
    if isinstance(old, dict) and isinstance(new, dict):
        paths = []
        for key in sorted(set(old) | set(new)):
            if key.startswith("__"):
                continue
            path = f"{prefix}.{key}" if prefix else key
            if key not in old or key not in new:
                paths.append(path)
            else:
                paths += changed_paths(old[key], new[key], path)
        return paths
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and old != new:
        paths = []
        for old_item, new_item in zip(old, new):
            paths += changed_paths(old_item, new_item, prefix + "[]")
        return sorted(set(paths))
    return [prefix] if old != new else []


def _inputs(resource: RegisteredResource) -> dict[str, Any]:
    return render_manifests._whole_numbers(render_manifests._plain(resource.inputs))


# --- What runs in AWS, as the fake cloud answers ---------------------------------------------

MOCK_CALLER = f"arn:aws:iam::{MOCK_ACCOUNT}:user/mock"
OLD_GROUP_SUFFIX = "-node-group-1a2b3c4"


@dataclass(frozen=True)
class Running:
    """The stack's EKS cluster as it runs: its node groups, by the suffix after the cluster's
    name, each with the instance types on the group (none when in its launch template)."""

    groups: tuple[tuple[str, tuple[str, ...]], ...] = (("-nodes", ()),)
    label: str = "its node group in the launch-template form"


LAUNCH_TEMPLATE_GROUP = Running()
OLD_FORM_GROUP = Running(((OLD_GROUP_SUFFIX, ("t3.large",)),), "its node group from before, instance type on the group")
BOTH_GROUPS = Running(
    ((OLD_GROUP_SUFFIX, ("t3.large",)), ("-nodes", ())), "both groups, while moving into the launch template"
)


@contextmanager
def aws_runs(cluster: str, running: Optional[Running]) -> Iterator[None]:
    """The fake cloud answering as AWS does for this cluster running (or, with None, for an
    account without it)."""
    answer = render_manifests._FakeCloud.call
    groups = {cluster + suffix: list(types) for suffix, types in (running.groups if running else ())}

    def call(self, args):
        if running is None:
            return answer(self, args)
        if args.token == "aws:eks/getClusters:getClusters":
            return {"id": "eu-west-1", "names": [cluster], "region": "eu-west-1"}
        if args.token == "aws:eks/getCluster:getCluster":
            return {"id": cluster, "name": cluster, "tags": {CREATOR_TAG_KEY: MOCK_CALLER}}
        if args.token == "aws:eks/getNodeGroups:getNodeGroups":
            return {"id": cluster, "clusterName": cluster, "names": sorted(groups)}
        if args.token == "aws:eks/getNodeGroup:getNodeGroup":
            name = args.args["nodeGroupName"]
            return {"id": name, "clusterName": cluster, "nodeGroupName": name, "instanceTypes": groups[name]}
        return answer(self, args)

    with mock.patch.object(render_manifests._FakeCloud, "call", call):
        yield


# --- The sample changes --------------------------------------------------------------------------

# A cluster made elsewhere (kind, say), as tests/unit/conftest.py builds it.
EXISTING_KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: kind, cluster: {server: "https://127.0.0.1:6443"}}]
contexts: [{name: kind, context: {cluster: kind, user: kind}}]
current-context: kind
users: [{name: kind, user: {token: not-a-real-token}}]
"""
EXISTING = {
    "platform": "existing",
    "kubeconfig": EXISTING_KUBECONFIG,
    "storageProvisioner": "rancher.io/local-path",
}
USERS = '{"app": {"commands": ["+@read", "+@write", "-@dangerous"], "keys": ["app:*"]}}'
SUBNETS_A = '["subnet-0a000000000000001", "subnet-0a000000000000002", "subnet-0a000000000000003"]'
SUBNETS_B = '["subnet-0b000000000000001", "subnet-0b000000000000002", "subnet-0b000000000000003"]'
CI_ROLE = "arn:aws:iam::111122223333:role/redis-eks-ci-deploy"
ONCALL_ROLE = "arn:aws:iam::111122223333:role/platform-oncall"


@dataclass(frozen=True)
class Sample:
    """One setting change on a running stack: the stack file (or `existing`: a cluster made
    elsewhere), the settings over it before, and those the change sets (None removes one)."""

    setting: str
    stack: str
    change: Mapping[str, Optional[str]]
    before: Mapping[str, str] = field(default_factory=dict)
    running: Optional[Running] = LAUNCH_TEMPLATE_GROUP
    # The documented way, for a refused change or one named through acceptManualChange.
    way: str = ""


OPS = "docs/operations.md"
SAMPLES: tuple[Sample, ...] = (
    # The platform.
    Sample(
        "platform",
        "existing",
        {"platform": "eks", "kubeconfig": None, "storageProvisioner": None, "publicAccessCidrs": '["203.0.113.0/24"]'},
        running=None,
        way="a new stack",
    ),
    Sample("kubeconfig", "existing", {"kubeconfig": EXISTING_KUBECONFIG.replace("not-a-real-token", "new-token")}),
    Sample(
        "kubeconfig",
        "existing",
        {"kubeconfig": EXISTING_KUBECONFIG.replace("127.0.0.1:6443", "10.0.0.1:6443")},
        way="a new stack on the other cluster",
    ),
    Sample("clusterVersion", "dev", {"clusterVersion": "1.36"}, {"clusterVersion": "1.35"}),
    Sample("clusterVersion", "dev", {"clusterVersion": "1.35"}, {"clusterVersion": "1.36"}, way="none (EKS cannot)"),
    Sample("deletionProtection", "dev", {"deletionProtection": "true"}),
    Sample(
        "vpcId",
        "dev",
        {"vpcId": "vpc-0b00000000000000b", "privateSubnetIds": SUBNETS_B},
        # natGateways shapes a VPC of the stack's own only, and is refused with vpcId.
        {"vpcId": "vpc-0a00000000000000a", "privateSubnetIds": SUBNETS_A, "natGateways": None},
        way="a new stack",
    ),
    Sample(
        "privateSubnetIds",
        "dev",
        {"privateSubnetIds": SUBNETS_B},
        {"vpcId": "vpc-0a00000000000000a", "privateSubnetIds": SUBNETS_A, "natGateways": None},
        way="a new stack",
    ),
    # 4, not 2: two zones would leave one a majority of the masters (refused with the settings).
    Sample("availabilityZoneCount", "dev", {"availabilityZoneCount": "4"}, way="a new stack"),
    Sample("natGateways", "dev", {"natGateways": "onePerAz"}),
    Sample("endpointPublicAccess", "prod", {"endpointPublicAccess": "false", "publicAccessCidrs": None}),
    Sample("publicAccessCidrs", "prod", {"publicAccessCidrs": '["203.0.113.0/24", "198.51.100.0/24"]'}),
    Sample("clusterAdminArns", "prod", {"clusterAdminArns": json.dumps([CI_ROLE, ONCALL_ROLE])}),
    Sample("clusterAdminArns", "prod", {"clusterAdminArns": None}),
    # The nodes.
    Sample("nodeInstanceType", "dev", {"nodeInstanceType": "t3.xlarge"}),
    Sample("nodeMinSize", "dev", {"nodeMinSize": "2"}),
    Sample("nodeDesiredSize", "dev", {"nodeDesiredSize": "4"}),
    Sample("nodeMaxSize", "dev", {"nodeMaxSize": "6"}),
    Sample(
        "nodeInstanceType",
        "dev",
        {"nodeInstanceType": "t3.xlarge"},
        {"nodeGroupForm": "instanceTypes"},
        running=OLD_FORM_GROUP,
        way=f'{OPS}, "Moving the node group into its launch template"',
    ),
    Sample("nodeGroupForm", "dev", {"nodeGroupForm": "moving"}, {"nodeGroupForm": "instanceTypes"}, OLD_FORM_GROUP),
    Sample(
        "nodeGroupForm",
        "dev",
        {"nodeGroupForm": "launchTemplate"},
        {"nodeGroupForm": "moving"},
        BOTH_GROUPS,
        way=f'{OPS}, "Moving the node group into its launch template", steps 2 and 3',
    ),
    Sample(
        "nodeGroupForm",
        "dev",
        {
            "nodeGroupForm": "launchTemplate",
            "acceptManualChange": f'["nodeGroupDrained=redis-eks-dev{OLD_GROUP_SUFFIX}"]',
        },
        {"nodeGroupForm": "moving"},
        BOTH_GROUPS,
        way=f'{OPS}, "Moving the node group into its launch template", step 3 (its nodes drained first)',
    ),
    Sample("nodeGroupForm", "dev", {"nodeGroupForm": "instanceTypes"}, way="keep launchTemplate"),
    # Add-ons.
    Sample("ebsCsiDriverVersion", "dev", {"ebsCsiDriverVersion": "v1.69.0-eksbuild.1"}),
    Sample(
        "ebsCsiDriverVersion", "dev", {"ebsCsiDriverVersion": "v1.99.0-eksbuild.1"}, way=f'{OPS}, "Add-on versions"'
    ),
    Sample("corednsVersion", "dev", {"corednsVersion": "v1.12.4-eksbuild.1"}),
    Sample("kubeProxyVersion", "dev", {"kubeProxyVersion": "v1.35.0-eksbuild.2"}),
    Sample("vpcCniVersion", "dev", {"vpcCniVersion": "v1.20.1-eksbuild.1"}),
    # Storage.
    Sample(
        "storageKmsKeyArn",
        "dev",
        {"storageKmsKeyArn": f"arn:aws:kms:eu-west-1:{MOCK_ACCOUNT}:key/0f0f0f0f-1111-2222-3333-444444444444"},
        way=f'{OPS}, "Restoring from snapshots" (into a new stack with that key)',
    ),
    Sample("storageProvisioner", "existing", {"storageProvisioner": "openebs.io/local"}, way="a new stack"),
    Sample("storageSize", "dev", {"storageSize": "10Gi"}, way=f'{OPS}, "Volume size"'),
    Sample(
        "storageSize",
        "dev",
        {"storageSize": "10Gi", "acceptManualChange": '["storageSize=10Gi"]'},
        way=f'{OPS}, "Volume size" (the claims grown first; the StatefulSet orphans its pods)',
    ),
    Sample("storageIops", "prod", {"storageIops": "8000"}, way=f'{OPS}, "Volume performance"'),
    Sample(
        "storageIops",
        "prod",
        {"storageIops": "8000", "acceptManualChange": '["storageIops=8000"]'},
        way=f'{OPS}, "Volume performance" (the volumes modified first)',
    ),
    Sample("storageThroughput", "dev", {"storageThroughput": "250"}, way=f'{OPS}, "Volume performance"'),
    Sample(
        "storageThroughput",
        "dev",
        {"storageThroughput": "250", "acceptManualChange": '["storageThroughput=250"]'},
        way=f'{OPS}, "Volume performance" (the volumes modified first)',
    ),
    Sample("backupSchedule", "dev", {"backupSchedule": "cron(0 1 * * ? *)"}),
    Sample("backupSchedule", "dev", {"backupSchedule": "off"}),
    Sample("backupRetentionCount", "dev", {"backupRetentionCount": "14"}),
    Sample("backupCopyRegion", "dev", {"backupCopyRegion": "eu-central-1"}),
    Sample(
        "backupCopyRetentionDays",
        "dev",
        {"backupCopyRetentionDays": "30"},
        {"backupCopyRegion": "eu-central-1"},
    ),
    # The Redis Cluster.
    Sample("namespace", "dev", {"namespace": "cache"}, way=f'{OPS}, "Changing the namespace" (a new stack)'),
    Sample(
        "namespace",
        "dev",
        {"namespace": "cache", "acceptManualChange": '["namespace=cache"]'},
        way=f'{OPS}, "Changing the namespace" (a new, empty cluster; the old one deleted, its volumes kept)',
    ),
    Sample("shards", "dev", {"shards": "4"}),
    Sample("shards", "dev", {"shards": "3"}, {"shards": "4"}, way=f'{OPS}, "Scaling in"'),
    Sample("replicasPerShard", "dev", {"replicasPerShard": "2"}),
    Sample(
        "replicasPerShard",
        "dev",
        {"replicasPerShard": "0", "acceptRisks": '["noReplicas"]'},
        way=f'{OPS}, "Scaling in"',
    ),
    Sample("engine", "dev", {"engine": "valkey"}, way=f'{OPS}, "Changing the engine"'),
    Sample("image", "dev", {"image": "redis:8.10.3-trixie"}),
    Sample("nodeTimeoutMs", "dev", {"nodeTimeoutMs": "10000"}),
    Sample("maxmemoryPolicy", "dev", {"maxmemoryPolicy": "allkeys-lru"}),
    Sample("cpuRequest", "dev", {"cpuRequest": "500m"}),
    Sample("cpuLimit", "dev", {"cpuLimit": "1500m"}),
    Sample("memoryRequest", "dev", {"memoryRequest": "2Gi", "memoryLimit": "2Gi"}),
    Sample("memoryLimit", "dev", {"memoryLimit": "2Gi"}),
    Sample("clientPodLabels", "dev", {"clientPodLabels": '{"redis-client": "yes"}'}),
    Sample("clientNamespaceLabels", "dev", {"clientNamespaceLabels": '{"team": "cache"}'}),
    Sample("bootstrapTimeoutSeconds", "dev", {"bootstrapTimeoutSeconds": "900"}),
    Sample("acceptManualChange", "dev", {"acceptManualChange": '["image=redis:8.10.1-trixie"]'}),
    # A risk is named only while the stack takes it, and must be while it does.
    Sample(
        "acceptRisks",
        "dev",
        {"acceptRisks": None},
        {"clientPodLabels": "{}", "acceptRisks": '["allPodsAsClients"]'},
        way="README, Configuration, `acceptRisks` (name the risk, or stop taking it)",
    ),
    # Security.
    Sample("tls", "dev", {"tls": "true"}, way=f'{OPS}, "Turning TLS on"'),
    Sample(
        "certManagerIssuer",
        "prod",
        {"certManagerIssuer": "ClusterIssuer/internal-ca"},
        way=f'{OPS}, "Certificates" (a new stack with the signer)',
    ),
    Sample("password", "dev", {"password": "another-password-of-32-characters"}),
    Sample("users", "dev", {"users": USERS}),
    Sample("userPasswords", "dev", {"userPasswords": '{"app": "app-password-of-24-chars"}'}, {"users": USERS}),
    Sample("rotationGraceSeconds", "dev", {"rotationGraceSeconds": "120"}),
    # Monitoring.
    Sample("monitoring", "dev", {"monitoring": "true"}),
    Sample("exporterImage", "prod", {"exporterImage": "oliver006/redis_exporter:v1.80.0"}),
    Sample("monitoringNamespace", "prod", {"monitoringNamespace": "observability"}),
    Sample("monitoringLabels", "prod", {"monitoringLabels": '{"release": "prometheus"}'}),
    Sample("prometheusOperatorCrds", "prod", {"prometheusOperatorCrds": "existing"}),
    Sample("runbookBaseUrl", "prod", {"runbookBaseUrl": "https://git.example.com/platform/redis-eks/-/blob/main/"}),
)


# --- Rendering and judging ---------------------------------------------------------------------


def stack_config(stack: str, settings: Mapping[str, Optional[str]]) -> tuple[str, dict[str, str]]:
    """The stack's name and its whole config with these settings over its file."""
    if stack == "existing":
        name, config = "local", {}
        settings = {**EXISTING, **settings}
    else:
        name, config = stack, load_stack_config(stack)
    for key, value in settings.items():
        full = f"{NAMESPACE}:{key}"
        if value is None:
            config.pop(full, None)
        else:
            config[full] = value
    return name, config


def render(stack: str, settings: Mapping[str, Optional[str]], running: Optional[Running]) -> ProgramRun:
    name, config = stack_config(stack, settings)
    with aws_runs(f"redis-eks-{name}", running):
        # The secret settings as a stack holds them, set with --secret.
        return run_program(config, stack=name, secret_keys=secret_config_keys(config))


@dataclass
class Change:
    resource: str  # "<type> <name>"
    type: str
    effect: Effect
    paths: tuple[str, ...] = ()


@dataclass
class Impact:
    sample: Sample
    changes: list[Change]
    # (who refuses, on which property), empty when the change goes through.
    refusals: list[tuple[str, str]]

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    def worst(self) -> str:
        """The worst effect: a protected resource's replacement or deletion first, then a
        roll; another resource's replacement (a ConfigMap named by its content) is no more
        than what it rolls."""
        if self.protected_losses():
            return min(
                (c.effect.kind for c in self.changes if c.effect.kind in (REPLACED, DELETED)), key=SEVERITY.index
            )
        kinds = [OTHER_REPLACED if c.effect.kind == REPLACED else c.effect.kind for c in self.changes]
        return min(kinds or [NOTHING], key=OUTCOME_SEVERITY.index)

    def protected_losses(self) -> list[str]:
        """The protected resources this change would replace or delete."""
        lost = []
        for change in self.changes:
            if change.effect.kind in (REPLACED, DELETED):
                target = change.effect.replaces or change.type
                if target in PROTECTED:
                    lost.append(f"{change.resource}: {target}" if change.effect.replaces else change.resource)
        return lost

    def names_its_way(self) -> bool:
        """Whether the change names itself in acceptManualChange, the documented way."""
        return bool(self.sample.change.get("acceptManualChange"))


def _label(resource: RegisteredResource) -> str:
    return f"{resource.type} {resource.name}"


def diff_runs(before: ProgramRun, after: ProgramRun) -> list[Change]:
    """Every resource the change creates, deletes or changes, with what it does."""
    olds = {r.urn: r for r in before.resources}
    news = {r.urn: r for r in after.resources}
    changes = []
    for urn in sorted(set(olds) | set(news)):
        old, new = olds.get(urn), news.get(urn)
        if old is None:
            changes.append(Change(_label(new), new.type, Effect(CREATED)))
            continue
        if new is None:
            kind = KEPT if old.retain_on_delete else DELETED
            changes.append(Change(_label(old), old.type, Effect(kind)))
            continue
        if new.type.startswith(COMPONENT_TYPES):
            continue
        old_inputs, new_inputs = _inputs(old), _inputs(new)
        paths = [
            p for p in changed_paths(old_inputs, new_inputs) if not any(_matches(p, i) for i in new.ignore_changes)
        ]
        if not paths:
            continue
        if new.type in DYNAMIC_PROVIDERS:
            effect = _dynamic_effect(new.type, old_inputs, new_inputs)
            if effect is not None:
                changes.append(Change(_label(new), new.type, effect, tuple(paths)))
            continue
        effects = [property_effect(new.type, path) for path in paths]
        worst = min(effects, key=lambda e: SEVERITY.index(e.kind))
        shown = tuple(p for p, e in zip(paths, effects) if e.kind != NOTHING)
        if worst.kind != NOTHING:
            changes.append(Change(_label(new), new.type, worst, shown))
    return changes


def _dynamic_effect(resource_type: str, olds: dict, news: dict) -> Optional[Effect]:
    """The program's own providers say what they do: no change, an update, or a replacement."""
    provider = DYNAMIC_PROVIDERS[resource_type]()
    try:
        result = provider.diff("id", olds, news)
    except ValueError:
        # The bootstrap's diff refuses a scale-in: its check refuses it first (refusals()).
        return Effect(IN_PLACE)
    if not result.changes:
        return None
    if result.replaces:
        return Effect(REPLACED, note=", ".join(result.replaces))
    return Effect(IN_PLACE)


GUARDS = (
    "pulumi-python:dynamic/redis:PlatformChangeGuard",
    "pulumi-python:dynamic/redis:ClusterChangeGuard",
    "pulumi-python:dynamic/redis:ClusterScaleIn",
    "pulumi-python:dynamic/redis:ClusterBootstrap",
)


def refusals(before: ProgramRun, after: ProgramRun) -> list[tuple[str, str]]:
    """What the guards' checks (run at preview, before what they protect) refuse."""
    found = []
    olds = {r.urn: r for r in before.resources}
    for resource in after.resources:
        if resource.type not in GUARDS or resource.urn not in olds:
            continue
        result = DYNAMIC_PROVIDERS[resource.type]().check(_inputs(olds[resource.urn]), _inputs(resource))
        who = resource.type.rsplit(":", 1)[1]
        found += [(who, failure.property) for failure in result.failures or []]
    return sorted(set(found))


def impact(sample: Sample, befores: Optional[dict] = None) -> Impact:
    """One sample's impact; `befores` keeps the renders before a change, which samples share."""
    befores = {} if befores is None else befores
    key = (sample.stack, tuple(sorted(sample.before.items())), sample.running)
    if key not in befores:
        befores[key] = render(sample.stack, sample.before, sample.running)
    before = befores[key]
    settings = {**sample.before, **sample.change}
    try:
        after = render(sample.stack, settings, sample.running)
    except SettingsError as error:
        return Impact(sample, [], [("the program's preview checks", _first_setting(str(error), sample))])
    return Impact(sample, diff_runs(before, after), refusals(before, after))


def _first_setting(message: str, sample: Sample) -> str:
    for key in sorted(sample.change, key=len, reverse=True):
        if f"{NAMESPACE}:{key}" in message:
            return key
    return sample.setting


def impacts() -> list[Impact]:
    befores: dict = {}
    return [impact(sample, befores) for sample in SAMPLES]


# --- The table ----------------------------------------------------------------------------------


def _change_text(sample: Sample) -> str:
    def value(key: str, text: Optional[str]) -> str:
        if text is None:
            return "unset"
        if key == "kubeconfig":
            return _kubeconfig_change(text)
        if key in ("password", "userPasswords"):
            return "another"
        return f"`{text}`"

    text = ", ".join(f"`{key}` {value(key, text)}" for key, text in sample.change.items())
    if sample.before:
        was = ", ".join(f"`{key}` {value(key, text)}" for key, text in sample.before.items() if key not in ("users",))
        text += f" (from {was})" if was else ""
    return text


def _kubeconfig_change(new: str) -> str:
    same = kubeconfig_server(new) == kubeconfig_server(EXISTING_KUBECONFIG)
    return "with a new token, same API server" if same else "of another API server"


def _where(sample: Sample) -> str:
    if sample.stack == "existing":
        return "a cluster made elsewhere"
    running = sample.running.label if sample.running else "no cluster yet"
    return f"{sample.stack}; {running}"


def _effect_text(change: Change) -> str:
    effect = change.effect
    kind = effect.kind
    if effect.replaces:
        kind = f"replaces {_short(effect.replaces)}"
    paths = f" ({', '.join(f'`{p}`' for p in change.paths)})" if change.paths else ""
    note = f": {effect.note}" if effect.note else ""
    return f"{_short_resource(change.resource)}{paths} {kind}{note}"


def _short(resource_type: str) -> str:
    return resource_type if resource_type == EVERY_K8S_OBJECT else resource_type.split(":")[-1]


def _short_resource(label: str) -> str:
    resource_type, _, name = label.partition(" ")
    return f"{resource_type.split(':')[-1]} `{name}`"


def _outcome(item: Impact) -> str:
    if item.refused:
        guards: dict[str, list[str]] = {}
        for guard, prop in item.refusals:
            guards.setdefault(guard, []).append(f"`{prop}`")
        who = "; ".join(f"{guard} ({', '.join(props)})" for guard, props in guards.items())
        return f"**refused at preview** by {who}"
    worst = item.worst()
    if item.protected_losses():
        return f"**{worst}**, named in acceptManualChange"
    return {
        NOTHING: "nothing changes",
        IN_PLACE: "in place",
        ROLLS_PODS: "**rolls the Redis pods** one at a time (StatefulSet RollingUpdate)",
        ROLLS_NODES: "**rolls the nodes** one at a time (each drain through the PDB)",
        CREATED: "adds resources",
        DELETED: "removes resources",
        KEPT: "resources leave the stack, kept",
        UNRENDERED: "see `pulumi preview --diff`",
        OTHER_REPLACED: "replaces resources that hold no data",
    }[worst]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


HEADER = """# What a setting change does to a running stack

Generated by `python -m tools.change_impact --update` from the program itself; do not edit by
hand (tests/unit/test_change_impact.py fails until this file matches). Each row is one change
of one setting on a stack that runs: rendered before and after under Pulumi's mocks (the real
program, as `pulumi up` runs it), with AWS answering as it does for the running cluster, and
each property that differs classified by the rule of its resource type (the table at the end,
each rule with its source). "Refused at preview" means `pulumi preview` (and `pulumi up`)
stops before anything changes: a guard's check or the program's own reading of what runs
refuses it and names the way, given in the last column.

A change that would replace (or delete) the EKS cluster, a node group that runs Redis pods, a
KMS key in use, the StorageClass, the StatefulSet or the namespace is refused here, unless it
is the documented way named through `acceptManualChange` (then the work it needs is done
first by hand, as the way says). The renders cannot show the children of the remote
components (pulumi-eks's control plane, awsx's subnets and routes): their rows say what the
component's input becomes. Values that are secrets are not shown.

| Setting | Change | Stack | What changes | Outcome | The way |
|---|---|---|---|---|---|
"""


def table(items: list[Impact]) -> str:
    rows = []
    for item in items:
        sample = item.sample
        changes = "<br>".join(_cell(_effect_text(change)) for change in item.changes) or (
            "(refused before anything is registered)" if item.refused else "nothing"
        )
        rows.append(
            f"| `{sample.setting}` | {_cell(_change_text(sample))} | {_cell(_where(sample))} | {changes} | "
            f"{_cell(_outcome(item))} | {_cell(sample.way)} |"
        )
    return HEADER + "\n".join(rows) + "\n\n" + rules_text()


def rules_text() -> str:
    lines = [
        "## The rules: which properties replace a resource",
        "",
        "Any property of a resource type not listed here fails the render (tools/change_impact.py",
        "raises `Unclassified`) until it is classified from its provider's schema or code.",
        "",
        "| Resource type | Replaced when | Nodes roll when | Updated in place | Source |",
        "|---|---|---|---|---|",
    ]

    def names(items: tuple[str, ...]) -> str:
        return ", ".join(f"`{item}`" for item in items) or "none"

    for resource_type, rules in sorted(REPLACE_FORCING.items()):
        lines.append(
            f"| `{resource_type}` | {names(rules.replace)} | {names(rules.rolls_nodes)} | {names(rules.in_place)} "
            f"| {_cell(rules.source)} |"
        )
    for kind, props in sorted({**{k: () for k in ("Namespace", "ConfigMap", "NetworkPolicy")}, **K8S_REPLACE}.items()):
        rolls = "`spec.template` (the pods roll, one at a time)" if kind == "StatefulSet" else "none"
        lines.append(
            f"| Kubernetes `{kind}` | {names(K8S_METADATA_REPLACE + props)} | {rolls} | everything else "
            f"| {PULUMI_K8S} `provider/pkg/provider/diff.go` (forceNew) |"
        )
    lines.append(
        "| Kubernetes, any other kind (PodDisruptionBudget policy/v1, ServiceMonitor, PrometheusRule, CRDs) "
        f"| {names(K8S_METADATA_REPLACE)} | none | everything else | {PULUMI_K8S} `provider/pkg/provider/diff.go` |"
    )
    lines.append(
        "| `pulumi:providers:kubernetes` | `clusterIdentifier` (and with it every Kubernetes object) | none "
        "| everything else, while `clusterIdentifier` is unchanged "
        f"| {PULUMI_K8S} `provider/pkg/provider/provider.go` (DiffConfig) |"
    )

    def inputs_of(kind: str) -> str:
        return (
            ", ".join(
                f"`{key}`" + (f" ({effect.note})" if effect.note and kind != ROLLS_NODES else "")
                for key, effect in EKS_CLUSTER_INPUTS.items()
                if effect.kind == kind
            )
            or "none"
        )

    lines.append(
        f"| `eks:index:Cluster` (pulumi-eks) | {_cell(inputs_of(REPLACED))} | {_cell(inputs_of(ROLLS_NODES))} "
        f"| {_cell(inputs_of(IN_PLACE))}; no change of its own: {_cell(inputs_of(NOTHING))} (with "
        f"skipDefaultSecurityGroups, pulumi-eks passes it through only) | {PULUMI_EKS} "
        f"`nodejs/eks/cluster/cluster.ts` (what each input becomes); {TF_AWS} "
        "`internal/service/eks/cluster.go` @00555dc (ForceNew: `name`, `role_arn`, "
        "`bootstrap_self_managed_addons`, `access_config.bootstrap_cluster_creator_admin_permissions`, "
        "`kubernetes_network_config.ip_family`/`service_ipv4_cidr`, `remote_network_config`; removing "
        "`encryption_config`) |"
    )
    lines.append(
        "| `awsx:ec2:Vpc` (awsx) | `numberOfAvailabilityZones`: "
        + _cell(VPC_INPUTS["numberOfAvailabilityZones"].note)
        + " | none | `natGateways`: "
        + _cell(VPC_INPUTS["natGateways"].note)
        + " | the awsx component (its children are not rendered under mocks); the node group's `subnetIds` rule "
        "above |"
    )
    lines.append(
        "| The program's dynamic resources (ClusterBootstrap, CredentialRotation, the guards) | what their "
        "provider's `diff` names in `replaces` | none | what else their `diff` counts as a change | "
        "components/cluster_bootstrap.py, credential_rotation.py, platform_change_guard.py |"
    )
    return "\n".join(lines) + "\n\n" + LIMITS


LIMITS = """## What the renders cannot show

- The mocks answer fixed outputs, so what follows from another resource's new outputs is stated
  by rule, not rendered: the node group's `version` after a control-plane upgrade, the subnets
  after a new zone count, awsx's NAT gateways and routes, a launch template's new version.
- Which terraform-provider-aws commit the installed pulumi-aws 7.51.1 bundles could not be
  determined here (npm's newest @pulumi/aws is 7.48.0; the snapshots of pulumi-aws, with its
  `upstream` submodule, and of terraform-provider-aws are too large to fetch). Each rule cites
  the stored copy of the file it was read in, by commit, and every property a rule names is an
  input of the installed SDK's resource (tests/unit/test_change_impact.py). Where the copies
  read differ, the rule says so (the control plane's subnets, ForceNew before EKS could update
  them; `deletionProtection`, newer than the copy read, classified from AWS's user guide).
  The installed pulumi-kubernetes 4.34.2 and pulumi-eks 4.4.0 are newer than the stored
  snapshots: their rules are read at v4.32.0 and v4.3.0, whose cited files are the same at
  each snapshot's newest commit (pulumi-kubernetes 9497796, pulumi-eks 7bf0c1b).
- A setting is not the only change: a new default build of an add-on (an update in place,
  docs/operations.md, "Add-on versions"), a new pulumi-eks or awsx version, or drift seen by
  `pulumi refresh` shows up in `pulumi preview --diff`, which is the final word before an
  update.
"""


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help=f"rewrite {DOC.relative_to(PROJECT_DIR)}")
    options = parser.parse_args(argv)
    text = table(impacts())
    if options.update:
        changed = not DOC.exists() or DOC.read_text() != text
        DOC.write_text(text)
        print(f"{'updated' if changed else 'unchanged'}: {DOC.relative_to(PROJECT_DIR)}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
