"""The change-impact table (docs/change-impact.md): what each setting change does to a running
stack, rendered by tools/change_impact.py from the program under mocks, before and after."""

from __future__ import annotations

import re

import pytest

from components import platform_change_guard
from components.stack_settings import KNOWN_KEYS
from tools import change_impact as ci

PROTECTED_TYPES = {
    "eks:index:Cluster",
    "aws:eks/nodeGroup:NodeGroup",
    "aws:kms/key:Key",
    "kubernetes:storage.k8s.io/v1:StorageClass",
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:core/v1:Namespace",
}


@pytest.fixture(scope="module")
def impacts() -> list[ci.Impact]:
    return ci.impacts()


def test_the_table_in_docs_is_what_the_program_renders(impacts):
    assert ci.DOC.read_text() == ci.table(impacts), (
        "docs/change-impact.md is out of date: run `python -m tools.change_impact --update` and review the diff"
    )


def test_every_setting_has_a_row():
    assert sorted(set(KNOWN_KEYS) - {sample.setting for sample in ci.SAMPLES}) == []
    assert {sample.setting for sample in ci.SAMPLES} <= set(KNOWN_KEYS)


def test_every_change_that_would_replace_what_holds_the_data_is_refused_at_preview(impacts):
    """The EKS cluster, a node group with Redis pods, a KMS key in use, the StorageClass, the
    StatefulSet, the namespace (or every Kubernetes object at once): a change that would replace
    or delete one is refused at preview, unless it names itself in acceptManualChange, the
    documented way (the work it needs done first, by hand)."""
    assert set(ci.PROTECTED) == PROTECTED_TYPES | {ci.EVERY_K8S_OBJECT}
    unguarded = [
        (item.sample.setting, dict(item.sample.change), item.protected_losses())
        for item in impacts
        if item.protected_losses() and not item.refused and not item.names_its_way()
    ]
    assert unguarded == []
    # The named ones are the documented ways, and say where.
    named = [item for item in impacts if item.protected_losses() and not item.refused]
    assert {item.sample.setting for item in named} == {
        "namespace",
        "storageSize",
        "storageIops",
        "storageThroughput",
        "nodeGroupForm",
    }
    assert all("docs/operations.md" in item.sample.way for item in named)


def test_a_refused_change_names_its_way(impacts):
    assert [item.sample.setting for item in impacts if item.refused and not item.sample.way] == []


def test_the_table_has_every_kind_of_outcome(impacts):
    """What the issue asks the table to tell apart: nothing, an update in place, a rolling restart
    of the pods, a rolling update of the nodes, a replacement (of what), a refusal (and the way)."""
    outcomes = {item.worst() for item in impacts if not item.refused}
    assert {ci.NOTHING, ci.IN_PLACE, ci.ROLLS_PODS, ci.ROLLS_NODES, ci.REPLACED} <= outcomes
    assert any(item.refused for item in impacts)
    by_setting = {item.sample.setting: item for item in impacts if not item.refused}
    assert by_setting["nodeInstanceType"].worst() == ci.ROLLS_NODES
    assert by_setting["image"].worst() == ci.ROLLS_PODS
    assert by_setting["nodeMaxSize"].worst() == ci.IN_PLACE
    assert by_setting["acceptManualChange"].worst() == ci.NOTHING


def test_the_checker_catches_a_guard_that_lets_a_replacement_through(monkeypatch):
    """Without PlatformChangeGuard's refusal, a new zone count reaches the node group (its subnets
    are ForceNew) and a new volume key the StorageClass: the table's check sees both."""
    monkeypatch.setattr(platform_change_guard, "platform_change_failures", lambda olds, news: [])
    for setting in ("availabilityZoneCount", "storageKmsKeyArn"):
        sample = next(s for s in ci.SAMPLES if s.setting == setting)
        item = ci.impact(sample)
        assert not item.refused and item.protected_losses(), setting


@pytest.mark.parametrize(
    ("resource_type", "path", "kind"),
    [
        ("aws:eks/nodeGroup:NodeGroup", "instanceTypes", ci.REPLACED),
        ("aws:eks/nodeGroup:NodeGroup", "subnetIds[]", ci.REPLACED),
        ("aws:eks/nodeGroup:NodeGroup", "launchTemplate.id", ci.REPLACED),
        ("aws:eks/nodeGroup:NodeGroup", "launchTemplate.version", ci.ROLLS_NODES),
        ("aws:eks/nodeGroup:NodeGroup", "scalingConfig.desiredSize", ci.IN_PLACE),
        ("aws:ec2/launchTemplate:LaunchTemplate", "instanceType", ci.ROLLS_NODES),
        ("aws:kms/key:Key", "multiRegion", ci.REPLACED),
        ("aws:kms/key:Key", "policy", ci.IN_PLACE),
        ("kubernetes:apps/v1:StatefulSet", "spec.volumeClaimTemplates[].spec.resources.requests.storage", ci.REPLACED),
        ("kubernetes:apps/v1:StatefulSet", "spec.template.spec.containers[].image", ci.ROLLS_PODS),
        ("kubernetes:apps/v1:StatefulSet", "spec.replicas", ci.IN_PLACE),
        ("kubernetes:storage.k8s.io/v1:StorageClass", "parameters.iops", ci.REPLACED),
        ("kubernetes:core/v1:Namespace", "metadata.name", ci.REPLACED),
        ("kubernetes:core/v1:Secret", "stringData.password", ci.IN_PLACE),
        ("kubernetes:policy/v1:PodDisruptionBudget", "spec.maxUnavailable", ci.IN_PLACE),
        ("pulumi:providers:kubernetes", "clusterIdentifier", ci.REPLACED),
        ("pulumi:providers:kubernetes", "kubeconfig", ci.IN_PLACE),
        ("eks:index:Cluster", "version", ci.ROLLS_NODES),
        ("eks:index:Cluster", "name", ci.REPLACED),
    ],
)
def test_the_rules_of_each_type(resource_type, path, kind):
    assert ci.property_effect(resource_type, path).kind == kind


def test_a_property_without_a_rule_fails_until_it_is_classified():
    for resource_type, path in (
        ("aws:eks/nodeGroup:NodeGroup", "nodeRepairConfig"),
        ("aws:iam/role:Role", "assumeRolePolicy"),
        ("eks:index:Cluster", "encryptionConfigKeyArn"),
    ):
        with pytest.raises(ci.Unclassified):
            ci.property_effect(resource_type, path)


def test_changed_paths_reach_into_objects_and_lists():
    old = {"spec": {"template": {"containers": [{"image": "a", "name": "redis"}]}, "replicas": 6}, "__p": 1}
    new = {"spec": {"template": {"containers": [{"image": "b", "name": "redis"}]}, "replicas": 6}, "__p": 2}
    assert ci.changed_paths(old, new) == ["spec.template.containers[].image"]
    assert ci.changed_paths({"a": [1]}, {"a": [1, 2]}) == ["a"]
    assert ci.changed_paths({"a": 1}, {"b": 1}) == ["a", "b"]


# pulumi-eks's inputs that become its own aws.eks.Addon resources (kube-proxy, the VPC CNI), not
# the aws.eks.Cluster whose endpoint and CA make the kubeconfig (nodejs/eks/cluster/cluster.ts).
PULUMI_EKS_ADDON_INPUTS = ("kubeProxyAddonOptions", "vpcCniOptions")
CLUSTER_IDENTIFIER_UPGRADE = "## Upgrading a stack from before clusterIdentifier"


def held_back_on_the_upgrade_run() -> set[str]:
    """The settings docs/operations.md's first step of that upgrade keeps as the cluster runs them."""
    text = (ci.PROJECT_DIR / "docs" / "operations.md").read_text()
    section = text[text.index(CLUSTER_IDENTIFIER_UPGRADE) :]
    step = section[section.index("\n1. ") : section.index("\n2. ")]
    return {word for word in re.findall(r"`(\w+)`", step) if word in KNOWN_KEYS}


def test_the_upgrade_to_cluster_identifier_holds_back_every_setting_that_updates_the_eks_cluster(impacts):
    """The run that adds the Kubernetes provider's clusterIdentifier to a stack from before is
    judged by the kubeconfig alone, which the EKS cluster's endpoint and CA make: the runbook
    has that run change nothing of the cluster. Its list is every setting whose change (not
    refused at preview) updates the cluster itself, and nothing else."""
    updates_the_cluster = {
        item.sample.setting
        for item in impacts
        if not item.refused
        for change in item.changes
        if change.type == ci.EKS_CLUSTER and any(not path.startswith(PULUMI_EKS_ADDON_INPUTS) for path in change.paths)
    }
    assert updates_the_cluster == {"clusterVersion", "deletionProtection", "endpointPublicAccess", "publicAccessCidrs"}
    assert held_back_on_the_upgrade_run() == updates_the_cluster


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def sdk_has_input(resource_type: str, path: str) -> bool:
    """Whether the installed pulumi-aws SDK takes this property path as an input of the resource
    type (`launchTemplate.version`, list items as `[]`), walking its *Args classes."""
    import inspect

    import pulumi_aws

    module = getattr(pulumi_aws, resource_type.split(":")[1].split("/")[0])
    args = getattr(module, resource_type.rsplit(":", 1)[1] + "Args")
    for i, segment in enumerate(path.split(".")):
        parameters = inspect.signature(args.__init__).parameters
        name = _snake(segment.replace("[]", ""))
        if name not in parameters:
            return False
        if i < len(path.split(".")) - 1:
            nested = re.findall(r"(\w+Args)\b", str(parameters[name].annotation))
            if not nested:
                return False
            args = getattr(module, nested[0])
    return True


def test_every_rule_names_inputs_the_installed_sdk_has():
    """The rules were read in stored copies of the Terraform provider's files, not in the version
    pulumi-aws 7.51.1 bundles (which could not be determined): each property they name must still
    be an input of the installed SDK's resource, or the copy read is stale for it."""
    assert sdk_has_input("aws:eks/nodeGroup:NodeGroup", "launchTemplate.version")
    assert not sdk_has_input("aws:eks/nodeGroup:NodeGroup", "launchTemplate.bogus")
    assert not sdk_has_input("aws:kms/key:Key", "bogusSpec")
    missing = [
        (resource_type, path)
        for resource_type, rules in ci.REPLACE_FORCING.items()
        for path in rules.replace + rules.rolls_nodes + rules.in_place
        if not sdk_has_input(resource_type, path)
    ]
    assert missing == []
