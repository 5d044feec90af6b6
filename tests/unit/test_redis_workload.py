"""The Redis workload as Kubernetes receives it: every object, its wiring and its hardening."""

import pytest

from components import redis_node_files as files
from components.engines import REDIS
from tests.unit.conftest import build_stack, is_secret, reveal

STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
SECRET = "kubernetes:core/v1:Secret"
SERVICE = "kubernetes:core/v1:Service"
BOOTSTRAP = "pulumi-python:dynamic/redis:ClusterBootstrap"
SELECTOR = {"app.kubernetes.io/name": "redis-cluster", "app.kubernetes.io/instance": "redis"}


def pod_spec(run):
    return run.one(STATEFUL_SET).inputs["spec"]["template"]["spec"]


def redis_container(run):
    (container,) = pod_spec(run)["containers"]
    return container


def services(run):
    return {r.inputs["metadata"]["name"]: r.inputs["spec"] for r in run.of_type(SERVICE)}


def test_everything_lives_in_the_configured_namespace_under_restricted_pod_security():
    run = build_stack("dev", namespace="cache")
    namespace = run.one("kubernetes:core/v1:Namespace").inputs["metadata"]
    assert namespace["name"] == "cache"
    assert namespace["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    namespaced = [
        r
        for r in run.resources
        if r.type.startswith("kubernetes:") and r.type.split(":")[2] not in ("Namespace", "StorageClass")
    ]
    assert len(namespaced) == 8  # Secret, 2 ConfigMaps, 2 Services, StatefulSet, PDB, NetworkPolicy
    assert {r.inputs["metadata"]["namespace"] for r in namespaced} == {"cache"}


def test_stateful_set_runs_one_pod_per_node_in_parallel(dev_stack):
    spec = dev_stack.one(STATEFUL_SET).inputs["spec"]
    assert spec["replicas"] == 6
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "redis-cluster-headless"
    assert spec["selector"]["matchLabels"] == SELECTOR
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}


@pytest.mark.parametrize("shards, replicas, pods", [(4, 1, 8), (3, 0, 3), (5, 2, 15)])
def test_pod_count_is_shards_times_one_plus_replicas(shards, replicas, pods):
    run = build_stack("dev", shards=str(shards), replicasPerShard=str(replicas))
    assert run.one(STATEFUL_SET).inputs["spec"]["replicas"] == pods
    peers = config_maps(run)["redis-cluster-peers"]["data"]["peers"].split()
    assert peers == [f"redis-cluster-{i}.redis-cluster-headless.redis.svc.cluster.local" for i in range(pods)]


def test_volume_claims_use_the_data_storage_class_sized_by_config():
    run = build_stack("dev", storageSize="20Gi")
    (claim,) = run.one(STATEFUL_SET).inputs["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["storageClassName"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    storage_class = run.one("kubernetes:storage.k8s.io/v1:StorageClass")
    assert storage_class.urn in run.one(STATEFUL_SET).dependencies


def test_container_runs_the_entrypoint_which_execs_redis_server(dev_stack):
    container = redis_container(dev_stack)
    assert container["image"] == "redis:8.10.2-trixie" == REDIS.default_image
    assert container["command"] == ["sh", "/conf/entrypoint.sh"]
    assert container["args"] == ["redis-server", "/conf/redis.conf"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"client": 6379, "bus": 16379}
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["ENGINE_CLI"]["value"] == "redis-cli"
    for name, value in files.script_environment(REDIS, files.POD_PATHS).items():
        assert env[name]["value"] == value


def test_config_map_is_mounted_executable_and_the_secret_read_only(dev_stack):
    spec = pod_spec(dev_stack)
    volumes = {v["name"]: v for v in spec["volumes"]}
    conf = volumes["conf"]["projected"]
    assert conf["defaultMode"] == 0o755
    assert [source["configMap"]["name"] for source in conf["sources"]] == [
        config_map_name(dev_stack),
        "redis-cluster-peers",
    ]
    assert volumes["secret"]["secret"]["secretName"] == "redis-cluster-auth"
    mounts = {m["name"]: m for m in redis_container(dev_stack)["volumeMounts"]}
    assert mounts["conf"]["mountPath"] == "/conf"
    assert mounts["secret"] == {"name": "secret", "mountPath": "/etc/redis-secret", "readOnly": True}
    assert mounts["data"]["mountPath"] == "/data"


def test_resources_come_from_config():
    run = build_stack("dev", cpuRequest="500m", cpuLimit="2", memoryRequest="2Gi", memoryLimit="3Gi")
    resources = redis_container(run)["resources"]
    assert resources == {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "3Gi"}}
    redis_conf = pod_config(run)["data"]["redis.conf"]
    assert f"maxmemory {files.maxmemory_bytes(3 * 2**30)}\n" in redis_conf


def test_probes_and_pre_stop_run_the_shipped_scripts(dev_stack):
    container = redis_container(dev_stack)
    assert container["livenessProbe"]["exec"]["command"] == ["sh", "/conf/probe-liveness.sh"]
    assert container["startupProbe"]["exec"]["command"] == ["sh", "/conf/probe-liveness.sh"]
    assert container["readinessProbe"]["exec"]["command"] == ["sh", "/conf/probe-readiness.sh"]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sh", "/conf/pre-stop.sh"]
    assert pod_spec(dev_stack)["terminationGracePeriodSeconds"] > files.PRESTOP_TIMEOUT_SECONDS
    shipped = set(pod_config(dev_stack)["data"])
    assert set(files.SCRIPT_NAMES) <= shipped


def test_the_readiness_script_gives_its_verdict_before_the_kubelet_gives_up(dev_stack):
    container = redis_container(dev_stack)
    budget = int(next(e["value"] for e in container["env"] if e["name"] == "REDIS_PROBE_BUDGET_SECONDS"))
    assert 0 < budget < container["readinessProbe"]["timeoutSeconds"]


def test_pods_follow_the_restricted_pod_security_profile(dev_stack):
    spec = pod_spec(dev_stack)
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = redis_container(dev_stack)["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}
    writable = {m["mountPath"] for m in redis_container(dev_stack)["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/data", "/tmp"}


def test_pods_spread_over_zones_and_hosts(dev_stack, existing_stack):
    constraints = {c["topologyKey"]: c for c in pod_spec(dev_stack)["topologySpreadConstraints"]}
    assert constraints["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert constraints["kubernetes.io/hostname"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for constraint in constraints.values():
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"]["matchLabels"] == SELECTOR
    # A kind or minikube node has no zone label; a hard zone rule would leave pods Pending.
    existing = {c["topologyKey"]: c for c in pod_spec(existing_stack)["topologySpreadConstraints"]}
    assert existing["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"


def config_map_name(run) -> str:
    """The ConfigMap of redis.conf and the scripts the pod template mounts."""
    (volume,) = [v for v in run.one(STATEFUL_SET).inputs["spec"]["template"]["spec"]["volumes"] if v["name"] == "conf"]
    return volume["projected"]["sources"][0]["configMap"]["name"]


def config_maps(run) -> dict[str, dict]:
    return {r.inputs["metadata"]["name"]: r.inputs for r in run.of_type(CONFIG_MAP)}


def pod_config(run) -> dict:
    return config_maps(run)[config_map_name(run)]


def test_a_config_change_rolls_the_pods_but_a_scale_out_does_not():
    base = build_stack("dev")
    assert config_map_name(build_stack("dev", nodeTimeoutMs="7000")) != config_map_name(base)
    assert config_map_name(build_stack("dev", shards="4")) == config_map_name(base)
    assert config_map_name(build_stack("dev", replicasPerShard="2")) == config_map_name(base)


def test_what_a_pod_runs_changes_only_with_the_pod(monkeypatch):
    """redis.conf and the scripts are in an immutable ConfigMap named after its content: a
    changed script is a new object and a new pod template (rolled one pod at a time), never
    an edit under running pods. Only the peers list is updated in place."""
    base = build_stack("dev")
    maps = config_maps(base)
    pod_files = maps[config_map_name(base)]
    assert pod_files["immutable"] is True and "peers" not in pod_files["data"]
    peers = maps["redis-cluster-peers"]
    assert not peers.get("immutable") and set(peers["data"]) == {"peers"}

    original = files.script_files
    monkeypatch.setattr(
        files,
        "script_files",
        lambda: {**original(), "probe-readiness.sh": original()["probe-readiness.sh"] + "# changed\n"},
    )
    changed = build_stack("dev")
    assert config_map_name(changed) != config_map_name(base), "a new object, referenced by a new template"
    assert config_maps(changed)[config_map_name(changed)]["data"]["probe-readiness.sh"].endswith("# changed\n")
    assert config_maps(changed)["redis-cluster-peers"] == peers


def test_headless_service_publishes_not_ready_pods_on_both_ports(dev_stack):
    headless = services(dev_stack)["redis-cluster-headless"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    assert headless["selector"] == SELECTOR
    assert {p["name"]: p["port"] for p in headless["ports"]} == {"client": 6379, "bus": 16379}


def test_client_service_exposes_only_the_client_port(dev_stack):
    client = services(dev_stack)["redis-cluster"]
    assert client["type"] == "ClusterIP"
    assert [p["port"] for p in client["ports"]] == [6379]


def test_disruption_budget_allows_one_pod_down(dev_stack):
    spec = dev_stack.one("kubernetes:policy/v1:PodDisruptionBudget").inputs["spec"]
    assert spec == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}


def test_network_policy_opens_the_bus_to_peers_only_and_the_client_port_to_clients():
    run = build_stack("dev", clientPodLabels='{"role": "api"}', clientNamespaceLabels='{"team": "shop"}')
    spec = run.one("kubernetes:networking.k8s.io/v1:NetworkPolicy").inputs["spec"]
    assert spec["podSelector"]["matchLabels"] == SELECTOR
    assert spec["policyTypes"] == ["Ingress"]
    peers_rule, clients_rule = spec["ingress"]
    assert peers_rule["from"] == [{"podSelector": {"matchLabels": SELECTOR}}]
    assert sorted(p["port"] for p in peers_rule["ports"]) == [6379, 16379]
    assert clients_rule["from"] == [
        {"podSelector": {"matchLabels": {"role": "api"}}, "namespaceSelector": {"matchLabels": {"team": "shop"}}}
    ]
    assert [p["port"] for p in clients_rule["ports"]] == [6379]


def test_redis_conf_in_the_config_map_is_the_rendered_one(dev_stack):
    from components.stack_settings import parse_settings

    data = pod_config(dev_stack)["data"]
    assert data["redis.conf"] == files.render_redis_conf(parse_settings({"memoryRequest": "1Gi", "memoryLimit": "1Gi"}))
    assert "include /etc/redis-secret/auth.conf" in data["redis.conf"]
    for name in files.SCRIPT_NAMES:
        assert data[name] == files.script_files()[name]


def test_a_generated_password_is_long_and_config_safe(dev_stack):
    password = dev_stack.one("random:index/randomPassword:RandomPassword").inputs
    assert password["length"] >= 32
    assert set(password["overrideSpecial"]) <= set("-_.~")


def test_the_password_is_a_secret_and_appears_in_no_config_map_argv_or_plain_output():
    password = "Configured-Password-0123456789"
    run = build_stack("dev", password=password)
    assert run.of_type("random:index/randomPassword:RandomPassword") == []
    secret = run.one(SECRET).inputs
    assert is_secret(secret["stringData"])
    assert reveal(secret["stringData"]) == {"password": password, "auth.conf": files.render_auth_conf(password)}
    assert password not in repr([r.inputs for r in run.of_type(CONFIG_MAP)])
    assert password not in repr(run.one(STATEFUL_SET).inputs)
    assert run.outputs["redisPassword"].value == password
    assert run.outputs["redisPassword"].secret is True
    for name, output in run.outputs.items():
        if not output.secret:
            assert password not in repr(output.value), name


def test_the_stack_exports_a_connection_hint(dev_stack):
    hint = dev_stack.outputs["redisConnection"].value
    assert hint.startswith("redis-cluster-headless.redis.svc.cluster.local:6379")
    assert dev_stack.outputs["namespace"].value == "redis"


def test_bootstrap_runs_after_the_stateful_set_with_the_clusters_shape_and_secrets():
    run = build_stack("dev", shards="4", replicasPerShard="2", bootstrapTimeoutSeconds="900")
    bootstrap = run.one(BOOTSTRAP)
    assert run.one(STATEFUL_SET).urn in bootstrap.dependencies
    inputs = bootstrap.inputs
    assert (inputs["shards"], inputs["replicas_per_shard"]) == (4, 2)
    assert inputs["transport"] == "kubernetes"
    assert inputs["namespace"] == "redis"
    assert inputs["stateful_set_name"] == "redis-cluster"
    assert inputs["pod_selector"] == "app.kubernetes.io/name=redis-cluster,app.kubernetes.io/instance=redis"
    assert inputs["ready_timeout_seconds"] == 900
    assert is_secret(inputs["password"])
    assert is_secret(inputs["kubeconfig"])


def test_the_change_guard_comes_before_the_secret_and_the_stateful_set():
    run = build_stack("dev", password="Configured-Password-0123456789")
    guard = run.one("pulumi-python:dynamic/redis:ClusterChangeGuard")
    assert (guard.inputs["shards"], guard.inputs["replicas_per_shard"]) == (3, 1)
    assert is_secret(guard.inputs["password"]) and reveal(guard.inputs["password"]) == "Configured-Password-0123456789"
    assert guard.urn in run.one(SECRET).dependencies
    assert guard.urn in run.one(STATEFUL_SET).dependencies
    assert guard.inputs["accept_manual_change"] == []


def test_the_manual_change_opt_in_reaches_the_guard_and_the_bootstrap():
    run = build_stack("dev", acceptManualChange='["shards=3", "password"]')
    for token in ("pulumi-python:dynamic/redis:ClusterChangeGuard", "pulumi-python:dynamic/redis:ClusterBootstrap"):
        assert run.one(token).inputs["accept_manual_change"] == ["shards=3", "password"]
