"""Stack settings: defaults suit a dev stack, and every bad value fails before anything is created."""

import json

import pulumi
import pytest

from components.engines import REDIS
from components.stack_settings import (
    DEFAULT_CLUSTER_VERSION,
    SettingsError,
    load_settings,
    load_stack_config,
    parse_settings,
    read_stack_config,
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
    assert settings.node_timeout_ms == 2000
    assert settings.maxmemory_policy == "noeviction"
    assert ":latest" not in settings.image and ":" in settings.image


def test_config_strings_are_converted_to_typed_values():
    settings = parse_settings(
        {
            "shards": "4",
            "replicasPerShard": "2",
            "endpointPublicAccess": "true",
            "publicAccessCidrs": '["10.1.0.0/16", "192.0.2.0/24"]',
            "clientPodLabels": '{"app": "api"}',
            "vpcId": "vpc-0123456789abcdef0",
            "privateSubnetIds": '["subnet-00000000000000001", "subnet-00000000000000002"]',
        }
    )
    assert settings.pod_count == 12
    assert settings.endpoint_public_access is True
    assert settings.public_access_cidrs == ("10.1.0.0/16", "192.0.2.0/24")
    assert settings.client_pod_labels == (("app", "api"),)
    assert settings.private_subnet_ids == ("subnet-00000000000000001", "subnet-00000000000000002")


def test_an_add_on_build_is_eks_s_answer_unless_pinned():
    # None: the build EKS names for the cluster's version (tests/unit/test_eks_platform.py).
    assert parse_settings({"clusterVersion": "1.36"}).ebs_csi_driver_version is None
    pinned = parse_settings({"clusterVersion": "1.36", "ebsCsiDriverVersion": "v1.60.0-eksbuild.2"})
    assert pinned.ebs_csi_driver_version == "v1.60.0-eksbuild.2"


BAD_VALUES = [
    # (settings, fragments the message must contain)
    ({"acceptManualChange": '["shards"]'}, ["redis-eks:acceptManualChange", "namespace=<namespace>", "image=<image>"]),
    (
        {"acceptManualChange": '["password"]'},
        ["redis-eks:acceptManualChange", "no longer needed", "Rotating credentials"],
    ),
    ({"shards": "2"}, ["redis-eks:shards", "'2'", "from 3 to 100", "3 masters"]),
    ({"shards": "three"}, ["redis-eks:shards", "'three'", "whole number"]),
    ({"replicasPerShard": "-1"}, ["redis-eks:replicasPerShard", "'-1'", "from 0 to 5"]),
    ({"storageSize": "5GB"}, ["redis-eks:storageSize", "'5GB'", "a size with a unit"]),
    ({"storageSize": "0"}, ["redis-eks:storageSize", "a number without a unit is bytes"]),
    ({"nodeMinSize": "4", "nodeDesiredSize": "3"}, ["nodeMinSize (4)", "nodeDesiredSize (3)", "nodeMaxSize"]),
    ({"nodeDesiredSize": "7", "nodeMaxSize": "6"}, ["nodeDesiredSize (7)", "nodeMaxSize (6)"]),
    ({"platform": "gke"}, ["redis-eks:platform", "'gke'", "eks, existing"]),
    ({"platform": "existing", "storageProvisioner": "rancher.io/local-path"}, ["redis-eks:kubeconfig", "--secret"]),
    ({"platform": "existing"}, ["redis-eks:storageProvisioner", "rancher.io/local-path", "redis-eks:kubeconfig"]),
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
    ({"memoryLimit": "128Mi", "memoryRequest": "128Mi"}, ["redis-eks:memoryLimit", "from 256Mi to 1Ti"]),
    ({"memoryRequest": "2Gi", "memoryLimit": "1Gi"}, ["redis-eks:memoryRequest", "at most memoryLimit"]),
    ({"cpuRequest": "2", "cpuLimit": "1"}, ["redis-eks:cpuRequest", "at most cpuLimit"]),
    ({"image": "redis latest"}, ["redis-eks:image", "pinned"]),
    ({"image": "redis"}, ["redis-eks:image", "'redis'", "exact version tag", "digest", "names no tag"]),
    ({"image": "redis:latest"}, ["redis-eks:image", "'redis:latest'", "exact version tag", "'latest' moves"]),
    ({"image": "redis:7"}, ["redis-eks:image", "'redis:7'", "redis:8.0.6", "'7' moves"]),
    ({"image": "redis:7.4"}, ["redis-eks:image", "'redis:7.4'", "'7.4' moves"]),
    ({"image": "redis:7.4-bookworm"}, ["redis-eks:image", "'7.4-bookworm' moves"]),
    ({"image": "redis:alpine"}, ["redis-eks:image", "'alpine' moves"]),
    ({"image": "registry.example.com:5000/redis"}, ["redis-eks:image", "names no tag"]),
    ({"image": "redis@sha256:abc123"}, ["redis-eks:image", "@sha256:<64 hex>"]),
    ({"image": "redis@sha256:" + "0123456789abcdef" * 4}, ["redis-eks:image", "a digest alone"]),
    (
        {"publicAccessCidrs": '["0.0.0.0"]'},
        ["redis-eks:publicAccessCidrs", "'0.0.0.0'", "prefix notation"],
    ),
    ({"publicAccessCidrs": '["203.0.113.7"]'}, ["redis-eks:publicAccessCidrs", "'203.0.113.7'", "prefix notation"]),
    ({"publicAccessCidrs": '["10.0.0.1/24"]'}, ["redis-eks:publicAccessCidrs", "'10.0.0.1/24'"]),
    (
        {"storageIops": "16000"},
        ["redis-eks:storageIops 16000 needs storageSize of at least 32Gi (500 IOPS per GiB); storageSize is 5Gi"],
    ),
    # 30G is 27.9 GiB: a 28 GiB volume, 14000 IOPS at most.
    (
        {"storageIops": "16000", "storageSize": "30G"},
        ["storageIops 16000", "at least 32Gi", "storageSize is 30G", "14000"],
    ),
    # 31000Mi is 30.3 GiB: a 31 GiB volume, 15500 IOPS at most.
    ({"storageIops": "16000", "storageSize": "31000Mi"}, ["at least 32Gi", "storageSize is 31000Mi", "15500"]),
    # 0.1Ti is 102.4 GiB: a 103 GiB volume.
    ({"storageIops": "80000", "storageSize": "0.1Ti"}, ["storageIops 80000", "at least 160Gi", "storageSize is 0.1Ti"]),
    # Just above the baseline: 3001 IOPS needs 7 GiB (rounded up, 6 GiB allows 3000).
    ({"storageIops": "3001", "storageSize": "6Gi"}, ["storageIops 3001", "at least 7Gi", "storageSize is 6Gi"]),
    ({"clusterAdminArns": '["ci-deploy"]'}, ["redis-eks:clusterAdminArns", "'ci-deploy'", "IAM role or user ARNs"]),
    (
        {"clusterAdminArns": '["arn:aws:sts::111122223333:assumed-role/ci-deploy/session-1"]'},
        ["redis-eks:clusterAdminArns", "assumed-role", "not an sts assumed-role ARN"],
    ),
    ({"clusterAdminArns": '["arn:aws:iam::1111222233:role/ci"]'}, ["redis-eks:clusterAdminArns", "1111222233:role/ci"]),
    ({"clusterAdminArns": '["arn:aws-xx:iam::111122223333:role/ci"]'}, ["redis-eks:clusterAdminArns", "aws-us-gov"]),
    (
        {"clusterAdminArns": '["arn:aws:iam::111122223333:group/admins"]'},
        ["redis-eks:clusterAdminArns", "group/admins"],
    ),
    (
        {"clusterAdminArns": '["arn:aws:iam::111122223333:role/ci", "arn:aws:iam::111122223333:role/CI"]'},
        [
            "redis-eks:clusterAdminArns",
            "each IAM principal once",
            "'arn:aws:iam::111122223333:role/CI' is listed twice",
        ],
    ),
    (
        {
            "platform": "existing",
            "kubeconfig": KUBECONFIG,
            "storageProvisioner": "x.io/p",
            "clusterAdminArns": '["arn:aws:iam::111122223333:role/ci"]',
        },
        ["redis-eks:clusterAdminArns", "only applies to platform=eks"],
    ),
    ({"clientPodLabels": '["app"]'}, ["redis-eks:clientPodLabels", "labels"]),
    ({"storageKmsKeyArn": "my-key"}, ["redis-eks:storageKmsKeyArn", "KMS key ARN"]),
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
    ({"monitoring": "yes please"}, ["redis-eks:monitoring", "'yes please'"]),
    (
        {"monitoringLabels": '{"release": "kps"}'},
        ["redis-eks:monitoringLabels", "only with redis-eks:monitoring = true"],
    ),
    ({"monitoringNamespace": "Monitoring"}, ["redis-eks:monitoringNamespace", "'Monitoring'", "DNS-1123"]),
    ({"exporterImage": "oliver006/redis_exporter"}, ["redis-eks:exporterImage", "names no tag"]),
    ({"exporterImage": "oliver006/redis_exporter:v1.86"}, ["redis-eks:exporterImage", "'v1.86' moves"]),
    (
        {"backupSchedule": "daily"},
        ["redis-eks:backupSchedule", "'daily'", "off, or an AWS cron expression", "six fields"],
    ),
    ({"backupSchedule": "cron(0 3 * * *)"}, ["redis-eks:backupSchedule", "six fields"]),
    ({"backupSchedule": "cron(0 3 * * 1 *)"}, ["redis-eks:backupSchedule", "'?' in exactly one of day-of-month"]),
    ({"backupSchedule": "cron(0 3 ? * ? *)"}, ["redis-eks:backupSchedule", "'?' in exactly one of day-of-month"]),
    ({"backupRetentionCount": "0"}, ["redis-eks:backupRetentionCount", "'0'", "from 1 to 1000"]),
    ({"backupCopyRegion": "Europe"}, ["redis-eks:backupCopyRegion", "'Europe'", "AWS region"]),
    (
        {"backupSchedule": "off", "backupCopyRegion": "eu-central-1"},
        ["redis-eks:backupCopyRegion", "only with a redis-eks:backupSchedule"],
    ),
    ({"backupCopyRetentionDays": "30"}, ["redis-eks:backupCopyRetentionDays", "only with redis-eks:backupCopyRegion"]),
    (
        {"platform": "existing", "kubeconfig": KUBECONFIG, "storageProvisioner": "x.io/p", "backupSchedule": "off"},
        ["redis-eks:backupSchedule", "only applies to platform=eks"],
    ),
]


@pytest.mark.parametrize(
    "values, fragments", BAD_VALUES, ids=[next(iter(v)) + "=" + str(next(iter(v.values())))[:20] for v, _ in BAD_VALUES]
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(values, fragments):
    with pytest.raises(SettingsError) as raised:
        parse_settings(values)
    for fragment in fragments:
        assert fragment in str(raised.value)


GOOD_IMAGES = [
    REDIS.default_image,
    "redis:7.4.10",
    "redis:8.2.3-alpine",
    "redis:7.4.10-alpine3.21",
    "redis:7.4.10-bookworm@sha256:" + "0123456789abcdef" * 4,
    "registry.example.com:5000/redis:7.4.10",
    "registry.example.com:5000/team/redis:8.0.6@sha256:" + "0123456789abcdef" * 4,
    "localhost:5000/redis:7.4.10",
    "public.ecr.aws/docker/library/redis:7.4.10-bookworm",
    "111122223333.dkr.ecr.eu-west-1.amazonaws.com/mirror/redis:7.4.10",
]


@pytest.mark.parametrize("image", GOOD_IMAGES)
def test_images_pinned_by_exact_version_or_digest_are_accepted(image):
    assert parse_settings({"image": image}).image == image


@pytest.mark.parametrize(
    "iops, size",
    [
        ("3000", "2Gi"),  # the baseline comes with any size (2Gi: twice the 1Gi pods' maxmemory)
        ("6000", "12Gi"),
        ("16000", "32Gi"),
        ("16000", "32768Mi"),
        ("16000", "34G"),  # 31.7 GiB: the EBS CSI driver rounds the claim up to a 32 GiB volume
        ("80000", "160Gi"),
        ("80000", "0.5Ti"),
    ],
)
def test_iops_within_500_per_gib_of_the_volume_are_accepted(iops, size):
    settings = parse_settings({"storageIops": iops, "storageSize": size, "storageThroughput": "125"})
    assert (settings.storage_iops, settings.storage_size) == (int(iops), size)


def test_iops_are_not_judged_against_the_size_for_another_provisioner():
    settings = parse_settings(
        {
            "platform": "existing",
            "kubeconfig": KUBECONFIG,
            "storageProvisioner": "rancher.io/local-path",
            "storageIops": "16000",
        }
    )
    assert settings.storage_iops == 16000


def test_cluster_admin_arns_accept_roles_and_users_of_every_partition():
    arns = [
        "arn:aws:iam::111122223333:role/redis-eks-ci-deploy",
        "arn:aws:iam::111122223333:role/aws-reserved/sso.amazonaws.com/eu-west-1/AWSReservedSSO_Admin_0123456789abcdef",
        "arn:aws:iam::111122223333:user/alice",
        "arn:aws-us-gov:iam::111122223333:role/ci",
        "arn:aws-cn:iam::111122223333:user/ops.bob@example.com",
    ]
    assert parse_settings({"clusterAdminArns": json.dumps(arns)}).cluster_admin_arns == tuple(arns)
    assert parse_settings({}).cluster_admin_arns == ()


def test_every_problem_of_one_run_is_reported_together():
    with pytest.raises(SettingsError) as raised:
        parse_settings(
            {
                "shards": "2",
                "image": "redis:7",
                "publicAccessCidrs": '["0.0.0.0"]',
                "storageIops": "16000",
                "clusterAdminArns": '["ci"]',
                "shard": "3",
            }
        )
    problems = raised.value.problems
    assert len(problems) == 6, problems
    message = str(raised.value)
    assert message.startswith("6 stack settings are not valid:")
    for key in ("shards", "image", "publicAccessCidrs", "storageIops", "clusterAdminArns", "shard"):
        assert f"redis-eks:{key} " in message, key


def test_an_existing_platform_without_kubeconfig_or_provisioner_names_both():
    with pytest.raises(SettingsError) as raised:
        parse_settings({"platform": "existing", "nodeMaxSize": "9", "nodeInstanceType": "m6i.large"})
    message = str(raised.value)
    for fragment in (
        "redis-eks:storageProvisioner",
        "redis-eks:kubeconfig",
        "redis-eks:nodeMaxSize only applies to platform=eks",
        "redis-eks:nodeInstanceType only applies to platform=eks",
    ):
        assert fragment in message
    assert len(raised.value.problems) == 4


def test_monitoring_on_a_cluster_made_elsewhere_says_which_crds_to_expect():
    """On platform=existing the stack cannot know whether a Prometheus Operator brought the
    CRDs: `install` would fail with AlreadyExists where one did, `existing` would leave the
    objects without their kinds where none did. The setting is asked for, like the
    provisioner; either value, once given, is taken as it is."""
    existing = {"platform": "existing", "kubeconfig": KUBECONFIG, "storageProvisioner": "x.io/p"}
    with pytest.raises(SettingsError) as raised:
        parse_settings({**existing, "monitoring": "true"})
    (problem,) = raised.value.problems
    assert problem.startswith("redis-eks:prometheusOperatorCrds = None is not valid: platform=existing")
    assert "'existing' if the cluster runs a Prometheus Operator" in problem and "'install' if" in problem
    for crds in ("install", "existing"):
        settings = parse_settings({**existing, "monitoring": "true", "prometheusOperatorCrds": crds})
        assert settings.prometheus_operator_crds == crds
    # Without monitoring there is nothing to ask; on EKS the stack made the cluster and installs them.
    assert parse_settings(existing).prometheus_operator_crds == "install"
    assert parse_settings({"monitoring": "true"}).prometheus_operator_crds == "install"


def test_a_value_that_does_not_parse_is_not_judged_again_through_its_default():
    # nodeMinSize falls back to its default while parsing; the min <= desired <= max check
    # must not then report a second, made-up problem with it.
    with pytest.raises(SettingsError) as raised:
        parse_settings({"nodeMinSize": "zero", "nodeDesiredSize": "2"})
    assert len(raised.value.problems) == 1
    assert "redis-eks:nodeMinSize = 'zero'" in str(raised.value)


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


def test_backups_and_metrics_have_production_defaults_and_take_their_settings():
    defaults = parse_settings({})
    assert (defaults.backup_schedule, defaults.backup_retention_count) == ("cron(0 3 * * ? *)", 7)
    assert defaults.backup_copy_region is None and defaults.monitoring is False
    assert defaults.exporter_image == "oliver006/redis_exporter:v1.86.0"
    settings = parse_settings(
        {
            "backupSchedule": "cron(30 */6 * * ? *)",
            "backupRetentionCount": "28",
            "backupCopyRegion": "eu-central-1",
            "backupCopyRetentionDays": "30",
            "monitoring": "true",
            "monitoringLabels": '{"release": "kube-prometheus-stack"}',
        }
    )
    assert settings.backup_schedule == "cron(30 */6 * * ? *)" and settings.backup_retention_count == 28
    assert (settings.backup_copy_region, settings.backup_copy_retention_days) == ("eu-central-1", 30)
    assert settings.monitoring_labels == (("release", "kube-prometheus-stack"),)
    assert parse_settings({"backupSchedule": "off"}).backup_schedule is None


def test_a_refusal_is_a_run_error_the_language_host_prints_without_a_traceback():
    """pulumi-language-python-exec catches pulumi.RunError and logs its message alone; any
    other exception is logged with its traceback. Callers that catch ValueError still do."""
    with pytest.raises(SettingsError) as raised:
        parse_settings({"shards": "2", "replicasPerShard": "9"})
    assert isinstance(raised.value, pulumi.RunError) and isinstance(raised.value, ValueError)
    assert str(raised.value).startswith("2 stack settings are not valid:\n- redis-eks:shards = '2'")


def test_the_whole_config_is_read_as_the_language_host_hands_it_over(monkeypatch):
    """The language host passes the stack's config in PULUMI_CONFIG (and the secret keys in
    PULUMI_CONFIG_SECRET_KEYS), which its exec script gives to `set_all_config`: load_settings
    sees every namespace there, so a near-miss one is refused, and a secret set in plain text."""
    config = {f"redis-eks:{k}" if ":" not in k else k: v for k, v in load_stack_config("dev").items()}
    config |= {"redis:tls": "true", "redis-eks:password": "Plain-Text-Password-0123"}
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(config))
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", "[]")
    pulumi.runtime.set_all_config(pulumi.runtime.get_config_env(), pulumi.runtime.get_config_secret_keys_env())
    try:
        with pytest.raises(SettingsError) as raised:
            load_settings()
        message = str(raised.value)
        assert "redis:tls is not read by this program" in message and "did you mean redis-eks:tls?" in message
        assert "pulumi config set --secret redis-eks:password" in message
        assert "Plain-Text-Password-0123" not in message
        # Set as a secret, the password passes; the namespace still does not.
        monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", '["redis-eks:password"]')
        pulumi.runtime.set_all_config(pulumi.runtime.get_config_env(), pulumi.runtime.get_config_secret_keys_env())
        with pytest.raises(SettingsError) as raised:
            load_settings()
        assert raised.value.problems == (
            "redis:tls is not read by this program, whose settings are in the redis-eks: namespace; "
            "did you mean redis-eks:tls?",
        )
    finally:
        pulumi.runtime.set_all_config({}, [])


@pytest.mark.parametrize(
    "cidrs, warned",
    [
        (["203.0.113.0/24"], True),  # the example stacks' range
        (["192.0.2.0/25", "198.51.100.7/32", "2001:db8::/48"], True),
        (["203.0.113.0/24", "198.18.0.0/15"], False),  # one range a client may be in
        (["10.20.0.0/16"], False),
        (["203.0.112.0/23"], False),  # wider than the documentation block
    ],
)
def test_a_public_endpoint_open_to_documentation_ranges_only_is_warned_about(cidrs, warned):
    settings = read_stack_config(
        {
            "aws:region": "eu-west-1",
            "redis-eks:endpointPublicAccess": "true",
            "redis-eks:publicAccessCidrs": json.dumps(cidrs),
        }
    )
    about = [w for w in settings.warnings if "documentation ranges only" in w]
    assert bool(about) == warned, settings.warnings
    if warned:
        assert "redis-eks:publicAccessCidrs" in about[0] and cidrs[0] in about[0]


def test_the_dev_example_is_warned_about_until_its_range_is_replaced():
    settings = read_stack_config(load_stack_config("dev"))
    assert any("documentation ranges only" in w for w in settings.warnings)
