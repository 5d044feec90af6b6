"""Every Kubernetes object the program renders passes the API's strict schema for the stack's version,
and the review command prints them."""

import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from tests.unit.conftest import build_stack
from tools.render_manifests import MASK, PROJECT_DIR, kubernetes_manifests


def validate_strict(manifests, cluster_version):
    assert manifests
    for manifest in manifests:
        kubernetes_validate.validate(manifest, f"{cluster_version}.0", strict=True)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_stack_manifests_pass_strict_validation(stack, request):
    run = request.getfixturevalue(f"{stack}_stack")
    version = run.one("eks:index:Cluster").inputs["version"]
    validate_strict(kubernetes_manifests(run), version)


@pytest.mark.parametrize("version", ["1.35", "1.36"])
def test_every_supported_cluster_version_accepts_the_manifests(version):
    run = build_stack("dev", clusterVersion=version, shards="4", replicasPerShard="2")
    validate_strict(kubernetes_manifests(run), version)


def test_existing_platform_manifests_pass_strict_validation(existing_stack):
    validate_strict(kubernetes_manifests(existing_stack), "1.35")


def test_strict_validation_catches_a_misspelt_field(dev_stack):
    statefulset = next(m for m in kubernetes_manifests(dev_stack) if m["kind"] == "StatefulSet")
    statefulset["spec"]["replica"] = 6
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, "1.35.0", strict=True)


def test_render_command_prints_every_object_with_secrets_masked():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.render_manifests",
            "--stack",
            "dev",
            "--set",
            "password=Review-Password-0123456789",
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    documents = list(yaml.safe_load_all(result.stdout))
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == sorted(
        [
            "Namespace",
            "StorageClass",
            "Secret",
            "ConfigMap",
            "ConfigMap",
            "Service",
            "Service",
            "StatefulSet",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
    )
    secret = next(d for d in documents if d["kind"] == "Secret")
    assert secret["stringData"] == {"password": MASK, "users.acl": MASK, "auth.conf": MASK}
    assert "Review-Password-0123456789" not in result.stdout


def test_render_command_reports_a_bad_setting_without_a_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "tools.render_manifests", "--set", "shards=2"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "redis-eks:shards = '2'" in result.stderr
    assert "Traceback" not in result.stderr
