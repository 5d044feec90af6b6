"""The nodes Redis runs on: a managed node group with its role and launch template, and the move
of a group from before the instance type went into the launch template.

The instance type is in the launch template (`nodeGroupForm: launchTemplate`): a new
`nodeInstanceType` is then a new template version, which EKS rolls out node by node, each
drained through the PodDisruptionBudget (AWS's user guide, "Understand each phase of node
updates"). On the group itself (`instanceTypes`, the form of stacks created before) it cannot
change: EKS has no call for it, so the group would be replaced, scaled to zero and its nodes
terminated once EKS's drain timeout runs out, past the PodDisruptionBudget. Nor can such a
group take a launch template that names an instance type ("You must continue to not specify
an instance type within the launch template": terraform-aws-modules/terraform-aws-eks#1514;
aws/containers-roadmap#746). So its move is blue/green: `moving` adds a launch-template group
beside it, the operator drains the old nodes one at a time, and `launchTemplate` with
`acceptManualChange nodeGroupDrained=<name>` removes the empty old group (docs/operations.md,
"Moving the node group into its launch template").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks

from components import roll_budget as roll
from components.stack_settings import NAMESPACE, NODE_GROUP_FORMS, StackSettings

LAUNCH_TEMPLATE, INSTANCE_TYPES, MOVING = NODE_GROUP_FORMS
# The node group's launch template: IMDSv2 with a hop limit of 1, so that no pod other than
# host-network system pods can take the node role's credentials (docs/design.md, "Design
# choices", explains why not 2 although the EBS CSI node plugin asks for it).
IMDS_HOP_LIMIT = 1
# What the nodes need to join, pull images and run the VPC CNI.
NODE_ROLE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")
# The acceptManualChange item that lets the old form's group go, naming it.
DRAINED = "nodeGroupDrained"


def old_group_prefix(name: str) -> str:
    """EKS names of the instanceTypes form's group: Pulumi auto-named it after its resource
    name `<name>-node-group` (a random suffix follows)."""
    return f"{name}-node-group-"


def group_name(name: str) -> str:
    """The launch-template form's group, named exactly: a replacement of it (create, then delete)
    then fails on the name instead of scaling the running group to zero."""
    return f"{name}-nodes"


@dataclass(frozen=True)
class NodeGroups:
    """The stack's node groups as EKS lists them, before anything of this run."""

    # The instanceTypes form's group (its EKS name and instance types), if there is one.
    old_name: Optional[str] = None
    old_instance_types: tuple[str, ...] = ()
    # Whether the launch-template form's group exists.
    launch_template_group: bool = False


def existing_node_groups(name: str, cluster_exists: bool, parent: Optional[pulumi.Resource]) -> NodeGroups:
    """What node groups the cluster has (plain invokes: known at preview)."""
    if not cluster_exists:
        return NodeGroups()
    invoke = pulumi.InvokeOptions(parent=parent)
    names = aws.eks.get_node_groups(cluster_name=name, opts=invoke).names or []
    old = sorted(group for group in names if group.startswith(old_group_prefix(name)))
    old_types: tuple[str, ...] = ()
    if old:
        old_types = tuple(
            aws.eks.get_node_group(cluster_name=name, node_group_name=old[0], opts=invoke).instance_types or ()
        )
    return NodeGroups(old[0] if old else None, old_types, group_name(name) in names)


def node_group_problems(name: str, settings: StackSettings, groups: NodeGroups) -> list[str]:
    """What `nodeGroupForm` and `nodeInstanceType` may not do to the groups that run: replace
    one, or delete one that may still hold Redis pods. Refused at preview, with the way."""
    form, problems = settings.node_group_form, []
    move = (
        f"move it into a launch template first: (1) set {NAMESPACE}:nodeGroupForm to {MOVING} and run "
        "`pulumi up`: a group of the new form starts beside the old one; (2) cordon the old group's nodes, "
        "then drain them one at a time, each once the cluster is healthy again (docs/operations.md, "
        '"Moving the node group into its launch template"); (3) set nodeGroupForm to '
        f"{LAUNCH_TEMPLATE} with {NAMESPACE}:acceptManualChange {DRAINED}=<the old group's name> and run "
        "`pulumi up`: the empty old group is deleted"
    )
    accepted = set(settings.accept_manual_change)
    if form == LAUNCH_TEMPLATE and groups.old_name and f"{DRAINED}={groups.old_name}" not in accepted:
        problems.append(
            f"{NAMESPACE}:nodeGroupForm = {form!r} is refused on this running stack: its node group "
            f"{groups.old_name} has its instance type on the group, and EKS cannot move it into the launch "
            "template; removing the group would scale it to zero and terminate its nodes past the "
            f"PodDisruptionBudget. Set nodeGroupForm to {INSTANCE_TYPES} to keep it as it is, or {move}"
        )
    if form == INSTANCE_TYPES and groups.launch_template_group:
        problems.append(
            f"{NAMESPACE}:nodeGroupForm = {form!r} is refused on this running stack: its nodes are the "
            f"launch-template group {group_name(name)}, which this form would delete; keep "
            f"nodeGroupForm = {LAUNCH_TEMPLATE}"
        )
    if (
        form == INSTANCE_TYPES
        and groups.old_instance_types
        and groups.old_instance_types != (settings.node_instance_type,)
    ):
        problems.append(
            f"{NAMESPACE}:nodeInstanceType = {settings.node_instance_type!r} is refused with nodeGroupForm = "
            f"{form!r}: EKS cannot change the instance types of group {groups.old_name} "
            f"({', '.join(groups.old_instance_types)}) in place, so it would be replaced, every Redis pod at "
            f"once. Keep {', '.join(groups.old_instance_types)} here, and {move}, with the new type"
        )
    if form == MOVING and not groups.old_name:
        problems.append(
            f"{NAMESPACE}:nodeGroupForm = {form!r} is not valid here: the cluster has no node group with its "
            f"instance type on the group to move from; use {LAUNCH_TEMPLATE}"
        )
    return problems


def node_groups(
    name: str,
    settings: StackSettings,
    groups: NodeGroups,
    subnet_ids: pulumi.Input[list],
    cluster: eks.Cluster,
    control_plane_version: pulumi.Input[str],
    partition: pulumi.Output[str],
    parent: pulumi.Resource,
    guard: pulumi.Resource,
) -> list[aws.eks.NodeGroup]:
    """The node groups `nodeGroupForm` asks for: the launch-template group, the old form's group,
    or both while moving. They share the node role and its policies."""
    child = pulumi.ResourceOptions(parent=parent, depends_on=[guard])
    node_role = aws.iam.Role(
        f"{name}-node-role",
        assume_role_policy=service_trust_policy("ec2.amazonaws.com"),
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
        for policy in NODE_ROLE_POLICIES
    ]
    shared = dict(
        cluster_name=name,
        node_role_arn=node_role.arn,
        subnet_ids=subnet_ids,
        scaling_config=aws.eks.NodeGroupScalingConfigArgs(
            min_size=settings.node_min_size,
            desired_size=settings.node_desired_size,
            max_size=settings.node_max_size,
        ),
        # Without it a control-plane upgrade leaves the nodes on the old kubelet; with it the
        # nodes follow, on the AMI of the new version (the launch template names none).
        version=control_plane_version,
        # One node at a time, so the PodDisruptionBudget and the preStop handover keep
        # writes going through an AMI, version or instance type change.
        update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
    )
    after = pulumi.ResourceOptions(
        parent=parent,
        depends_on=[guard, cluster, *node_policies],
        # A node update (AMI, version, instance type) drains and replaces the nodes one by one:
        # the provider's default 60 minutes would give up after a few nodes, failing `pulumi up`
        # while EKS carries on and leaving the add-ons after the group unchanged
        # (components/roll_budget.py; docs/operations.md, "How long a roll takes").
        custom_timeouts=pulumi.CustomTimeouts(update=f"{roll.node_update_seconds(settings)}s"),
    )
    created = []
    if settings.node_group_form in (INSTANCE_TYPES, MOVING):
        # As stacks from before have it, unchanged; while moving, with the types it runs, and
        # whatever EKS reports of them, never a change of them (that would replace the group).
        moving = settings.node_group_form == MOVING
        template = _launch_template(f"{name}-nodes", None, child)
        created.append(
            aws.eks.NodeGroup(
                f"{name}-node-group",
                instance_types=list(groups.old_instance_types)
                if moving and groups.old_instance_types
                else [settings.node_instance_type],
                launch_template=_pinned(template),
                **shared,
                opts=pulumi.ResourceOptions.merge(after, pulumi.ResourceOptions(ignore_changes=["instanceTypes"]))
                if moving
                else after,
            )
        )
    if settings.node_group_form in (LAUNCH_TEMPLATE, MOVING):
        template = _launch_template(f"{name}-node-template", settings.node_instance_type, child)
        created.append(
            aws.eks.NodeGroup(
                group_name(name),
                node_group_name=group_name(name),
                launch_template=_pinned(template),
                **shared,
                opts=after,
            )
        )
    return created


def _launch_template(
    resource_name: str, instance_type: Optional[str], child: pulumi.ResourceOptions
) -> aws.ec2.LaunchTemplate:
    return aws.ec2.LaunchTemplate(
        resource_name,
        # In the template, a new instance type is a new version: a rolling update of the nodes.
        instance_type=instance_type,
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


def _pinned(template: aws.ec2.LaunchTemplate) -> aws.eks.NodeGroupLaunchTemplateArgs:
    # The template's newest version: a change to it is an update of the group's nodes.
    return aws.eks.NodeGroupLaunchTemplateArgs(id=template.id, version=template.latest_version.apply(str))


def service_trust_policy(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )
