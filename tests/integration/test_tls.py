"""TLS on: clients, replication and the cluster bus over TLS, against real servers of the
engine under test on loopback, running the stack's redis.conf (`tls = true`) and scripts.

Each node announces its stable DNS name (`<pod>.redis-cluster-headless.<ns>.svc.cluster.local`),
which the nodes' one certificate covers with a wildcard; no certificate covers an IP. The
clients that verify host names run in processes of their own that resolve those names
through a hosts file (nss_wrapper, `sandbox.name_resolution`): redis-py with
`ssl_check_hostname`, following MOVED by name, and the engine's CLI, which verifies the
chain but, as the tests pin down, checks no host name at all.

Certificate renewal: a renewed certificate (same CA) is written into every node's TLS dir
as the kubelet updates a Secret's mount, and the readiness probe, which the kubelet runs
every few seconds, has the server load it (probe-readiness.sh, reload_tls_if_changed).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
import redis
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from cluster_logic.reconcile import ensure_cluster
from cluster_logic.transports.base import CliResult
from cluster_logic.transports.direct import DirectTransport
from cluster_logic.transports.kubernetes_api import KubernetesTransport
from components.redis_node_files import certificate_dns_names
from components.stack_settings import PROJECT_DIR
from sandbox.certificates import (
    CLIENT_SERVICE,
    HEADLESS_SERVICE,
    CertificateAuthority,
    TlsFiles,
    issue_node_files,
)
from sandbox.engine_binaries import EngineBinaries
from sandbox.local_nodes import LocalNode
from sandbox.name_resolution import nss_wrapper_library, resolving_environment, write_hosts
from testkit.local_core_api import LocalCoreV1
from testkit.provider_server import local_port_forward
from testkit.redis_nodes import (
    PASSWORD,
    LocalNodes,
    LoopbackAddresses,
    cli_environment,
    cluster_client,
    cluster_problems,
    dash,
    fast_settings,
    key_in_slots,
    masters_and_replicas,
    myself,
    wait_cluster_ok,
    wait_ready,
    wait_replicas_online,
)
from testkit.verifying_client import PASSWORD_VARIABLE
from testkit.writers import Writer

pytestmark = pytest.mark.integration

# Names the hosts file maps to node 0's address: one the certificate covers (the client
# Service), and one it does not (a pod name behind another Service).
COVERED_ALIAS = f"{CLIENT_SERVICE}.redis.svc.cluster.local"
UNCOVERED_NAME = "redis-cluster-0.another-service.redis.svc.cluster.local"


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def served_certificate(node: LocalNode, ca_file: str | None = None) -> x509.Certificate:
    """The certificate a new connection to `node` is shown (chain verified against the CA)."""
    context = ssl.create_default_context(cafile=ca_file or node.tls_ca_file)
    context.check_hostname = False
    with socket.create_connection((node.ip, node.port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def served_serial(node: LocalNode) -> int:
    return served_certificate(node).serial_number


def key_served_by(node: LocalNode, prefix: str = "k") -> str:
    """A key whose slot `node` (a master) holds."""
    return key_in_slots(myself(node).slots, prefix)


def write_hosts_file(path: Path, nodes: LocalNodes, extra: dict[str, str] | None = None) -> Path:
    write_hosts(path, {**nodes.announced_addresses(), **(extra or {})})
    return path


def run_verifying_client(hosts: Path, ca_file: str | None, checks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """testkit/verifying_client.py in a process that resolves names through `hosts` only."""
    env = resolving_environment(hosts, {"PATH": os.environ["PATH"], PASSWORD_VARIABLE: PASSWORD})
    done = subprocess.run(
        [sys.executable, "-m", "testkit.verifying_client"],
        input=json.dumps({"ca_file": ca_file, "checks": list(checks)}),
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def run_cli(
    nodes: LocalNodes, *args: str, hosts: Path | None = None, timeout: float = 15
) -> subprocess.CompletedProcess:
    """The engine's CLI, with the password in its environment (and names resolved through
    `hosts` when given)."""
    env = cli_environment(PASSWORD, nodes.binaries.search_path())
    if hosts is not None:
        env = resolving_environment(hosts, env)
    return subprocess.run(
        [nodes.binaries.cli, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )


def tls_group(root: Path, loopback: LoopbackAddresses, engine: EngineBinaries) -> LocalNodes:
    return LocalNodes(
        root, loopback, settings=fast_settings(engine.engine.name, tls="true"), shell=dash(), binaries=engine
    )


@pytest.fixture
def tls_nodes(tmp_path: Path, loopback: LoopbackAddresses, engine: EngineBinaries) -> Iterator[LocalNodes]:
    """The test's own TLS nodes (a CA and a certificate of their own)."""
    with tls_group(tmp_path / "nodes", loopback, engine) as group:
        yield group


@pytest.fixture(scope="module")
def tls_cluster(
    tmp_path_factory: pytest.TempPathFactory, loopback: LoopbackAddresses, engine: EngineBinaries
) -> Iterator[LocalNodes]:
    """One formed TLS cluster (3 shards, 1 replica each) for the tests that only read it and
    write keys of their own."""
    if nss_wrapper_library() is None:
        pytest.fail("libnss_wrapper.so is missing: sh tools/install-system-packages.sh")
    with tls_group(tmp_path_factory.mktemp("tls") / "nodes", loopback, engine) as group:
        group.cluster()
        yield group


@pytest.fixture(scope="module")
def hosts(tls_cluster: LocalNodes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    node0 = tls_cluster.nodes[0].ip
    return write_hosts_file(
        tmp_path_factory.mktemp("dns") / "hosts", tls_cluster, {COVERED_ALIAS: node0, UNCOVERED_NAME: node0}
    )


# ---------------------------------------------------------------------------------------
# The certificate
# ---------------------------------------------------------------------------------------


def test_the_node_certificate_covers_the_stack_names_and_no_address(tmp_path: Path) -> None:
    ca = CertificateAuthority.new()
    files = issue_node_files(ca, "redis")
    certificate = files.certificate
    ca_certificate = x509.load_pem_x509_certificate(ca.cert_pem)

    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == certificate_dns_names(HEADLESS_SERVICE, CLIENT_SERVICE, "redis")
    assert names.get_values_for_type(x509.IPAddress) == [], "pod IPs change: no certificate may name one"
    assert "*.redis-cluster-headless.redis.svc.cluster.local" in names.get_values_for_type(x509.DNSName)
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    extended = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    # The cluster bus and replication present the same certificate as clients.
    assert set(extended) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    constraints = ca_certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert certificate.issuer == ca_certificate.subject
    certificate.verify_directly_issued_by(ca_certificate)
    assert (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days == 90

    # Written as the kubelet writes a Secret volume: links through ..data, private files;
    # a renewal swaps every file at once.
    files.write(tmp_path / "tls")
    for name in ("tls.crt", "tls.key", "ca.crt"):
        path = tmp_path / "tls" / name
        assert path.is_symlink() and os.readlink(path) == f"..data/{name}"
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    renewed = issue_node_files(ca, "redis")
    renewed.write(tmp_path / "tls")
    assert TlsFiles.read(tmp_path / "tls") == renewed
    assert len([p for p in (tmp_path / "tls").iterdir() if p.is_dir() and not p.is_symlink()]) == 1


# ---------------------------------------------------------------------------------------
# Clients that verify, across redirects
# ---------------------------------------------------------------------------------------


def test_a_client_that_verifies_host_names_follows_the_cluster_by_name(tls_cluster: LocalNodes, hosts: Path) -> None:
    cluster = tls_cluster.nodes
    masters, _ = masters_and_replicas(cluster)
    seed = cluster[0]
    # A master other than the seed: the seed answers MOVED for its keys.
    elsewhere = next(master for master in masters if master.pod != seed.pod)
    moved_key = key_served_by(elsewhere, "moved")

    whole, moved = run_verifying_client(
        hosts,
        seed.tls_ca_file,
        [
            {"check": "cluster", "host": seed.announced_hostname, "keys": 300},
            {"check": "moved", "host": seed.announced_hostname, "key": moved_key},
        ],
    )

    assert whole["ok"], whole
    master_names = {master.announced_hostname for master in masters}
    # Every key was written to and read from its master, dialled by name and verified.
    assert set(whole["served_by"]) == master_names, whole["served_by"]
    # It knows every node by name only (replicas are listed once their offset moved).
    names = {f"{node.announced_hostname}:6379" for node in cluster}
    assert {f"{name}:6379" for name in master_names} <= set(whole["nodes"]) <= names, whole["nodes"]
    # CLUSTER SHARDS and SLOTS name every node by its DNS name (the IP beside it for reference).
    assert whole["shard_endpoints"] == sorted(
        [node.announced_hostname, node.announced_hostname, node.ip] for node in cluster
    )
    assert set(whole["slot_endpoints"]) == master_names
    # A MOVED names the owner by its DNS name, and the owner's certificate passes for it.
    assert moved == {"ok": True, "redirected_to": elsewhere.announced_hostname}, moved
    assert elsewhere.client().get(moved_key) == "via-moved"


def test_the_cli_follows_moved_by_name_verifying_the_chain_but_no_name(tls_cluster: LocalNodes, hosts: Path) -> None:
    cluster = tls_cluster.nodes
    masters, _ = masters_and_replicas(cluster)
    seed = masters[0]
    other = masters[1]
    key = key_served_by(other, "cli")
    tls = ["--tls", "--cacert", seed.tls_ca_file]

    redirected = run_cli(tls_cluster, *tls, "-h", seed.announced_hostname, "SET", key, "x", hosts=hosts)
    assert f"MOVED {key_slot(key.encode())} {other.announced_hostname}:6379" in redirected.stdout, redirected

    followed = run_cli(tls_cluster, "-c", *tls, "-h", seed.announced_hostname, "SET", key, "by-cli", hosts=hosts)
    assert followed.returncode == 0 and followed.stdout.strip() == "OK", followed
    assert other.client().get(key) == "by-cli"

    # The CLI verifies the chain, never the host name: a name the certificate does not cover
    # passes, as does a pod IP. The probes and hooks rely on that: they dial $POD_IP. Were a
    # release to start checking names, this test says so before the probes fail in a pod.
    uncovered = run_cli(tls_cluster, *tls, "-h", UNCOVERED_NAME, "PING", hosts=hosts)
    assert uncovered.stdout.strip() == "PONG", uncovered
    by_ip = run_cli(tls_cluster, *tls, "-h", seed.ip, "PING")
    assert by_ip.stdout.strip() == "PONG", by_ip


def test_a_plaintext_client_is_refused(tls_cluster: LocalNodes) -> None:
    node = tls_cluster.nodes[0]
    plaintext = redis.Redis(
        host=node.ip, port=node.port, password=PASSWORD, socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(redis.ConnectionError):
        plaintext.ping()
    plaintext.close()
    cli = run_cli(tls_cluster, "-h", node.ip, "PING")
    assert "PONG" not in cli.stdout
    assert "reset by peer" in cli.stdout + cli.stderr or "closed" in (cli.stdout + cli.stderr).lower(), cli
    # The cluster bus port speaks TLS too (tls-cluster yes), with the same certificate.
    context = ssl.create_default_context(cafile=node.tls_ca_file)
    context.check_hostname = False
    with socket.create_connection((node.ip, node.port + 10000), timeout=5) as raw, context.wrap_socket(raw) as bus:
        bus_serial = x509.load_der_x509_certificate(bus.getpeercert(binary_form=True)).serial_number
    assert bus_serial == served_serial(node)


def test_a_client_without_the_cluster_ca_is_refused(tls_cluster: LocalNodes, hosts: Path) -> None:
    node = tls_cluster.nodes[0]
    # The system's trust store does not hold the cluster's CA.
    (default_trust,) = run_verifying_client(hosts, None, [{"check": "connect", "host": node.announced_hostname}])
    assert default_trust["ok"] is False and "certificate verify failed" in default_trust["error"], default_trust
    stranger_ca = tls_cluster.root / "stranger-ca.crt"
    stranger_ca.write_bytes(CertificateAuthority.new("another CA").cert_pem)
    (other_ca,) = run_verifying_client(hosts, str(stranger_ca), [{"check": "connect", "host": node.announced_hostname}])
    assert other_ca["ok"] is False and "certificate verify failed" in other_ca["error"], other_ca

    for args in (["--tls"], ["--tls", "--cacert", str(stranger_ca)]):
        cli = run_cli(tls_cluster, *args, "-h", node.announced_hostname, "PING", hosts=hosts)
        assert "PONG" not in cli.stdout and "certificate verify failed" in cli.stdout + cli.stderr, cli


def test_a_name_the_certificate_does_not_cover_is_refused(tls_cluster: LocalNodes, hosts: Path) -> None:
    node = tls_cluster.nodes[0]
    results = run_verifying_client(
        hosts,
        node.tls_ca_file,
        [
            {"check": "connect", "host": node.announced_hostname},
            {"check": "connect", "host": COVERED_ALIAS},
            {"check": "connect", "host": UNCOVERED_NAME},
            {"check": "connect", "host": node.ip},
        ],
    )
    announced, alias, uncovered, by_ip = results
    # The very same server, reached under four names: only those the certificate covers pass.
    assert announced == {"ok": True} and alias == {"ok": True}, results
    assert uncovered["ok"] is False and "Hostname mismatch" in uncovered["error"], uncovered
    assert by_ip["ok"] is False and "IP address mismatch" in by_ip["error"], by_ip


# ---------------------------------------------------------------------------------------
# The bootstrap over TLS
# ---------------------------------------------------------------------------------------


def test_the_bootstrap_forms_a_tls_cluster_over_the_direct_transport(tls_nodes: LocalNodes) -> None:
    nodes = tls_nodes.started(6)
    for node in nodes:
        # Fresh nodes are Ready over TLS, or the bootstrap would wait for ever.
        probe = node.run_script("probe-readiness.sh")
        assert probe.returncode == 0, probe.stderr
    with tls_nodes.transport() as transport:
        topology = ensure_cluster(transport, 3, 1, 60)
        assert topology["state"] == "ok", topology["problems"]
        assert topology["placement"]["zone_aware"] is True
    wait_cluster_ok(nodes)
    wait_ready(nodes)
    with cluster_client(nodes) as client:
        client.set("formed", "over-tls")
        assert client.get("formed") == "over-tls"
    # The same transport without TLS finds the node not ready: it refuses plaintext.
    with DirectTransport(tls_nodes.inputs(nodes[:1]), PASSWORD, cli=tls_nodes.binaries.cli) as plaintext:
        (status,) = plaintext.pod_statuses(1)
    assert not status.ready, status


def test_the_bootstrap_forms_a_tls_cluster_over_the_kubernetes_transport(tls_nodes: LocalNodes) -> None:
    nodes = tls_nodes.started(6)
    by_pod = {node.pod: node for node in nodes}
    execs: list[list[str]] = []

    def exec_in_pod(namespace: str, pod: str, container: str, argv: list[str], timeout: float) -> CliResult:
        # The argv the pod would run, with the pod's mounts where this node has them.
        execs.append(list(argv))
        local = [by_pod[pod].tls_ca_file if arg == "/pod/tls/ca.crt" else arg for arg in argv]
        local = [f"{by_pod[pod].paths.secret_dir}/password" if arg == "/pod/secret" else arg for arg in local]
        env = {"PATH": tls_nodes.binaries.search_path()}
        done = subprocess.run(local, capture_output=True, text=True, timeout=timeout, env=env)
        return CliResult(done.returncode, done.stdout, done.stderr)

    transport = KubernetesTransport(
        core_api=LocalCoreV1(tls_nodes),
        namespace="redis",
        stateful_set_name="redis-cluster",
        password=PASSWORD,
        secret_file="/pod/secret",
        exec_function=exec_in_pod,
        cli=tls_nodes.binaries.engine.cli,
        port_forward=local_port_forward({n.pod: (n.ip, n.port) for n in nodes}),
        tls=tls_nodes.tls_options(),
        pod_ca_file="/pod/tls/ca.crt",
    )
    with transport:
        topology = ensure_cluster(transport, 3, 1, 60)
        assert topology["state"] == "ok", topology["problems"]
    assert execs and all(argv[5:8] == ["--tls", "--cacert", "/pod/tls/ca.crt"] for argv in execs), execs
    wait_cluster_ok(nodes)


# ---------------------------------------------------------------------------------------
# Certificate renewal
# ---------------------------------------------------------------------------------------


def _readiness(node: LocalNode) -> subprocess.CompletedProcess:
    return node.run_script("probe-readiness.sh", timeout=15)


def _syncs(master: LocalNode) -> int:
    """Full and partial resyncs a master has served."""
    stats = master.client().info("stats")
    return int(stats["sync_full"]) + int(stats["sync_partial_ok"])


def test_a_renewed_certificate_is_loaded_by_the_readiness_probe_without_downtime(tls_nodes: LocalNodes) -> None:
    cluster = tls_nodes.cluster()
    # The kubelet has run each readiness probe at least once since the start.
    for node in cluster:
        assert _readiness(node).returncode == 0
    old_serial = tls_nodes.tls_files.serial
    assert {served_serial(node) for node in cluster} == {old_serial}
    pids = {node.pod: node.pid for node in cluster}
    # A client connected before the renewal, one connection throughout.
    held = cluster[0].client(single_connection_client=True)
    held_id = held.client_id()
    writer = Writer(cluster_client(cluster), "renewal", pace=0.005).start()
    try:
        writer.wait_acknowledged(100, timeout=20)

        renewed = tls_nodes.renew_certificate()
        assert renewed.serial != old_serial
        for node in cluster:
            node.write_tls(renewed)
        # Until it is told, a server goes on with what it loaded.
        assert {served_serial(node) for node in cluster} == {old_serial}

        renewal_started = time.monotonic()
        probes = {node.pod: _readiness(node) for node in cluster}
        for pod, probe in probes.items():
            assert probe.returncode == 0 and "reloaded the TLS files" in probe.stdout, (pod, probe)
        took = time.monotonic() - renewal_started
        assert {served_serial(node) for node in cluster} == {renewed.serial}
        # The next probes find nothing new: they load nothing.
        for node in cluster:
            again = _readiness(node)
            assert again.returncode == 0 and "reloaded" not in again.stdout, again

        # New links handshake with the renewed certificate: a replica dropped from its master
        # connects again (replication over TLS) and resyncs.
        _, replicas = masters_and_replicas(cluster)
        replica = replicas[0]
        master = next(node for node in cluster if myself(node).id == myself(replica).master_id)
        syncs = _syncs(master)
        replica.client().execute_command("CLIENT", "KILL", "TYPE", "master")
        deadline = time.monotonic() + 30
        while _syncs(master) == syncs:
            assert time.monotonic() < deadline, "the replica never connected to its master again"
            time.sleep(0.05)
        wait_replicas_online(cluster, timeout=30)
        moment = time.monotonic()
        writer.wait_acknowledged(100, after=moment, timeout=20)
    finally:
        writer.stop()
    assert writer.failures() == [], writer.summary()
    assert {node.pod: node.pid for node in cluster} == pids, "a node restarted"
    assert held.client_id() == held_id and held.ping() is True, "the established connection must survive"
    held.close()
    assert cluster_problems(cluster) == {}

    # A node that joins now meets the others with the renewed certificate on both sides.
    newcomer = tls_nodes.new(pod="redis-cluster-6")
    newcomer.start()
    assert served_serial(newcomer) == renewed.serial
    cluster[0].client().execute_command("CLUSTER", "MEET", newcomer.ip, newcomer.port)
    wait_cluster_ok([*cluster, newcomer], timeout=30)
    print(f"\nrenewal: {len(cluster)} probes reloaded the certificate in {took:.2f}s; {writer.summary()}")


def test_a_renewal_that_cannot_load_keeps_the_old_certificate_and_is_retried(tls_nodes: LocalNodes) -> None:
    node = tls_nodes.new()
    node.start()
    assert _readiness(node).returncode == 0
    old_serial = served_serial(node)
    first, second = tls_nodes.renew_certificate(), tls_nodes.renew_certificate()
    # Mid-update, as a hand-made Secret could be: a certificate with another one's key.
    node.write_tls(TlsFiles(first.ca_pem, first.cert_pem, second.key_pem))
    probe = _readiness(node)
    # Still Ready: the server serves on with the certificate it has.
    assert probe.returncode == 0, probe.stderr
    assert "reloading the TLS files failed" in probe.stderr, probe
    assert served_serial(node) == old_serial
    node.write_tls(second)
    probe = _readiness(node)
    assert probe.returncode == 0 and "reloaded the TLS files" in probe.stdout, probe
    assert served_serial(node) == second.serial


def test_a_new_ca_goes_in_through_a_bundle_without_splitting_the_cluster(tls_nodes: LocalNodes) -> None:
    """The procedure probe-readiness.sh documents: ca.crt with both CAs, then certificates
    from the new CA, then ca.crt with the new CA only; each step on every node (its probe
    run) before the next. The cluster stays healthy throughout, and at the end a client
    with the new CA only is served, one with the old CA only is refused."""
    cluster = tls_nodes.cluster(shards=3, replicas_per_shard=0)
    old = tls_nodes.tls_files
    new_ca = CertificateAuthority.new("the next CA")
    from_new_ca = issue_node_files(new_ca, tls_nodes.settings.namespace)
    steps = [
        TlsFiles(old.ca_pem + new_ca.cert_pem, old.cert_pem, old.key_pem),
        TlsFiles(old.ca_pem + new_ca.cert_pem, from_new_ca.cert_pem, from_new_ca.key_pem),
        TlsFiles(new_ca.cert_pem, from_new_ca.cert_pem, from_new_ca.key_pem),
    ]
    for step in steps:
        for node in cluster:
            node.write_tls(step)
        for node in cluster:
            probe = _readiness(node)
            assert probe.returncode == 0 and "reloaded the TLS files" in probe.stdout, probe
        wait_cluster_ok(cluster, timeout=20)

    old_ca_file = tls_nodes.root / "old-ca.crt"
    old_ca_file.write_bytes(old.ca_pem)
    for node in cluster:
        assert served_certificate(node).serial_number == from_new_ca.serial
        with pytest.raises(ssl.SSLCertVerificationError):
            served_certificate(node, str(old_ca_file))
    # The bus links formed anew with the new certificates: a node that joins now.
    newcomer = tls_nodes.new(pod="redis-cluster-3")
    newcomer.tls_files = steps[-1]
    newcomer.start()
    cluster[0].client().execute_command("CLUSTER", "MEET", newcomer.ip, newcomer.port)
    wait_cluster_ok([*cluster, newcomer], timeout=30)
