"""The EKS control plane and who may reach it: the secrets key, the cluster (pulumi-eks), and an
access entry per `clusterAdminArns` but the cluster's creator, whose entry EKS makes itself."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Optional

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks

from components.eks_platform.addons import KUBE_PROXY_ADDON, VPC_CNI_ADDON
from components.eks_platform.aws_account import AwsAccount
from components.eks_platform.kms_keys import account_use_through, key_administration, kms_key
from components.eks_platform.network import Network
from components.stack_settings import CONTROL_PLANE_LOG_TYPES, StackSettings

# What `clusterAdminArns` are given: AWS's cluster-admin access policy, over the whole cluster.
CLUSTER_ADMIN_POLICY = "AmazonEKSClusterAdminPolicy"
# The tag on the EKS cluster that names the IAM role or user that created it. EKS gives that
# identity an access entry of its own when it creates the cluster (pulumi-eks sets
# bootstrapClusterCreatorAdminPermissions); a second entry for it fails with
# ResourceInUseException (409). The creator is fixed at creation, whoever runs later updates,
# so it is read back from the cluster on every later run instead of taken from the caller.
CREATOR_TAG_KEY = "redis-eks/cluster-creator"


@dataclass(frozen=True)
class ClusterCreator:
    """Who EKS made a cluster admin when it created the cluster, as this run knows it."""

    # The IAM role or user ARN (an assumed-role session resolved to its role, with its path),
    # or None for a cluster created before the creator was recorded.
    arn: Optional[str]
    # Whether this run creates the cluster (the caller is then its creator).
    creates_cluster: bool


def cluster_exists(name: str, parent: Optional[pulumi.Resource]) -> bool:
    """Whether the stack's EKS cluster exists already (a plain invoke: known at preview)."""
    return name in (aws.eks.get_clusters(opts=pulumi.InvokeOptions(parent=parent)).names or [])


def cluster_creator(name: str, exists: bool, parent: pulumi.Resource) -> ClusterCreator:
    """The identity EKS gives (or gave) the cluster's own admin entry.

    A cluster that exists already says who created it in its CREATOR_TAG_KEY tag (none on a
    cluster created before the tag: then no listed ARN is its creator, or its first update
    would have failed with 409). A cluster this run creates is created by the caller: its STS
    session (`assumed-role/<role>/<session>`) is resolved to the role's ARN, path included,
    by iam:GetRole (aws.iam.get_session_context). Plain invokes, so the answer is known at
    preview and decides which entries the preview shows."""
    invoke = pulumi.InvokeOptions(parent=parent)
    if exists:
        tags = aws.eks.get_cluster(name=name, opts=invoke).tags or {}
        return ClusterCreator(tags.get(CREATOR_TAG_KEY), creates_cluster=False)
    caller = aws.get_caller_identity(opts=invoke).arn
    return ClusterCreator(aws.iam.get_session_context(arn=caller, opts=invoke).issuer_arn, creates_cluster=True)


def same_principal(first: str, second: str) -> bool:
    """Two IAM role or user ARNs name one identity: the same partition, account, kind and name,
    whatever the path (an access entry may be listed with or without it) and the case (IAM
    names are unique regardless of case)."""

    def identity(arn: str) -> tuple[str, ...]:
        parts = arn.split(":", 5)
        if len(parts) < 6:
            return (arn.lower(),)
        kind, _, rest = parts[5].partition("/")
        return (parts[1], parts[4], kind, rest.rsplit("/", 1)[-1].lower())

    return identity(first) == identity(second)


def eks_cluster(
    name: str,
    settings: StackSettings,
    addon_builds: Mapping[str, Optional[str]],
    network: Network,
    account: pulumi.Output[AwsAccount],
    creator: ClusterCreator,
    child: pulumi.ResourceOptions,
) -> eks.Cluster:
    # EKS takes a grant on this key with the permissions of whoever creates the cluster,
    # so pulumi-eks's own cluster role needs no KMS policy of ours, and the key policy need
    # not (and could not: that role is made inside eks.Cluster, which needs this key first)
    # name it.
    secrets_key = kms_key(
        f"{name}-secrets-key",
        f"Envelope encryption of Kubernetes secrets in EKS cluster {name}",
        account.apply(secrets_key_policy),
        child,
    )
    return eks.Cluster(
        f"{name}-eks",
        eks.ClusterArgs(
            name=name,
            version=settings.cluster_version,
            vpc_id=network.vpc_id,
            private_subnet_ids=network.private_subnet_ids,
            public_subnet_ids=network.public_subnet_ids,
            authentication_mode=eks.AuthenticationMode.API,
            skip_default_node_group=True,
            skip_default_security_groups=True,
            create_oidc_provider=True,
            encryption_config_key_arn=secrets_key.arn,
            enabled_cluster_log_types=list(CONTROL_PLANE_LOG_TYPES),
            endpoint_private_access=True,
            endpoint_public_access=settings.endpoint_public_access,
            # The VPC CNI ignores NetworkPolicy objects unless told to enforce them. pulumi-eks
            # installs it and kube-proxy as add-ons; without a build given here, at the newest
            # EKS offers for the cluster's version, asked again on every run
            # (nodejs/eks/cluster/cluster.ts, nodejs/eks/addons/cni-addon.ts). It is given the
            # build that runs or the pinned one (addons.build_plan), so a new build published
            # by AWS does not update them on some unrelated `pulumi up`.
            vpc_cni_options=eks.VpcCniOptionsArgs(
                enable_network_policy=True, addon_version=addon_builds.get(VPC_CNI_ADDON)
            ),
            kube_proxy_addon_options=(
                eks.KubeProxyAddonOptionsArgs(version=addon_builds[KUBE_PROXY_ADDON])
                if addon_builds.get(KUBE_PROXY_ADDON)
                else None
            ),
            # EKS refuses to delete a protected cluster (InvalidRequestException) until a
            # `pulumi up` turns this off again. A destroy reaches the cluster last, after the
            # nodes and every Kubernetes object (docs/operations.md, "Destroying a stack").
            deletion_protection=settings.deletion_protection,
            # Leave standard support only on purpose: extended support costs extra.
            upgrade_policy=aws.eks.ClusterUpgradePolicyArgs(support_type="STANDARD"),
            public_access_cidrs=list(settings.public_access_cidrs) if settings.endpoint_public_access else None,
            tags={"Name": name},
            # Written when the cluster is created and kept: later runs read it back.
            cluster_tags={CREATOR_TAG_KEY: creator.arn} if creator.arn else None,
        ),
        opts=child,
    )


def control_plane_version(cluster: eks.Cluster) -> pulumi.Output[Optional[str]]:
    """The version the control plane runs, as EKS reports it once the cluster is created or its
    upgrade is done. A new `clusterVersion` upgrades the control plane first (pulumi-eks then
    updates its kube-proxy and vpc-cni add-ons to builds for that version); the node group and
    the add-ons take their version from this output, so they start only after the control
    plane has finished, and never run ahead of it."""
    return cluster.eks_cluster.apply(_reported_version)


def _reported_version(eks_cluster: Optional[aws.eks.Cluster]) -> Optional[pulumi.Output[str]]:
    # pulumi-eks always returns its aws.eks.Cluster; a run under mocks may have none to give
    # (tools/render_manifests.py answers no `eksCluster`), and then there is no version to follow.
    return None if eks_cluster is None else eks_cluster.version


def left_out_admins(settings: StackSettings, creator: ClusterCreator) -> list[str]:
    """The `clusterAdminArns` that name the cluster's creator: EKS holds their entry already."""
    if creator.arn is None:
        return []
    return [arn for arn in settings.cluster_admin_arns if same_principal(arn, creator.arn)]


def cluster_admins(
    name: str,
    settings: StackSettings,
    partition: pulumi.Output[str],
    cluster: eks.Cluster,
    creator: ClusterCreator,
    parent: pulumi.Resource,
) -> list[pulumi.Resource]:
    """An access entry with cluster-admin rights per `clusterAdminArns`, but the creator's.

    The identity that creates the cluster is its admin through EKS's own entry; anyone
    else (CI, a colleague) needs one of these to reach Kubernetes at all."""
    admins: list[pulumi.Resource] = []
    policy_arn = pulumi.Output.concat("arn:", partition, ":eks::aws:cluster-access-policy/", CLUSTER_ADMIN_POLICY)
    left_out = left_out_admins(settings, creator)
    for principal_arn in settings.cluster_admin_arns:
        if principal_arn in left_out:
            continue
        # "111122223333:role/ci-deploy": one name per principal, stable while it is listed.
        principal = principal_arn.split(":", 4)[4].replace(":", "-")
        entry = aws.eks.AccessEntry(
            f"{name}-admin-{principal}",
            cluster_name=name,
            principal_arn=principal_arn,
            type="STANDARD",
            opts=pulumi.ResourceOptions(parent=parent, depends_on=[cluster]),
        )
        admins.append(
            aws.eks.AccessPolicyAssociation(
                f"{name}-admin-{principal}-policy",
                cluster_name=name,
                principal_arn=entry.principal_arn,
                policy_arn=policy_arn,
                access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
                opts=pulumi.ResourceOptions(parent=parent, depends_on=[cluster, entry]),
            )
        )
    return admins


def secrets_key_policy(account: AwsAccount) -> str:
    """The key policy of the Kubernetes secrets key: the account, and use through EKS.

    The cluster role that encrypts and decrypts never appears: EKS has the cluster's creator
    create a grant for it, through EKS, when the cluster is created. (The administration
    statement lets IAM grant more; this one names the use the stack expects.)"""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                key_administration(account),
                account_use_through(account, "eks", "AccountUsesTheKeyThroughEksOnly"),
            ],
        }
    )
