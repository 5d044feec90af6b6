"""Stack settings: defaults suit a dev stack, and every bad value fails before anything is created."""

import pytest

from components.stack_settings import (
    DEFAULT_CLUSTER_VERSION,
    EBS_CSI_DRIVER_VERSIONS,
    SettingsError,
    load_stack_config,
    parse_settings,
)
from tests.unit.conftest import KUBECONFIG
from tools.render_manifests import ProgramRun, run_program


def test_defaults_describe_a_small_three_shard_cluster():
    settings = parse_settings({})
    assert settings.platform == "eks"
    assert settings.cluster_version == DEFAULT_CLUSTER_VERSION
    assert (settings.shards, settings.replicas_per_shard, settings.pod_count) == (3, 1, 6)
    assert settings.namespace == "redis"
    assert settings.storage_size == "5Gi"
    assert (settings.storage_iops, settings.storage_throughput) == (3000, 125)
    assert settings.node_timeout_ms == 5000
    assert settings.maxmemory_policy == "noeviction"
    assert ":latest" not in settings.image and ":" in settings.image


def test_config_strings_are_converted_to_typed_values():
    settings = parse_settings(
        {
            "shards": "4",
            "replicasPerShard": "2",
            "endpointPublicAccess": "false",
            "publicAccessCidrs": '["10.1.0.0/16", "192.0.2.0/24"]',
            "clientPodLabels": '{"app": "api"}',
            "vpcId": "vpc-0123456789abcdef0",
            "privateSubnetIds": "subnet-00000000000000001,subnet-00000000000000002",
        }
    )
    assert settings.pod_count == 12
    assert settings.endpoint_public_access is False
    assert settings.public_access_cidrs == ("10.1.0.0/16", "192.0.2.0/24")
    assert settings.client_pod_labels == (("app", "api"),)
    assert settings.private_subnet_ids == ("subnet-00000000000000001", "subnet-00000000000000002")


def test_the_add_on_build_follows_the_cluster_version_unless_pinned():
    assert parse_settings({"clusterVersion": "1.36"}).ebs_csi_driver_version == EBS_CSI_DRIVER_VERSIONS["1.36"]
    pinned = parse_settings({"clusterVersion": "1.36", "ebsCsiDriverVersion": "v1.60.0-eksbuild.2"})
    assert pinned.ebs_csi_driver_version == "v1.60.0-eksbuild.2"


BAD_VALUES = [
    # (settings, fragments the message must contain)
    ({"acceptManualChange": "shards"}, ["redis-eks:acceptManualChange", "shards=<n>", "password"]),
    ({"shards": "2"}, ["redis-eks:shards", "'2'", "from 3 to 100", "3 masters"]),
    ({"shards": "three"}, ["redis-eks:shards", "'three'", "whole number"]),
    ({"replicasPerShard": "-1"}, ["redis-eks:replicasPerShard", "'-1'", "from 0 to 5"]),
    ({"storageSize": "5GB"}, ["redis-eks:storageSize", "'5GB'", "Kubernetes quantity"]),
    ({"storageSize": "0"}, ["redis-eks:storageSize", "positive"]),
    ({"nodeMinSize": "4", "nodeDesiredSize": "3"}, ["nodeMinSize (4)", "nodeDesiredSize (3)", "nodeMaxSize"]),
    ({"nodeDesiredSize": "7", "nodeMaxSize": "6"}, ["nodeDesiredSize (7)", "nodeMaxSize (6)"]),
    ({"platform": "gke"}, ["redis-eks:platform", "'gke'", "eks, existing"]),
    ({"platform": "existing", "storageProvisioner": "rancher.io/local-path"}, ["redis-eks:kubeconfig", "--secret"]),
    ({"platform": "existing"}, ["redis-eks:storageProvisioner", "rancher.io/local-path"]),
    ({"clusterVersion": "1.29"}, ["redis-eks:clusterVersion", "'1.29'", "1.35, 1.36"]),
    ({"clusterVersion": "latest"}, ["redis-eks:clusterVersion", "'latest'"]),
    ({"nodeInstanceType": "large"}, ["redis-eks:nodeInstanceType", "'large'", "instance type"]),
    ({"vpcId": "vpc-0123456789abcdef0"}, ["vpcId", "privateSubnetIds", "both"]),
    (
        {"privateSubnetIds": '["subnet-00000000000000001"]', "vpcId": "vpc-0123456789abcdef0"},
        ["privateSubnetIds", "2 availability zones"],
    ),
    ({"privateSubnetIds": '["sn-1", "sn-2"]'}, ["redis-eks:privateSubnetIds", "'sn-1'", "subnet IDs"]),
    ({"publicAccessCidrs": '["0.0.0.0/33"]'}, ["redis-eks:publicAccessCidrs", "CIDR"]),
    ({"natGateways": "three"}, ["redis-eks:natGateways", "single, onePerAz"]),
    ({"storageIops": "100"}, ["redis-eks:storageIops", "from 3000 to 80000"]),
    ({"storageThroughput": "1000"}, ["redis-eks:storageThroughput", "0.25 MiB/s per provisioned IOPS", "750"]),
    ({"namespace": "Redis_NS"}, ["redis-eks:namespace", "'Redis_NS'", "DNS-1123"]),
    ({"maxmemoryPolicy": "lru"}, ["redis-eks:maxmemoryPolicy", "'lru'", "noeviction", "allkeys-lru"]),
    ({"nodeTimeoutMs": "100"}, ["redis-eks:nodeTimeoutMs", "from 1000 to 60000"]),
    ({"memoryLimit": "128Mi", "memoryRequest": "128Mi"}, ["redis-eks:memoryLimit", "at least 256Mi"]),
    ({"memoryRequest": "2Gi", "memoryLimit": "1Gi"}, ["redis-eks:memoryRequest", "at most memoryLimit"]),
    ({"cpuRequest": "2", "cpuLimit": "1"}, ["redis-eks:cpuRequest", "at most cpuLimit"]),
    ({"image": "redis latest"}, ["redis-eks:image", "pinned"]),
    ({"clientPodLabels": '["app"]'}, ["redis-eks:clientPodLabels", "labels"]),
    ({"storageKmsKeyArn": "my-key"}, ["redis-eks:storageKmsKeyArn", "kms ARN"]),
    ({"shard": "3"}, ["redis-eks:shard", "did you mean redis-eks:shards"]),
    (
        {"platform": "existing", "kubeconfig": KUBECONFIG, "storageProvisioner": "x.io/p", "nodeMaxSize": "9"},
        ["redis-eks:nodeMaxSize", "only applies to platform=eks"],
    ),
    (
        {"platform": "existing", "kubeconfig": "not a kubeconfig", "storageProvisioner": "x.io/p"},
        ["redis-eks:kubeconfig", "clusters and contexts"],
    ),
    ({"bootstrapTimeoutSeconds": "5"}, ["redis-eks:bootstrapTimeoutSeconds", "from 30 to 3600"]),
]


@pytest.mark.parametrize(
    "values, fragments", BAD_VALUES, ids=[next(iter(v)) + "=" + str(next(iter(v.values())))[:20] for v, _ in BAD_VALUES]
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(values, fragments):
    with pytest.raises(SettingsError) as raised:
        parse_settings(values)
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_a_bad_password_is_refused_without_echoing_it():
    with pytest.raises(SettingsError) as raised:
        parse_settings({"password": "short pass!"})
    assert "redis-eks:password" in str(raised.value)
    assert "short pass!" not in str(raised.value)


def test_a_bad_value_stops_the_program_before_any_resource_is_registered():
    run = ProgramRun()
    config = load_stack_config("dev") | {"redis-eks:shards": "1"}
    with pytest.raises(SettingsError, match="redis-eks:shards"):
        run_program(config, run=run)
    assert run.resources == []
