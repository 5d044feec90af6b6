"""The Redis workload as Kubernetes receives it: every object, its wiring and its hardening."""

import pytest

from cluster_logic.credentials import password_hash, wanted_credentials
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
    return next(c for c in pod_spec(run)["containers"] if c["name"] == "redis")


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
    assert len(namespaced) == 9  # Secret, 2 ConfigMaps, 3 Services, StatefulSet, PDB, NetworkPolicy
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
    # No replicas is a risk the stack must accept by name.
    accepted = {"acceptRisks": '["noReplicas"]'} if replicas == 0 else {}
    run = build_stack("dev", shards=str(shards), replicasPerShard=str(replicas), **accepted)
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
    # A node type with room for a 2-CPU limit (a t3.large has about 1.6 CPUs for pods).
    run = build_stack(
        "dev", nodeInstanceType="m6i.xlarge", cpuRequest="500m", cpuLimit="2", memoryRequest="2Gi", memoryLimit="3Gi"
    )
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
    # Above the range hosts hand out, and not the images' own 999.
    assert spec["securityContext"]["runAsUser"] > 10000 and spec["securityContext"]["runAsGroup"] > 10000
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
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    peers_rule, clients_rule, _metrics_rule = spec["ingress"]
    assert peers_rule["from"] == [{"podSelector": {"matchLabels": SELECTOR}}]
    assert sorted(p["port"] for p in peers_rule["ports"]) == [6379, 16379]
    assert clients_rule["from"] == [
        {"podSelector": {"matchLabels": {"role": "api"}}, "namespaceSelector": {"matchLabels": {"team": "shop"}}}
    ]
    assert [p["port"] for p in clients_rule["ports"]] == [6379]


def test_network_policy_lets_pods_reach_only_their_peers_and_the_cluster_dns(dev_stack):
    spec = dev_stack.one("kubernetes:networking.k8s.io/v1:NetworkPolicy").inputs["spec"]
    assert "Egress" in spec["policyTypes"]
    peers_rule, dns_rule = spec["egress"]
    assert peers_rule["to"] == [{"podSelector": {"matchLabels": SELECTOR}}]
    assert sorted((p["protocol"], p["port"]) for p in peers_rule["ports"]) == [("TCP", 6379), ("TCP", 16379)]
    assert dns_rule["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert sorted((p["protocol"], p["port"]) for p in dns_rule["ports"]) == [("TCP", 53), ("UDP", 53)]
    # Every rule names whom and which ports: no rule opens egress to everything.
    assert all(rule.get("to") and rule.get("ports") for rule in spec["egress"])


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
    assert reveal(secret["stringData"]) == files.secret_files(wanted_credentials(password))
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
    assert "password" not in guard.inputs
    assert guard.urn in run.one(SECRET).dependencies
    assert guard.urn in run.one(STATEFUL_SET).dependencies
    assert guard.inputs["accept_manual_change"] == []


def test_the_scale_in_step_runs_after_the_guard_and_the_rotation_and_before_the_stateful_set():
    """A smaller shape empties the pods that go before the StatefulSet removes them: the step
    must run first, and reach the same pods the bootstrap reaches, secrets kept secret."""
    run = build_stack("dev")
    scale_in = run.one("pulumi-python:dynamic/redis:ClusterScaleIn")
    assert scale_in.urn in run.one(STATEFUL_SET).dependencies
    assert run.one("pulumi-python:dynamic/redis:ClusterChangeGuard").urn in scale_in.dependencies
    assert run.one("pulumi-python:dynamic/redis:CredentialRotation").urn in scale_in.dependencies
    inputs = scale_in.inputs
    assert (inputs["shards"], inputs["replicas_per_shard"]) == (3, 1)
    assert inputs["stateful_set_name"] == "redis-cluster" and inputs["namespace"] == "redis"
    assert is_secret(inputs["password"]) and is_secret(inputs["kubeconfig"])
    assert "retainedClaims" in run.outputs


def test_the_manual_change_opt_in_reaches_the_guard_and_the_bootstrap():
    run = build_stack("dev", acceptManualChange='["namespace=cache", "image=redis:8.10.1-trixie"]')
    for token in ("pulumi-python:dynamic/redis:ClusterChangeGuard", "pulumi-python:dynamic/redis:ClusterBootstrap"):
        assert run.one(token).inputs["accept_manual_change"] == ["namespace=cache", "image=redis:8.10.1-trixie"]


# -- users, rotation and TLS --------------------------------------------------------------

ROTATION = "pulumi-python:dynamic/redis:CredentialRotation"
USERS = (
    '{"app": {"commands": ["+@read", "+@write", "-@dangerous"], "keys": ["app:*"]}, '
    '"reader": {"commands": ["+@read", "-@dangerous"], "readKeys": ["*"]}}'
)


def test_named_users_get_the_secret_acl_file_and_a_secret_password_each():
    given = "Reader-Password-0123456789"
    run = build_stack(
        "dev", password="Configured-Password-0123456789", users=USERS, userPasswords=f'{{"reader": "{given}"}}'
    )
    # The user without a password of its own gets a random one; the other keeps its own.
    randoms = {r.name for r in run.of_type("random:index/randomPassword:RandomPassword")}
    assert randoms == {"redis-user-app"}
    passwords = run.outputs["redisUserPasswords"]
    assert passwords.secret is True
    assert passwords.value["reader"] == given and len(passwords.value["app"]) >= 32
    acl = reveal(run.one(SECRET).inputs["stringData"])["users.acl"]
    lines = {line.split()[1]: line for line in acl.splitlines()}
    assert set(lines) == {"default", "replication", "monitoring", "app", "reader"}
    assert lines["reader"] == f"user reader on #{password_hash(given)} %R~* -@all +@read -@dangerous"
    assert "~app:*" in lines["app"] and given not in acl
    # Nothing of the users' in a ConfigMap: no ACL file there, no password, no hash.
    config_maps = [r.inputs for r in run.of_type(CONFIG_MAP)]
    assert all("users.acl" not in (cm.get("data") or {}) for cm in config_maps)
    assert given not in repr(config_maps) and password_hash(given) not in repr(config_maps)


def test_new_passwords_reach_the_nodes_before_the_secret_and_the_bootstrap_removes_the_old():
    run = build_stack("dev", users=USERS, rotationGraceSeconds="120")
    rotation, secret, bootstrap = run.one(ROTATION), run.one(SECRET), run.one(BOOTSTRAP)
    guard = run.one("pulumi-python:dynamic/redis:ClusterChangeGuard")
    assert guard.urn in rotation.dependencies
    assert rotation.urn in secret.dependencies
    assert secret.urn in bootstrap.dependencies
    for resource in (rotation, bootstrap):
        assert is_secret(resource.inputs["credentials"]) and is_secret(resource.inputs["password"])
        names = [c["name"] for c in reveal(resource.inputs["credentials"])]
        assert names == ["default", "replication", "monitoring", "app", "reader"]
        assert resource.inputs["namespace"] == "redis" and resource.inputs["stateful_set_name"] == "redis-cluster"
    assert bootstrap.inputs["rotation_grace_seconds"] == 120


def test_tls_off_in_dev_on_in_the_prod_example(dev_stack, prod_stack):
    assert dev_stack.outputs["redisTls"].value is False
    assert "tls-port" not in pod_config(dev_stack)["data"]["redis.conf"]
    assert prod_stack.outputs["redisTls"].value is True
    assert "tls-port 6379" in pod_config(prod_stack)["data"]["redis.conf"]


def test_tls_certificates_from_a_ca_of_the_stacks_own():
    run = build_stack("dev", tls="true", namespace="cache")
    request = run.one("tls:index/certRequest:CertRequest").inputs
    assert "*.redis-cluster-headless.cache.svc.cluster.local" in request["dnsNames"]
    assert "redis-cluster.cache.svc.cluster.local" in request["dnsNames"] and "localhost" in request["dnsNames"]
    ca = run.one("tls:index/selfSignedCert:SelfSignedCert").inputs
    assert ca["isCaCertificate"] is True and "cert_signing" in ca["allowedUses"]
    node = run.one("tls:index/locallySignedCert:LocallySignedCert").inputs
    assert {"server_auth", "client_auth"} <= set(node["allowedUses"])
    assert 0 < node["earlyRenewalHours"] < node["validityPeriodHours"]
    tls_secret = next(r for r in run.of_type(SECRET) if r.inputs["metadata"]["name"] == "redis-cluster-tls").inputs
    assert tls_secret["type"] == "kubernetes.io/tls"
    # The key makes the whole of it a secret.
    assert is_secret(tls_secret["stringData"])
    assert set(reveal(tls_secret["stringData"])) == {"tls.crt", "tls.key", "ca.crt"}
    # The pods mount it, announce their DNS name, and the scripts verify against the CA.
    container, spec = redis_container(run), pod_spec(run)
    assert {"name": "tls", "mountPath": "/etc/redis-tls", "readOnly": True} in container["volumeMounts"]
    volume = next(v for v in spec["volumes"] if v["name"] == "tls")
    assert volume["secret"]["secretName"] == "redis-cluster-tls"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["REDIS_ANNOUNCE_HOSTNAME"]["value"] == "$(POD_NAME).redis-cluster-headless.cache.svc.cluster.local"
    assert env["REDIS_TLS_CA_FILE"]["value"] == "/etc/redis-tls/ca.crt"
    names = [e["name"] for e in container["env"]]
    assert names.index("POD_NAME") < names.index("REDIS_ANNOUNCE_HOSTNAME"), "$(VAR) expands earlier entries only"
    # The provider code reaches the nodes over TLS with the same CA; clients get it too.
    assert run.one(BOOTSTRAP).inputs["tls_ca"] == run.outputs["redisCaCertificate"].value
    assert run.one(ROTATION).inputs["tls_ca"] == run.outputs["redisCaCertificate"].value
    assert run.outputs["redisCaCertificate"].secret is False
    # No pod starts before its certificate exists.
    tls_secret_urn = next(r.urn for r in run.of_type(SECRET) if r.inputs["metadata"]["name"] == "redis-cluster-tls")
    assert tls_secret_urn in run.one(STATEFUL_SET).dependencies


def test_tls_certificates_from_a_cert_manager_issuer():
    run = build_stack("dev", tls="true", certManagerIssuer="ClusterIssuer/internal-ca")
    assert run.of_type("tls:index/privateKey:PrivateKey") == []
    certificate = run.one("kubernetes:cert-manager.io/v1:Certificate").inputs
    assert certificate["spec"]["secretName"] == "redis-cluster-tls"
    assert certificate["spec"]["issuerRef"] == {
        "group": "cert-manager.io",
        "kind": "ClusterIssuer",
        "name": "internal-ca",
    }
    assert "*.redis-cluster-headless.redis.svc.cluster.local" in certificate["spec"]["dnsNames"]
    assert {"server auth", "client auth"} <= set(certificate["spec"]["usages"])
    # The issuer's CA is the Secret's ca.crt: the bootstrap reads it there.
    assert run.one(BOOTSTRAP).inputs.get("tls_ca") is None
    assert run.one(BOOTSTRAP).inputs["tls_secret"] == "redis-cluster-tls"


def test_without_tls_nothing_of_it_is_rendered(dev_stack):
    assert dev_stack.of_type("redis-eks:index:NodeCertificates") == []
    assert all(v["name"] != "tls" for v in pod_spec(dev_stack)["volumes"])
    assert "REDIS_TLS_CA_FILE" not in {e["name"] for e in redis_container(dev_stack)["env"]}
    assert dev_stack.outputs["redisCaCertificate"].value is None
