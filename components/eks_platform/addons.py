"""The EKS add-ons the stack runs beside pulumi-eks's own (kube-proxy, VPC CNI): the EBS CSI
driver, with an IAM role of its own (IRSA) limited to this cluster's volumes, and CoreDNS; and
the build of every add-on: as it runs, as pinned, or as EKS names it for a new Kubernetes version."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping, Optional

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks

from components.eks_platform.aws_account import AwsAccount
from components.eks_platform.backups import DLM_POLICY_ID_TAG
from components.eks_platform.storage import CLUSTER_TAG_KEY, EBS_CSI_MANAGED_TAG_KEY
from components.stack_settings import NAMESPACE, StackSettings

EBS_CSI_ADDON = "aws-ebs-csi-driver"
COREDNS_ADDON = "coredns"
KUBE_PROXY_ADDON = "kube-proxy"
VPC_CNI_ADDON = "vpc-cni"
# The controller's service account as the add-on installs it; the IAM role trusts only it.
EBS_CSI_SERVICE_ACCOUNT = "system:serviceaccount:kube-system:ebs-csi-controller-sa"
# EKS tags the instances of a managed node group with the cluster's name under this key.
EKS_NODE_CLUSTER_TAG_KEY = "eks:cluster-name"


@dataclass(frozen=True)
class AddonBuild:
    """How one add-on's build is chosen: the setting that pins it, or EKS's answer for the
    cluster's Kubernetes version (aws.eks.get_addon_version): its default build, or, for the
    two pulumi-eks installs, the newest, as pulumi-eks itself asks (nodejs/eks/cluster/cluster.ts),
    so that a stack that ran before keeps the builds it has."""

    addon: str
    setting: str
    attribute: str
    most_recent: bool


ADDON_BUILDS = (
    AddonBuild(EBS_CSI_ADDON, "ebsCsiDriverVersion", "ebs_csi_driver_version", most_recent=False),
    AddonBuild(COREDNS_ADDON, "corednsVersion", "coredns_version", most_recent=False),
    AddonBuild(KUBE_PROXY_ADDON, "kubeProxyVersion", "kube_proxy_version", most_recent=True),
    AddonBuild(VPC_CNI_ADDON, "vpcCniVersion", "vpc_cni_version", most_recent=True),
)


def build_order(build: str) -> tuple[int, ...]:
    """v1.66.0-eksbuild.1 -> (1, 66, 0, 1): builds of one add-on in the order EKS releases them."""
    return tuple(int(number) for number in re.findall(r"\d+", build))


def running_builds(name: str, parent: Optional[pulumi.Resource]) -> dict[str, str]:
    """Add-on -> the build EKS runs on the stack's cluster, which exists (aws.eks.get_addon, the
    DescribeAddon API): known at preview. An add-on not on the cluster (a first run that
    stopped before it) is left out: DescribeAddon answers ResourceNotFoundException, which the
    invoke raises."""
    running = {}
    for build in ADDON_BUILDS:
        try:
            version = aws.eks.get_addon(
                addon_name=build.addon, cluster_name=name, opts=pulumi.InvokeOptions(parent=parent)
            ).addon_version
        except Exception:  # noqa: BLE001 - the invoke raises a plain Exception for any failure
            continue
        if version:
            running[build.addon] = version
    return running


def describe_versions(addon: str, version: str) -> str:
    return f"`aws eks describe-addon-versions --addon-name {addon} --kubernetes-version {version}` lists them"


def build_plan(
    settings: StackSettings,
    running_version: Optional[str],
    running: Mapping[str, str],
    parent: Optional[pulumi.Resource],
) -> tuple[dict[str, Optional[str]], list[str]]:
    """Which build each add-on runs, decided at preview, and every problem with it.

    A pin, checked against what EKS offers for `clusterVersion` (asked of EKS for the version
    the settings name: the control plane's own is unknown before the cluster exists) and
    against what runs. Unpinned, the build that runs, while `clusterVersion` is the version the
    control plane runs: EKS does not move an add-on by itself (AWS's user guide, "Update an
    Amazon EKS add-on"), and neither does the stack when AWS names a new default or newest
    build, which would update it on some unrelated `pulumi up`. A new add-on, or a new
    `clusterVersion`, takes EKS's answer for the version the control plane reports once
    upgraded (None here: addon_version asks, after the control plane). No add-on moves to an
    older build than it runs: refused at preview.

    What this cannot see: aws.eks.get_addon_version names the default and the newest build
    only, not the full list, so a pin older than the newest that EKS does not offer for the
    version is refused by EKS at `pulumi up` instead (docs/known-limits.md)."""
    builds: dict[str, Optional[str]] = {}
    problems = []
    version = settings.cluster_version
    same_version = running_version is not None and running_version == version
    for build in ADDON_BUILDS:
        pinned = getattr(settings, build.attribute)
        runs = running.get(build.addon)
        if pinned is not None:
            newest = eks_build(build.addon, version, most_recent=True, parent=parent)
            if build_order(pinned) > build_order(newest):
                problems.append(
                    f"{NAMESPACE}:{build.setting} = {pinned!r} is not valid: EKS offers {build.addon} builds up to "
                    f"{newest} for Kubernetes {version} ({describe_versions(build.addon, version)}); "
                    "pin one of those, or remove the setting to take the build EKS names"
                )
            elif runs and build_order(pinned) < build_order(runs):
                problems.append(
                    f"{NAMESPACE}:{build.setting} = {pinned!r} is refused on this running stack: {build.addon} runs "
                    f"{runs}, and the stack does not move an add-on to an older build; pin {runs} or a newer build "
                    f"EKS offers for Kubernetes {version} ({describe_versions(build.addon, version)}), or remove "
                    f"the setting to keep {runs}"
                )
            builds[build.addon] = pinned
        elif runs and same_version:
            builds[build.addon] = runs
        else:
            builds[build.addon] = None
            if runs:
                # A new clusterVersion: EKS's answer for it must not be older than what runs.
                target = eks_build(build.addon, version, most_recent=build.most_recent, parent=parent)
                if build_order(target) < build_order(runs):
                    problems.append(
                        f"{NAMESPACE}:{build.setting} is not set, and the {build.addon} build EKS names for "
                        f"Kubernetes {version}, {target}, is older than {runs}, which runs: the stack does not "
                        f"move an add-on to an older build. Pin {runs} if EKS offers it for {version}, or a newer "
                        f"build it offers ({describe_versions(build.addon, version)})"
                    )
    return builds, problems


def eks_build(addon: str, kubernetes_version: str, most_recent: bool, parent: Optional[pulumi.Resource]) -> str:
    """EKS's default (or newest) build of an add-on for a Kubernetes version, at preview."""
    return aws.eks.get_addon_version(
        addon_name=addon,
        kubernetes_version=kubernetes_version,
        most_recent=most_recent,
        opts=pulumi.InvokeOptions(parent=parent),
    ).version


def addon_build(
    build: AddonBuild,
    chosen: Optional[str],
    kubernetes_version: pulumi.Input[Optional[str]],
    parent: pulumi.Resource,
) -> pulumi.Input[str]:
    """The build chosen at preview (build_plan), or the one EKS names for the version the
    control plane reports."""
    if chosen is not None:
        return chosen
    return aws.eks.get_addon_version_output(
        addon_name=build.addon,
        kubernetes_version=kubernetes_version,
        most_recent=build.most_recent,
        opts=pulumi.InvokeOutputOptions(parent=parent),
    ).version


def ebs_csi_role(
    name: str, cluster: eks.Cluster, account: pulumi.Output[AwsAccount], child: pulumi.ResourceOptions
) -> tuple[aws.iam.Role, aws.iam.RolePolicy]:
    """The driver's IRSA role and its EC2 policy.

    In place of AWS's AmazonEBSCSIDriverPolicy, which lets the driver attach, detach, resize
    and snapshot any volume of the account: the same work, on this cluster's volumes and nodes
    only (ebs_csi_driver_policy)."""
    role = aws.iam.Role(
        f"{name}-ebs-csi-role",
        assume_role_policy=pulumi.Output.all(cluster.oidc_provider_arn, cluster.oidc_provider_url).apply(
            lambda values: irsa_trust_policy(values[0], values[1], EBS_CSI_SERVICE_ACCOUNT)
        ),
        opts=child,
    )
    ec2_policy = aws.iam.RolePolicy(
        f"{name}-ebs-csi-ec2",
        role=role.id,
        policy=account.apply(lambda where: ebs_csi_driver_policy(where, name)),
        opts=child,
    )
    return role, ec2_policy


def ebs_csi_driver(
    name: str,
    builds: Mapping[str, Optional[str]],
    cluster: eks.Cluster,
    nodes: list[aws.eks.NodeGroup],
    control_plane_version: pulumi.Input[Optional[str]],
    role: aws.iam.Role,
    ec2_policy: aws.iam.RolePolicy,
    volume_key_arn: pulumi.Input[str],
    parent: pulumi.Resource,
) -> aws.eks.Addon:
    kms_policy = aws.iam.RolePolicy(
        f"{name}-ebs-csi-kms",
        role=role.id,
        policy=pulumi.Output.from_input(volume_key_arn).apply(ebs_volume_key_policy),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return aws.eks.Addon(
        f"{name}-ebs-csi-driver",
        cluster_name=name,
        addon_name=EBS_CSI_ADDON,
        # The build that runs (or the pinned one); with a new clusterVersion, the one EKS names
        # for the version the control plane reports: after the nodes, as it depends on them.
        addon_version=addon_build(ADDON_BUILDS[0], builds[EBS_CSI_ADDON], control_plane_version, parent),
        service_account_role_arn=role.arn,
        resolve_conflicts_on_create="OVERWRITE",
        resolve_conflicts_on_update="PRESERVE",
        # The add-on only turns ACTIVE once its pods are scheduled: it needs the nodes. Its
        # controller creates and attaches volumes with its role's policies, so those are in
        # place before it starts and are removed only after it is gone.
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[cluster, *nodes, ec2_policy, kms_policy]),
    )


def coredns(
    name: str,
    builds: Mapping[str, Optional[str]],
    cluster: eks.Cluster,
    nodes: list[aws.eks.NodeGroup],
    control_plane_version: pulumi.Input[Optional[str]],
    parent: pulumi.Resource,
) -> aws.eks.Addon:
    """pulumi-eks makes CoreDNS an EKS add-on only on a cluster with its default node group or
    Fargate (CoreDNS needs nodes, and pulumi-eks creates its add-ons with the cluster). Without
    this one, CoreDNS would stay the self-managed deployment EKS installed with the cluster, at
    that version for good. Like the driver, it comes after the nodes; its build is chosen the
    same way (build_plan)."""
    return aws.eks.Addon(
        f"{name}-coredns",
        cluster_name=name,
        addon_name=COREDNS_ADDON,
        addon_version=addon_build(ADDON_BUILDS[1], builds[COREDNS_ADDON], control_plane_version, parent),
        # Takes over the self-managed deployment (as pulumi-eks does for kube-proxy and
        # vpc-cni); later, keeps what was changed in the cluster, as the driver does.
        resolve_conflicts_on_create="OVERWRITE",
        resolve_conflicts_on_update="PRESERVE",
        # Removing the add-on (a `pulumi destroy` before the cluster goes) must not take
        # cluster DNS away from pods still running.
        preserve=True,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[cluster, *nodes]),
    )


def ebs_csi_driver_policy(account: AwsAccount, cluster_name: str) -> str:
    """What the EBS CSI controller may do in EC2: AWS's AmazonEBSCSIDriverPolicy, limited to
    this cluster's volumes, snapshots and nodes in this region.

    A volume or snapshot is this cluster's when it carries both the driver's marker
    (`ebs.csi.aws.com/cluster=true`, on everything any EBS CSI driver creates) and ours
    (`redis-eks/cluster=<cluster name>`, which the StorageClass has the driver add). The
    driver may create a volume or a snapshot only with both tags in the request, tag only at
    creation (so it cannot mark another cluster's volume as its own), and attach or detach
    only to instances that EKS tagged as this cluster's nodes. Shaped on AWS's own
    AmazonEBSCSIDriverEKSClusterScopedPolicy, with a tag of ours in place of the
    `ebs.csi.aws.com/cluster-name` tag, which the add-on sets only when started with
    `--k8s-tag-cluster-id`.

    Left out, as this stack uses none of them: copying volumes (a PVC cloned from a PVC),
    changing tags after creation (a VolumeAttributesClass), fast snapshot restore and
    snapshot locks. Snapshots need a VolumeSnapshotClass with
    `tagSpecification_1: redis-eks/cluster=<cluster name>`; the stack ships none.
    """
    arn = f"arn:{account.partition}:ec2:{account.region}"
    volumes = f"{arn}:{account.account_id}:volume/*"
    instances = f"{arn}:{account.account_id}:instance/*"
    # Snapshot ARNs have no account field (arn:aws:ec2:<region>::snapshot/snap-...).
    snapshots = f"{arn}:*:snapshot/*"
    requested_ours = {
        "StringEquals": {
            f"aws:RequestTag/{EBS_CSI_MANAGED_TAG_KEY}": "true",
            f"aws:RequestTag/{CLUSTER_TAG_KEY}": cluster_name,
        }
    }
    ours = {
        "StringEquals": {
            f"ec2:ResourceTag/{EBS_CSI_MANAGED_TAG_KEY}": "true",
            f"ec2:ResourceTag/{CLUSTER_TAG_KEY}": cluster_name,
        }
    }

    def allow(sid: str, actions: list[str], resource, condition: Optional[dict] = None) -> dict:
        statement = {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resource}
        if condition:
            statement["Condition"] = condition
        return statement

    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                # EC2's Describe actions take no resource and no tag condition: "*" or nothing.
                allow(
                    "Describe",
                    [
                        "ec2:DescribeAvailabilityZones",
                        "ec2:DescribeInstances",
                        "ec2:DescribeInstanceTypes",
                        "ec2:DescribeSnapshots",
                        "ec2:DescribeTags",
                        "ec2:DescribeVolumes",
                        "ec2:DescribeVolumesModifications",
                        "ec2:DescribeVolumeStatus",
                    ],
                    "*",
                ),
                # A new volume has no tags to test yet: the request's tags are tested instead.
                allow("CreateVolumesTaggedAsOurs", ["ec2:CreateVolume"], volumes, requested_ours),
                # Creating a volume from a snapshot authorises the snapshot too: ours only.
                allow("CreateVolumesFromOurSnapshots", ["ec2:CreateVolume"], snapshots, ours),
                allow(
                    "ChangeOurVolumes",
                    ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:ModifyVolume", "ec2:DeleteVolume"],
                    volumes,
                    ours,
                ),
                # Attaching and detaching authorise the instance as well as the volume.
                allow(
                    "AttachToOurNodesOnly",
                    ["ec2:AttachVolume", "ec2:DetachVolume"],
                    instances,
                    {"StringEquals": {f"ec2:ResourceTag/{EKS_NODE_CLUSTER_TAG_KEY}": cluster_name}},
                ),
                allow("SnapshotOurVolumes", ["ec2:CreateSnapshot"], volumes, ours),
                allow("CreateSnapshotsTaggedAsOurs", ["ec2:CreateSnapshot"], snapshots, requested_ours),
                # Not the DLM backups, though they carry both tags (copied from the volume): they
                # must outlive whatever could go wrong with the driver they back up.
                allow(
                    "DeleteOurSnapshotsButNotTheBackups",
                    ["ec2:DeleteSnapshot"],
                    snapshots,
                    {**ours, "Null": {f"ec2:ResourceTag/{DLM_POLICY_ID_TAG}": "true"}},
                ),
                # Tags go on in the same call that creates a volume or snapshot (the tags
                # tested above); a later CreateTags could make another cluster's volume ours.
                allow(
                    "TagOnlyWhenCreating",
                    ["ec2:CreateTags"],
                    [volumes, snapshots],
                    {"StringEquals": {"ec2:CreateAction": ["CreateVolume", "CreateSnapshot"]}},
                ),
            ],
        }
    )


def irsa_trust_policy(oidc_provider_arn: str, oidc_provider_url: str, service_account: str) -> str:
    """A role that only the given Kubernetes service account can assume, through the cluster's OIDC provider."""
    issuer = oidc_provider_url.removeprefix("https://")
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Federated": oidc_provider_arn},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": {
                        "StringEquals": {
                            f"{issuer}:sub": service_account,
                            f"{issuer}:aud": "sts.amazonaws.com",
                        }
                    },
                }
            ],
        }
    )


def ebs_volume_key_policy(key_arn: str) -> str:
    """What the CSI controller needs of the volumes' KMS key, and nothing of any other key."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"],
                    "Resource": key_arn,
                    "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}},
                },
                {
                    "Effect": "Allow",
                    "Action": [
                        "kms:Encrypt",
                        "kms:Decrypt",
                        "kms:ReEncrypt*",
                        "kms:GenerateDataKey*",
                        "kms:DescribeKey",
                    ],
                    "Resource": key_arn,
                },
            ],
        }
    )
