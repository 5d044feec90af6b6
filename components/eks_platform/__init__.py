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

from dataclasses import dataclass, field
from typing import Mapping, Optional

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components.eks_platform import addons, cluster_access, nodes, storage
from components.eks_platform.aws_account import current_account
from components.eks_platform.backups import snapshot_backups
from components.eks_platform.network import network
from components.eks_platform.running_cluster import RunningCluster, read_running_cluster, running_cluster_problems
from components.platform_change_guard import PlatformChangeGuard
from components.stack_settings import EBS_PROVISIONER, SettingsError, StackSettings


@dataclass(frozen=True)
class EksPlatformArgs:
    settings: StackSettings
    # Prefix of every cloud name this stack creates, e.g. "redis-eks-dev".
    name: str


def guarded_settings(settings: StackSettings) -> dict:
    """What PlatformChangeGuard keeps: the settings its refusals judge, None where they do not
    apply (a setting of the other platform)."""
    eks = settings.platform == "eks"
    server = (
        None
        if eks or settings.kubeconfig is None
        else pulumi.Output.secret(pulumi.Output.from_input(settings.kubeconfig).apply(kubeconfig_server))
    )
    # "" where a setting is not set or does not apply: Pulumi drops a None, and the guard must
    # see a key made later (storageKmsKeyArn) as a change.
    guarded = {
        "platform": settings.platform,
        "vpc_id": settings.vpc_id if eks else None,
        "private_subnet_ids": list(settings.private_subnet_ids) if eks else None,
        "availability_zone_count": settings.availability_zone_count if eks and not settings.vpc_id else None,
        "cluster_version": settings.cluster_version if eks else None,
        "node_group_form": settings.node_group_form if eks else None,
        "node_instance_type": settings.node_instance_type if eks else None,
        "storage_kms_key_arn": settings.storage_kms_key_arn,
        "storage_provisioner": settings.storage_provisioner,
        "storage_iops": settings.storage_iops if settings.storage_provisioner == EBS_PROVISIONER else None,
        "storage_throughput": settings.storage_throughput if settings.storage_provisioner == EBS_PROVISIONER else None,
        "kubernetes_server": server,
        "accept_manual_change": list(settings.accept_manual_change),
    }
    return {key: "" if value is None else value for key, value in guarded.items()}


def cluster_identifier(settings: StackSettings, name: str) -> pulumi.Input[str]:
    """Which cluster the Kubernetes provider talks to, as its `clusterIdentifier`: the EKS
    cluster's name, or the API server of a cluster made elsewhere.

    Without it, pulumi-kubernetes replaces the provider, and with it every Kubernetes object of
    the stack, whenever the kubeconfig's active cluster changes or the kubeconfig is unknown at
    preview (provider/pkg/provider/provider.go, DiffConfig): pulumi/pulumi-eks#338 and #764 show
    it after a kubeconfig change, #762 along an update of the EKS cluster. With it
    (pulumi/pulumi-kubernetes#2745, added by #3068 in v4.16.0), only another identifier replaces
    the provider, and an unchanged one makes any kubeconfig change an update. A change of server
    is then a replacement of every object, which PlatformChangeGuard refuses; a new CA of the
    same server, or a refreshed token, is an update of the provider (docs/change-impact.md). The
    run that adds the identifier is still judged by the kubeconfig (docs/operations.md,
    "Upgrading a stack from before clusterIdentifier")."""
    if settings.platform == "eks":
        return name
    return pulumi.Output.secret(
        pulumi.Output.from_input(settings.kubeconfig).apply(lambda text: kubeconfig_server(text) or "existing")
    )


def kubeconfig_server(kubeconfig: str) -> Optional[str]:
    """The API server the kubeconfig's current context names: which cluster the stack is on."""
    document = yaml.safe_load(kubeconfig) or {}
    contexts = {c.get("name"): c.get("context") or {} for c in document.get("contexts") or []}
    cluster = contexts.get(document.get("current-context"), {}).get("cluster")
    servers = {c.get("name"): (c.get("cluster") or {}).get("server") for c in document.get("clusters") or []}
    return servers.get(cluster)


@dataclass(frozen=True)
class RunningPlatform:
    """What AWS says runs already for the stack's EKS cluster, read before anything registers."""

    cluster_exists: bool
    node_groups: nodes.NodeGroups
    # What AWS reports of the cluster, when it exists.
    cluster: Optional[RunningCluster] = None
    # Add-on -> its build as decided at preview (addons.build_plan), None: EKS's answer for the
    # version the control plane reports.
    addon_builds: Mapping[str, Optional[str]] = field(default_factory=dict)


def running_platform(name: str, settings: StackSettings, parent: Optional[pulumi.Resource]) -> RunningPlatform:
    """The stack's cluster and node groups as AWS lists them, and every problem the settings
    have with them or with EKS's add-on builds, raised together (plain invokes: known at
    preview, on the first run too). What would replace the running cluster, its node group or
    its volumes' key is judged here against AWS's answer, not only by PlatformChangeGuard
    against its record, which a stack from before the guard does not have on its first run."""
    exists = cluster_access.cluster_exists(name, parent=parent)
    groups = nodes.existing_node_groups(name, exists, parent=parent)
    cluster = read_running_cluster(name, settings, groups, parent) if exists else None
    builds, problems = addons.build_plan(
        settings,
        cluster.version if cluster else None,
        addons.running_builds(name, parent) if exists else {},
        parent,
    )
    problems += nodes.node_group_problems(name, settings, groups)
    if cluster is not None:
        problems += running_cluster_problems(settings, cluster, guarded_settings(settings))
    if problems:
        raise SettingsError(problems)
    return RunningPlatform(exists, groups, cluster, builds)


class EksPlatform(pulumi.ComponentResource):
    """EKS (or an existing cluster), the Kubernetes provider and the StorageClass `data`; on EKS,
    the scheduled snapshots of the data volumes (SnapshotBackups) unless `backupSchedule` is off."""

    provider: k8s.Provider
    guard: PlatformChangeGuard
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
        settings = args.settings
        # What runs already, and what the settings may not do to it: asked of AWS and refused
        # before anything of the stack is registered (this component and its guard included),
        # so the preview stops here, all problems together, and a refused `pulumi up` changes
        # no state, not even the guard's record of the opt-ins it let through.
        running = (
            running_platform(args.name, settings, opts.parent if opts else None) if settings.platform == "eks" else None
        )
        super().__init__("redis-eks:index:EksPlatform", resource_name, None, opts)
        # First: what the settings may not change on a running stack is refused at preview,
        # before the resources below (which depend on it) are touched.
        self.guard = PlatformChangeGuard(
            f"{resource_name}-change-guard",
            guarded_settings(settings),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.backup_policy_id = None
        self.backup_policy_arn = None
        self.cluster_creator_arn = None
        self.cluster_admin_arns_left_out = []

        if running is not None:
            cluster_name, kubeconfig, storage_class_depends_on, volume_key_arn, cluster_admins = self._build_eks(
                args.name, settings, running
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
                cluster_identifier=cluster_identifier(settings, args.name),
                # Update the ConfigMap and Secret in place: replacing them (delete, then
                # create, as their names are fixed) leaves a window where a restarting pod
                # cannot mount them.
                enable_config_map_mutable=True,
                enable_secret_mutable=True,
            ),
            # Whoever runs `pulumi up` while adding itself to clusterAdminArns reaches
            # Kubernetes only once its access is in place; on destroy, the access goes last.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.guard, *cluster_admins]),
        )
        data_class = storage.storage_class(
            resource_name,
            settings,
            volume_key_arn,
            cluster_tag,
            self.provider,
            [self.guard, *storage_class_depends_on],
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

    def _build_eks(self, name: str, settings: StackSettings, running: RunningPlatform):
        # What the guard keeps from being replaced waits for its check.
        child = pulumi.ResourceOptions(parent=self, depends_on=[self.guard])
        exists, groups = running.cluster_exists, running.node_groups
        partition, account = current_account(pulumi.InvokeOutputOptions(parent=self))
        subnets = network(name, settings, child)
        creator = cluster_access.cluster_creator(name, exists, parent=self)
        self.cluster_creator_arn = creator.arn
        self.cluster_admin_arns_left_out = cluster_access.left_out_admins(settings, creator)
        builds = running.addon_builds
        cluster = cluster_access.eks_cluster(name, settings, builds, subnets, account, creator, child)
        control_plane_version = cluster_access.control_plane_version(cluster)
        node_groups = nodes.node_groups(
            name,
            settings,
            groups,
            subnets.private_subnet_ids,
            cluster,
            control_plane_version,
            partition,
            self,
            self.guard,
        )
        ebs_csi_role, ebs_csi_ec2 = addons.ebs_csi_role(name, cluster, account, child)
        volume_key_arn: pulumi.Input[str] = settings.storage_kms_key_arn or storage.volume_key(
            name, account, ebs_csi_role.arn, parent=self, guard=self.guard
        )
        ebs_csi_driver = addons.ebs_csi_driver(
            name, builds, cluster, node_groups, control_plane_version, ebs_csi_role, ebs_csi_ec2, volume_key_arn, self
        )
        coredns = addons.coredns(name, builds, cluster, node_groups, control_plane_version, parent=self)
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
