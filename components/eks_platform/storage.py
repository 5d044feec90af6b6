"""Where Redis keeps its data: the volumes' KMS key and the `data` StorageClass (encrypted gp3,
Retain, tagged as this cluster's)."""

from __future__ import annotations

import json
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from components.eks_platform.aws_account import AwsAccount
from components.eks_platform.kms_keys import (
    KMS_GRANT_ACTIONS,
    KMS_USE_ACTIONS,
    account_use_through,
    key_administration,
    kms_key,
)
from components.stack_settings import EBS_PROVISIONER, StackSettings

STORAGE_CLASS_NAME = "data"
# The tag that marks a volume (or snapshot) as this cluster's: the StorageClass has the EBS CSI
# driver put it on every volume it creates, and the driver's role may change only volumes that
# carry it, with the cluster's name as its value. The driver's own marker (below) is the same
# on every cluster's volumes in the account, so it cannot tell one cluster's from another's.
CLUSTER_TAG_KEY = "redis-eks/cluster"
EBS_CSI_MANAGED_TAG_KEY = "ebs.csi.aws.com/cluster"


def volume_key(
    name: str,
    account: pulumi.Output[AwsAccount],
    ebs_csi_role_arn: pulumi.Input[str],
    parent: pulumi.Resource,
    guard: pulumi.Resource,
) -> pulumi.Output[str]:
    """The key the stack creates for the volumes (unless `storageKmsKeyArn` names one), its ARN.

    The key policy names the driver's role by its ARN, so the key comes after the role. That
    makes no cycle: the role depends on the cluster (its OIDC provider) only, and what depends
    on the key (the role's KMS policy, the StorageClass) is separate from the role. A role named
    in advance (an ARN built from a fixed name) would let the key go first, but KMS refuses a
    policy naming a role that does not exist yet (the AWS provider retries while a new role
    becomes visible to KMS), so the order would be needed anyway. The volumes outlive
    `pulumi destroy` (reclaim policy Retain); their key must too, or they could never be read
    again."""
    return kms_key(
        f"{name}-volumes-key",
        f"Encryption of the Redis EBS volumes of EKS cluster {name}",
        pulumi.Output.all(account, ebs_csi_role_arn).apply(lambda values: volume_key_policy(*values)),
        pulumi.ResourceOptions(parent=parent, retain_on_delete=True, depends_on=[guard]),
    ).arn


def volume_key_policy(account: AwsAccount, ebs_csi_role_arn: str) -> str:
    """The key policy of the volumes key: the account, the EBS CSI driver's role, and EC2.

    The driver's role encrypts new volumes and lets EBS hold grants (to attach a volume to an
    instance later); the role's own IAM policy (ebs_volume_key_policy) says the same from
    the role's side. The account's principals may use it through EC2, e.g. an operator
    restoring a retained volume or its snapshot. (The administration statement lets IAM
    grant more; the statements here name the uses the stack expects.) DLM's role
    (backups) is one it lets IAM grant to: the role's own policy allows it the key
    through EC2 only, so the key need not wait for that role."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                key_administration(account),
                {
                    "Sid": "EbsCsiDriverUsesTheKey",
                    "Effect": "Allow",
                    "Principal": {"AWS": ebs_csi_role_arn},
                    "Action": list(KMS_USE_ACTIONS),
                    "Resource": "*",
                },
                {
                    "Sid": "EbsCsiDriverGrantsToEbsOnly",
                    "Effect": "Allow",
                    "Principal": {"AWS": ebs_csi_role_arn},
                    "Action": list(KMS_GRANT_ACTIONS),
                    "Resource": "*",
                    "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}},
                },
                account_use_through(account, "ec2", "AccountUsesTheKeyThroughEc2Only"),
            ],
        }
    )


def storage_class(
    resource_name: str,
    settings: StackSettings,
    volume_key_arn: Optional[pulumi.Input[str]],
    cluster_tag: Optional[str],
    provider: pulumi.ProviderResource,
    depends_on: list[pulumi.Resource],
    parent: pulumi.Resource,
) -> k8s.storage.v1.StorageClass:
    return k8s.storage.v1.StorageClass(
        f"{resource_name}-storage-class",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=STORAGE_CLASS_NAME,
            annotations={"storageclass.kubernetes.io/is-default-class": "false"},
        ),
        provisioner=settings.storage_provisioner,
        parameters=storage_parameters(settings, volume_key_arn, cluster_tag),
        # Redis data must outlive the claim and a `pulumi destroy`: volumes are removed
        # on purpose only (docs/operations.md, "Deleting data").
        reclaim_policy="Retain",
        volume_binding_mode="WaitForFirstConsumer",
        allow_volume_expansion=True,
        opts=pulumi.ResourceOptions(parent=parent, provider=provider, depends_on=depends_on),
    )


def storage_parameters(
    settings: StackSettings, volume_key_arn: Optional[pulumi.Input[str]], cluster_tag: Optional[str]
) -> Optional[dict[str, pulumi.Input[str]]]:
    if settings.storage_provisioner != EBS_PROVISIONER:
        return None
    parameters: dict[str, pulumi.Input[str]] = {
        "type": "gp3",
        "encrypted": "true",
        "csi.storage.k8s.io/fstype": "ext4",
        "iops": str(settings.storage_iops),
        "throughput": str(settings.storage_throughput),
    }
    if volume_key_arn is not None:
        parameters["kmsKeyId"] = volume_key_arn
    elif settings.storage_kms_key_arn:
        parameters["kmsKeyId"] = settings.storage_kms_key_arn
    if cluster_tag is not None:
        # The tag that the driver's role requires on every volume it creates or changes
        # (ebs_csi_driver_policy). Kubernetes does not let a StorageClass's parameters
        # change: a new value here replaces the StorageClass (its bound volumes keep working).
        parameters["tagSpecification_1"] = f"{CLUSTER_TAG_KEY}={cluster_tag}"
    return parameters
