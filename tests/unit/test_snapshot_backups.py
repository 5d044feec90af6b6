"""Scheduled EBS snapshots (DLM): what the policy targets and keeps, and what its role may do."""

import json

import pytest

from components.stack_settings import DEFAULT_BACKUP_SCHEDULE
from tests.unit.conftest import build_stack
from tools.render_manifests import MOCK_ACCOUNT

DLM_POLICY = "aws:dlm/lifecyclePolicy:LifecyclePolicy"
BACKUPS = "redis-eks:index:SnapshotBackups"
PLATFORM = "redis-eks:index:EksPlatform"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
KMS_KEY = "aws:kms/key:Key"
REGION = "eu-west-1"
COPY_REGION = "eu-central-1"


@pytest.fixture(scope="module")
def copying_stack():
    return build_stack("dev", backupCopyRegion=COPY_REGION, backupCopyRetentionDays="30")


def child_of(run, type_token: str, parent):
    (resource,) = [r for r in run.of_type(type_token) if r.parent == parent.urn]
    return resource


def dlm_role(run):
    return child_of(run, ROLE, run.one(BACKUPS))


def role_statements(run) -> list[dict]:
    return json.loads(child_of(run, ROLE_POLICY, run.one(BACKUPS)).inputs["policy"])["Statement"]


def schedule(run) -> dict:
    (only,) = run.one(DLM_POLICY).inputs["policyDetails"]["schedules"]
    return only


def listed(value) -> list:
    return value if isinstance(value, list) else [value]


def volume_tags(run) -> dict[str, str]:
    """The tags the `data` StorageClass has the EBS CSI driver put on every volume."""
    parameters = run.one(STORAGE_CLASS).inputs["parameters"]
    return dict(value.split("=", 1) for key, value in parameters.items() if key.startswith("tagSpecification_"))


def by_action_and_resource(statements: list[dict]) -> dict[tuple[str, str], list]:
    allowed: dict[tuple[str, str], list] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        for action in listed(statement["Action"]):
            for resource in listed(statement["Resource"]):
                allowed.setdefault((action, resource), []).append(statement.get("Condition"))
    return allowed


def test_the_policy_snapshots_exactly_the_volumes_the_storage_class_tags(dev_stack, prod_stack):
    """What DLM targets is read back from the StorageClass's parameters: a tag that drifted
    apart from it would leave every volume without a backup, silently."""
    for run in (dev_stack, prod_stack):
        tags = volume_tags(run)
        assert len(tags) == 1
        details = run.one(DLM_POLICY).inputs["policyDetails"]
        assert details["targetTags"] == tags
        assert details["resourceTypes"] == ["VOLUME"]
        assert details["policyType"] == "EBS_SNAPSHOT_MANAGEMENT"
        # The role may snapshot exactly those volumes.
        ((key, value),) = tags.items()
        (snapshot_volumes,) = [s for s in role_statements(run) if s["Sid"] == "SnapshotOurVolumesOnly"]
        assert snapshot_volumes["Condition"] == {"StringEquals": {f"ec2:ResourceTag/{key}": value}}
    # Each cluster its own: prod's policy never takes dev's volumes.
    assert volume_tags(dev_stack) != volume_tags(prod_stack)


def test_the_schedule_and_the_count_kept_come_from_the_settings(dev_stack):
    default = schedule(dev_stack)
    assert default["createRule"] == {"cronExpression": DEFAULT_BACKUP_SCHEDULE}
    assert default["retainRule"] == {"count": 7}
    weekly = schedule(build_stack("dev", backupSchedule="cron(30 1 ? * SUN *)", backupRetentionCount="12"))
    assert weekly["createRule"] == {"cronExpression": "cron(30 1 ? * SUN *)"}
    assert weekly["retainRule"] == {"count": 12}


def test_snapshots_are_tagged_with_their_volume_the_cluster_and_the_stack(dev_stack):
    """copy_tags brings the volume's own tags (the claim and pod it belonged to); the added
    tags use keys the volumes do not carry, so that no snapshot gets a key twice."""
    rule = schedule(dev_stack)
    assert rule["copyTags"] is True
    assert rule["tagsToAdd"] == {"redis-eks/backup-of": "redis-eks-dev", "redis-eks/stack": "dev"}
    assert not set(rule["tagsToAdd"]) & set(volume_tags(dev_stack))


def test_the_policy_is_enabled_and_runs_as_its_own_role(dev_stack):
    policy = dev_stack.one(DLM_POLICY)
    role = dlm_role(dev_stack)
    assert policy.inputs["state"] == "ENABLED"
    assert policy.inputs["executionRoleArn"] == role.outputs["arn"]
    assert role.urn in policy.dependencies
    backups = dev_stack.one(BACKUPS)
    assert backups.parent == dev_stack.one(PLATFORM).urn
    assert policy.parent == backups.urn


def test_copies_go_to_another_region_only_when_one_is_set_encrypted_and_kept_for_days(dev_stack, copying_stack):
    assert "crossRegionCopyRules" not in schedule(dev_stack)
    (copy,) = schedule(copying_stack)["crossRegionCopyRules"]
    assert copy == {
        "target": COPY_REGION,
        "encrypted": True,
        "copyTags": True,
        "retainRule": {"interval": 30, "intervalUnit": "DAYS"},
    }
    # No key named: the copy region's default EBS key encrypts the copies.
    assert "cmkArn" not in copy


def test_the_role_is_trusted_by_dlm_only(dev_stack):
    trust = json.loads(dlm_role(dev_stack).inputs["assumeRolePolicy"])
    (statement,) = trust["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "dlm.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"
    # As AWS's own DLM role: a condition DLM did not meet would stop every run silently.
    assert "Condition" not in statement


@pytest.mark.parametrize("stack", ["dev", "copying"])
def test_the_role_has_no_managed_policy_and_no_wildcard_action(stack, dev_stack, copying_stack):
    """In place of AWSDataLifecycleManagerServiceRole (snapshot, copy, share and delete any
    volume and snapshot of the account): one inline policy; "*" as a resource for EC2's
    Describe calls only, which take no other."""
    run = {"dev": dev_stack, "copying": copying_stack}[stack]
    role = dlm_role(run)
    # A RolePolicyAttachment names its role by name or by ID (the mocks' "<name>-id").
    role_refs = {role.outputs["name"], f"{role.name}-id"}
    assert [r.name for r in run.of_type(POLICY_ATTACHMENT) if r.inputs["role"] in role_refs] == []
    assert [r.name for r in run.of_type(ROLE_POLICY) if r.inputs["role"] in role_refs] == [
        child_of(run, ROLE_POLICY, run.one(BACKUPS)).name
    ]
    for statement in role_statements(run):
        for action in listed(statement["Action"]):
            # Families of one KMS call (GenerateDataKey*, ReEncrypt*) are fine; a service's "*" is not.
            assert action != "*" and not action.endswith(":*"), action
        if statement["Resource"] == "*":
            assert all(action.startswith("ec2:Describe") for action in listed(statement["Action"])), statement
            assert "Condition" not in statement


def test_the_role_may_do_only_what_the_policy_does(dev_stack):
    """Snapshot the tagged volumes; tag a snapshot only in the call that creates it; delete
    only the snapshots this policy made (DLM tags each with the policy's ID); use the volumes'
    key only through EC2, with grants for AWS resources only. Nothing else."""
    policy_id = f"{dev_stack.one(DLM_POLICY).name}-id"
    volume_key = next(r for r in dev_stack.of_type(KMS_KEY) if r.name.endswith("-volumes-key")).outputs["arn"]
    volumes = f"arn:aws:ec2:{REGION}:{MOCK_ACCOUNT}:volume/*"
    snapshots = f"arn:aws:ec2:{REGION}::snapshot/*"
    ((tag_key, tag_value),) = volume_tags(dev_stack).items()
    through_ec2 = {"kms:ViaService": [f"ec2.{REGION}.amazonaws.com"]}
    allowed = by_action_and_resource(role_statements(dev_stack))

    def only(action: str, resource: str):
        (condition,) = allowed.pop((action, resource))
        return condition

    for action in ("ec2:DescribeVolumes", "ec2:DescribeSnapshots", "ec2:DescribeAvailabilityZones"):
        assert only(action, "*") is None
    assert only("ec2:CreateSnapshot", volumes) == {"StringEquals": {f"ec2:ResourceTag/{tag_key}": tag_value}}
    assert only("ec2:CreateSnapshot", snapshots) is None
    # Tags on snapshots only (never on a volume, which would make it a target).
    assert only("ec2:CreateTags", snapshots) is None
    assert ("ec2:CreateTags", volumes) not in allowed
    assert only("ec2:DeleteSnapshot", snapshots) == {
        "StringEquals": {"ec2:ResourceTag/aws:dlm:lifecycle-policy-id": policy_id}
    }
    for action in ("kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*"):
        assert only(action, volume_key) == {"StringEquals": through_ec2}
    assert only("kms:CreateGrant", volume_key) == {
        "StringEquals": through_ec2,
        "Bool": {"kms:GrantIsForAWSResource": "true"},
    }
    assert allowed == {}


def test_the_role_may_copy_only_with_a_copy_region_and_only_this_policys_snapshots(copying_stack):
    policy_id = f"{copying_stack.one(DLM_POLICY).name}-id"
    here = f"arn:aws:ec2:{REGION}::snapshot/*"
    there = f"arn:aws:ec2:{COPY_REGION}::snapshot/*"
    keys_there = f"arn:aws:kms:{COPY_REGION}:{MOCK_ACCOUNT}:key/*"
    allowed = by_action_and_resource(role_statements(copying_stack))
    this_policys = {"StringEquals": {"ec2:ResourceTag/aws:dlm:lifecycle-policy-id": policy_id}}
    assert allowed[("ec2:CopySnapshot", here)] == [this_policys]
    assert allowed[("ec2:CopySnapshot", there)] == [None]
    assert allowed[("ec2:DeleteSnapshot", there)] == [this_policys]
    assert allowed[("ec2:CreateTags", there)] == [None]
    # Keys of the copy region: only through EC2 there, grants for AWS resources only.
    through_ec2_there = {"kms:ViaService": f"ec2.{COPY_REGION}.amazonaws.com"}
    assert allowed[("kms:Decrypt", keys_there)] == [{"StringEquals": through_ec2_there}]
    assert allowed[("kms:CreateGrant", keys_there)] == [
        {"StringEquals": through_ec2_there, "Bool": {"kms:GrantIsForAWSResource": "true"}}
    ]
    assert not [key for key in allowed if key[0] == "ec2:CopySnapshot" and key[1] not in (here, there)]


def test_without_a_copy_region_the_role_reaches_no_other_region(dev_stack):
    for statement in role_statements(dev_stack):
        assert "ec2:CopySnapshot" not in listed(statement["Action"])
        for resource in listed(statement["Resource"]):
            assert resource == "*" or f":{REGION}:" in resource, resource


def test_the_role_policy_names_the_dlm_policy_it_serves(dev_stack):
    role_policy = child_of(dev_stack, ROLE_POLICY, dev_stack.one(BACKUPS))
    assert dev_stack.one(DLM_POLICY).urn in role_policy.dependencies
    assert role_policy.inputs["role"] == f"{dlm_role(dev_stack).name}-id"


def test_the_ebs_csi_driver_cannot_delete_the_backups(dev_stack):
    """The backups carry the driver's tags (copied from their volume), which let the driver
    delete the snapshots it makes; not these."""
    csi = next(r for r in dev_stack.of_type(ROLE_POLICY) if r.name.endswith("-ebs-csi-ec2"))
    (delete,) = [s for s in json.loads(csi.inputs["policy"])["Statement"] if "ec2:DeleteSnapshot" in s["Action"]]
    assert delete["Condition"]["Null"] == {"ec2:ResourceTag/aws:dlm:lifecycle-policy-id": "true"}


def test_no_backups_when_the_schedule_is_off():
    run = build_stack("dev", backupSchedule="off")
    assert [r for r in run.resources if r.type.startswith("aws:dlm/") or r.type == BACKUPS] == []
    assert [r for r in run.of_type(ROLE) if "-backups-" in r.name] == []


def test_no_backups_on_a_cluster_made_elsewhere(existing_stack):
    assert [r for r in existing_stack.resources if r.type.startswith("aws:dlm/") or r.type == BACKUPS] == []
