"""The AWS account and region the stack deploys into, as key policies and IAM policies name them."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws


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


def current_account(invoke: pulumi.InvokeOutputOptions) -> tuple[pulumi.Output[str], pulumi.Output[AwsAccount]]:
    """(partition, account) of the credentials the program runs with."""
    aws_partition = aws.get_partition_output(opts=invoke)
    account = pulumi.Output.all(
        aws_partition.partition,
        aws.get_caller_identity_output(opts=invoke).account_id,
        aws.get_region_output(opts=invoke).region,
        aws_partition.dns_suffix,
    ).apply(lambda values: AwsAccount(*values))
    return aws_partition.partition, account
