"""Metrics and alerts as Kubernetes receives them: the redis_exporter sidecar, its password
file and ACL user, the metrics Service and its NetworkPolicy rule, and (monitoring: true)
the Prometheus Operator's ServiceMonitor and PrometheusRule."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from cluster_logic.credentials import (
    MONITORING_USER,
    monitoring_password,
    password_hash,
    replication_password,
)
from components import metrics_exporter as exporter
from components import redis_node_files as files
from components.monitoring_crds import PROMETHEUS_OPERATOR_COMMIT, PROMETHEUS_OPERATOR_RELEASE, crd_documents
from components.stack_settings import DEFAULT_EXPORTER_IMAGE, DEFAULT_RUNBOOK_BASE_URL, SettingsError
from testkit.custom_resources import crd_schema, custom_resource_errors, validate_manifest
from tests.unit.conftest import build_stack, is_secret, reveal
from tests.unit.test_manifests import custom_resource
from tests.unit.test_redis_workload import SECRET, SELECTOR, SERVICE, STATEFUL_SET, pod_spec
from tools.render_manifests import kubernetes_manifests

PASSWORD = "Configured-Password-0123456789"
EXPORTER = "exporter"
PASSWORD_PATH = f"{files.POD_PATHS.secret_dir}/{exporter.PASSWORD_FILE_KEY}"
CA_PATH = f"{files.POD_PATHS.tls_dir}/{files.TLS_CA_FILE}"
METRICS_SERVICE = "redis-cluster-metrics"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
SERVICE_MONITOR = "kubernetes:monitoring.coreos.com/v1:ServiceMonitor"
PROMETHEUS_RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
CLUSTER_MONITORING = "redis-eks:index:ClusterMonitoring"
MONITORING_LABELS = {"release": "kube-prometheus-stack", "team": "cache"}
# The monitoring stack runs in a namespace of its own, so that "the stack's namespace" is
# not the default by chance.
MONITORED_NAMESPACE = "cache"


@pytest.fixture(scope="module", params=[False, True], ids=["plaintext", "tls"])
def stack(request):
    """(tls, a dev stack with a known admin password, TLS off or on)."""
    tls = request.param
    return tls, build_stack("dev", password=PASSWORD, tls=str(tls).lower())


@pytest.fixture(scope="module")
def monitoring_stack():
    return build_stack(
        "dev", monitoring="true", monitoringLabels=json.dumps(MONITORING_LABELS), namespace=MONITORED_NAMESPACE
    )


def exporter_container(run) -> dict:
    (container,) = [c for c in pod_spec(run)["containers"] if c["name"] == EXPORTER]
    return container


def auth_secret_files(run) -> dict[str, str]:
    """The auth Secret's files, revealed (they are a Pulumi secret)."""
    (secret,) = [r.inputs for r in run.of_type(SECRET) if r.inputs["metadata"]["name"] == "redis-cluster-auth"]
    assert is_secret(secret["stringData"])
    return reveal(secret["stringData"])


def flag(args: list[str], name: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}=")]
    return value


def service_labels(run) -> dict[str, dict[str, str]]:
    return {r.inputs["metadata"]["name"]: r.inputs["metadata"]["labels"] for r in run.of_type(SERVICE)}


def pod_spec_labels(run) -> dict[str, str]:
    return run.one(STATEFUL_SET).inputs["spec"]["template"]["metadata"]["labels"]


def metrics_rules(run) -> list[dict]:
    """The NetworkPolicy's ingress rules that name the exporter's port."""
    spec = run.one(NETWORK_POLICY).inputs["spec"]
    return [r for r in spec["ingress"] if any(p["port"] == exporter.EXPORTER_PORT for p in r["ports"])]


# -- the exporter sidecar -------------------------------------------------------------------


def test_exporter_runs_the_pinned_image_of_the_settings(dev_stack):
    container = exporter_container(dev_stack)
    assert container["image"] == DEFAULT_EXPORTER_IMAGE == "oliver006/redis_exporter:v1.86.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["ports"] == [{"name": "metrics", "containerPort": exporter.EXPORTER_PORT}]
    other = build_stack("dev", exporterImage="registry.example.com/redis_exporter:v1.87.0")
    assert exporter_container(other)["image"] == "registry.example.com/redis_exporter:v1.87.0"


def test_exporter_args_are_the_shared_definition_for_the_stacks_tls_choice(stack):
    tls, run = stack
    args = exporter_container(run)["args"]
    assert args == exporter.exporter_args(files.REDIS_PORT, CA_PATH if tls else None, PASSWORD_PATH)
    assert flag(args, "redis.addr") == f"{'rediss' if tls else 'redis'}://localhost:{files.REDIS_PORT}"
    assert flag(args, "redis.user") == MONITORING_USER
    assert flag(args, "redis.password-file") == PASSWORD_PATH
    assert flag(args, "config-command") == "-"
    assert flag(args, "web.listen-address") == f":{exporter.EXPORTER_PORT}"
    if tls:
        assert flag(args, "tls-ca-cert-file") == CA_PATH
    else:
        assert not any(arg.startswith("--tls") for arg in args)


def test_no_password_reaches_the_exporters_args_or_environment(stack):
    _, run = stack
    container = exporter_container(run)
    assert not container.get("env") and not container.get("envFrom")
    assert not any(arg.startswith(("--redis.password=", "--redis.pwd")) for arg in container["args"])
    for secret in (PASSWORD, monitoring_password(PASSWORD), replication_password(PASSWORD)):
        assert secret not in repr(container)
        assert secret not in repr(run.one(STATEFUL_SET).inputs)


def test_exporter_mounts_its_password_file_and_not_the_admins(stack):
    tls, run = stack
    container, spec = exporter_container(run), pod_spec(run)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"exporter-secret", "exporter-conf"} | ({"exporter-tls"} if tls else set())
    assert all(m.get("readOnly") for m in mounts.values())
    volumes = {v["name"]: v for v in spec["volumes"]}
    secret = volumes["exporter-secret"]["secret"]
    assert secret["secretName"] == "redis-cluster-auth"
    # Only the one key: without `items` the admin `password` would be in the directory too.
    assert secret["items"] == [{"key": exporter.PASSWORD_FILE_KEY, "path": exporter.PASSWORD_FILE_KEY}]
    assert f"{mounts['exporter-secret']['mountPath']}/{secret['items'][0]['path']}" == PASSWORD_PATH
    if tls:
        # Of the TLS Secret, the CA only: not the node's private key.
        tls_secret = volumes["exporter-tls"]["secret"]
        assert tls_secret["secretName"] == "redis-cluster-tls"
        assert tls_secret["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
        assert f"{mounts['exporter-tls']['mountPath']}/ca.crt" == CA_PATH
    # The Secret's every file (the admin password, the ACL file) is the Redis container's only.
    whole_secret = [
        name for name, v in volumes.items() if v.get("secret", {}).get("secretName") == "redis-cluster-auth"
    ]
    assert sorted(whole_secret) == ["exporter-secret", "secret"]
    assert "items" not in volumes["secret"]["secret"] and "secret" not in mounts
    # Of the ConfigMap, its Lua script only, where its --script argument looks for it.
    script = exporter.CLUSTER_VIEW_SCRIPT.name
    assert volumes["exporter-conf"]["configMap"]["items"] == [{"key": script, "path": script}]
    assert f"--script={mounts['exporter-conf']['mountPath']}/{script}" in container["args"]
    assert "--lua-script-read-only" in container["args"]


def test_exporter_runs_non_root_read_only_without_capabilities_within_its_resources(dev_stack):
    container = exporter_container(dev_stack)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod_spec(dev_stack)["securityContext"]["runAsUser"] > 10000
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"} and set(resources["limits"]) == {"cpu", "memory"}


def test_exporter_liveness_reloads_the_password_file_and_readiness_asks_its_health(dev_stack):
    container = exporter_container(dev_stack)
    liveness, readiness = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert liveness["path"] == exporter.RELOAD_PATH == "/-/reload"
    assert readiness["path"] == "/health"
    ports = {p["name"] for p in container["ports"]}
    assert liveness["port"] in ports and readiness["port"] in ports


# -- its credentials --------------------------------------------------------------------------


def test_the_secrets_exporter_password_file_maps_the_exporters_address_to_the_monitoring_password(stack):
    _, run = stack
    args = exporter_container(run)["args"]
    scheme, address = flag(args, "redis.addr").split("://")
    key = f"{scheme}://{flag(args, 'redis.user')}@{address}"
    password_file = json.loads(auth_secret_files(run)[exporter.PASSWORD_FILE_KEY])
    assert password_file == {key: monitoring_password(PASSWORD)}
    assert monitoring_password(PASSWORD) not in (PASSWORD, replication_password(PASSWORD))
    assert PASSWORD not in auth_secret_files(run)[exporter.PASSWORD_FILE_KEY]


def test_the_monitoring_user_reads_the_servers_state_and_nothing_else(dev_stack):
    acl = {line.split()[1]: line.split() for line in auth_secret_files(dev_stack)["users.acl"].splitlines()}
    admin = reveal(dev_stack.outputs["redisPassword"].value)
    user, name, state, password, *rules = acl[MONITORING_USER]
    assert (user, name, state) == ("user", MONITORING_USER, "on")
    assert password == f"#{password_hash(monitoring_password(admin))}" != f"#{password_hash(admin)}"
    assert rules[0] == "-@all"
    # No key or channel pattern (~, %R~, &, allkeys, allchannels), no category granted.
    assert not [r for r in rules if r.startswith(("~", "%", "&")) or r in ("allkeys", "allchannels")]
    assert not [r for r in rules if r.startswith("+@")]
    assert not [r for r in rules if "config" in r.lower()]
    assert {"+info", "+ping", "+cluster|info"} <= set(rules)


# -- how Prometheus reaches it ------------------------------------------------------------------


def test_the_metrics_service_selects_the_pods_on_the_metrics_port(dev_stack):
    (service,) = [r.inputs for r in dev_stack.of_type(SERVICE) if r.inputs["metadata"]["name"] == METRICS_SERVICE]
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics"
    spec = service["spec"]
    assert spec["selector"] == SELECTOR
    assert SELECTOR.items() <= pod_spec_labels(dev_stack).items()
    assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True
    assert spec["ports"] == [{"name": "metrics", "port": exporter.EXPORTER_PORT, "targetPort": "metrics"}]
    assert {"name": "metrics", "containerPort": exporter.EXPORTER_PORT} in exporter_container(dev_stack)["ports"]


@pytest.mark.parametrize("namespace", [None, "observability"])
def test_the_network_policy_admits_the_metrics_port_from_the_monitoring_namespace_only(namespace):
    run = build_stack("dev") if namespace is None else build_stack("dev", monitoringNamespace=namespace)
    (rule,) = metrics_rules(run)
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace or "monitoring"}}}
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": exporter.EXPORTER_PORT}]


# -- the Prometheus Operator's objects ------------------------------------------------------------


def test_without_monitoring_there_is_no_service_monitor_nor_prometheus_rule(dev_stack):
    for token in (SERVICE_MONITOR, PROMETHEUS_RULE, CLUSTER_MONITORING):
        assert dev_stack.of_type(token) == []
    assert {m["kind"] for m in kubernetes_manifests(dev_stack)}.isdisjoint({"ServiceMonitor", "PrometheusRule"})
    # The exporter runs anyway.
    assert exporter_container(dev_stack)


def test_monitoring_labels_are_refused_without_monitoring():
    with pytest.raises(SettingsError, match="monitoringLabels"):
        build_stack("dev", monitoringLabels=json.dumps(MONITORING_LABELS))


def test_the_service_monitor_scrapes_the_metrics_service_and_no_other(monitoring_stack):
    spec = monitoring_stack.one(SERVICE_MONITOR).inputs["spec"]
    labels = service_labels(monitoring_stack)
    assert set(labels) == {"redis-cluster", "redis-cluster-headless", METRICS_SERVICE}
    selected = sorted(name for name, own in labels.items() if spec["selector"]["matchLabels"].items() <= own.items())
    assert selected == [METRICS_SERVICE]
    assert set(spec["selector"]) == {"matchLabels"}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == exporter.METRICS_PATH == "/metrics"
    (metrics_service,) = [
        r.inputs for r in monitoring_stack.of_type(SERVICE) if r.inputs["metadata"]["name"] == METRICS_SERVICE
    ]
    assert [p["name"] for p in metrics_service["spec"]["ports"]] == [endpoint["port"]]
    assert spec["namespaceSelector"] == {"matchNames": [MONITORED_NAMESPACE]}
    assert monitoring_stack.one(SERVICE_MONITOR).inputs["metadata"]["namespace"] == MONITORED_NAMESPACE


def test_the_prometheus_rule_holds_the_rules_file(monitoring_stack):
    groups = custom_resource(monitoring_stack, "PrometheusRule")["spec"]["groups"]
    expected = yaml.safe_load(exporter.ALERT_RULES_FILE.read_text())["groups"]
    # The same rules, but for the runbook links (next test).
    for group in groups:
        for rule in group["rules"]:
            rule["annotations"].pop("runbook_url", None)
    for group in expected:
        for rule in group["rules"]:
            rule["annotations"].pop("runbook_url", None)
    assert expected and groups == expected
    assert monitoring_stack.one(PROMETHEUS_RULE).inputs["metadata"]["namespace"] == MONITORED_NAMESPACE


def rule_links(run) -> dict[str, str]:
    groups = custom_resource(run, "PrometheusRule")["spec"]["groups"]
    return {rule["alert"]: rule["annotations"]["runbook_url"] for group in groups for rule in group["rules"]}


def test_every_runbook_link_is_absolute_under_the_repositorys_tree(monitoring_stack):
    """Alertmanager and Grafana show the link as it is: a path of this repository leads nowhere
    from there. Each rule's docs/operations.md#alert-... is joined to runbookBaseUrl."""
    links = rule_links(monitoring_stack)
    assert links and all(link.startswith(DEFAULT_RUNBOOK_BASE_URL) for link in links.values()), links
    assert links["RedisDown"] == f"{DEFAULT_RUNBOOK_BASE_URL}docs/operations.md#alert-redisdown"
    base = "https://git.example.com/platform/redis-eks/-/blob/v2/"
    mirrored = build_stack("dev", monitoring="true", runbookBaseUrl=base)
    assert rule_links(mirrored)["RedisDown"] == f"{base}docs/operations.md#alert-redisdown"


@pytest.mark.parametrize("url", ["http://insecure.example.com/", "https://github.com/o/r/blob/main", "docs/"])
def test_a_runbook_base_that_is_no_https_tree_is_refused(url):
    with pytest.raises(SettingsError, match=f"runbookBaseUrl = '{re.escape(url)}'"):
        build_stack("dev", monitoring="true", runbookBaseUrl=url)


def test_monitoring_labels_land_on_both_objects(monitoring_stack):
    for token in (SERVICE_MONITOR, PROMETHEUS_RULE):
        labels = monitoring_stack.one(token).inputs["metadata"]["labels"]
        assert MONITORING_LABELS.items() <= labels.items(), token
        assert labels["app.kubernetes.io/name"] == "redis-cluster"


def test_both_objects_are_children_of_the_monitoring_component_on_the_clusters_provider(monitoring_stack):
    component = monitoring_stack.one(CLUSTER_MONITORING)
    assert component.parent == monitoring_stack.one("redis-eks:index:RedisCluster").urn
    (provider,) = [r for r in monitoring_stack.resources if r.type == "pulumi:providers:kubernetes"]
    for token in (SERVICE_MONITOR, PROMETHEUS_RULE):
        resource = monitoring_stack.one(token)
        assert resource.parent == component.urn, token
        assert resource.provider.startswith(f"{provider.urn}::"), token


def test_both_objects_pass_the_vendored_crd_schemas(monitoring_stack):
    version = monitoring_stack.one("eks:index:Cluster").inputs["version"]
    for kind in ("ServiceMonitor", "PrometheusRule"):
        obj = custom_resource(monitoring_stack, kind)
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert custom_resource_errors(obj) == [], kind
        validate_manifest(obj, version)


@pytest.mark.parametrize(
    ("kind", "plural"), [("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules")]
)
def test_the_vendored_schemas_name_their_prometheus_operator_release(kind, plural):
    schema = crd_schema("monitoring.coreos.com/v1", kind)
    assert "github.com/prometheus-operator/prometheus-operator" in schema["$comment"]
    assert f"example/prometheus-operator-crd/monitoring.coreos.com_{plural}.yaml" in schema["$comment"]
    assert "at tag v0.93.0" in schema["$comment"]
    assert set(schema["properties"]) >= {"apiVersion", "kind", "metadata", "spec"}


# --- the CRDs a fresh cluster lacks ---------------------------------------------------------

CRD = "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"


def test_a_fresh_cluster_gets_the_two_crds_the_objects_need_before_them(monitoring_stack):
    """On a cluster the same run creates, nothing else installs the Prometheus Operator's CRDs:
    without them the API server answers "no matches for kind ServiceMonitor" and the update
    stops there. The stack installs exactly the two kinds it creates, and each object waits
    for both."""
    crds = {r.inputs["spec"]["names"]["kind"]: r for r in monitoring_stack.of_type(CRD)}
    assert set(crds) == {"ServiceMonitor", "PrometheusRule"}
    for token in (SERVICE_MONITOR, PROMETHEUS_RULE):
        dependencies = monitoring_stack.one(token).dependencies
        assert {crd.urn for crd in crds.values()} <= set(dependencies), token


def test_the_installed_crds_are_the_vendored_release_unchanged(monitoring_stack):
    rendered = {
        m["metadata"]["name"]: m
        for m in kubernetes_manifests(monitoring_stack)
        if m["kind"] == "CustomResourceDefinition"
    }
    for document in crd_documents():
        assert document["metadata"]["annotations"][
            "operator.prometheus.io/version"
        ] == PROMETHEUS_OPERATOR_RELEASE.lstrip("v")
        assert rendered[document["metadata"]["name"]] == document


def test_the_crds_outlive_the_stack(monitoring_stack):
    """Deleting a CRD deletes every object of its kind in the cluster, other teams' too."""
    for crd in monitoring_stack.of_type(CRD):
        assert crd.retain_on_delete is True, crd.name


def test_a_cluster_with_its_own_prometheus_operator_gets_no_crds():
    run = build_stack("dev", monitoring="true", prometheusOperatorCrds="existing")
    assert run.of_type(CRD) == []
    assert run.one(SERVICE_MONITOR) and run.one(PROMETHEUS_RULE)


def test_the_crd_setting_is_refused_without_monitoring():
    with pytest.raises(SettingsError, match="prometheusOperatorCrds"):
        build_stack("dev", prometheusOperatorCrds="existing")
    with pytest.raises(SettingsError, match="prometheusOperatorCrds = 'helm'"):
        build_stack("dev", monitoring="true", prometheusOperatorCrds="helm")


@pytest.mark.parametrize(
    ("kind", "plural"), [("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules")]
)
def test_the_validation_schemas_are_the_installed_crds_own(kind, plural):
    """One release for what the cluster gets and for what the tests validate against."""
    (document,) = [d for d in crd_documents() if d["spec"]["names"]["plural"] == plural]
    schema = {key: value for key, value in crd_schema("monitoring.coreos.com/v1", kind).items() if key != "$comment"}
    assert document["spec"]["versions"][0]["schema"]["openAPIV3Schema"] == schema
    assert PROMETHEUS_OPERATOR_COMMIT in crd_schema("monitoring.coreos.com/v1", kind)["$comment"]
