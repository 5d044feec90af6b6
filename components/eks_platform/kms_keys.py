"""The stack's KMS keys (Kubernetes secrets, EBS volumes): how each is made, and the statements
their key policies share."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from components.eks_platform.aws_account import AwsAccount

# Using a KMS key for data keys, as EBS does on behalf of whoever creates or restores a volume.
KMS_USE_ACTIONS = ("kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey")
# Grants on the key, which EBS needs to attach a volume to an instance long after its creation.
KMS_GRANT_ACTIONS = ("kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant")


def kms_key(name: str, description: str, policy: pulumi.Input[str], opts: pulumi.ResourceOptions) -> aws.kms.Key:
    # A month to notice and cancel a deletion: losing the key loses the data it encrypts.
    return aws.kms.Key(
        name,
        description=description,
        enable_key_rotation=True,
        deletion_window_in_days=30,
        policy=policy,
        opts=opts,
    )


def key_administration(account: AwsAccount) -> dict:
    """The account keeps full control of its key, through its IAM policies.

    KMS gives nobody access to a key that its policy does not name, not even the account's
    own administrators; without this statement no IAM policy can reach the key, and once its
    named principals are gone the key (and every volume or secret it encrypts) can only be
    recovered through AWS Support. It names this account and no other; who in the account
    may use the key is then up to IAM."""
    return {
        "Sid": "AccountAdministersTheKey",
        "Effect": "Allow",
        "Principal": {"AWS": account.root_arn},
        "Action": "kms:*",
        "Resource": "*",
    }


def account_use_through(account: AwsAccount, service: str, sid: str) -> dict:
    """This account's principals may use the key, but only through `service` (EKS, EC2)."""
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": account.root_arn},
        "Action": [*KMS_USE_ACTIONS, "kms:CreateGrant"],
        "Resource": "*",
        "Condition": {
            "StringEquals": {
                "kms:ViaService": account.service_endpoint(service),
                "kms:CallerAccount": account.account_id,
            }
        },
    }
