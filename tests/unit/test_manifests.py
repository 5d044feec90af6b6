"""Every Kubernetes object the program renders passes the API's strict schema for the stack's version
(custom resources their CRD's, see testkit.custom_resources), and the review command prints them."""

import copy
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from cluster_logic.credentials import monitoring_password
from testkit.custom_resources import CustomResourceInvalid, UnknownKind, validate_manifest
from tests.unit.conftest import build_stack
from tools.render_manifests import MASK, PROJECT_DIR, kubernetes_manifests


def validate_strict(manifests, cluster_version):
    assert manifests
    for manifest in manifests:
        validate_manifest(manifest, cluster_version)


@pytest.fixture(scope="module")
def monitoring_stack():
    """The dev stack with the Prometheus Operator's objects (a ServiceMonitor, a PrometheusRule)."""
    return build_stack("dev", monitoring="true", monitoringLabels='{"release": "kube-prometheus-stack"}')


def custom_resource(run, kind):
    (manifest,) = [m for m in kubernetes_manifests(run) if m["kind"] == kind]
    return manifest


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


def test_monitoring_manifests_pass_strict_validation_custom_resources_included(monitoring_stack):
    manifests = kubernetes_manifests(monitoring_stack)
    assert {"ServiceMonitor", "PrometheusRule"} <= {m["kind"] for m in manifests}
    validate_strict(manifests, monitoring_stack.one("eks:index:Cluster").inputs["version"])


def test_strict_validation_catches_a_misspelt_field(dev_stack):
    statefulset = next(m for m in kubernetes_manifests(dev_stack) if m["kind"] == "StatefulSet")
    statefulset["spec"]["replica"] = 6
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(statefulset, "1.35")


@pytest.mark.parametrize(
    ("where", "misspelt", "value"),
    [
        (("spec",), "namespaceSelectr", {"matchNames": ["redis"]}),
        (("spec", "endpoints", 0), "scrapeIntervall", "15s"),
        (("spec", "selector"), "matchLabel", {"app.kubernetes.io/component": "metrics"}),
    ],
    ids=["spec", "endpoint", "selector"],
)
def test_strict_validation_catches_a_misspelt_service_monitor_field(monitoring_stack, where, misspelt, value):
    service_monitor = custom_resource(monitoring_stack, "ServiceMonitor")
    validate_manifest(service_monitor, "1.35")
    broken = copy.deepcopy(service_monitor)
    target = broken
    for key in where:
        target = target[key]
    target[misspelt] = value
    with pytest.raises(CustomResourceInvalid) as refused:
        validate_manifest(broken, "1.35")
    assert refused.value.errors == [
        f"{'/'.join(map(str, where))}: Additional properties are not allowed ('{misspelt}' was unexpected)"
    ]


def test_strict_validation_checks_a_custom_resources_metadata(monitoring_stack):
    # The CRD schemas say only `metadata: {type: object}`; the API server checks ObjectMeta.
    rule = custom_resource(monitoring_stack, "PrometheusRule")
    rule["metadata"]["lables"] = rule["metadata"].pop("labels")
    with pytest.raises(CustomResourceInvalid, match="'lables' was unexpected"):
        validate_manifest(rule, "1.35")
    rule["metadata"]["labels"] = {"release": 1}
    del rule["metadata"]["lables"]
    with pytest.raises(CustomResourceInvalid, match="1 is not of type 'string'"):
        validate_manifest(rule, "1.35")


def test_strict_validation_refuses_a_kind_it_has_no_schema_for(monitoring_stack):
    service_monitor = custom_resource(monitoring_stack, "ServiceMonitor")
    for api_version, kind in [
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1alpha1", "ServiceMonitor"),
    ]:
        with pytest.raises(UnknownKind, match=f"kind {kind} of {api_version} is neither"):
            validate_manifest({**service_monitor, "apiVersion": api_version, "kind": kind}, "1.35")


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
            "Service",
            "StatefulSet",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
    )
    secret = next(d for d in documents if d["kind"] == "Secret")
    assert secret["stringData"] == {
        "password": MASK,
        "users.acl": MASK,
        "auth.conf": MASK,
        "exporter-passwords.json": MASK,
    }
    assert "Review-Password-0123456789" not in result.stdout
    assert monitoring_password("Review-Password-0123456789") not in result.stdout


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
