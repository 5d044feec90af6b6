"""The network the cluster runs in: a new VPC (awsx) over the stack's zones, or the VPC and
private subnets the settings name."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_awsx as awsx

from components.stack_settings import StackSettings

VPC_CIDR = "10.0.0.0/16"


@dataclass(frozen=True)
class Network:
    vpc_id: pulumi.Input[str]
    private_subnet_ids: pulumi.Input[list]
    public_subnet_ids: pulumi.Input[list]


def network(name: str, settings: StackSettings, child: pulumi.ResourceOptions) -> Network:
    if settings.vpc_id:
        return Network(settings.vpc_id, list(settings.private_subnet_ids), [])
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
    return Network(vpc.vpc_id, vpc.private_subnet_ids, vpc.public_subnet_ids)
