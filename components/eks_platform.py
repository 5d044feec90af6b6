"""The platform Redis runs on: an EKS cluster (or an existing cluster) and the `data` StorageClass.

Every Kubernetes object of the program goes through `EksPlatform.provider`, so nothing ever
lands on whatever cluster the operator's local kubeconfig happens to point at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_awsx as awsx
import pulumi_eks as eks
import pulumi_kubernetes as k8s

from components.snapshot_backups import DLM_POLICY_ID_TAG, SnapshotBackups, SnapshotBackupsArgs
from components.stack_settings import CONTROL_PLANE_LOG_TYPES, EBS_PROVISIONER, StackSettings

STORAGE_CLASS_NAME = "data"
EBS_CSI_ADDON = "aws-ebs-csi-driver"
COREDNS_ADDON = "coredns"
# The controller's service account as the add-on installs it; the IAM role trusts only it.
EBS_CSI_SERVICE_ACCOUNT = "system:serviceaccount:kube-system:ebs-csi-controller-sa"
VPC_CIDR = "10.0.0.0/16"
# What `clusterAdminArns` are given: AWS's cluster-admin access policy, over the whole cluster.
CLUSTER_ADMIN_POLICY = "AmazonEKSClusterAdminPolicy"
# The node group's launch template: IMDSv2 with a hop limit of 1, so that no pod other than
# host-network system pods can take the node role's credentials (docs/design.md, "Design
# choices", explains why not 2 although the EBS CSI node plugin asks for it).
IMDS_HOP_LIMIT = 1
# The tag that marks a volume (or snapshot) as this cluster's: the StorageClass has the EBS CSI
# driver put it on every volume it creates, and the driver's role may change only volumes that
# carry it, with the cluster's name as its value. The driver's own marker (below) is the same
# on every cluster's volumes in the account, so it cannot tell one cluster's from another's.
CLUSTER_TAG_KEY = "redis-eks/cluster"
EBS_CSI_MANAGED_TAG_KEY = "ebs.csi.aws.com/cluster"
# EKS tags the instances of a managed node group with the cluster's name under this key.
EKS_NODE_CLUSTER_TAG_KEY = "eks:cluster-name"
# Using a KMS key for data keys, as EBS does on behalf of whoever creates or restores a volume.
KMS_USE_ACTIONS = ("kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey")
# Grants on the key, which EBS needs to attach a volume to an instance long after its creation.
KMS_GRANT_ACTIONS = ("kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant")


@dataclass(frozen=True)
class AwsAccount:
    """The account and region the stack deploys into, as key policies and IAM policies name them."""

    partition: str
    account_id: str
    region: str
    # "amazonaws.com", or "amazonaws.com.cn" in the China partition: the services' endpoints.
    dns_suffix: str

    @property
    def root_arn(self) -> str:
        """The account itself as a principal: in a key policy, it lets the account's IAM policies
        grant access to the key (and nothing to any other account)."""
        return f"arn:{self.partition}:iam::{self.account_id}:root"

    def service_endpoint(self, service: str) -> str:
        """What `kms:ViaService` holds when `service` calls KMS on a caller's behalf in this region."""
        return f"{service}.{self.region}.{self.dns_suffix}"


@dataclass(frozen=True)
class EksPlatformArgs:
    settings: StackSettings
    # Prefix of every cloud name this stack creates, e.g. "redis-eks-dev".
    name: str


class EksPlatform(pulumi.ComponentResource):
    """EKS (or an existing cluster), the Kubernetes provider and the StorageClass `data`; on EKS,
    the scheduled snapshots of the data volumes (SnapshotBackups) unless `backupSchedule` is off."""

    provider: k8s.Provider
    cluster_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    storage_class_name: pulumi.Output[str]
    # The DLM policy that snapshots the data volumes (platform=eks with a backupSchedule),
    # or None.
    backup_policy_id: Optional[pulumi.Output[str]]
    backup_policy_arn: Optional[pulumi.Output[str]]

    def __init__(self, resource_name: str, args: EksPlatformArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("redis-eks:index:EksPlatform", resource_name, None, opts)
        settings = args.settings
        child = pulumi.ResourceOptions(parent=self)
        self.backup_policy_id = None
        self.backup_policy_arn = None

        if settings.platform == "eks":
            cluster_name, kubeconfig, storage_class_depends_on, volume_key_arn, cluster_admins = self._build_eks(
                args.name, settings, child
            )
        else:
            cluster_name = pulumi.Output.from_input("existing")
            kubeconfig = pulumi.Output.secret(settings.kubeconfig)
            storage_class_depends_on = []
            volume_key_arn = None
            cluster_admins = []
        # Volumes of a cluster built here carry its tag, without which its EBS CSI driver may
        # not touch them; a cluster made elsewhere has its own driver and IAM.
        cluster_tag = args.name if settings.platform == "eks" else None

        self.kubeconfig = pulumi.Output.secret(kubeconfig)
        self.cluster_name = cluster_name
        self.provider = k8s.Provider(
            f"{resource_name}-k8s",
            k8s.ProviderArgs(
                kubeconfig=self.kubeconfig,
                # Update the ConfigMap and Secret in place: replacing them (delete, then
                # create, as their names are fixed) leaves a window where a restarting pod
                # cannot mount them.
                enable_config_map_mutable=True,
                enable_secret_mutable=True,
            ),
            # Whoever runs `pulumi up` while adding itself to clusterAdminArns reaches
            # Kubernetes only once its access is in place; on destroy, the access goes last.
            opts=pulumi.ResourceOptions(parent=self, depends_on=cluster_admins),
        )
        storage_class = k8s.storage.v1.StorageClass(
            f"{resource_name}-storage-class",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=STORAGE_CLASS_NAME,
                annotations={"storageclass.kubernetes.io/is-default-class": "false"},
            ),
            provisioner=settings.storage_provisioner,
            parameters=_storage_parameters(settings, volume_key_arn, cluster_tag),
            # Redis data must outlive the claim and a `pulumi destroy`: volumes are removed
            # on purpose only (docs/operations.md, "Deleting data").
            reclaim_policy="Retain",
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=storage_class_depends_on),
        )
        self.storage_class_name = storage_class.metadata.name
        self.register_outputs(
            {
                "cluster_name": self.cluster_name,
                "kubeconfig": self.kubeconfig,
                "storage_class_name": self.storage_class_name,
                "backup_policy_id": self.backup_policy_id,
                "backup_policy_arn": self.backup_policy_arn,
            }
        )

    def _build_eks(self, name: str, settings: StackSettings, child: pulumi.ResourceOptions):
        invoke = pulumi.InvokeOutputOptions(parent=self)
        aws_partition = aws.get_partition_output(opts=invoke)
        partition = aws_partition.partition
        account = pulumi.Output.all(
            aws_partition.partition,
            aws.get_caller_identity_output(opts=invoke).account_id,
            aws.get_region_output(opts=invoke).region,
            aws_partition.dns_suffix,
        ).apply(lambda values: AwsAccount(*values))

        if settings.vpc_id:
            vpc_id: pulumi.Input[str] = settings.vpc_id
            private_subnet_ids: pulumi.Input[list] = list(settings.private_subnet_ids)
            public_subnet_ids: pulumi.Input[list] = []
        else:
            vpc = awsx.ec2.Vpc(
                f"{name}-vpc",
                awsx.ec2.VpcArgs(
                    cidr_block=VPC_CIDR,
                    number_of_availability_zones=settings.availability_zone_count,
                    nat_gateways=awsx.ec2.NatGatewayConfigurationArgs(
                        strategy=(
                            awsx.ec2.NatGatewayStrategy.SINGLE
                            if settings.nat_gateways == "single"
                            else awsx.ec2.NatGatewayStrategy.ONE_PER_AZ
                        )
                    ),
                    enable_dns_hostnames=True,
                    tags={"Name": f"{name}-vpc"},
                ),
                opts=child,
            )
            vpc_id = vpc.vpc_id
            private_subnet_ids = vpc.private_subnet_ids
            public_subnet_ids = vpc.public_subnet_ids

        # EKS takes a grant on this key with the permissions of whoever creates the cluster,
        # so pulumi-eks's own cluster role needs no KMS policy of ours, and the key policy need
        # not (and could not: that role is made inside eks.Cluster, which needs this key first)
        # name it.
        secrets_key = _kms_key(
            f"{name}-secrets-key",
            f"Envelope encryption of Kubernetes secrets in EKS cluster {name}",
            account.apply(secrets_key_policy),
            child,
        )
        cluster = eks.Cluster(
            f"{name}-eks",
            eks.ClusterArgs(
                name=name,
                version=settings.cluster_version,
                vpc_id=vpc_id,
                private_subnet_ids=private_subnet_ids,
                public_subnet_ids=public_subnet_ids,
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
        # The version the control plane runs, as EKS reports it once the cluster is created or
        # its upgrade is done. A new `clusterVersion` upgrades the control plane first (pulumi-eks
        # then updates its kube-proxy and vpc-cni add-ons to builds for that version); the
        # node group and the add-ons below take their version from this output, so they start
        # only after the control plane has finished, and never run ahead of it.
        control_plane_version = cluster.eks_cluster.apply(_reported_version)

        node_role = aws.iam.Role(
            f"{name}-node-role",
            assume_role_policy=_service_trust_policy("ec2.amazonaws.com"),
            opts=child,
        )
        # The nodes need these to join, pull images and run the VPC CNI: the node group waits
        # for them on create and goes before them on destroy (its nodes and ENIs included).
        node_policies = [
            aws.iam.RolePolicyAttachment(
                f"{name}-node-{policy}",
                role=node_role.name,
                policy_arn=pulumi.Output.concat("arn:", partition, ":iam::aws:policy/", policy),
                opts=child,
            )
            for policy in ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")
        ]
        launch_template = aws.ec2.LaunchTemplate(
            f"{name}-nodes",
            # Hop limit 1 keeps pods (other than host-network system pods) away from the node
            # role's credentials.
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                http_put_response_hop_limit=IMDS_HOP_LIMIT,
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    device_name="/dev/xvda",
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=40,
                        volume_type="gp3",
                        encrypted="true",
                        delete_on_termination="true",
                    ),
                )
            ],
            update_default_version=True,
            opts=child,
        )
        node_group = aws.eks.NodeGroup(
            f"{name}-node-group",
            cluster_name=name,
            node_role_arn=node_role.arn,
            subnet_ids=private_subnet_ids,
            instance_types=[settings.node_instance_type],
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=settings.node_min_size,
                desired_size=settings.node_desired_size,
                max_size=settings.node_max_size,
            ),
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=launch_template.id,
                version=launch_template.latest_version.apply(str),
            ),
            # Without it a control-plane upgrade leaves the nodes on the old kubelet; with it the
            # nodes follow, on the AMI of the new version (the launch template names none).
            version=control_plane_version,
            # One node at a time, so the PodDisruptionBudget and the preStop handover keep
            # writes going through an AMI or version upgrade.
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster, *node_policies]),
        )

        ebs_csi_role = aws.iam.Role(
            f"{name}-ebs-csi-role",
            assume_role_policy=pulumi.Output.all(cluster.oidc_provider_arn, cluster.oidc_provider_url).apply(
                lambda values: irsa_trust_policy(values[0], values[1], EBS_CSI_SERVICE_ACCOUNT)
            ),
            opts=child,
        )
        # In place of AWS's AmazonEBSCSIDriverPolicy, which lets the driver attach, detach,
        # resize and snapshot any volume of the account: the same work, on this cluster's
        # volumes and nodes only (ebs_csi_driver_policy).
        ebs_csi_policy = aws.iam.RolePolicy(
            f"{name}-ebs-csi-ec2",
            role=ebs_csi_role.id,
            policy=account.apply(lambda where: ebs_csi_driver_policy(where, name)),
            opts=child,
        )

        volume_key_arn: pulumi.Input[str]
        if settings.storage_kms_key_arn:
            volume_key_arn = settings.storage_kms_key_arn
        else:
            # The key policy names the driver's role by its ARN, so the key comes after the
            # role. That makes no cycle: the role depends on the cluster (its OIDC provider)
            # only, and what depends on the key (the role's KMS policy, the StorageClass) is
            # separate from the role. A role named in advance (an ARN built from a fixed name)
            # would let the key go first, but KMS refuses a policy naming a role that does not
            # exist yet (the AWS provider retries while a new role becomes visible to KMS), so
            # the order would be needed anyway.
            # The volumes outlive `pulumi destroy` (reclaim policy Retain); their key must too,
            # or they could never be read again.
            volume_key_arn = _kms_key(
                f"{name}-volumes-key",
                f"Encryption of the Redis EBS volumes of EKS cluster {name}",
                pulumi.Output.all(account, ebs_csi_role.arn).apply(lambda values: volume_key_policy(*values)),
                pulumi.ResourceOptions(parent=self, retain_on_delete=True),
            ).arn
        ebs_csi_kms = aws.iam.RolePolicy(
            f"{name}-ebs-csi-kms",
            role=ebs_csi_role.id,
            policy=pulumi.Output.from_input(volume_key_arn).apply(ebs_volume_key_policy),
            opts=child,
        )
        addon = aws.eks.Addon(
            f"{name}-ebs-csi-driver",
            cluster_name=name,
            addon_name=EBS_CSI_ADDON,
            # A build for the cluster's version (stack_settings.EBS_CSI_DRIVER_VERSIONS), so a
            # new clusterVersion updates the driver too: after the nodes, as it depends on them.
            addon_version=settings.ebs_csi_driver_version,
            service_account_role_arn=ebs_csi_role.arn,
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="PRESERVE",
            # The add-on only turns ACTIVE once its pods are scheduled: it needs the nodes. Its
            # controller creates and attaches volumes with its role's policies, so those are in
            # place before it starts and are removed only after it is gone.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster, node_group, ebs_csi_policy, ebs_csi_kms]),
        )
        # pulumi-eks makes CoreDNS an EKS add-on only on a cluster with its default node group
        # or Fargate (CoreDNS needs nodes, and pulumi-eks creates its add-ons with the
        # cluster). Without this one, CoreDNS would stay the self-managed deployment EKS
        # installed with the cluster, at that version for good. Like the driver, it comes after
        # the nodes; its build is AWS's default for the version the control plane reports.
        coredns = aws.eks.Addon(
            f"{name}-coredns",
            cluster_name=name,
            addon_name=COREDNS_ADDON,
            addon_version=aws.eks.get_addon_version_output(
                addon_name=COREDNS_ADDON, kubernetes_version=control_plane_version, most_recent=False, opts=invoke
            ).version,
            # Takes over the self-managed deployment (as pulumi-eks does for kube-proxy and
            # vpc-cni); later, keeps what was changed in the cluster, as the driver does.
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="PRESERVE",
            # Removing the add-on (a `pulumi destroy` before the cluster goes) must not take
            # cluster DNS away from pods still running.
            preserve=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster, node_group]),
        )
        if settings.backup_schedule is not None:
            self._snapshot_backups(name, settings, account, volume_key_arn)
        cluster_admins = self._cluster_admins(name, settings, partition, cluster)
        return pulumi.Output.from_input(name), cluster.kubeconfig_json, [addon, coredns], volume_key_arn, cluster_admins

    def _snapshot_backups(
        self,
        name: str,
        settings: StackSettings,
        account: pulumi.Output[AwsAccount],
        volume_key_arn: pulumi.Input[str],
    ) -> None:
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
        backups = SnapshotBackups(
            f"{name}-backups",
            SnapshotBackupsArgs(
                # The very tag `_storage_parameters` has the driver put on every volume.
                target_tag=(CLUSTER_TAG_KEY, name),
                cluster_name=name,
                stack=pulumi.get_stack(),
                schedule=settings.backup_schedule,
                retention_count=settings.backup_retention_count,
                volume_key_arn=volume_key_arn,
                account=account,
                copy_region=settings.backup_copy_region,
                copy_retention_days=settings.backup_copy_retention_days,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.backup_policy_id = backups.policy_id
        self.backup_policy_arn = backups.policy_arn

    def _cluster_admins(
        self, name: str, settings: StackSettings, partition: pulumi.Output[str], cluster: eks.Cluster
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
                opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster]),
            )
            admins.append(
                aws.eks.AccessPolicyAssociation(
                    f"{name}-admin-{principal}-policy",
                    cluster_name=name,
                    principal_arn=entry.principal_arn,
                    policy_arn=policy_arn,
                    access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[cluster, entry]),
                )
            )
        return admins


def _reported_version(eks_cluster: Optional[aws.eks.Cluster]) -> Optional[pulumi.Output[str]]:
    # pulumi-eks always returns its aws.eks.Cluster; a run under mocks may have none to give
    # (tools/render_manifests.py answers no `eksCluster`), and then there is no version to follow.
    return None if eks_cluster is None else eks_cluster.version


def _kms_key(name: str, description: str, policy: pulumi.Input[str], opts: pulumi.ResourceOptions) -> aws.kms.Key:
    # A month to notice and cancel a deletion: losing the key loses the data it encrypts.
    return aws.kms.Key(
        name,
        description=description,
        enable_key_rotation=True,
        deletion_window_in_days=30,
        policy=policy,
        opts=opts,
    )


def _key_administration(account: AwsAccount) -> dict:
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


def secrets_key_policy(account: AwsAccount) -> str:
    """The key policy of the Kubernetes secrets key: the account, and use through EKS.

    The cluster role that encrypts and decrypts never appears: EKS has the cluster's creator
    create a grant for it, through EKS, when the cluster is created. (The administration
    statement lets IAM grant more; this one names the use the stack expects.)"""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                _key_administration(account),
                _account_use_through(account, "eks", "AccountUsesTheKeyThroughEksOnly"),
            ],
        }
    )


def _account_use_through(account: AwsAccount, service: str, sid: str) -> dict:
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


def volume_key_policy(account: AwsAccount, ebs_csi_role_arn: str) -> str:
    """The key policy of the volumes key: the account, the EBS CSI driver's role, and EC2.

    The driver's role encrypts new volumes and lets EBS hold grants (to attach a volume to an
    instance later); the role's own IAM policy (ebs_volume_key_policy) says the same from
    the role's side. The account's principals may use it through EC2, e.g. an operator
    restoring a retained volume or its snapshot. (The administration statement lets IAM
    grant more; the statements here name the uses the stack expects.) DLM's role
    (snapshot_backups) is one it lets IAM grant to: the role's own policy allows it the key
    through EC2 only, so the key need not wait for that role."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                _key_administration(account),
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
                _account_use_through(account, "ec2", "AccountUsesTheKeyThroughEc2Only"),
            ],
        }
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


def _service_trust_policy(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
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


def _storage_parameters(
    settings: StackSettings, volume_key_arn: Optional[pulumi.Input[str]], cluster_tag: Optional[str]
):
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
