"""The EKS control plane and who may reach it: the secrets key, the cluster (pulumi-eks), and an
access entry per `clusterAdminArns`."""

from __future__ import annotations

import json
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks

from components.eks_platform.aws_account import AwsAccount
from components.eks_platform.kms_keys import account_use_through, key_administration, kms_key
from components.eks_platform.network import Network
from components.stack_settings import CONTROL_PLANE_LOG_TYPES, StackSettings

# What `clusterAdminArns` are given: AWS's cluster-admin access policy, over the whole cluster.
CLUSTER_ADMIN_POLICY = "AmazonEKSClusterAdminPolicy"


def eks_cluster(
    name: str,
    settings: StackSettings,
    network: Network,
    account: pulumi.Output[AwsAccount],
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
            # The VPC CNI ignores NetworkPolicy objects unless told to enforce them.
            vpc_cni_options=eks.VpcCniOptionsArgs(enable_network_policy=True),
            # Leave standard support only on purpose: extended support costs extra.
            upgrade_policy=aws.eks.ClusterUpgradePolicyArgs(support_type="STANDARD"),
            public_access_cidrs=list(settings.public_access_cidrs) if settings.endpoint_public_access else None,
            tags={"Name": name},
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


def cluster_admins(
    name: str,
    settings: StackSettings,
    partition: pulumi.Output[str],
    cluster: eks.Cluster,
    parent: pulumi.Resource,
) -> list[pulumi.Resource]:
    """An access entry with cluster-admin rights per `clusterAdminArns`.

    The identity that creates the cluster is its admin through EKS's own entry; anyone
    else (CI, a colleague) needs one of these to reach Kubernetes at all."""
    admins: list[pulumi.Resource] = []
    policy_arn = pulumi.Output.concat("arn:", partition, ":eks::aws:cluster-access-policy/", CLUSTER_ADMIN_POLICY)
    for principal_arn in settings.cluster_admin_arns:
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
