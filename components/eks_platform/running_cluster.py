"""What AWS reports of the stack's running EKS cluster, read at preview, and the platform settings
it refuses: the same judgement PlatformChangeGuard makes from its record, made from what runs.

The guard compares a run's settings with those it recorded on the run before. On its first run
it has no record: the first `pulumi up` after the upgrade that brought it, on a stack deployed
before, would let through exactly the changes it exists to refuse. What AWS reports does not
depend on any record, so these are judged against it on every run of a stack whose cluster
exists: the Kubernetes version the control plane runs, the VPC it is in (and whether the stack
made it: the VPC's `Name` tag), the subnets of its node group, and the key its Redis volumes
are encrypted with. Plain invokes, known at preview, before anything registers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import pulumi
import pulumi_aws as aws

from components.eks_platform.nodes import NodeGroups, group_name
from components.eks_platform.storage import CLUSTER_TAG_KEY
from components.platform_change_guard import platform_change_failures
from components.stack_settings import StackSettings


@dataclass(frozen=True)
class RunningCluster:
    """The stack's EKS cluster as AWS reports it; None (or empty) where AWS said nothing."""

    # The Kubernetes version of the control plane, e.g. "1.35".
    version: Optional[str] = None
    vpc_id: Optional[str] = None
    # Whether that VPC is the one the stack makes (network.py tags it `Name: <name>-vpc`).
    own_vpc: bool = False
    # The subnets of the node group that runs the nodes.
    node_subnet_ids: tuple[str, ...] = ()
    # The KMS key of an attached Redis volume (tagged as this cluster's), when one was asked for.
    volume_key_arn: Optional[str] = None


def vpc_name(name: str) -> str:
    """The `Name` tag of the VPC the stack makes (network.py)."""
    return f"{name}-vpc"


def read_running_cluster(
    name: str, settings: StackSettings, groups: NodeGroups, parent: Optional[pulumi.Resource]
) -> RunningCluster:
    """What AWS reports of the stack's cluster, which exists (aws.eks.get_cluster, and
    get_vpc, get_node_group and the EBS volumes as needed)."""
    invoke = pulumi.InvokeOptions(parent=parent)
    cluster = aws.eks.get_cluster(name=name, opts=invoke)
    vpc_id = cluster.vpc_config.vpc_id if cluster.vpc_config else None
    own_vpc = False
    if vpc_id:
        tags = aws.ec2.get_vpc(id=vpc_id, opts=invoke).tags or {}
        own_vpc = tags.get("Name") == vpc_name(name)
    # The group that runs the nodes: the launch-template form's, or the one from before.
    group = group_name(name) if groups.launch_template_group else groups.old_name
    subnets: tuple[str, ...] = ()
    if group:
        node_group = aws.eks.get_node_group(cluster_name=name, node_group_name=group, opts=invoke)
        subnets = tuple(node_group.subnet_ids or ())
    return RunningCluster(
        version=cluster.version,
        vpc_id=vpc_id,
        own_vpc=own_vpc,
        node_subnet_ids=subnets,
        volume_key_arn=_volume_key(name, invoke) if settings.storage_kms_key_arn else None,
    )


def _volume_key(name: str, invoke: pulumi.InvokeOptions) -> Optional[str]:
    """The key of one attached volume of this cluster's Redis pods: every volume the `data`
    StorageClass made has it. Volumes left over from a destroyed stack of the same name are
    not attached (`available`), so they do not count."""
    filters = [
        aws.ebs.GetEbsVolumesFilterArgs(name=f"tag:{CLUSTER_TAG_KEY}", values=[name]),
        aws.ebs.GetEbsVolumesFilterArgs(name="status", values=["in-use"]),
    ]
    ids = sorted(aws.ebs.get_ebs_volumes(filters=filters, opts=invoke).ids or [])
    if not ids:
        return None
    volume = aws.ebs.get_volume(
        filters=[aws.ebs.GetVolumeFilterArgs(name="volume-id", values=[ids[0]])], most_recent=True, opts=invoke
    )
    return volume.kms_key_id


def baseline(settings: StackSettings, running: RunningCluster) -> dict[str, Any]:
    """The guard's fields as the running cluster shows them (PlatformChangeGuard's form: "" or
    [] where the stack makes the VPC), only those AWS reported: the guard's record, as it
    would read had the guard been there from the start."""
    known: dict[str, Any] = {"platform": "eks"}
    if running.version:
        known["cluster_version"] = running.version
    if running.vpc_id:
        known["vpc_id"] = "" if running.own_vpc else running.vpc_id
        subnets = list(running.node_subnet_ids)
        if running.own_vpc:
            known["private_subnet_ids"] = []
            if subnets:
                # The VPC the stack makes has one private subnet per zone, which the nodes use.
                known["availability_zone_count"] = len(set(subnets))
        elif subnets:
            # In the order the settings list them when they are the same subnets.
            same = set(subnets) == set(settings.private_subnet_ids)
            known["private_subnet_ids"] = list(settings.private_subnet_ids) if same else subnets
            known["availability_zone_count"] = ""
    if running.volume_key_arn:
        known["storage_kms_key_arn"] = running.volume_key_arn
    return known


def running_cluster_problems(settings: StackSettings, running: RunningCluster, guarded: Mapping[str, Any]) -> list[str]:
    """Every setting that would replace what runs, judged against what AWS reports (`guarded`:
    the settings in the guard's form, guarded_settings)."""
    return [message for _, message in platform_change_failures(baseline(settings, running), guarded)]
