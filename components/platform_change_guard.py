"""`PlatformChangeGuard`: a Pulumi dynamic resource that refuses, at `pulumi preview`, a setting
change that would replace what runs the cluster or holds its data (the EKS cluster, a node
group with Redis pods, the volumes' KMS key, the StorageClass, every Kubernetes object at once),
and names the documented way instead.

It holds the settings those depend on; its `check` compares them with the new ones, and the
resources they shape depend on it, so the refusal comes before any of them changes, with or
without a preview. Like ClusterChangeGuard, it records the acceptManualChange items that let a
change through, so that each lets one change through; and it is pickled by reference: it
imports cleanly and creates nothing at import time.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import pulumi
import pulumi.dynamic
from pulumi.dynamic import CheckFailure, CheckResult, CreateResult, DiffResult, UpdateResult

from components.cluster_bootstrap import USED_FIELD, accepted_changes, guarded_change, is_unknown, unwrap

GUARD_FIELDS = (
    "platform",
    "vpc_id",
    "private_subnet_ids",
    "availability_zone_count",
    "cluster_version",
    "node_group_form",
    "node_instance_type",
    "storage_kms_key_arn",
    "storage_provisioner",
    "storage_iops",
    "storage_throughput",
    "kubernetes_server",
)
NEW_STACK = (
    "deploy a new stack with the setting you want and move the data to it (docs/operations.md, "
    '"Changing the engine", step 2, copies it between clusters)'
)
STORAGE_CLASS_REPLACED = (
    "Kubernetes does not let a StorageClass's {what} change, so the StorageClass `data` would be "
    "replaced (deleted, then created under its name; the volumes bound to it keep working)"
)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _changed(olds: Mapping[str, Any], news: Mapping[str, Any], key: str) -> bool:
    """A known new value unlike the stored one (a guard from before the field stored none)."""
    if key not in olds or is_unknown(news.get(key)):
        return False
    return unwrap(olds.get(key)) != unwrap(news.get(key))


def platform_change_failures(olds: Optional[Mapping[str, Any]], news: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every refused change of one run, each (property, why and what to do instead)."""
    if not olds:
        return []
    failures: list[tuple[str, str]] = []
    accepted = accepted_changes(news)

    def refuse(key: str, setting: str, why: str) -> None:
        value = unwrap(news.get(key))
        failures.append((key, f"redis-eks:{setting} = {value!r} is refused on this running stack: {why}"))

    if _changed(olds, news, "platform"):
        refuse("platform", "platform", f"every object of the stack would be made again elsewhere; {NEW_STACK}")
    if _changed(olds, news, "kubernetes_server"):
        refuse(
            "kubernetes_server",
            "kubeconfig",
            "it points at another cluster, where every Kubernetes object of the stack would be created "
            f"while those of the cluster that holds the data are deleted; {NEW_STACK}",
        )
    for key, setting in (("vpc_id", "vpcId"), ("private_subnet_ids", "privateSubnetIds")):
        if _changed(olds, news, key):
            refuse(
                key,
                setting,
                "a node group's subnets are fixed when it is created, so EKS would replace the node group "
                f"(every Redis pod at once), and the cluster's security group with the VPC; {NEW_STACK}",
            )
    if _changed(olds, news, "availability_zone_count"):
        refuse(
            "availability_zone_count",
            "availabilityZoneCount",
            "the new VPC's private subnets change with it, and a node group's subnets are fixed when it is "
            f"created: EKS would replace the node group, every Redis pod at once; {NEW_STACK}",
        )
    old_version, new_version = unwrap(olds.get("cluster_version")), unwrap(news.get("cluster_version"))
    if (
        _changed(olds, news, "cluster_version")
        and old_version
        and new_version
        and _version(new_version) < _version(old_version)
    ):
        refuse(
            "cluster_version",
            "clusterVersion",
            f"the cluster runs Kubernetes {old_version}, and EKS cannot downgrade a cluster; set it back to "
            f"{old_version}",
        )
    if (
        _changed(olds, news, "node_instance_type")
        and unwrap(olds.get("node_group_form")) == "instanceTypes"
        and unwrap(news.get("node_group_form")) == "instanceTypes"
    ):
        refuse(
            "node_instance_type",
            "nodeInstanceType",
            "this stack's node group has its instance types on the group, which EKS cannot change in place: the "
            "group would be replaced, every Redis pod at once. Move it into a launch template first "
            '(docs/operations.md, "Moving the node group into its launch template"), with the new type',
        )
    if _changed(olds, news, "storage_kms_key_arn"):
        refuse(
            "storage_kms_key_arn",
            "storageKmsKeyArn",
            "the volumes stay encrypted with the key they were made with, and the EBS CSI driver's and DLM's "
            "IAM policies would name the new key only: the volumes could no longer be attached or "
            f"snapshotted; and {STORAGE_CLASS_REPLACED.format(what='parameters')}. Keep it; to move the data "
            'under another key, restore it into a new stack with that key (docs/operations.md, "Restoring '
            'from snapshots", `--kms-key-id`)',
        )
    if _changed(olds, news, "storage_provisioner"):
        refuse(
            "storage_provisioner",
            "storageProvisioner",
            f"the volumes are the old provisioner's; and {STORAGE_CLASS_REPLACED.format(what='provisioner')}; "
            + NEW_STACK,
        )
    for key, setting, flag in (
        ("storage_iops", "storageIops", "--iops"),
        ("storage_throughput", "storageThroughput", "--throughput"),
    ):
        value = unwrap(news.get(key))
        if _changed(olds, news, key) and f"{setting}={value}" not in accepted:
            refuse(
                key,
                setting,
                f"{STORAGE_CLASS_REPLACED.format(what='parameters')}, and the running volumes would keep their "
                f"old value. Change the volumes first (`aws ec2 modify-volume --volume-id <id> {flag} {value}` "
                f"for each), then set it together with redis-eks:acceptManualChange {setting}={value} for that "
                'one `pulumi up`, and remove acceptManualChange afterwards (docs/operations.md, "Volume '
                'performance")',
            )
    return failures


class PlatformChangeGuardProvider(pulumi.dynamic.ResourceProvider):
    """Holds the settings the platform's irreplaceable resources depend on and fails `check` on
    a change that would replace one of them. The opt-ins it let through are recorded in its
    inputs (what `check` returns is what the engine stores and hands back as `olds`)."""

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures, used = guarded_change(olds or {}, news, platform_change_failures)
        return CheckResult({**news, USED_FIELD: used}, [CheckFailure(p, r) for p, r in failures])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [
            k
            for k in (*GUARD_FIELDS, USED_FIELD)
            if is_unknown(news.get(k)) or unwrap(olds.get(k)) != unwrap(news.get(k))
        ]
        return DiffResult(changes=bool(changed))

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult("platform-change-guard", _outputs(props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        failures, used = guarded_change(olds, news, platform_change_failures)
        if failures:
            raise ValueError(failures[0][1])
        return UpdateResult({**_outputs(news), USED_FIELD: used})


def _outputs(props: Mapping[str, Any]) -> dict[str, Any]:
    return {key: props.get(key) for key in (*GUARD_FIELDS, USED_FIELD)}


class PlatformChangeGuard(pulumi.dynamic.Resource, module="redis", name="PlatformChangeGuard"):
    """Refuses a setting change that would replace the cluster, a node group, the volumes' key,
    the StorageClass or every Kubernetes object, before any of them changes."""

    def __init__(
        self, resource_name: str, props: Mapping[str, Any], opts: Optional[pulumi.ResourceOptions] = None
    ) -> None:
        unknown = set(props) - set(GUARD_FIELDS) - {"accept_manual_change"}
        if unknown:
            raise ValueError(f"not fields of the guard: {sorted(unknown)}")
        super().__init__(PlatformChangeGuardProvider(), resource_name, {**props, USED_FIELD: None}, opts)
