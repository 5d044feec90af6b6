"""The platform component: EKS, the EBS CSI driver with its own IAM role, the `data` StorageClass."""

import json
from contextlib import contextmanager
from typing import Optional

import grpc
import pytest
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor

from components.eks_platform.addons import EBS_CSI_SERVICE_ACCOUNT
from components.eks_platform.storage import CLUSTER_TAG_KEY
from components.stack_settings import CONTROL_PLANE_LOG_TYPES, SettingsError, load_stack_config
from tests.unit.conftest import KUBECONFIG, build_stack, is_secret, reveal
from tools import render_manifests

EKS_CLUSTER = "eks:index:Cluster"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
ADDON = "aws:eks/addon:Addon"
POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
ACCESS_ENTRY = "aws:eks/accessEntry:AccessEntry"
ACCESS_POLICY_ASSOCIATION = "aws:eks/accessPolicyAssociation:AccessPolicyAssociation"
CLUSTER_ADMIN_POLICY_ARN = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
PROD_CI_ROLE = "arn:aws:iam::111122223333:role/redis-eks-ci-deploy"
KMS_KEY = "aws:kms/key:Key"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ACCOUNT = render_manifests.MOCK_ACCOUNT
REGION = "eu-west-1"
ACCOUNT_ROOT = f"arn:aws:iam::{ACCOUNT}:root"


def named(run, type_token, suffix):
    matches = [r for r in run.of_type(type_token) if r.name.endswith(suffix)]
    assert len(matches) == 1, f"{type_token} *{suffix}: {[r.name for r in run.of_type(type_token)]}"
    return matches[0]


def test_eks_cluster_is_hardened(dev_stack):
    cluster = dev_stack.one(EKS_CLUSTER).inputs
    assert cluster["name"] == "redis-eks-dev"
    assert cluster["version"] == "1.35"
    assert cluster["authenticationMode"] == "API"
    assert cluster["skipDefaultNodeGroup"] is True
    assert cluster["createOidcProvider"] is True
    assert sorted(cluster["enabledClusterLogTypes"]) == sorted(CONTROL_PLANE_LOG_TYPES)
    assert cluster["encryptionConfigKeyArn"] == named(dev_stack, "aws:kms/key:Key", "-secrets-key").outputs["arn"]
    assert cluster["endpointPrivateAccess"] is True
    assert cluster["privateSubnetIds"] == [f"subnet-0000000000000000{i}" for i in range(3)]


@contextmanager
def aws_answers_who_and_where():
    """The fake cloud of tools/render_manifests.py, also answering getCallerIdentity and
    getRegion (which it leaves empty) as AWS would in the dev stack's account and region:
    the key and IAM policies name both."""
    answer = render_manifests._FakeCloud.call

    def call(self, args):
        answered = answer(self, args)
        if answered:
            return answered
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "accountId": ACCOUNT,
                "arn": f"arn:aws:iam::{ACCOUNT}:user/deployer",
                "id": ACCOUNT,
                "userId": "AIDAEXAMPLEEXAMPLE",
            }
        if args.token == "aws:index/getRegion:getRegion":
            return {"region": REGION, "name": REGION, "id": REGION, "endpoint": f"ec2.{REGION}.amazonaws.com"}
        return answered

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render_manifests._FakeCloud, "call", call)
        yield


@pytest.fixture(scope="module")
def aws_dev_stack():
    with aws_answers_who_and_where():
        return build_stack("dev")


@pytest.fixture(scope="module")
def aws_prod_stack():
    with aws_answers_who_and_where():
        return build_stack("prod")


def policy_of(run, type_token, suffix, field="policy"):
    return json.loads(named(run, type_token, suffix).inputs[field])


def principals(statement) -> list[str]:
    principal = statement["Principal"]
    if principal == "*":
        return ["*"]
    values = principal["AWS"]
    return [values] if isinstance(values, str) else list(values)


def actions(statement) -> list[str]:
    return [statement["Action"]] if isinstance(statement["Action"], str) else list(statement["Action"])


@pytest.mark.parametrize("key", ["-secrets-key", "-volumes-key"])
def test_both_keys_rotate(key, dev_stack):
    assert named(dev_stack, KMS_KEY, key).inputs["enableKeyRotation"] is True


@pytest.mark.parametrize("key", ["-secrets-key", "-volumes-key"])
def test_each_key_has_a_policy_of_its_own_for_this_account_only(key, aws_dev_stack):
    """An explicit key policy, not KMS's default: the account administers the key (without
    that statement, no IAM policy reaches it and losing the named roles locks it for good),
    every principal is of this account, and nothing is granted to everyone."""
    policy = policy_of(aws_dev_stack, KMS_KEY, key)
    (administration,) = [s for s in policy["Statement"] if s["Sid"] == "AccountAdministersTheKey"]
    assert administration == {
        "Sid": "AccountAdministersTheKey",
        "Effect": "Allow",
        "Principal": {"AWS": ACCOUNT_ROOT},
        "Action": "kms:*",
        "Resource": "*",
    }
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        for principal in principals(statement):
            assert principal != "*", statement
            assert principal.startswith(f"arn:aws:iam::{ACCOUNT}:"), statement
        if any(action in ("*", "kms:*") for action in actions(statement)):
            assert principals(statement) == [ACCOUNT_ROOT], statement
    # Every other statement is limited to a role of ours, or to use through one service.
    for statement in policy["Statement"]:
        if statement is not administration and principals(statement) == [ACCOUNT_ROOT]:
            condition = statement["Condition"]["StringEquals"]
            assert condition["kms:CallerAccount"] == ACCOUNT
            assert condition["kms:ViaService"].endswith(f".{REGION}.amazonaws.com")


def test_the_volume_key_serves_the_ebs_csi_driver_and_ec2(aws_dev_stack):
    role_arn = named(aws_dev_stack, ROLE, "-ebs-csi-role").outputs["arn"]
    statements = {s["Sid"]: s for s in policy_of(aws_dev_stack, KMS_KEY, "-volumes-key")["Statement"]}
    use = statements["EbsCsiDriverUsesTheKey"]
    assert use["Principal"] == {"AWS": role_arn}
    assert sorted(use["Action"]) == sorted(
        ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    )
    assert "Condition" not in use
    grants = statements["EbsCsiDriverGrantsToEbsOnly"]
    assert grants["Principal"] == {"AWS": role_arn}
    assert sorted(grants["Action"]) == ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"]
    assert grants["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}
    through_ec2 = statements["AccountUsesTheKeyThroughEc2Only"]
    assert through_ec2["Principal"] == {"AWS": ACCOUNT_ROOT}
    assert through_ec2["Condition"] == {
        "StringEquals": {"kms:ViaService": f"ec2.{REGION}.amazonaws.com", "kms:CallerAccount": ACCOUNT}
    }
    assert set(statements) == {
        "AccountAdministersTheKey",
        "EbsCsiDriverUsesTheKey",
        "EbsCsiDriverGrantsToEbsOnly",
        "AccountUsesTheKeyThroughEc2Only",
    }


def test_the_volume_key_is_made_after_the_role_its_policy_names(dev_stack):
    """KMS refuses a key policy whose principal does not exist yet."""
    key = named(dev_stack, KMS_KEY, "-volumes-key")
    assert named(dev_stack, ROLE, "-ebs-csi-role").urn in key.dependencies


def test_the_secrets_key_is_used_through_eks_only(aws_dev_stack):
    """EKS encrypts secrets through a grant that the cluster's creator makes, through EKS,
    when the cluster is created: no role is named, and use outside EKS is left to IAM."""
    statements = {s["Sid"]: s for s in policy_of(aws_dev_stack, KMS_KEY, "-secrets-key")["Statement"]}
    assert set(statements) == {"AccountAdministersTheKey", "AccountUsesTheKeyThroughEksOnly"}
    through_eks = statements["AccountUsesTheKeyThroughEksOnly"]
    assert through_eks["Principal"] == {"AWS": ACCOUNT_ROOT}
    assert "kms:CreateGrant" in through_eks["Action"]
    assert through_eks["Condition"] == {
        "StringEquals": {"kms:ViaService": f"eks.{REGION}.amazonaws.com", "kms:CallerAccount": ACCOUNT}
    }


def test_dev_vpc_spans_three_zones_with_one_nat_gateway_and_prod_one_per_zone(dev_stack, prod_stack):
    dev_vpc = dev_stack.one("awsx:ec2:Vpc").inputs
    prod_vpc = prod_stack.one("awsx:ec2:Vpc").inputs
    assert dev_vpc["numberOfAvailabilityZones"] == 3
    assert dev_vpc["natGateways"] == {"strategy": "Single"}
    assert prod_vpc["natGateways"] == {"strategy": "OnePerAz"}


def test_an_existing_vpc_is_used_as_given():
    # natGateways shapes a new VPC only; three subnets keep a zone from holding a majority.
    config = load_stack_config("dev")
    del config["redis-eks:natGateways"]
    subnets = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2", "subnet-0aaaaaaaaaaaaaaa3"]
    config.update({"redis-eks:vpcId": "vpc-0abcdef0123456789", "redis-eks:privateSubnetIds": json.dumps(subnets)})
    run = render_manifests.run_program(config)
    assert run.of_type("awsx:ec2:Vpc") == []
    cluster = run.one(EKS_CLUSTER).inputs
    assert cluster["vpcId"] == "vpc-0abcdef0123456789"
    assert cluster["privateSubnetIds"] == subnets
    assert run.one("aws:eks/nodeGroup:NodeGroup").inputs["subnetIds"] == cluster["privateSubnetIds"]


def test_the_public_endpoint_is_limited_to_the_configured_ranges(prod_stack):
    assert prod_stack.one(EKS_CLUSTER).inputs["publicAccessCidrs"] == ["203.0.113.0/24"]
    config = load_stack_config("dev") | {"redis-eks:endpointPublicAccess": "false"}
    del config["redis-eks:publicAccessCidrs"]  # which would do nothing, and is refused
    private_only = render_manifests.run_program(config).one(EKS_CLUSTER).inputs
    assert private_only["endpointPublicAccess"] is False
    assert "publicAccessCidrs" not in private_only


def test_managed_nodes_run_in_private_subnets_with_imdsv2_and_encrypted_disks(dev_stack, prod_stack):
    group = dev_stack.one("aws:eks/nodeGroup:NodeGroup").inputs
    assert group["subnetIds"] == [f"subnet-0000000000000000{i}" for i in range(3)]
    # The instance type is the launch template's, not the group's (Moving the node group below).
    assert "instanceTypes" not in group
    assert dev_stack.one("aws:ec2/launchTemplate:LaunchTemplate").inputs["instanceType"] == "t3.large"
    assert group["scalingConfig"] == {"minSize": 3, "desiredSize": 3, "maxSize": 4}
    assert prod_stack.one("aws:eks/nodeGroup:NodeGroup").inputs["scalingConfig"] == {
        "minSize": 3,
        "desiredSize": 6,
        "maxSize": 9,
    }
    template = dev_stack.one("aws:ec2/launchTemplate:LaunchTemplate").inputs
    assert group["launchTemplate"]["id"] == f"{dev_stack.one('aws:ec2/launchTemplate:LaunchTemplate').name}-id"
    assert template["metadataOptions"]["httpTokens"] == "required"
    (disk,) = template["blockDeviceMappings"]
    assert disk["ebs"]["encrypted"] == "true"
    node_role_policies = {
        r.inputs["policyArn"].rsplit("/", 1)[-1]
        for r in dev_stack.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if "-node-" in r.name
    }
    assert node_role_policies == {
        "AmazonEKSWorkerNodePolicy",
        "AmazonEKS_CNI_Policy",
        "AmazonEC2ContainerRegistryReadOnly",
    }


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_node_group_waits_for_its_role_policies_and_goes_before_them(stack, dev_stack, prod_stack):
    """Nodes that boot before their policies land fail to join (no CNI, no image pulls); on
    destroy, policies removed first leave nodes and ENIs that the node group cannot clean up."""
    run = {"dev": dev_stack, "prod": prod_stack}[stack]
    node_group = run.one(NODE_GROUP)
    node_policies = [r for r in run.of_type(POLICY_ATTACHMENT) if "-node-" in r.name]
    assert len(node_policies) == 3
    for attachment in node_policies:
        assert attachment.urn in node_group.dependencies, attachment.name
    assert run.one(EKS_CLUSTER).urn in node_group.dependencies


def test_the_ebs_csi_add_on_waits_for_its_roles_policies_and_goes_before_them(dev_stack):
    """The controller creates, attaches and encrypts volumes with its IRSA role: both its
    inline EC2 policy and its inline KMS policy must be in place before it runs, and stay
    until it is gone."""
    addon = named(dev_stack, ADDON, "-ebs-csi-driver")
    assert named(dev_stack, ROLE_POLICY, "-ebs-csi-ec2").urn in addon.dependencies
    assert named(dev_stack, ROLE_POLICY, "-ebs-csi-kms").urn in addon.dependencies
    assert dev_stack.one(NODE_GROUP).urn in addon.dependencies


def test_the_launch_template_keeps_the_imds_hop_limit_at_1(dev_stack):
    """Hop limit 1 on purpose (docs/design.md, "Design choices"): at 2 every pod, a Redis pod
    or any client pod included, can take the node role's credentials, and with them
    AmazonEKS_CNI_Policy's rights over every ENI of the account. At 1 the EBS CSI node plugin
    falls back to Kubernetes metadata (the Node's providerID and labels, which EKS sets); what
    it loses is the count of attached ENIs and volumes in its attach limit, which a handful of
    Redis volumes per node never reaches. The controller has its credentials from IRSA, not
    from IMDS. A change to 2 must come with a new decision in the design notes."""
    options = dev_stack.one("aws:ec2/launchTemplate:LaunchTemplate").inputs["metadataOptions"]
    assert options == {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 1}


def test_cluster_admin_arns_get_an_access_entry_with_cluster_admin_each(prod_stack):
    """CI and colleagues reach Kubernetes only through an access entry of their own: the
    cluster's creator is its only admin otherwise."""
    platform = prod_stack.one("redis-eks:index:EksPlatform")
    cluster = prod_stack.one(EKS_CLUSTER)
    entry = prod_stack.one(ACCESS_ENTRY)
    association = prod_stack.one(ACCESS_POLICY_ASSOCIATION)
    assert entry.inputs == {"clusterName": "redis-eks-prod", "principalArn": PROD_CI_ROLE, "type": "STANDARD"}
    assert association.inputs["clusterName"] == "redis-eks-prod"
    assert association.inputs["principalArn"] == PROD_CI_ROLE
    assert association.inputs["policyArn"] == CLUSTER_ADMIN_POLICY_ARN
    assert association.inputs["accessScope"] == {"type": "cluster"}
    for resource in (entry, association):
        assert resource.parent == platform.urn
        assert cluster.urn in resource.dependencies
    assert entry.urn in association.dependencies
    # Kubernetes is reached only once the access is in place (and on destroy, before it goes).
    assert association.urn in prod_stack.one("pulumi:providers:kubernetes").dependencies


def test_every_listed_principal_gets_its_own_entry_and_none_by_default(dev_stack):
    assert dev_stack.of_type(ACCESS_ENTRY) == [] and dev_stack.of_type(ACCESS_POLICY_ASSOCIATION) == []
    arns = [
        "arn:aws:iam::111122223333:role/redis-eks-ci-deploy",
        "arn:aws:iam::111122223333:role/aws-reserved/sso.amazonaws.com/eu-west-1/AWSReservedSSO_Admin_0123456789abcdef",
        "arn:aws:iam::444455556666:user/alice",
    ]
    run = build_stack("dev", clusterAdminArns=json.dumps(arns))
    entries = run.of_type(ACCESS_ENTRY)
    associations = run.of_type(ACCESS_POLICY_ASSOCIATION)
    assert sorted(r.inputs["principalArn"] for r in entries) == sorted(arns)
    assert sorted(r.inputs["principalArn"] for r in associations) == sorted(arns)
    assert {r.inputs["policyArn"] for r in associations} == {CLUSTER_ADMIN_POLICY_ARN}
    assert len({r.name for r in entries + associations}) == 6


def test_ebs_csi_add_on_is_pinned_and_uses_its_own_role(dev_stack):
    addon = named(dev_stack, ADDON, "-ebs-csi-driver").inputs
    role = named(dev_stack, "aws:iam/role:Role", "-ebs-csi-role")
    assert addon["addonName"] == "aws-ebs-csi-driver"
    # The fake cloud's default build: EKS's answer, not a table of ours.
    assert addon["addonVersion"] == render_manifests.FAKE_ADDON_BUILDS["aws-ebs-csi-driver"][0]
    assert addon["clusterName"] == "redis-eks-dev"
    assert addon["serviceAccountRoleArn"] == role.outputs["arn"]


def test_ebs_csi_role_trusts_only_the_controller_service_account_through_the_oidc_provider(dev_stack):
    trust = json.loads(named(dev_stack, "aws:iam/role:Role", "-ebs-csi-role").inputs["assumeRolePolicy"])
    (statement,) = trust["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"] == {
        "Federated": "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/MOCK"
    }
    assert statement["Condition"] == {
        "StringEquals": {
            "oidc.eks.eu-west-1.amazonaws.com/id/MOCK:sub": "system:serviceaccount:kube-system:ebs-csi-controller-sa",
            "oidc.eks.eu-west-1.amazonaws.com/id/MOCK:aud": "sts.amazonaws.com",
        }
    }
    assert EBS_CSI_SERVICE_ACCOUNT.endswith("kube-system:ebs-csi-controller-sa")


def test_ebs_csi_role_holds_no_managed_policy_and_rights_on_the_volume_key_only(dev_stack):
    # AmazonEBSCSIDriverPolicy would let the driver attach, snapshot or resize any volume of
    # the account: the role has only its two inline policies.
    assert [r.name for r in dev_stack.of_type(POLICY_ATTACHMENT) if "-ebs-csi-" in r.name] == []
    role_name = named(dev_stack, ROLE, "-ebs-csi-role").outputs["name"]
    role_policies = [r for r in dev_stack.of_type(ROLE_POLICY) if "-ebs-csi-" in r.name]
    assert sorted(r.name.rsplit("-", 1)[-1] for r in role_policies) == ["ec2", "kms"]
    assert {r.inputs["role"] for r in role_policies} == {f"{role_name}-id"}
    policy = json.loads(named(dev_stack, ROLE_POLICY, "-ebs-csi-kms").inputs["policy"])
    volume_key = "arn:aws:kms:eu-west-1:123456789012:key/redis-eks-dev-volumes-key"
    assert {statement["Resource"] for statement in policy["Statement"]} == {volume_key}
    grant = next(s for s in policy["Statement"] if "kms:CreateGrant" in s["Action"])
    assert grant["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}


# What the driver does to this cluster's volumes in EC2; none of it may reach another's.
MUTATING_EC2_ACTIONS = {
    "ec2:CreateVolume",
    "ec2:DeleteVolume",
    "ec2:AttachVolume",
    "ec2:DetachVolume",
    "ec2:ModifyVolume",
    "ec2:CreateSnapshot",
    "ec2:DeleteSnapshot",
    "ec2:CreateTags",
}


def ebs_csi_statements(run) -> list[dict]:
    return policy_of(run, ROLE_POLICY, "-ebs-csi-ec2")["Statement"]


def test_the_ebs_csi_driver_may_change_only_volumes_and_snapshots_tagged_as_this_clusters(aws_dev_stack):
    """Every mutating EC2 action of the driver's role is conditioned: on the volume's or
    snapshot's tags (the driver's marker and ours, naming this cluster), on the tags of the
    request that creates one, on the node being this cluster's (EKS's eks:cluster-name), or,
    for CreateTags, on tagging being part of a create call. Only Describe, which EC2 does
    not let a policy limit by resource or tag, is on "*"."""
    volumes = f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/*"
    snapshots = f"arn:aws:ec2:{REGION}:*:snapshot/*"
    instances = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*"
    ours = {"ebs.csi.aws.com/cluster": "true", CLUSTER_TAG_KEY: "redis-eks-dev"}
    allowed: dict[tuple[str, str], list] = {}
    for statement in ebs_csi_statements(aws_dev_stack):
        assert statement["Effect"] == "Allow"
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if statement["Resource"] == "*":
            assert all(action.startswith("ec2:Describe") for action in actions(statement)), statement
            continue
        for action in actions(statement):
            assert action in MUTATING_EC2_ACTIONS, action
            for resource in resources:
                allowed.setdefault((action, resource), []).append(statement.get("Condition"))

    def only(action: str, resource: str) -> dict:
        (condition,) = allowed.pop((action, resource))
        return condition

    def tags(condition: dict, prefix: str) -> dict:
        (equals,) = condition.values()
        assert list(condition) == ["StringEquals"]
        return {key.removeprefix(prefix): value for key, value in equals.items()}

    # A new volume or snapshot must be requested with both tags.
    assert tags(only("ec2:CreateVolume", volumes), "aws:RequestTag/") == ours
    assert tags(only("ec2:CreateSnapshot", snapshots), "aws:RequestTag/") == ours
    # Whatever exists already must carry both.
    for action, resource in [
        ("ec2:CreateVolume", snapshots),
        ("ec2:DeleteVolume", volumes),
        ("ec2:AttachVolume", volumes),
        ("ec2:DetachVolume", volumes),
        ("ec2:ModifyVolume", volumes),
        ("ec2:CreateSnapshot", volumes),
    ]:
        assert tags(only(action, resource), "ec2:ResourceTag/") == ours, (action, resource)
    # Ours, and not the DLM backups (components/eks_platform/backups.py), which carry both tags
    # too, copied from their volume.
    delete = only("ec2:DeleteSnapshot", snapshots)
    assert delete.pop("Null") == {"ec2:ResourceTag/aws:dlm:lifecycle-policy-id": "true"}
    assert tags(delete, "ec2:ResourceTag/") == ours
    for action in ("ec2:AttachVolume", "ec2:DetachVolume"):
        assert tags(only(action, instances), "ec2:ResourceTag/") == {"eks:cluster-name": "redis-eks-dev"}
    for resource in (volumes, snapshots):
        assert only("ec2:CreateTags", resource) == {
            "StringEquals": {"ec2:CreateAction": ["CreateVolume", "CreateSnapshot"]}
        }
    # Nothing else: no DeleteTags, no tagging after creation, nothing unconditioned.
    assert allowed == {}


def test_the_ebs_csi_driver_may_still_describe_what_it_manages(aws_dev_stack):
    (describe,) = [s for s in ebs_csi_statements(aws_dev_stack) if s["Resource"] == "*"]
    assert "Condition" not in describe
    assert {
        "ec2:DescribeAvailabilityZones",
        "ec2:DescribeInstances",
        "ec2:DescribeInstanceTypes",
        "ec2:DescribeSnapshots",
        "ec2:DescribeVolumes",
        "ec2:DescribeVolumesModifications",
    } <= set(describe["Action"])


def test_the_storage_class_tags_volumes_as_the_driver_role_requires(aws_dev_stack, aws_prod_stack):
    """The driver can create a volume only with the tag its role requires, so the StorageClass
    must put exactly that tag on; each cluster has its own value, so the prod driver cannot
    touch dev's volumes in the same account."""
    for run, cluster in ((aws_dev_stack, "redis-eks-dev"), (aws_prod_stack, "redis-eks-prod")):
        (create,) = [
            s
            for s in ebs_csi_statements(run)
            if s["Action"] == ["ec2:CreateVolume"] and s["Resource"].endswith(":volume/*")
        ]
        required = create["Condition"]["StringEquals"][f"aws:RequestTag/{CLUSTER_TAG_KEY}"]
        assert required == cluster
        parameters = run.one(STORAGE_CLASS).inputs["parameters"]
        tag_specifications = {k: v for k, v in parameters.items() if k.startswith("tagSpecification_")}
        assert tag_specifications == {"tagSpecification_1": f"{CLUSTER_TAG_KEY}={cluster}"}


def test_data_storage_class_is_encrypted_gp3_retained_and_waits_for_the_consumer(dev_stack):
    storage_class = dev_stack.one(STORAGE_CLASS)
    spec = storage_class.inputs
    assert spec["metadata"]["name"] == "data"
    assert spec["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "false"
    assert spec["provisioner"] == "ebs.csi.aws.com"
    assert spec["parameters"] == {
        "type": "gp3",
        "encrypted": "true",
        "kmsKeyId": "arn:aws:kms:eu-west-1:123456789012:key/redis-eks-dev-volumes-key",
        "csi.storage.k8s.io/fstype": "ext4",
        "iops": "3000",
        "throughput": "125",
        "tagSpecification_1": "redis-eks/cluster=redis-eks-dev",
    }
    assert spec["volumeBindingMode"] == "WaitForFirstConsumer"
    assert spec["allowVolumeExpansion"] is True
    assert spec["reclaimPolicy"] == "Retain"
    addon = named(dev_stack, ADDON, "-ebs-csi-driver")
    assert addon.urn in storage_class.dependencies


def test_the_volume_key_outlives_a_destroy_like_the_volumes_it_encrypts(dev_stack):
    assert named(dev_stack, KMS_KEY, "-volumes-key").retain_on_delete is True
    assert named(dev_stack, KMS_KEY, "-secrets-key").retain_on_delete is False


def test_a_configured_volume_key_replaces_the_created_one():
    arn = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    run = build_stack("dev", storageKmsKeyArn=arn)
    assert [r.name for r in run.of_type("aws:kms/key:Key")] == ["redis-eks-dev-secrets-key"]
    assert run.one(STORAGE_CLASS).inputs["parameters"]["kmsKeyId"] == arn
    policy = json.loads(named(run, "aws:iam/rolePolicy:RolePolicy", "-ebs-csi-kms").inputs["policy"])
    assert {statement["Resource"] for statement in policy["Statement"]} == {arn}


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:kms:eu-west-1:123456789012:alias/redis-volumes",
        "arn:aws:kms:eu-west-1:123456789012:key/my-key",
        "1234abcd-12ab-34cd-56ef-1234567890ab",
    ],
)
def test_a_volume_key_is_named_by_its_key_arn_not_an_alias(arn):
    """An IAM policy's Resource matches key ARNs only: with an alias ARN, the driver's and DLM's
    policies would allow nothing on the key that encrypts the volumes."""
    with pytest.raises(SettingsError) as refused:
        build_stack("dev", storageKmsKeyArn=arn)
    assert f"redis-eks:storageKmsKeyArn = {arn!r}" in str(refused.value)
    assert "key/<key id>" in str(refused.value) and "alias" in str(refused.value)


def test_a_multi_region_key_is_a_key_arn_too():
    arn = "arn:aws:kms:eu-west-1:123456789012:key/mrk-1234567890abcdef1234567890abcdef"
    assert build_stack("dev", storageKmsKeyArn=arn).one(STORAGE_CLASS).inputs["parameters"]["kmsKeyId"] == arn


def test_prod_storage_performance_comes_from_config(prod_stack):
    parameters = prod_stack.one(STORAGE_CLASS).inputs["parameters"]
    assert (parameters["iops"], parameters["throughput"]) == ("6000", "250")


def test_every_kubernetes_object_uses_the_platforms_explicit_provider(dev_stack, existing_stack):
    for run in (dev_stack, existing_stack):
        provider = run.one("pulumi:providers:kubernetes")
        kubernetes_objects = [r for r in run.resources if r.type.startswith("kubernetes:")]
        assert len(kubernetes_objects) >= 9
        for resource in kubernetes_objects:
            assert resource.provider.startswith(provider.urn + "::"), resource.name


def test_the_kubernetes_provider_gets_the_eks_kubeconfig(dev_stack):
    provider = dev_stack.one("pulumi:providers:kubernetes").inputs
    assert is_secret(provider["kubeconfig"])
    assert (
        json.loads(reveal(provider["kubeconfig"]))["clusters"][0]["cluster"]["server"]
        == "https://mock.eks.amazonaws.com"
    )


def test_existing_platform_builds_no_cloud_resources_and_uses_the_given_provisioner(existing_stack):
    # No access entries either: access to a cluster made elsewhere is managed there.
    assert [r for r in existing_stack.resources if r.type.startswith(("aws:", "awsx:", "eks:"))] == []
    storage_class = existing_stack.one(STORAGE_CLASS).inputs
    assert storage_class["metadata"]["name"] == "data"
    assert storage_class["provisioner"] == "rancher.io/local-path"
    assert "parameters" not in storage_class
    assert storage_class["reclaimPolicy"] == "Retain"
    kubeconfig = existing_stack.one("pulumi:providers:kubernetes").inputs["kubeconfig"]
    assert is_secret(kubeconfig) and "current-context: kind" in reveal(kubeconfig)


def test_stack_exports_cluster_name_storage_class_and_a_secret_kubeconfig(dev_stack, existing_stack):
    assert dev_stack.outputs["clusterName"].value == "redis-eks-dev"
    assert dev_stack.outputs["storageClassName"].value == "data"
    assert dev_stack.outputs["kubeconfig"].secret is True
    assert existing_stack.outputs["kubeconfig"].secret is True
    assert dev_stack.outputs["clusterName"].secret is False


def test_network_policies_are_enforced_by_the_vpc_cni(dev_stack):
    assert dev_stack.one(EKS_CLUSTER).inputs["vpcCniOptions"]["enableNetworkPolicy"] is True


def test_the_prod_cluster_cannot_be_deleted_until_its_protection_is_turned_off(dev_stack, prod_stack):
    """EKS answers InvalidRequestException to a delete of a protected cluster: a destroy run by
    mistake against prod stops there (docs/operations.md, Destroying a stack)."""
    assert prod_stack.one(EKS_CLUSTER).inputs["deletionProtection"] is True
    assert dev_stack.one(EKS_CLUSTER).inputs["deletionProtection"] is False


def test_the_cluster_stays_in_standard_support(dev_stack):
    assert dev_stack.one(EKS_CLUSTER).inputs["upgradePolicy"] == {"supportType": "STANDARD"}


def test_config_map_and_secret_are_updated_in_place(dev_stack, existing_stack):
    for run in (dev_stack, existing_stack):
        provider = run.one("pulumi:providers:kubernetes").inputs
        # Provider settings travel as strings.
        assert provider["enableConfigMapMutable"] == "true"
        assert provider["enableSecretMutable"] == "true"


# --- Upgrades: the control plane first, then the nodes and the add-ons ----------------------

AWS_EKS_CLUSTER = "aws:eks/cluster:Cluster"


@contextmanager
def eks_reports_its_control_plane(running: Optional[str] = None):
    """The fake cloud, also answering what pulumi-eks and EKS give back on AWS: the cluster
    component's `eksCluster` (its aws.eks.Cluster) at the version the control plane runs
    (`running`, or the one asked for, as once an upgrade is done), and a named build for
    each add-on and Kubernetes version asked for (getAddonVersion).

    It also records each registration's property dependencies: which resources a single input
    waits for. Yields that record: (type, name) -> {input: [URNs]}."""
    property_dependencies: dict[tuple[str, str], dict[str, list[str]]] = {}
    register = render_manifests._RecordingMonitor.RegisterResource
    new_resource = render_manifests._FakeCloud.new_resource
    answer = render_manifests._FakeCloud.call

    def register_resource(self, request):
        property_dependencies[(request.type, request.name)] = {
            key: list(dependencies.urns) for key, dependencies in request.propertyDependencies.items()
        }
        self.cloud.monitor, self.cloud.parent = self, request.parent
        return register(self, request)

    def create(self, args):
        id_, state = new_resource(self, args)
        if args.typ == EKS_CLUSTER:
            # The aws.eks.Cluster that pulumi-eks makes inside its component, as the engine
            # would hand it over: a reference, whose state the program then reads.
            component_urn = self.monitor.make_urn(self.parent, args.typ, args.name)
            urn = self.monitor.make_urn(component_urn, AWS_EKS_CLUSTER, f"{args.name}-eksCluster")
            version = running or args.inputs["version"]
            self.monitor.resources[urn] = MockMonitor.ResourceRegistration(
                urn, args.inputs["name"], {"name": args.inputs["name"], "version": version}
            )
            state["eksCluster"] = {
                rpc._special_sig_key: rpc._special_resource_sig,
                "urn": urn,
                "id": args.inputs["name"],
            }
        return id_, state

    def call(self, args):
        if args.token == "aws:eks/getAddonVersion:getAddonVersion":
            which = "newest" if args.args.get("mostRecent") else "default"
            build = f"{args.args['addonName']} {which} build for Kubernetes {args.args.get('kubernetesVersion')}"
            return {**args.args, "id": args.args["addonName"], "version": build}
        return answer(self, args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render_manifests._RecordingMonitor, "RegisterResource", register_resource)
        patch.setattr(render_manifests._FakeCloud, "new_resource", create)
        patch.setattr(render_manifests._FakeCloud, "call", call)
        yield property_dependencies


def test_the_node_group_runs_the_version_the_control_plane_reports():
    """The node group's version is an output of the cluster, not the setting: during an
    upgrade it follows once the control plane reports the new version, never before. Here the
    control plane still reports 1.35 while the stack asks for 1.36."""
    with eks_reports_its_control_plane(running="1.35") as property_dependencies:
        run = build_stack("dev", clusterVersion="1.36")
    cluster = run.one(EKS_CLUSTER)
    node_group = run.one(NODE_GROUP)
    assert cluster.inputs["version"] == "1.36"
    assert node_group.inputs["version"] == "1.35"
    # The input waits on the cluster component and on its aws.eks.Cluster, the control plane.
    waits_for = property_dependencies[(NODE_GROUP, node_group.name)]["version"]
    assert cluster.urn in waits_for
    assert [urn for urn in waits_for if urn.rsplit("::", 1)[0].endswith(f"${AWS_EKS_CLUSTER}")]
    assert cluster.urn in node_group.dependencies


def test_nodes_are_replaced_one_at_a_time(dev_stack, prod_stack):
    for run in (dev_stack, prod_stack):
        assert run.one(NODE_GROUP).inputs["updateConfig"] == {"maxUnavailable": 1}


def test_the_ebs_csi_driver_comes_after_the_control_plane_and_the_nodes_at_the_build_for_the_cluster_version():
    """The build EKS names for the version the control plane reports (aws.eks.get_addon_version),
    not a table in the code that goes stale or names a build EKS does not offer for a version."""
    with eks_reports_its_control_plane(running="1.35") as property_dependencies:
        run = build_stack("dev", clusterVersion="1.36")
    addon = named(run, ADDON, "-ebs-csi-driver")
    assert addon.inputs["addonVersion"] == "aws-ebs-csi-driver default build for Kubernetes 1.35"
    assert run.one(EKS_CLUSTER).urn in addon.dependencies
    assert run.one(NODE_GROUP).urn in addon.dependencies
    waits_for = property_dependencies[(ADDON, addon.name)]["addonVersion"]
    assert [urn for urn in waits_for if urn.rsplit("::", 1)[0].endswith(f"${AWS_EKS_CLUSTER}")]


def test_coredns_is_an_add_on_after_the_nodes_at_the_build_for_the_control_planes_version():
    """pulumi-eks makes no CoreDNS add-on on a cluster without its default node group: without
    this one CoreDNS would stay the self-managed deployment of the cluster's first version."""
    with eks_reports_its_control_plane(running="1.35"):
        run = build_stack("dev", clusterVersion="1.36")
    coredns = named(run, ADDON, "-coredns")
    assert coredns.inputs["addonName"] == "coredns"
    assert coredns.inputs["clusterName"] == "redis-eks-dev"
    assert coredns.inputs["addonVersion"] == "coredns default build for Kubernetes 1.35"
    assert coredns.inputs["resolveConflictsOnCreate"] == "OVERWRITE"
    assert coredns.inputs["preserve"] is True
    assert run.one(EKS_CLUSTER).urn in coredns.dependencies
    assert run.one(NODE_GROUP).urn in coredns.dependencies
    # The Redis workload starts on a cluster whose DNS is the managed one.
    assert coredns.urn in run.one(STORAGE_CLASS).dependencies


def test_a_new_cluster_version_moves_the_control_plane_the_nodes_and_the_add_ons():
    """Rendering 1.35, then 1.36: every version in the upgrade moves, each add-on to the build EKS
    names for the new version."""
    with eks_reports_its_control_plane():
        before, after = (build_stack("dev", clusterVersion=version) for version in ("1.35", "1.36"))

    def versions(run):
        return {
            "control plane": run.one(EKS_CLUSTER).inputs["version"],
            "nodes": run.one(NODE_GROUP).inputs["version"],
            "ebs-csi-driver": named(run, ADDON, "-ebs-csi-driver").inputs["addonVersion"],
            "coredns": named(run, ADDON, "-coredns").inputs["addonVersion"],
        }

    assert versions(before) == {
        "control plane": "1.35",
        "nodes": "1.35",
        "ebs-csi-driver": "aws-ebs-csi-driver default build for Kubernetes 1.35",
        "coredns": "coredns default build for Kubernetes 1.35",
    }
    assert versions(after) == {
        "control plane": "1.36",
        "nodes": "1.36",
        "ebs-csi-driver": "aws-ebs-csi-driver default build for Kubernetes 1.36",
        "coredns": "coredns default build for Kubernetes 1.36",
    }


# --- Pinned add-on builds, checked against what EKS offers --------------------------------


@contextmanager
def eks_offers(newest: dict[str, str]):
    """The fake cloud, answering getAddonVersion with `newest` (add-on -> build) for the newest
    build of any Kubernetes version, and recording every question asked."""
    asked: list[dict] = []
    answer = render_manifests._FakeCloud.call

    def call(self, args):
        if args.token == "aws:eks/getAddonVersion:getAddonVersion":
            asked.append(dict(args.args))
            if args.args.get("mostRecent"):
                return {**args.args, "id": args.args["addonName"], "version": newest[args.args["addonName"]]}
        return answer(self, args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render_manifests._FakeCloud, "call", call)
        yield asked


NEWEST = {
    "aws-ebs-csi-driver": "v1.69.0-eksbuild.1",
    "coredns": "v1.12.4-eksbuild.1",
    "kube-proxy": "v1.36.1-eksbuild.2",
    "vpc-cni": "v1.21.0-eksbuild.2",
}


def test_a_pinned_build_eks_does_not_offer_for_the_version_is_refused_at_preview():
    """Each pin is asked of EKS for the Kubernetes version the settings name, before anything is
    created (the control plane's own version is unknown on a first deploy); every refused pin
    of the run is named together, with what EKS offers."""
    run = render_manifests.ProgramRun()
    config = load_stack_config("dev")
    pins = {
        "clusterVersion": "1.36",
        "ebsCsiDriverVersion": "v1.70.0-eksbuild.1",
        "kubeProxyVersion": "v1.37.0-eksbuild.1",
        "corednsVersion": "v1.12.4-eksbuild.1",
    }
    config.update({f"redis-eks:{key}": value for key, value in pins.items()})
    with eks_offers(NEWEST) as asked, pytest.raises(SettingsError) as refused:
        render_manifests.run_program(config, stack="dev", run=run)
    message = str(refused.value)
    assert "redis-eks:ebsCsiDriverVersion = 'v1.70.0-eksbuild.1'" in message
    assert "up to v1.69.0-eksbuild.1 for Kubernetes 1.36" in message
    assert "redis-eks:kubeProxyVersion = 'v1.37.0-eksbuild.1'" in message
    assert "corednsVersion" not in message
    assert {(a["addonName"], a["kubernetesVersion"]) for a in asked if a.get("mostRecent")} == {
        ("aws-ebs-csi-driver", "1.36"),
        ("kube-proxy", "1.36"),
        ("coredns", "1.36"),
    }
    # Refused before anything registers: not even the guard, whose record a refused run must
    # not change.
    assert run.resources == []


def test_a_pin_eks_offers_is_installed_as_pinned():
    with eks_offers(NEWEST):
        run = build_stack(
            "dev",
            ebsCsiDriverVersion="v1.67.0-eksbuild.2",
            corednsVersion="v1.12.4-eksbuild.1",
            kubeProxyVersion="v1.35.0-eksbuild.2",
            vpcCniVersion="v1.21.0-eksbuild.2",
        )
    assert named(run, ADDON, "-ebs-csi-driver").inputs["addonVersion"] == "v1.67.0-eksbuild.2"
    assert named(run, ADDON, "-coredns").inputs["addonVersion"] == "v1.12.4-eksbuild.1"
    # pulumi-eks installs these two; it is handed the pins.
    cluster = run.one(EKS_CLUSTER).inputs
    assert cluster["kubeProxyAddonOptions"]["version"] == "v1.35.0-eksbuild.2"
    assert cluster["vpcCniOptions"]["addonVersion"] == "v1.21.0-eksbuild.2"


def test_without_pins_pulumi_eks_resolves_its_own_add_ons(dev_stack):
    cluster = dev_stack.one(EKS_CLUSTER).inputs
    assert "kubeProxyAddonOptions" not in cluster
    assert "addonVersion" not in cluster["vpcCniOptions"]


def test_add_on_pins_are_refused_on_a_cluster_made_elsewhere():
    with pytest.raises(SettingsError, match="corednsVersion only applies to platform=eks"):
        render_manifests.run_program(
            {
                "redis-eks:platform": "existing",
                "redis-eks:kubeconfig": KUBECONFIG,
                "redis-eks:storageProvisioner": "rancher.io/local-path",
                "redis-eks:corednsVersion": "v1.12.4-eksbuild.1",
            },
            stack="local",
        )


# --- The cluster's creator: EKS makes its access entry, the stack must not ------------------

CI_SESSION = "arn:aws:sts::111122223333:assumed-role/redis-eks-ci-deploy/GitHubActions"
COLLEAGUE = "arn:aws:iam::111122223333:role/platform-oncall"
COLLEAGUE_SESSION = "arn:aws:sts::111122223333:assumed-role/platform-oncall/alice"


@contextmanager
def aws_account_of(caller: str, clusters: Optional[dict[str, dict[str, str]]] = None, role_paths=None):
    """The fake cloud as AWS would answer a run by `caller` (an STS session or an IAM ARN):
    who calls, which EKS clusters exist (name -> tags), and a session's role with its path
    (role name -> path, as iam:GetRole knows it)."""
    answer = render_manifests._FakeCloud.call
    clusters = clusters or {}
    role_paths = role_paths or {}

    def call(self, args):
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": caller.split(":")[4], "arn": caller, "id": caller, "userId": "AROAEXAMPLE:session"}
        if args.token == "aws:eks/getClusters:getClusters":
            return {"id": REGION, "names": sorted(clusters), "region": REGION}
        if args.token == "aws:eks/getCluster:getCluster":
            return {"id": args.args["name"], "name": args.args["name"], "tags": clusters[args.args["name"]]}
        if args.token == "aws:iam/getSessionContext:getSessionContext":
            context = render_manifests.session_context(args.args["arn"])
            path = role_paths.get(context["issuerName"])
            if path:
                context["issuerArn"] = context["issuerArn"].replace(":role/", f":role/{path}", 1)
            return context
        return answer(self, args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render_manifests._FakeCloud, "call", call)
        yield


def admin_entries(run) -> list[str]:
    return sorted(r.inputs["principalArn"] for r in run.of_type(ACCESS_ENTRY))


def test_the_role_that_creates_the_cluster_gets_no_second_access_entry():
    """CI creates the prod cluster with the role the prod example lists: EKS gives that role its
    entry, and CreateAccessEntry for it again fails with 409 ResourceInUseException, after
    which no Kubernetes object is made. Its STS session resolves to the role, which is left
    out, recorded on the cluster and named in the outputs."""
    with aws_account_of(CI_SESSION):
        run = build_stack("prod")
    assert admin_entries(run) == []
    assert run.of_type(ACCESS_POLICY_ASSOCIATION) == []
    assert run.outputs["clusterAdminArnsLeftOut"].value == [PROD_CI_ROLE]
    assert run.outputs["clusterCreatorArn"].value == PROD_CI_ROLE
    assert run.one(EKS_CLUSTER).inputs["clusterTags"] == {"redis-eks/cluster-creator": PROD_CI_ROLE}


def test_a_creator_is_recognised_with_or_without_its_roles_path():
    """EKS's own entry names the role with its path (IAM Identity Center roles have one);
    clusterAdminArns may list it either way."""
    sso_role = "arn:aws:iam::111122223333:role/aws-reserved/sso.amazonaws.com/eu-west-1/AWSReservedSSO_Admin_0123"
    session = "arn:aws:sts::111122223333:assumed-role/AWSReservedSSO_Admin_0123/alice@example.com"
    for listed in (sso_role, "arn:aws:iam::111122223333:role/awsreservedsso_admin_0123"):
        with aws_account_of(
            session, role_paths={"AWSReservedSSO_Admin_0123": "aws-reserved/sso.amazonaws.com/eu-west-1/"}
        ):
            run = build_stack("dev", clusterAdminArns=json.dumps([listed, COLLEAGUE]))
        assert admin_entries(run) == [COLLEAGUE], listed
        assert run.outputs["clusterCreatorArn"].value == sso_role
        assert run.outputs["clusterAdminArnsLeftOut"].value == [listed]


def test_later_runs_leave_out_the_recorded_creator_whoever_runs_them():
    """The creator is fixed when the cluster is made. A colleague (listed) running a later
    update keeps their own entry, and CI's stays left out: leaving out each run's caller
    instead would delete the colleague's entry at the end of their own run."""
    arns = json.dumps([PROD_CI_ROLE, COLLEAGUE])
    with aws_account_of(COLLEAGUE_SESSION, clusters={"redis-eks-dev": {"redis-eks/cluster-creator": PROD_CI_ROLE}}):
        run = build_stack("dev", clusterAdminArns=arns)
    assert admin_entries(run) == [COLLEAGUE]
    assert run.outputs["clusterAdminArnsLeftOut"].value == [PROD_CI_ROLE]
    # The tag as it is: no change to the cluster.
    assert run.one(EKS_CLUSTER).inputs["clusterTags"] == {"redis-eks/cluster-creator": PROD_CI_ROLE}


def test_a_cluster_from_before_the_record_keeps_every_listed_entry():
    """A cluster created before the tag: whoever created it was not listed (its first update
    would have failed), so every listed ARN keeps its entry, the caller's included, and no
    caller is written down as the creator after the fact."""
    arns = json.dumps([PROD_CI_ROLE, COLLEAGUE])
    with aws_account_of(CI_SESSION, clusters={"redis-eks-dev": {"Name": "redis-eks-dev-eksCluster"}}):
        run = build_stack("dev", clusterAdminArns=arns)
    assert admin_entries(run) == sorted([PROD_CI_ROLE, COLLEAGUE])
    assert run.outputs["clusterAdminArnsLeftOut"].value == []
    assert run.outputs["clusterCreatorArn"].value is None
    assert "clusterTags" not in run.one(EKS_CLUSTER).inputs


def test_existing_platform_names_no_creator(existing_stack):
    assert existing_stack.outputs["clusterCreatorArn"].value is None
    assert existing_stack.outputs["clusterAdminArnsLeftOut"].value == []


# --- The instance type in the launch template; moving a group from before --------------------

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
OLD_GROUP = "redis-eks-dev-node-group-1a2b3c4"


@contextmanager
def eks_runs(node_groups: dict[str, list[str]], creator: Optional[str] = None):
    """The fake cloud with the dev stack's cluster running, and these node groups (EKS name ->
    the group's own instance types, empty when they are the launch template's)."""
    answer = render_manifests._FakeCloud.call
    tags = {"redis-eks/cluster-creator": creator} if creator else {}

    def call(self, args):
        if args.token == "aws:eks/getClusters:getClusters":
            return {"id": REGION, "names": ["redis-eks-dev"], "region": REGION}
        if args.token == "aws:eks/getCluster:getCluster":
            return {"id": "redis-eks-dev", "name": "redis-eks-dev", "tags": tags}
        if args.token == "aws:eks/getNodeGroups:getNodeGroups":
            return {"id": "redis-eks-dev", "clusterName": "redis-eks-dev", "names": sorted(node_groups)}
        if args.token == "aws:eks/getNodeGroup:getNodeGroup":
            group = args.args["nodeGroupName"]
            return {
                "id": group,
                "clusterName": "redis-eks-dev",
                "nodeGroupName": group,
                "instanceTypes": node_groups[group],
            }
        return answer(self, args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render_manifests._FakeCloud, "call", call)
        yield


def groups_of(run) -> dict[str, dict]:
    return {r.name: r.inputs for r in run.of_type(NODE_GROUP)}


def templates_of(run) -> dict[str, dict]:
    return {r.name: r.inputs for r in run.of_type(LAUNCH_TEMPLATE)}


def test_a_new_instance_type_rolls_the_nodes_instead_of_replacing_the_group():
    """EKS cannot change a group's instance types: on the group, a new type replaces it (scaled
    to zero, every Redis pod down at once). In the launch template, it is a new template
    version, which the group rolls out one node at a time through the PodDisruptionBudget. So
    the group's own inputs do not change at all; only its template does."""
    before, after = build_stack("dev"), build_stack("dev", nodeInstanceType="m6i.large")
    assert groups_of(before) == groups_of(after)
    (group,) = groups_of(after).values()
    assert "instanceTypes" not in group and group["updateConfig"] == {"maxUnavailable": 1}
    assert group["nodeGroupName"] == "redis-eks-dev-nodes"
    (template,) = templates_of(after).values()
    assert template["instanceType"] == "m6i.large"
    assert template["updateDefaultVersion"] is True
    assert group["launchTemplate"]["id"] == f"{after.one(LAUNCH_TEMPLATE).name}-id"


def test_a_group_from_before_is_not_moved_into_a_launch_template_silently():
    """A running group with its instance type on the group: EKS refuses a launch template that
    names one (terraform-aws-modules/terraform-aws-eks#1514), and dropping the group would
    scale it to zero. The default form is refused at preview, with the way."""
    run = render_manifests.ProgramRun()
    with eks_runs({OLD_GROUP: ["t3.large"]}), pytest.raises(SettingsError) as refused:
        render_manifests.run_program(load_stack_config("dev"), stack="dev", run=run)
    assert run.resources == []
    message = str(refused.value)
    assert "redis-eks:nodeGroupForm = 'launchTemplate' is refused" in message
    assert OLD_GROUP in message and "instanceTypes" in message and "moving" in message
    assert "nodeGroupDrained=<the old group's name>" in message


def test_a_group_from_before_is_kept_as_it_was():
    """nodeGroupForm instanceTypes renders exactly what stacks from before run: the same
    resources, the type on the group, a template without one."""
    with eks_runs({OLD_GROUP: ["t3.large"]}):
        run = build_stack("dev", nodeGroupForm="instanceTypes")
    assert set(groups_of(run)) == {"redis-eks-dev-node-group"}
    assert set(templates_of(run)) == {"redis-eks-dev-nodes"}
    group = groups_of(run)["redis-eks-dev-node-group"]
    assert group["instanceTypes"] == ["t3.large"] and "nodeGroupName" not in group
    assert "instanceType" not in templates_of(run)["redis-eks-dev-nodes"]
    # Its type cannot change: that would replace it.
    with (
        eks_runs({OLD_GROUP: ["t3.large"]}),
        pytest.raises(SettingsError, match=r"nodeInstanceType = 'm6i\.large' is refused"),
    ):
        build_stack("dev", nodeGroupForm="instanceTypes", nodeInstanceType="m6i.large")


def test_moving_a_group_from_before_is_a_second_group_then_the_drained_one_removed():
    """The blue/green move, step by step, as the previews would show it."""
    # 1. moving: the old group as it runs (its own type, whatever nodeInstanceType now says),
    #    and a launch-template group of the new type beside it; the add-ons need either.
    with eks_runs({OLD_GROUP: ["t3.large"]}):
        moving = build_stack("dev", nodeGroupForm="moving", nodeInstanceType="m6i.large")
    groups = groups_of(moving)
    assert set(groups) == {"redis-eks-dev-node-group", "redis-eks-dev-nodes"}
    assert groups["redis-eks-dev-node-group"]["instanceTypes"] == ["t3.large"]
    (old,) = [g for g in moving.of_type(NODE_GROUP) if g.name == "redis-eks-dev-node-group"]
    assert old.ignore_changes == ["instanceTypes"], "whatever EKS reports, the old group keeps its types"
    # Both groups wait for a roll of their nodes (a clusterVersion upgrade rolls both).
    assert {g.custom_timeouts[1] for g in moving.of_type(NODE_GROUP)} == {f"{15 * 60 + 3 * 20 * 60}s"}
    assert "instanceTypes" not in groups["redis-eks-dev-nodes"]
    assert templates_of(moving)["redis-eks-dev-node-template"]["instanceType"] == "m6i.large"
    assert "instanceType" not in templates_of(moving)["redis-eks-dev-nodes"]
    for addon in moving.of_type(ADDON):
        assert {g.urn for g in moving.of_type(NODE_GROUP)} <= set(addon.dependencies), addon.name
    # 2. (the operator cordons the old nodes and drains them one at a time: docs/operations.md)
    # 3. launchTemplate while the old group still runs: refused until its drain is named.
    with eks_runs({OLD_GROUP: ["t3.large"], "redis-eks-dev-nodes": []}), pytest.raises(SettingsError):
        build_stack("dev", nodeInstanceType="m6i.large")
    with eks_runs({OLD_GROUP: ["t3.large"], "redis-eks-dev-nodes": []}):
        done = build_stack(
            "dev", nodeInstanceType="m6i.large", acceptManualChange=json.dumps([f"nodeGroupDrained={OLD_GROUP}"])
        )
    # The old group is no longer in the program: Pulumi deletes it, empty.
    assert set(groups_of(done)) == {"redis-eks-dev-nodes"}
    assert groups_of(done)["redis-eks-dev-nodes"] == groups["redis-eks-dev-nodes"]
    # 4. Once it is gone, the setting is not needed, and the old form cannot come back.
    with eks_runs({"redis-eks-dev-nodes": []}):
        assert set(groups_of(build_stack("dev", nodeInstanceType="m6i.large"))) == {"redis-eks-dev-nodes"}
    with eks_runs({"redis-eks-dev-nodes": []}), pytest.raises(SettingsError, match="would delete"):
        build_stack("dev", nodeGroupForm="instanceTypes")


def test_moving_needs_a_group_to_move_from():
    with pytest.raises(SettingsError, match="no node group with its instance type on the group"):
        build_stack("dev", nodeGroupForm="moving")


# --- The first run after the guard came: judged against what AWS reports ------------------

RUNNING_SUBNETS = [f"subnet-0000000000000000{i}" for i in range(3)]
OTHER_VPC = "vpc-0fedcba9876543210"
VOLUME_KEY = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER_KEY = "arn:aws:kms:eu-west-1:111122223333:key/9876abcd-12ab-34cd-56ef-1234567890ab"


class EngineInvokeError(grpc.RpcError):
    """How the engine answers an invoke whose provider failed: a gRPC error with the provider's
    message (pulumi/pulumi pkg/resource/deploy/source_eval.go, resmon.Invoke)."""

    def __init__(self, details: str):
        super().__init__(details)
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        return self._details


@contextmanager
def aws_reports(
    version: str = "1.35",
    vpc: str = "vpc-0123456789abcdef0",
    vpc_tags: Optional[dict] = None,
    subnets: Optional[list[str]] = None,
    volumes: Optional[dict[str, str]] = None,
    addons: Optional[dict[str, str]] = None,
):
    """The fake cloud with the dev stack's cluster running as AWS would describe it: its
    control plane's version and VPC (tagged as the stack's own unless `vpc_tags` says
    otherwise), the subnets of its launch-template node group, its attached Redis volumes
    (volume ID -> KMS key ARN) and, given `addons`, the add-ons EKS runs on it (name -> build;
    DescribeAddon fails for any other, as for an add-on not on the cluster). Records the
    volume queries."""
    answer = render_manifests._FakeCloud.call
    tags = {"Name": "redis-eks-dev-vpc"} if vpc_tags is None else vpc_tags
    subnets = RUNNING_SUBNETS if subnets is None else subnets
    volumes = volumes or {}
    asked: list[dict] = []

    def call(self, args):
        if args.token == "aws:eks/getClusters:getClusters":
            return {"id": REGION, "names": ["redis-eks-dev"], "region": REGION}
        if args.token == "aws:eks/getCluster:getCluster":
            return {
                "id": "redis-eks-dev",
                "name": "redis-eks-dev",
                "tags": {},
                "version": version,
                "vpcConfig": {"vpcId": vpc, "subnetIds": subnets},
            }
        if args.token == "aws:ec2/getVpc:getVpc":
            assert args.args["id"] == vpc
            return {"id": vpc, "tags": tags}
        if args.token == "aws:eks/getNodeGroups:getNodeGroups":
            return {"id": "redis-eks-dev", "clusterName": "redis-eks-dev", "names": ["redis-eks-dev-nodes"]}
        if args.token == "aws:eks/getNodeGroup:getNodeGroup":
            name = args.args["nodeGroupName"]
            return {"id": name, "nodeGroupName": name, "instanceTypes": [], "subnetIds": subnets}
        if args.token == "aws:eks/getAddon:getAddon" and addons is not None:
            addon = args.args["addonName"]
            if addon not in addons:
                raise EngineInvokeError(
                    f"invocation of aws:eks/getAddon:getAddon returned an error: reading EKS Add-On "
                    f"(redis-eks-dev:{addon}): couldn't find resource"
                )
            return {"id": f"redis-eks-dev:{addon}", "addonName": addon, "addonVersion": addons[addon]}
        if args.token == "aws:ebs/getEbsVolumes:getEbsVolumes":
            asked.append(dict(args.args))
            return {"id": REGION, "ids": sorted(volumes)}
        if args.token == "aws:ebs/getVolume:getVolume":
            (volume_id,) = args.args["filters"][0]["values"]
            return {"id": volume_id, "volumeId": volume_id, "kmsKeyId": volumes[volume_id], "encrypted": True}
        return answer(self, args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render_manifests._FakeCloud, "call", call)
        yield asked


def dev_config(**overrides: Optional[str]) -> dict[str, str]:
    """The dev stack file with these settings (None: left out)."""
    config = load_stack_config("dev") | {f"redis-eks:{key}": value for key, value in overrides.items()}
    return {key: value for key, value in config.items() if value is not None}


def refused(**overrides: Optional[str]) -> str:
    """The refusal of a dev stack run with these settings: raised before anything registers."""
    run = render_manifests.ProgramRun()
    with pytest.raises(SettingsError) as raised:
        render_manifests.run_program(dev_config(**overrides), stack="dev", run=run)
    assert run.resources == [], "a refused run registers nothing, not even the guard"
    return str(raised.value)


def test_the_first_run_after_the_guard_came_judges_against_what_aws_reports():
    """A stack deployed before PlatformChangeGuard gets one on its next run, with no record to
    compare with: the guard lets that run's changes through. What AWS reports of the running
    cluster needs no record: an older clusterVersion is refused all the same, at preview."""
    from components.platform_change_guard import platform_change_failures

    assert platform_change_failures({}, {"cluster_version": "1.35"}) == []  # the guard's first run
    with aws_reports(version="1.36"):
        message = refused(clusterVersion="1.35")
    assert "redis-eks:clusterVersion = '1.35' is refused on this running stack" in message
    assert "the cluster runs Kubernetes 1.36, and EKS cannot downgrade a cluster" in message
    # What runs, as it runs: nothing to refuse; the upgrade to the next version goes ahead.
    with aws_reports(version="1.35"):
        assert build_stack("dev").one(EKS_CLUSTER).inputs["version"] == "1.35"
        assert build_stack("dev", clusterVersion="1.36").one(EKS_CLUSTER).inputs["version"] == "1.36"


def test_a_vpc_the_cluster_does_not_run_in_is_refused_whichever_way():
    given = {"vpcId": OTHER_VPC, "privateSubnetIds": json.dumps(RUNNING_SUBNETS), "natGateways": None}
    # The stack made its VPC; now it would be given another one: node group and cluster replaced.
    with aws_reports():
        message = refused(**given)
    assert f"redis-eks:vpcId = '{OTHER_VPC}' is refused on this running stack" in message
    # The cluster runs in a VPC the stack was given; unset, a new one would be made.
    with aws_reports(vpc=OTHER_VPC, vpc_tags={"Name": "shared-network"}):
        assert "redis-eks:vpcId = '' is refused on this running stack" in refused()
        # The same VPC and subnets, listed in another order: nothing to refuse.
        shuffled = {**given, "privateSubnetIds": json.dumps(list(reversed(RUNNING_SUBNETS)))}
        run = render_manifests.run_program(dev_config(**shuffled), stack="dev")
        assert run.one(NODE_GROUP).inputs["subnetIds"] == list(reversed(RUNNING_SUBNETS))
        # Other subnets of it: the node group would be replaced.
        other = json.dumps(["subnet-0000000000000000a", "subnet-0000000000000000b", "subnet-0000000000000000c"])
        assert "redis-eks:privateSubnetIds" in refused(**{**given, "privateSubnetIds": other})


def test_the_zone_count_of_the_stacks_own_vpc_is_the_node_groups_subnets():
    with aws_reports():
        assert "redis-eks:availabilityZoneCount = 2 is refused on this running stack" in refused(
            availabilityZoneCount="2", nodeMinSize="2", nodeDesiredSize="2", acceptRisks='["zoneMajority"]'
        )


def test_another_key_than_the_one_the_volumes_are_encrypted_with_is_refused():
    with aws_reports(volumes={"vol-0a": VOLUME_KEY, "vol-0b": VOLUME_KEY}) as asked:
        message = refused(storageKmsKeyArn=OTHER_KEY)
        assert f"redis-eks:storageKmsKeyArn = '{OTHER_KEY}' is refused on this running stack" in message
        assert "could no longer be attached" in message
        assert build_stack("dev", storageKmsKeyArn=VOLUME_KEY).one(STORAGE_CLASS)
    # This cluster's Redis volumes, attached: not the volumes a destroyed stack of the same name left.
    assert asked[0]["filters"] == [
        {"name": f"tag:{CLUSTER_TAG_KEY}", "values": ["redis-eks-dev"]},
        {"name": "status", "values": ["in-use"]},
    ]
    # No volume attached yet (a first run that stopped before the pods): nothing to compare.
    with aws_reports():
        assert build_stack("dev", storageKmsKeyArn=OTHER_KEY).one(STORAGE_CLASS)


def test_a_stack_that_named_its_key_by_an_alias_moves_to_the_key_arn_of_the_same_key():
    """Before the key ARN form was required, storageKmsKeyArn took an alias ARN (which no IAM
    policy's Resource matches). Such a stack is refused at preview with where to find the key
    ARN; the key ARN of the key its volumes report goes through, on that run (the guard has no
    record yet: AWS's answer judges it) and on the next (the guard's record holds it)."""
    from components.platform_change_guard import platform_change_failures

    alias = "arn:aws:kms:eu-west-1:111122223333:alias/redis-volumes"
    with aws_reports(volumes={"vol-0a": VOLUME_KEY}):
        message = refused(storageKmsKeyArn=alias)
        assert f"redis-eks:storageKmsKeyArn = {alias!r} is not valid" in message
        assert "aws kms describe-key --key-id alias/<name>" in message
        run = build_stack("dev", storageKmsKeyArn=VOLUME_KEY)
    assert run.one(STORAGE_CLASS).inputs["parameters"]["kmsKeyId"] == VOLUME_KEY
    recorded = run.one("pulumi-python:dynamic/redis:PlatformChangeGuard").inputs
    assert platform_change_failures(recorded, recorded) == []


def test_every_refusal_against_what_runs_comes_in_one_message():
    with aws_reports(version="1.36", volumes={"vol-0a": VOLUME_KEY}):
        message = refused(clusterVersion="1.35", storageKmsKeyArn=OTHER_KEY, availabilityZoneCount="4")
    assert message.startswith("3 stack settings are not valid:")
    for setting in ("clusterVersion", "storageKmsKeyArn", "availabilityZoneCount"):
        assert f"redis-eks:{setting} = " in message, setting


# --- Add-on builds on a running cluster: kept, never moved back --------------------------------

RUNNING_BUILDS = {
    "aws-ebs-csi-driver": "v1.67.0-eksbuild.1",
    "coredns": "v1.12.2-eksbuild.1",
    "kube-proxy": "v1.35.1-eksbuild.1",
    "vpc-cni": "v1.20.3-eksbuild.1",
}


def builds_of(run) -> dict[str, Optional[str]]:
    cluster = run.one(EKS_CLUSTER).inputs
    return {
        "aws-ebs-csi-driver": named(run, ADDON, "-ebs-csi-driver").inputs["addonVersion"],
        "coredns": named(run, ADDON, "-coredns").inputs["addonVersion"],
        "kube-proxy": (cluster.get("kubeProxyAddonOptions") or {}).get("version"),
        "vpc-cni": cluster["vpcCniOptions"].get("addonVersion"),
    }


def test_an_unpinned_add_on_keeps_the_build_that_runs():
    """AWS naming a new default or newest build is no reason to update an add-on on some
    unrelated `pulumi up` (EKS itself never does): while clusterVersion is what the control
    plane runs, each add-on stays at the build EKS reports for it, pulumi-eks's two included
    (which would otherwise ask EKS for the newest on every run). Here EKS's answers (the fake
    cloud's) differ from every running build."""
    assert all(render_manifests.FAKE_ADDON_BUILDS[addon][0] != build for addon, build in RUNNING_BUILDS.items())
    with aws_reports(addons=RUNNING_BUILDS):
        run = build_stack("dev")
    assert builds_of(run) == RUNNING_BUILDS
    # Removing a pin keeps the pinned build too: it is what runs.
    with aws_reports(addons={**RUNNING_BUILDS, "coredns": "v1.12.4-eksbuild.1"}):
        assert builds_of(build_stack("dev"))["coredns"] == "v1.12.4-eksbuild.1"


def test_an_add_on_not_on_the_cluster_yet_takes_the_build_eks_names():
    """A first run that stopped before the add-ons: DescribeAddon fails for them, and they are
    created at EKS's answer, as on a new cluster."""
    with aws_reports(addons={"kube-proxy": "v1.35.1-eksbuild.1", "vpc-cni": "v1.20.3-eksbuild.1"}):
        builds = builds_of(build_stack("dev"))
    assert builds["aws-ebs-csi-driver"] == render_manifests.FAKE_ADDON_BUILDS["aws-ebs-csi-driver"][0]
    assert builds["coredns"] == render_manifests.FAKE_ADDON_BUILDS["coredns"][0]
    assert builds["kube-proxy"] == "v1.35.1-eksbuild.1" and builds["vpc-cni"] == "v1.20.3-eksbuild.1"


def test_a_new_cluster_version_moves_the_add_ons_but_never_to_an_older_build():
    """With a new clusterVersion each unpinned add-on takes EKS's answer for the version the
    control plane reports once upgraded; if that answer for the new version is older than what
    runs, the preview refuses it and says what to pin."""
    older = {**RUNNING_BUILDS, "aws-ebs-csi-driver": "v1.65.0-eksbuild.1", "coredns": "v1.12.0-eksbuild.1"}
    older |= {"kube-proxy": "v1.35.0-eksbuild.1", "vpc-cni": "v1.20.0-eksbuild.1"}
    with aws_reports(addons=older):
        builds = builds_of(build_stack("dev", clusterVersion="1.36"))
    assert builds["aws-ebs-csi-driver"] == render_manifests.FAKE_ADDON_BUILDS["aws-ebs-csi-driver"][0]
    # pulumi-eks asks EKS itself, for the version its control plane reports.
    assert builds["kube-proxy"] is None and builds["vpc-cni"] is None
    # EKS names v1.66.0-eksbuild.1 for the driver (the fake cloud), older than v1.67.0 that runs.
    with aws_reports(addons=RUNNING_BUILDS):
        message = refused(clusterVersion="1.36")
    assert "redis-eks:ebsCsiDriverVersion is not set, and the aws-ebs-csi-driver build EKS names for " in message
    assert "Kubernetes 1.36, v1.66.0-eksbuild.1, is older than v1.67.0-eksbuild.1, which runs" in message
    assert "Pin v1.67.0-eksbuild.1 if EKS offers it for 1.36" in message
    assert "coredns" in message  # v1.12.1-eksbuild.2 for 1.36 is older than v1.12.2-eksbuild.1 too


def test_a_pin_older_than_the_build_that_runs_is_refused():
    with aws_reports(addons=RUNNING_BUILDS):
        message = refused(ebsCsiDriverVersion="v1.66.0-eksbuild.1")
        assert "redis-eks:ebsCsiDriverVersion = 'v1.66.0-eksbuild.1' is refused on this running stack" in message
        assert "aws-ebs-csi-driver runs v1.67.0-eksbuild.1" in message
        for pin in ("v1.67.0-eksbuild.1", "v1.68.0-eksbuild.1"):
            assert builds_of(build_stack("dev", ebsCsiDriverVersion=pin))["aws-ebs-csi-driver"] == pin
