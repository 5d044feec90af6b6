"""The nodes Redis runs on: a managed node group with its role and launch template."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks

from components.stack_settings import StackSettings

# The node group's launch template: IMDSv2 with a hop limit of 1, so that no pod other than
# host-network system pods can take the node role's credentials (docs/design.md, "Design
# choices", explains why not 2 although the EBS CSI node plugin asks for it).
IMDS_HOP_LIMIT = 1
# What the nodes need to join, pull images and run the VPC CNI.
NODE_ROLE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")


def node_group(
    name: str,
    settings: StackSettings,
    subnet_ids: pulumi.Input[list],
    cluster: eks.Cluster,
    control_plane_version: pulumi.Input[str],
    partition: pulumi.Output[str],
    parent: pulumi.Resource,
) -> aws.eks.NodeGroup:
    child = pulumi.ResourceOptions(parent=parent)
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
    return aws.eks.NodeGroup(
        f"{name}-node-group",
        cluster_name=name,
        node_role_arn=node_role.arn,
        subnet_ids=subnet_ids,
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
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[cluster, *node_policies]),
    )


def service_trust_policy(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )
