"""Scheduled EBS snapshots of the Redis data volumes: an AWS Data Lifecycle Manager policy and the role it runs as.

DLM finds the volumes by the tag the `data` StorageClass puts on each (storage), snapshots
each on the schedule, keeps the newest `retention_count`, and optionally copies each snapshot
to another region, encrypted, where it is kept for `copy_retention_days`.

The role is its own, not AWS's AWSDataLifecycleManagerServiceRole (which lets DLM snapshot,
copy, share and delete any volume and snapshot of the account): what DLM does for this policy,
on this cluster's volumes and on the snapshots of this policy only (`dlm_role_policy`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws

from components.eks_platform.aws_account import AwsAccount
from components.stack_settings import StackSettings

DLM_SERVICE = "dlm.amazonaws.com"
# DLM tags every snapshot it creates with the ID of the policy that created it (and the
# schedule's name, under aws:dlm:lifecycle-schedule-name). No caller can set an `aws:` tag
# itself, so this tag tells the policy's snapshots from any other.
DLM_POLICY_ID_TAG = "aws:dlm:lifecycle-policy-id"
# Snapshots made under a schedule name that later changes are no longer the policy's: it
# never deletes them. The name stays.
SCHEDULE_NAME = "redis-data"
# Tags DLM adds to each snapshot besides the volume's own (copy_tags), under keys the
# volumes do not carry, so that no snapshot ever gets one key twice.
BACKUP_OF_TAG_KEY = "redis-eks/backup-of"
STACK_TAG_KEY = "redis-eks/stack"
# What DLM (through EBS) does with the volumes' KMS key: read a snapshot of an encrypted
# volume, re-encrypt it for a copy, and let EBS hold grants on it.
KMS_SNAPSHOT_ACTIONS = (
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:Encrypt",
    "kms:GenerateDataKey*",
    "kms:ReEncrypt*",
)


@dataclass(frozen=True)
class SnapshotBackupsArgs:
    # (key, value) of the tag on every data volume of the cluster: what the policy snapshots.
    target_tag: tuple[str, str]
    cluster_name: str
    stack: str
    # A DLM cron expression, e.g. "cron(0 3 * * ? *)".
    schedule: str
    retention_count: int
    # The key the volumes are encrypted with (a customer-managed key). The role's policy
    # allows its use; the key's policy must let IAM policies grant it (the stack's own key
    # does; a `storageKmsKeyArn` key needs the same, or this role named in it).
    volume_key_arn: pulumi.Input[str]
    account: pulumi.Input[AwsAccount]
    copy_region: Optional[str] = None
    copy_retention_days: int = 7


class SnapshotBackups(pulumi.ComponentResource):
    """A DLM policy snapshotting the cluster's data volumes, and the role it runs as."""

    role_arn: pulumi.Output[str]
    policy_id: pulumi.Output[str]
    policy_arn: pulumi.Output[str]

    def __init__(self, resource_name: str, args: SnapshotBackupsArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("redis-eks:index:SnapshotBackups", resource_name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        account = pulumi.Output.from_input(args.account)

        role = aws.iam.Role(
            f"{resource_name}-dlm-role",
            description=f"Runs the DLM policy snapshotting the Redis volumes of EKS cluster {args.cluster_name}",
            assume_role_policy=account.apply(dlm_trust_policy),
            opts=child,
        )
        tag_key, tag_value = args.target_tag
        tags = {BACKUP_OF_TAG_KEY: args.cluster_name, STACK_TAG_KEY: args.stack}
        copy_rules = None
        if args.copy_region:
            copy_rules = [
                aws.dlm.LifecyclePolicyPolicyDetailsScheduleCrossRegionCopyRuleArgs(
                    # `target`, not `target_region`, which is for AMI policies.
                    target=args.copy_region,
                    # A copy of an encrypted snapshot must be encrypted. No `cmk_arn`: the copy
                    # takes the target region's default EBS key (aws/ebs, unless the account
                    # set another), as a key of this region cannot serve there.
                    encrypted=True,
                    copy_tags=True,
                    retain_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleCrossRegionCopyRuleRetainRuleArgs(
                        interval=args.copy_retention_days, interval_unit="DAYS"
                    ),
                )
            ]
        policy = aws.dlm.LifecyclePolicy(
            f"{resource_name}-policy",
            # DLM accepts letters, digits, spaces, '-' and '_' only.
            description=f"Snapshots of the Redis data volumes of EKS cluster {args.cluster_name}",
            execution_role_arn=role.arn,
            state="ENABLED",
            policy_details=aws.dlm.LifecyclePolicyPolicyDetailsArgs(
                policy_type="EBS_SNAPSHOT_MANAGEMENT",
                # One snapshot per volume: a Redis node's data is all on its one volume.
                resource_types=["VOLUME"],
                target_tags={tag_key: tag_value},
                schedules=[
                    aws.dlm.LifecyclePolicyPolicyDetailsScheduleArgs(
                        name=SCHEDULE_NAME,
                        create_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleCreateRuleArgs(
                            cron_expression=args.schedule
                        ),
                        retain_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleRetainRuleArgs(
                            count=args.retention_count
                        ),
                        # The volume's tags: the driver's name the claim the volume was made
                        # for (kubernetes.io/created-for/pvc/name, with its default
                        # extraCreateMetadata), what a restore needs once the volume is gone.
                        copy_tags=True,
                        tags_to_add=tags,
                        cross_region_copy_rules=copy_rules,
                    )
                ],
            ),
            tags=tags,
            opts=child,
        )
        # The role may delete only the snapshots of this policy, so its policy names the DLM
        # policy's ID and comes after it. DLM first uses the role at the next scheduled run,
        # long after both exist; on destroy the permissions go first, just before the policy.
        aws.iam.RolePolicy(
            f"{resource_name}-dlm-snapshots",
            role=role.id,
            policy=pulumi.Output.all(account, args.volume_key_arn, policy.id).apply(
                lambda values: dlm_role_policy(
                    values[0],
                    target_tag=args.target_tag,
                    volume_key_arn=values[1],
                    policy_id=values[2],
                    copy_region=args.copy_region,
                )
            ),
            opts=child,
        )

        self.role_arn = role.arn
        self.policy_id = policy.id
        self.policy_arn = policy.arn
        self.register_outputs({"role_arn": self.role_arn, "policy_id": self.policy_id, "policy_arn": self.policy_arn})


def snapshot_backups(
    name: str,
    settings: StackSettings,
    target_tag: tuple[str, str],
    account: pulumi.Output[AwsAccount],
    volume_key_arn: pulumi.Input[str],
    parent: pulumi.Resource,
) -> SnapshotBackups:
    """Scheduled snapshots of every data volume (DLM), by the tag the StorageClass puts on each.

    What a snapshot holds: each volume's snapshot is crash-consistent for its own node, as
    if the node had lost power at that instant. redis.conf sets `appendonly yes` with
    `appendfsync everysec`, so a node restored from its snapshot replays its AOF and has
    every write it acknowledged up to about a second before the snapshot (what the kernel
    had not yet flushed to the volume is lost, the AOF's torn tail included, which Redis
    truncates on load with `aof-load-truncated yes`, its default). The snapshots of one run
    are taken within the same minutes, one per volume, but not at one instant across
    shards: a cluster-wide restore point is "each shard as of its own snapshot". Redis
    Cluster has no cross-shard transaction to tear, but keys written in that window can be
    on one side of it on one shard and the other side on another (a client that wrote A
    then B on two shards may find B restored without A). A replica's volume is snapshotted
    too, at its own instant and as far as its replication had come.
    """
    return SnapshotBackups(
        f"{name}-backups",
        SnapshotBackupsArgs(
            target_tag=target_tag,
            cluster_name=name,
            stack=pulumi.get_stack(),
            schedule=settings.backup_schedule,
            retention_count=settings.backup_retention_count,
            volume_key_arn=volume_key_arn,
            account=account,
            copy_region=settings.backup_copy_region,
            copy_retention_days=settings.backup_copy_retention_days,
        ),
        opts=pulumi.ResourceOptions(parent=parent),
    )


def dlm_trust_policy(account: AwsAccount) -> str:
    """Only DLM may assume the role, as AWS's own AWSDataLifecycleManagerDefaultRole trusts it.

    No aws:SourceAccount/SourceArn condition: AWS's DLM docs show none, and a condition DLM
    does not meet would deny every run without an error anyone sees. The confused deputy
    they guard against needs a lifecycle policy that names this role, and creating one takes
    iam:PassRole on it in this account. (`account` keeps the signature of the other policies.)"""
    del account
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": DLM_SERVICE}, "Action": "sts:AssumeRole"}],
        }
    )


def dlm_role_policy(
    account: AwsAccount,
    *,
    target_tag: tuple[str, str],
    volume_key_arn: str,
    policy_id: str,
    copy_region: Optional[str],
) -> str:
    """What DLM may do for this policy: snapshot this cluster's volumes, tag snapshots only as it
    creates them, delete only this policy's snapshots, and use the volumes' key through EC2.

    Against AWSDataLifecycleManagerServiceRole, left out: fast snapshot restore, sharing
    (ModifySnapshotAttribute), archiving (ModifySnapshotTier), multi-volume snapshots of
    instances (CreateSnapshots, which also needs the instance) and the EventBridge rules of
    cross-account copy policies; this policy uses none of them. CopySnapshot and the target
    region come in only with a copy region.
    """
    tag_key, tag_value = target_tag
    ec2 = f"arn:{account.partition}:ec2"
    volumes = f"{ec2}:{account.region}:{account.account_id}:volume/*"
    # Snapshot ARNs have no account field (arn:aws:ec2:<region>::snapshot/snap-...).
    snapshots = [f"{ec2}:{account.region}::snapshot/*"]
    if copy_region:
        snapshots.append(f"{ec2}:{copy_region}::snapshot/*")
    # EBS calls KMS in this region for a snapshot, and in the copy's region for a copy (where
    # it reads the source with this region's key).
    via_ec2 = [account.service_endpoint("ec2")]
    if copy_region:
        via_ec2.append(f"ec2.{copy_region}.{account.dns_suffix}")
    this_policys = {"StringEquals": {f"ec2:ResourceTag/{DLM_POLICY_ID_TAG}": policy_id}}

    def allow(sid: str, actions: list[str], resource, condition: Optional[dict] = None) -> dict:
        statement = {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resource}
        if condition:
            statement["Condition"] = condition
        return statement

    statements = [
        # EC2's Describe actions take no resource and no tag condition: "*" or nothing.
        # DescribeAvailabilityZones came into AWS's managed policy in 2024; DLM's docs do not
        # say which runs call it, and it reads nothing of the account's data.
        allow("Describe", ["ec2:DescribeVolumes", "ec2:DescribeSnapshots", "ec2:DescribeAvailabilityZones"], "*"),
        allow(
            "SnapshotOurVolumesOnly",
            ["ec2:CreateSnapshot"],
            volumes,
            {"StringEquals": {f"ec2:ResourceTag/{tag_key}": tag_value}},
        ),
        # The new snapshot is a resource of the call too; it has no tags to test yet.
        allow("CreateTheSnapshots", ["ec2:CreateSnapshot"], snapshots[0]),
        # AWS's own role tags snapshots without a condition: whether DLM tags in the call that
        # creates a snapshot (ec2:CreateAction) is not documented, and a tag that fails would
        # fail the run. Snapshots only, never volumes.
        allow("TagSnapshots", ["ec2:CreateTags"], snapshots),
        allow("DeleteThisPolicysSnapshotsOnly", ["ec2:DeleteSnapshot"], snapshots, this_policys),
        allow(
            "UseTheVolumeKeyThroughEc2",
            list(KMS_SNAPSHOT_ACTIONS),
            volume_key_arn,
            {"StringEquals": {"kms:ViaService": via_ec2}},
        ),
        # EBS holds a grant on the key for the snapshot it makes; no grant for anyone else.
        allow(
            "GrantsOnTheVolumeKeyToEbsOnly",
            ["kms:CreateGrant"],
            volume_key_arn,
            {"StringEquals": {"kms:ViaService": via_ec2}, "Bool": {"kms:GrantIsForAWSResource": "true"}},
        ),
    ]
    if copy_region:
        copy_keys = f"arn:{account.partition}:kms:{copy_region}:{account.account_id}:key/*"
        through_ec2_there = {"StringEquals": {"kms:ViaService": f"ec2.{copy_region}.{account.dns_suffix}"}}
        statements += [
            allow("CopyThisPolicysSnapshotsOnly", ["ec2:CopySnapshot"], snapshots[0], this_policys),
            allow("CreateTheCopies", ["ec2:CopySnapshot"], snapshots[1]),
            # The copy's key is the target region's default EBS key: aws/ebs needs nothing
            # here (its key policy admits the account's principals through EC2), a
            # customer-managed default needs this.
            allow("UseTheCopyRegionsKeysThroughEc2", list(KMS_SNAPSHOT_ACTIONS), copy_keys, through_ec2_there),
            allow(
                "GrantsOnTheCopyRegionsKeysToEbsOnly",
                ["kms:CreateGrant"],
                copy_keys,
                {**through_ec2_there, "Bool": {"kms:GrantIsForAWSResource": "true"}},
            ),
        ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})
