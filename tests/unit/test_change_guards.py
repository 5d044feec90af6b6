"""The guards that refuse, at preview, a setting change that would replace what runs the cluster
or holds its data: the platform's (the cluster, a node group, the volumes' key, the
StorageClass, every Kubernetes object) and the workload's additions (the namespace, the
StatefulSet's claims). Each refusal names the setting, the value and the documented way; the
resources it protects wait for it."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components import cluster_bootstrap as cb
from components import platform_change_guard as pg
from tests.unit.conftest import KUBECONFIG, build_stack
from tools import render_manifests

REPO = Path(__file__).resolve().parents[2]
PLATFORM_GUARD = "pulumi-python:dynamic/redis:PlatformChangeGuard"
WORKLOAD_GUARD = "pulumi-python:dynamic/redis:ClusterChangeGuard"


def platform_props(**overrides: Any) -> dict[str, Any]:
    props = {
        "platform": "eks",
        "vpc_id": "",
        "private_subnet_ids": [],
        "availability_zone_count": 3,
        "cluster_version": "1.35",
        "node_group_form": "launchTemplate",
        "node_instance_type": "t3.large",
        "storage_kms_key_arn": "",
        "storage_provisioner": "ebs.csi.aws.com",
        "storage_iops": 3000,
        "storage_throughput": 125,
        "kubernetes_server": "",
        "accept_manual_change": [],
    }
    props.update(overrides)
    return props


def refused(olds: dict, news: dict) -> dict[str, str]:
    """property -> reason of every refusal the platform guard's check gives."""
    return {f.property: f.reason for f in pg.PlatformChangeGuardProvider().check(olds, news).failures}


KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize(
    ("change", "prop", "fragments"),
    [
        ({"platform": "existing"}, "platform", ["redis-eks:platform = 'existing'", "new stack"]),
        ({"vpc_id": "vpc-0abcdef0123456789"}, "vpc_id", ["redis-eks:vpcId", "node group", "new stack"]),
        ({"private_subnet_ids": ["subnet-0a", "subnet-0b"]}, "private_subnet_ids", ["privateSubnetIds"]),
        ({"availability_zone_count": 2}, "availability_zone_count", ["availabilityZoneCount = 2", "subnets"]),
        ({"cluster_version": "1.34"}, "cluster_version", ["clusterVersion = '1.34'", "cannot downgrade", "1.35"]),
        ({"storage_kms_key_arn": KEY}, "storage_kms_key_arn", ["storageKmsKeyArn", "attached", "--kms-key-id"]),
        ({"storage_provisioner": "rancher.io/local-path"}, "storage_provisioner", ["storageProvisioner"]),
        ({"storage_iops": 6000}, "storage_iops", ["storageIops = 6000", "modify-volume", "storageIops=6000"]),
        ({"storage_throughput": 250}, "storage_throughput", ["storageThroughput = 250", "--throughput 250"]),
        ({"kubernetes_server": "https://other:6443"}, "kubernetes_server", ["redis-eks:kubeconfig", "another"]),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_the_platform_guard_refuses_a_replacing_change_with_the_way(change, prop, fragments):
    olds = platform_props(kubernetes_server="https://this:6443" if prop == "kubernetes_server" else "")
    reasons = refused(olds, platform_props(**change))
    assert list(reasons) == [prop]
    for fragment in fragments:
        assert fragment in reasons[prop], (fragment, reasons[prop])
    with pytest.raises(ValueError, match="refused on this running stack"):
        pg.PlatformChangeGuardProvider().update("platform-change-guard", olds, platform_props(**change))


def test_a_key_set_later_or_dropped_is_a_change_of_key_too():
    assert list(refused(platform_props(), platform_props(storage_kms_key_arn=KEY))) == ["storage_kms_key_arn"]
    assert list(refused(platform_props(storage_kms_key_arn=KEY), platform_props())) == ["storage_kms_key_arn"]


def test_the_program_stores_the_stacks_own_key_as_a_value_the_guard_compares():
    """Pulumi drops a None input: the stack's own key must still be stored, or setting
    storageKmsKeyArn later would not be seen as a change."""
    own = build_stack("dev").one(PLATFORM_GUARD).inputs
    given = build_stack("dev", storageKmsKeyArn=KEY).one(PLATFORM_GUARD).inputs
    assert own["storage_kms_key_arn"] == "" and given["storage_kms_key_arn"] == KEY
    assert list(refused(own, given)) == ["storage_kms_key_arn"]


@pytest.mark.parametrize(
    "change",
    [
        {"cluster_version": "1.36"},
        {"node_instance_type": "m6i.large"},
        {"node_group_form": "moving"},
        {"accept_manual_change": ["storageIops=9000"]},
    ],
)
def test_the_platform_guard_lets_rolling_and_in_place_changes_through(change):
    assert refused(platform_props(), platform_props(**change)) == {}


def test_volume_performance_passes_once_named_and_only_the_value_named():
    olds = platform_props()
    assert refused(olds, platform_props(storage_iops=6000, accept_manual_change=["storageIops=6000"])) == {}
    assert list(refused(olds, platform_props(storage_iops=6000, accept_manual_change=["storageIops=5000"]))) == [
        "storage_iops"
    ]


def test_a_volume_performance_opt_in_lets_one_change_through_and_is_then_spent():
    """Like the workload guard's, each acceptManualChange item the platform guard lets a change
    through with is recorded in the inputs its check returns (what the engine stores and hands
    back as the next run's olds): left set, it lets no second change through."""
    provider = pg.PlatformChangeGuardProvider()
    up = platform_props(storage_iops=6000, accept_manual_change=["storageIops=6000"])
    first = provider.check(platform_props(), up)
    assert list(first.failures) == [] and first.inputs[cb.USED_FIELD] == ["storageIops=6000"]
    # Back to 3000 (the volumes modified by hand again), the first opt-in still listed.
    down = platform_props(accept_manual_change=["storageIops=6000", "storageIops=3000"])
    second = provider.check(dict(first.inputs), down)
    assert list(second.failures) == []
    assert second.inputs[cb.USED_FIELD] == ["storageIops=3000", "storageIops=6000"]
    # Up to 6000 once more: the stale opt-in does not pass it.
    up_again = platform_props(storage_iops=6000, accept_manual_change=["storageIops=6000", "storageIops=3000"])
    third = provider.check(dict(second.inputs), up_again)
    assert [f.property for f in third.failures] == ["accept_manual_change"]
    assert "storageIops=6000 was used by an earlier `pulumi up`" in third.failures[0].reason
    with pytest.raises(ValueError, match="used by an earlier"):
        provider.update("platform-change-guard", dict(second.inputs), up_again)
    # Removed for one run, it is forgotten; given again, it passes this change.
    forgotten = provider.check(dict(second.inputs), platform_props())
    assert list(forgotten.failures) == [] and forgotten.inputs[cb.USED_FIELD] == []
    assert list(provider.check(dict(forgotten.inputs), up).failures) == []
    # The record is part of what the guard diffs on: a run that only records an opt-in updates it.
    assert provider.diff("platform-change-guard", provider.create(platform_props()).outs, dict(first.inputs)).changes


def test_a_group_from_before_cannot_change_its_type_in_place():
    olds = platform_props(node_group_form="instanceTypes")
    news = platform_props(node_group_form="instanceTypes", node_instance_type="m6i.large")
    assert "Moving the node group into its launch template" in refused(olds, news)["node_instance_type"]


@pytest.mark.parametrize("olds", [{}, None])
def test_a_new_guard_judges_nothing(olds):
    assert refused(olds, platform_props(platform="existing", storage_kms_key_arn=KEY)) == {}


def test_the_platform_guard_does_not_judge_unknown_values_during_preview():
    from pulumi.output import Unknown

    assert refused(platform_props(), platform_props(storage_kms_key_arn=Unknown(), vpc_id=Unknown())) == {}


def test_the_guard_stores_what_it_judges_and_diffs_on_it():
    provider = pg.PlatformChangeGuardProvider()
    outs = provider.create(platform_props()).outs
    assert set(outs) == {*pg.GUARD_FIELDS, cb.USED_FIELD}
    assert provider.diff("platform-change-guard", outs, platform_props()).changes is False
    assert provider.diff("platform-change-guard", outs, platform_props(cluster_version="1.36")).changes is True


def test_the_platform_guard_module_loads_in_a_fresh_process():
    from pulumi.dynamic.dynamic import serialize_provider

    blob = serialize_provider(pg.PlatformChangeGuardProvider())
    code = (
        "import base64, sys, dill;"
        "p = dill.loads(base64.b64decode(sys.stdin.read()));"
        "print(type(p).__module__, type(p).__name__, len(p.check({'platform': 'eks'}, {'platform': 'existing'}).failures))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, input=blob, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["components.platform_change_guard", "PlatformChangeGuardProvider", "1"]
    assert base64.b64decode(blob)


# -- what the program gives the guards, and what waits for them ---------------------------


def test_the_platform_guard_holds_the_stacks_settings(dev_stack):
    props = dev_stack.one(PLATFORM_GUARD).inputs
    assert {key: props[key] for key in ("platform", "cluster_version", "node_group_form", "storage_iops")} == {
        "platform": "eks",
        "cluster_version": "1.35",
        "node_group_form": "launchTemplate",
        "storage_iops": 3000,
    }


def test_what_the_platform_guard_protects_waits_for_its_check(dev_stack):
    guard = dev_stack.one(PLATFORM_GUARD).urn
    protected = [
        dev_stack.one("eks:index:Cluster"),
        dev_stack.one("aws:eks/nodeGroup:NodeGroup"),
        dev_stack.one("aws:ec2/launchTemplate:LaunchTemplate"),
        dev_stack.one("kubernetes:storage.k8s.io/v1:StorageClass"),
        dev_stack.one("pulumi:providers:kubernetes"),
        *[r for r in dev_stack.of_type("aws:kms/key:Key") if r.name.endswith("-volumes-key")],
    ]
    for resource in protected:
        assert guard in resource.dependencies, resource.name


def test_on_a_cluster_made_elsewhere_the_guard_knows_its_api_server(existing_stack):
    props = existing_stack.one(PLATFORM_GUARD).inputs
    assert render_manifests._plain(props["kubernetes_server"]) == "https://127.0.0.1:6443"
    assert props["vpc_id"] == "" and props["cluster_version"] == ""
    assert "127.0.0.1" in KUBECONFIG


def test_the_kubernetes_provider_is_replaced_only_with_another_cluster(dev_stack, existing_stack):
    """pulumi-kubernetes replaces its provider, and with it every object of the stack, whenever
    the kubeconfig's active cluster changes or is unknown at preview (provider.go DiffConfig;
    pulumi/pulumi-eks#338, #762, #764), unless `clusterIdentifier` is set and unchanged
    (pulumi/pulumi-kubernetes#3068): the cluster's name on EKS, a plain value known at every
    preview, and the API server on a cluster made elsewhere (what the guard holds)."""
    eks_provider = dev_stack.one("pulumi:providers:kubernetes").inputs
    assert eks_provider["clusterIdentifier"] == "redis-eks-dev"
    existing = render_manifests._plain(existing_stack.one("pulumi:providers:kubernetes").inputs["clusterIdentifier"])
    assert existing == "https://127.0.0.1:6443"


def test_the_namespace_and_the_statefulset_wait_for_the_workload_guard(dev_stack):
    guard = dev_stack.one(WORKLOAD_GUARD)
    assert guard.inputs["namespace"] == "redis" and guard.inputs["storage_size"] == "5Gi"
    for token in ("kubernetes:core/v1:Namespace", "kubernetes:apps/v1:StatefulSet"):
        assert guard.urn in dev_stack.one(token).dependencies, token


# -- the workload's new refusals ------------------------------------------------------------


def workload_props(**overrides: Any) -> dict[str, Any]:
    props = {"shards": 3, "replicas_per_shard": 1, "accept_manual_change": [], "namespace": "redis"}
    props["storage_size"] = "5Gi"
    props.update(overrides)
    return props


def workload_refused(olds: dict, news: dict) -> dict[str, str]:
    return {f.property: f.reason for f in cb.ClusterChangeGuardProvider().check(olds, news).failures}


def test_another_namespace_is_refused():
    reasons = workload_refused(workload_props(), workload_props(namespace="cache"))
    assert list(reasons) == ["namespace"]
    # The message and its opt-in are issue 20's (test_bootstrap_provider.py): the way is a new stack,
    # or acceptManualChange namespace=<new> for a new, empty cluster.
    assert "redis-eks:namespace cannot go from 'redis' to 'cache'" in reasons["namespace"]
    assert "new stack" in reasons["namespace"] and "acceptManualChange namespace=cache" in reasons["namespace"]


def test_a_new_storage_size_is_refused_until_the_claims_were_grown_and_it_is_named():
    reasons = workload_refused(workload_props(), workload_props(storage_size="10Gi"))
    assert list(reasons) == ["storage_size"]
    for fragment in ("redis-eks:storageSize = '10Gi'", "kubectl patch pvc", "acceptManualChange storageSize=10Gi"):
        assert fragment in reasons["storage_size"]
    assert (
        workload_refused(
            workload_props(), workload_props(storage_size="10Gi", accept_manual_change=["storageSize=10Gi"])
        )
        == {}
    )


def test_another_signer_of_the_nodes_certificate_is_refused_on_a_tls_stack():
    """From the stack's own CA to cert-manager, or between issuers: the CA changes under every pod
    at once (each kubelet swaps the Secret's files on its own schedule) and the cluster bus
    splits; the old Secret, of the same name, would be deleted after cert-manager wrote it."""
    own_ca = workload_props(tls=True, certificate_issuer="")
    for issuer in ("ClusterIssuer/internal-ca", "Issuer/redis-ca"):
        reasons = workload_refused(own_ca, workload_props(tls=True, certificate_issuer=issuer))
        assert list(reasons) == ["certificate_issuer"], issuer
        assert f"redis-eks:certManagerIssuer = {issuer!r}" in reasons["certificate_issuer"]
        assert "new stack" in reasons["certificate_issuer"]
    back = workload_refused(workload_props(tls=True, certificate_issuer="Issuer/redis-ca"), own_ca)
    assert list(back) == ["certificate_issuer"]
    # Without TLS there is no certificate to change; with the same signer nothing is refused.
    assert workload_refused(workload_props(), workload_props(certificate_issuer="Issuer/redis-ca")) == {}
    assert workload_refused(own_ca, own_ca) == {}


def test_the_workload_guard_holds_who_signs_the_certificate(prod_stack):
    assert prod_stack.one(WORKLOAD_GUARD).inputs["certificate_issuer"] == ""
    run = build_stack("prod", certManagerIssuer="ClusterIssuer/internal-ca")
    assert run.one(WORKLOAD_GUARD).inputs["certificate_issuer"] == "ClusterIssuer/internal-ca"


def test_a_workload_guard_from_before_these_fields_judges_neither():
    legacy = {"shards": 3, "replicas_per_shard": 1, "engine": "redis", "image": "redis:8.10.2-trixie"}
    assert (
        workload_refused(
            legacy, workload_props(namespace="cache", storage_size="10Gi", image="redis:8.10.2-trixie", engine="redis")
        )
        == {}
    )


def test_a_deleted_statefulset_leaves_its_pods_for_the_next_one(dev_stack):
    annotations = dev_stack.one("kubernetes:apps/v1:StatefulSet").inputs["metadata"]["annotations"]
    assert annotations["pulumi.com/deletionPropagationPolicy"] == "orphan"


def test_the_accepted_changes_are_settings_too():
    run = build_stack("dev", acceptManualChange='["storageIops=6000", "storageSize=10Gi", "nodeGroupDrained=g-1"]')
    assert run.one(PLATFORM_GUARD).inputs["accept_manual_change"] == [
        "storageIops=6000",
        "storageSize=10Gi",
        "nodeGroupDrained=g-1",
    ]
