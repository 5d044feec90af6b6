"""The platform Redis runs on: an EKS cluster (or an existing cluster) and the `data` StorageClass.

Every Kubernetes object of the program goes through `EksPlatform.provider`, so nothing ever
lands on whatever cluster the operator's local kubeconfig happens to point at.

The component only wires its parts, which live beside it one module per subdomain, as
pulumi-eks lays out its own: `network` (the VPC), `cluster_access` (the control plane, its
secrets key, access entries), `nodes` (the managed node group), `addons` (the EBS CSI driver
and CoreDNS), `storage` (the volumes' key, the StorageClass) and `backups` (DLM snapshots);
`aws_account` and `kms_keys` are what they share. Every resource is a child of this component
under the name it has always had, so the layout changes no URN of a running stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from components.eks_platform import addons, cluster_access, nodes, storage
from components.eks_platform.aws_account import current_account
from components.eks_platform.backups import snapshot_backups
from components.eks_platform.network import network
from components.stack_settings import SettingsError, StackSettings


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
    # The identity EKS made the cluster's admin when it created it (platform=eks; None when
    # not known), and the clusterAdminArns left out for being that identity.
    cluster_creator_arn: Optional[str]
    cluster_admin_arns_left_out: list[str]

    def __init__(self, resource_name: str, args: EksPlatformArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("redis-eks:index:EksPlatform", resource_name, None, opts)
        settings = args.settings
        self.backup_policy_id = None
        self.backup_policy_arn = None
        self.cluster_creator_arn = None
        self.cluster_admin_arns_left_out = []

        if settings.platform == "eks":
            cluster_name, kubeconfig, storage_class_depends_on, volume_key_arn, cluster_admins = self._build_eks(
                args.name, settings
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
        data_class = storage.storage_class(
            resource_name,
            settings,
            volume_key_arn,
            cluster_tag,
            self.provider,
            storage_class_depends_on,
            parent=self,
        )
        self.storage_class_name = data_class.metadata.name
        self.register_outputs(
            {
                "cluster_name": self.cluster_name,
                "kubeconfig": self.kubeconfig,
                "storage_class_name": self.storage_class_name,
                "backup_policy_id": self.backup_policy_id,
                "backup_policy_arn": self.backup_policy_arn,
                "cluster_creator_arn": self.cluster_creator_arn,
                "cluster_admin_arns_left_out": self.cluster_admin_arns_left_out,
            }
        )

    def _build_eks(self, name: str, settings: StackSettings):
        child = pulumi.ResourceOptions(parent=self)
        # What runs already, and what the settings may not do to it: asked of AWS and refused
        # before anything is registered, so the preview stops here, all problems together.
        exists = cluster_access.cluster_exists(name, parent=self)
        groups = nodes.existing_node_groups(name, exists, parent=self)
        problems = addons.pinned_build_problems(settings, parent=self) + nodes.node_group_problems(
            name, settings, groups
        )
        if problems:
            raise SettingsError(problems)
        partition, account = current_account(pulumi.InvokeOutputOptions(parent=self))
        subnets = network(name, settings, child)
        creator = cluster_access.cluster_creator(name, exists, parent=self)
        self.cluster_creator_arn = creator.arn
        self.cluster_admin_arns_left_out = cluster_access.left_out_admins(settings, creator)
        cluster = cluster_access.eks_cluster(name, settings, subnets, account, creator, child)
        control_plane_version = cluster_access.control_plane_version(cluster)
        node_groups = nodes.node_groups(
            name, settings, groups, subnets.private_subnet_ids, cluster, control_plane_version, partition, self
        )
        ebs_csi_role, ebs_csi_ec2 = addons.ebs_csi_role(name, cluster, account, child)
        volume_key_arn: pulumi.Input[str] = settings.storage_kms_key_arn or storage.volume_key(
            name, account, ebs_csi_role.arn, parent=self
        )
        ebs_csi_driver = addons.ebs_csi_driver(
            name, settings, cluster, node_groups, control_plane_version, ebs_csi_role, ebs_csi_ec2, volume_key_arn, self
        )
        coredns = addons.coredns(name, settings, cluster, node_groups, control_plane_version, parent=self)
        if settings.backup_schedule is not None:
            # The very tag `storage_parameters` has the driver put on every volume.
            backups = snapshot_backups(
                name, settings, (storage.CLUSTER_TAG_KEY, name), account, volume_key_arn, parent=self
            )
            self.backup_policy_id = backups.policy_id
            self.backup_policy_arn = backups.policy_arn
        admins = cluster_access.cluster_admins(name, settings, partition, cluster, creator, parent=self)
        return (
            pulumi.Output.from_input(name),
            cluster.kubeconfig_json,
            [ebs_csi_driver, coredns],
            volume_key_arn,
            admins,
        )
