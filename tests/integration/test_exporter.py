"""The metrics exporter scraped for real: a sandbox cluster of the engine under test (3
masters, a replica each) with one redis_exporter per node, started as the pod starts it
(`exporter_args`, the monitoring user's password file), shows every series the alerting
rules use, with the values the cluster has, without a single command refused to the
monitoring user; and when a master is killed, the scrapes follow the failover.

Addresses: the plain sandbox locks 127.0.72.0/24 and the TLS one 127.0.73.0/24
(`ManagedSandbox`); each exporter listens on its node's address, port 9121.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest
import redis
import yaml
from redis.crc import key_slot

from cluster_logic.credentials import MONITORING_USER, monitoring_password
from cluster_logic.model import SLOTS, parse_cluster_nodes
from components.metrics_exporter import ALERT_RULES_FILE
from sandbox.engine_binaries import EngineBinaries
from sandbox.local_cluster import Sandbox, SandboxState
from sandbox.name_resolution import nss_wrapper_library
from testkit.exporter import EXPORTER, LocalExporter, Metrics
from testkit.processes import sweep
from testkit.sandbox_support import ManagedSandbox, node_client, record_of, wait_replication_settled

pytestmark = pytest.mark.integration

PLAIN_OCTET = 72
TLS_OCTET = 73
SHARDS = 3
NODES = SHARDS * 2


def alert_metric_names() -> set[str]:
    """The exporter's series the alerting rules read (`up` is Prometheus's own)."""
    groups = yaml.safe_load(ALERT_RULES_FILE.read_text())["groups"]
    return {
        name for group in groups for rule in group["rules"] for name in re.findall(r"\bredis_[a-z_]+\b", rule["expr"])
    }


# Series only a replica has.
REPLICA_ONLY = {"redis_master_link_up"}
# Series a node has only once it refused something (INFO errorstats lists the errors that
# happened): test_a_write_refused_for_want_of_a_replica_shows_in_the_scrape makes one.
AFTER_AN_ERROR = {"redis_errors_total"}


@dataclass
class Monitored:
    """A sandbox and the exporter beside each of its pods."""

    managed: ManagedSandbox
    exporters: dict[str, LocalExporter]

    @property
    def sandbox(self) -> Sandbox:
        return self.managed.sandbox

    def state(self) -> SandboxState:
        state = self.sandbox.load()
        assert state is not None
        return state

    def scrape(self) -> dict[str, Metrics]:
        return {pod: exporter.scrape() for pod, exporter in self.exporters.items()}

    def node_info(self, pod: str) -> Optional[dict]:
        """INFO of a pod as the admin sees it (None when it does not answer)."""
        state = self.state()
        client = node_client(state, record_of(state, pod))
        try:
            info = client.info()
            info["maxmemory_config"] = int(client.config_get("maxmemory")["maxmemory"])
            return info
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()

    def monitoring_denials(self) -> dict[str, list]:
        """The ACL LOG entries of the monitoring user, per running pod."""
        state = self.state()
        found = {}
        for record in state.nodes:
            if record.pid is None:
                continue
            client = node_client(state, record)
            try:
                found[record.pod] = [e for e in client.acl_log() if e.get("username") == MONITORING_USER]
            finally:
                client.close()
        return found


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, engine: EngineBinaries) -> Iterator[Monitored]:
    yield from monitored_sandbox(tmp_path_factory.mktemp("exporter"), PLAIN_OCTET, engine, tls=False)


@pytest.fixture
def over_tls(tmp_path: Path, engine: EngineBinaries) -> Iterator[Monitored]:
    yield from monitored_sandbox(tmp_path, TLS_OCTET, engine, tls=True)


def monitored_sandbox(root: Path, octet: int, engine: EngineBinaries, tls: bool) -> Iterator[Monitored]:
    if not EXPORTER.is_file():
        pytest.fail(f"{EXPORTER} is missing: run `sh tools/fetch-engines.sh`", pytrace=False)
    if nss_wrapper_library() is None:
        pytest.fail("libnss_wrapper.so is missing: sh tools/install-system-packages.sh", pytrace=False)
    sandbox_root = root / "sandbox"
    managed = ManagedSandbox(
        sandbox_root,
        octet,
        sandbox=Sandbox(root=sandbox_root, stack="dev", third_octet=octet, engine=engine.engine.name, tls=tls),
    )
    exporters: dict[str, LocalExporter] = {}
    try:
        managed.sandbox.up(shards=SHARDS, replicas_per_shard=1)
        wait_replication_settled(managed.sandbox)
        state = managed.sandbox.load()
        for record in state.nodes:
            exporters[record.pod] = LocalExporter(
                pod=record.pod,
                node_host=record.host,
                redis_port=record.port,
                password=monitoring_password(state.password),
                work_dir=root / "exporters" / record.pod,
                tls_ca_file=state.tls_ca_file,
            )
            exporters[record.pod].start()
        yield Monitored(managed, exporters)
    finally:
        for exporter in exporters.values():
            exporter.stop()
        leftovers = managed.close() + sweep(root / "exporters")
        assert not leftovers, f"processes survived the cleanup: {leftovers}"


# ---------------------------------------------------------------------------------------
# What a scrape should show
# ---------------------------------------------------------------------------------------


def scrape_problems(pod: str, metrics: Metrics, info: Optional[dict], cluster_nodes: int = NODES) -> list[str]:
    """How one exporter's scrape differs from what its node (read as the admin) says and a
    healthy cluster shows: empty when it matches."""
    problems = []

    def expect(name: str, wanted: float, **labels: str) -> None:
        got = metrics.value(name, **labels)
        if got != wanted:
            problems.append(f"{pod}: {name}{labels or ''} is {got}, not {wanted}")

    expect("redis_up", 1)
    expect("redis_exporter_last_scrape_error", 0, err="")
    expect("redis_cluster_state", 1)
    expect("redis_cluster_slots_assigned", SLOTS)
    expect("redis_cluster_slots_ok", SLOTS)
    expect("redis_cluster_slots_pfail", 0)
    expect("redis_cluster_slots_fail", 0)
    expect("redis_cluster_known_nodes", cluster_nodes)
    expect("redis_cluster_size", SHARDS)
    expect("redis_aof_enabled", 1)
    expect("redis_aof_last_write_status", 1)
    expect("redis_aof_last_bgrewrite_status", 1)
    expect("redis_rdb_last_bgsave_status", 1)
    # components/alerts/cluster-view.lua, run by the exporter at every scrape.
    expect("redis_script_values", 0, key="open_slots")
    expect("redis_script_values", 0, key="slot_holders_without_address")
    if info is None:
        return [*problems, f"{pod}: the node does not answer the admin"]
    expect("redis_memory_max_bytes", info["maxmemory_config"])
    if not (metrics.value("redis_memory_used_bytes") or 0) > 0:
        problems.append(f"{pod}: redis_memory_used_bytes is {metrics.value('redis_memory_used_bytes')}")
    role = (metrics.labels("redis_instance_info") or {}).get("role")
    if role != info["role"]:
        problems.append(f"{pod}: redis_instance_info says role {role}, the node {info['role']}")
    if info["role"] == "master":
        expect("redis_connected_slaves", 1)
        if metrics.series("redis_master_link_up"):
            problems.append(f"{pod}: a master with redis_master_link_up")
    else:
        expect("redis_connected_slaves", 0)
        expect("redis_master_link_up", 1, master_host=str(info["master_host"]), master_port=str(info["master_port"]))
    missing = (
        alert_metric_names() - metrics.names() - AFTER_AN_ERROR - (REPLICA_ONLY if info["role"] == "master" else set())
    )
    if missing:
        problems.append(f"{pod}: series the alerts use are missing: {sorted(missing)}")
    return problems


def cluster_scrape_problems(monitored: Monitored) -> list[str]:
    scrapes = monitored.scrape()
    return [
        problem
        for pod, metrics in scrapes.items()
        for problem in scrape_problems(pod, metrics, monitored.node_info(pod))
    ]


def wait_until(check: Callable[[], list[str]], timeout: float, what: str, interval: float = 0.2) -> float:
    """Polls `check` (its problems) until it has none; returns the seconds it took."""
    started = time.monotonic()
    while True:
        problems = check()
        if not problems:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: still not so after {timeout:.0f}s: {problems}")
        time.sleep(interval)


def log_problems(monitored: Monitored, connect_errors_of: tuple[str, ...] = ()) -> list[str]:
    """Lines of the exporters' logs that report a refused command, an error or a warning;
    the exporters of `connect_errors_of` may have logged that their node did not answer."""
    found = []
    for pod, exporter in monitored.exporters.items():
        for line in exporter.log().splitlines():
            refused = "NOPERM" in line or "WRONGPASS" in line
            failed = re.search(r"level=(error|warning|fatal)", line) is not None
            expected = pod in connect_errors_of and "Couldn't connect to redis instance" in line
            if refused or (failed and not expected):
                found.append(f"{pod}: {line}")
    return found


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------


def test_the_exporters_show_the_series_the_alerts_use_without_a_refused_command(plain: Monitored) -> None:
    wait_until(lambda: cluster_scrape_problems(plain), 30, "every exporter shows the healthy cluster")
    scrapes = plain.scrape()
    # Every series an alert reads exists on some node; the ones an alert reads on every
    # node (all but the replica link) exist on every node.
    assert alert_metric_names() - AFTER_AN_ERROR <= set().union(*(m.names() for m in scrapes.values()))
    roles = sorted((m.labels("redis_instance_info") or {}).get("role", "?") for m in scrapes.values())
    assert roles == ["master"] * SHARDS + ["slave"] * SHARDS
    # Least privilege without a failed command: the node refused the monitoring user
    # nothing, the exporter logged no error.
    assert plain.monitoring_denials() == {pod: [] for pod in plain.exporters}
    assert log_problems(plain) == []


def test_slots_left_open_show_in_the_scrapes_of_the_nodes_that_mark_them(plain: Monitored) -> None:
    wait_until(lambda: cluster_scrape_problems(plain), 30, "every exporter shows the healthy cluster")
    infos = {pod: plain.node_info(pod) for pod in plain.exporters}
    source, target = sorted(pod for pod, info in infos.items() if info["role"] == "master")[:2]
    state = plain.state()
    clients = {pod: node_client(state, record_of(state, pod)) for pod in (source, target)}
    try:
        ids = {pod: client.execute_command("CLUSTER", "MYID") for pod, client in clients.items()}
        myself = next(e for e in parse_cluster_nodes(clients[source].execute_command("CLUSTER", "NODES")) if e.myself)
        slot = myself.slots[0][0]
        # Half a move, as a run cut short leaves it: importing on the target, migrating on
        # the source (no key moves; nothing changes for clients of an empty slot).
        clients[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        clients[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        scrapes = plain.scrape()
        opened = {pod: scrapes[pod].value("redis_script_values", key="open_slots") for pod in plain.exporters}
        # The two masters mark the slot; Valkey 8+ mirrors a primary's marks on its replicas,
        # Redis does not; the third shard knows nothing of it.
        mirrors = {
            pod
            for pod, info in infos.items()
            if info["role"] == "slave"
            and info["master_host"] in {record_of(state, source).host, record_of(state, target).host}
        }
        mirrored = 1 if plain.sandbox.load().engine == "valkey" else 0
        assert opened == {
            pod: 1 if pod in (source, target) else mirrored if pod in mirrors else 0 for pod in plain.exporters
        }, opened
    finally:
        for client in clients.values():
            client.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
            client.close()
    wait_until(lambda: cluster_scrape_problems(plain), 30, "every exporter shows no open slot again")
    assert plain.monitoring_denials() == {pod: [] for pod in plain.exporters}


def test_a_write_refused_for_want_of_a_replica_shows_in_the_scrape(plain: Monitored) -> None:
    """RedisWritesRefusedWithoutReplica reads the refusals a bounded master counts: one
    asked for more replicas in sync than it has refuses a write with NOREPLICAS, and its
    exporter reports it."""
    wait_until(lambda: cluster_scrape_problems(plain), 30, "every exporter shows the healthy cluster")
    infos = {pod: plain.node_info(pod) for pod in plain.exporters}
    master = sorted(pod for pod, info in infos.items() if info["role"] == "master")[0]
    state = plain.state()
    client = node_client(state, record_of(state, master))
    try:
        myself = next(e for e in parse_cluster_nodes(client.execute_command("CLUSTER", "NODES")) if e.myself)
        slot = myself.slots[0][0]
        key = next(f"refused:{n}" for n in range(10**6) if key_slot(f"refused:{n}".encode()) == slot)
        # As `durability: bounded` does with 1, but more than its one replica: every write refused.
        client.config_set("min-replicas-max-lag", "1")
        client.config_set("min-replicas-to-write", "2")
        with pytest.raises(redis.ResponseError, match="NOREPLICAS"):
            client.set(key, "x")
    finally:
        client.config_set("min-replicas-to-write", "0")
        client.close()
    refused = plain.exporters[master].scrape().value("redis_errors_total", err="NOREPLICAS")
    assert refused is not None and refused >= 1, refused
    assert plain.monitoring_denials() == {pod: [] for pod in plain.exporters}


def test_a_killed_master_shows_in_the_scrapes_until_its_replica_serves_and_it_rejoins(plain: Monitored) -> None:
    wait_until(lambda: cluster_scrape_problems(plain), 30, "every exporter shows the healthy cluster")
    infos = {pod: plain.node_info(pod) for pod in plain.exporters}
    state = plain.state()
    master = next(pod for pod, info in infos.items() if info["role"] == "master")
    master_host = record_of(state, master).host
    replica = next(pod for pod, info in infos.items() if info["role"] == "slave" and info["master_host"] == master_host)
    survivors = [pod for pod in plain.exporters if pod != master]
    seen = {"replica link down": False, "slots pfail or fail": False}

    plain.sandbox.kill(master)  # SIGKILL by its recorded pid, like a crashed container

    def failed_over() -> list[str]:
        scrapes = plain.scrape()
        if scrapes[replica].value("redis_master_link_up") == 0:
            seen["replica link down"] = True
        if any(
            (scrapes[p].value("redis_cluster_slots_pfail") or 0) + (scrapes[p].value("redis_cluster_slots_fail") or 0)
            for p in survivors
        ):
            seen["slots pfail or fail"] = True
        problems = []
        dead = scrapes[master]
        if dead.value("redis_up") != 0 or dead.value("redis_exporter_last_scrape_error") != 1:
            problems.append(
                f"{master}: redis_up {dead.value('redis_up')}, scrape error {dead.series('redis_exporter_last_scrape_error')}"
            )
        promoted = scrapes[replica]
        if (promoted.labels("redis_instance_info") or {}).get("role") != "master" or promoted.value(
            "redis_connected_slaves"
        ) != 0:
            problems.append(f"{replica}: not yet a master without replica: {promoted.labels('redis_instance_info')}")
        for pod in survivors:
            for name, wanted in (
                ("redis_up", 1),
                ("redis_cluster_state", 1),
                ("redis_cluster_slots_ok", SLOTS),
                ("redis_cluster_slots_fail", 0),
                ("redis_cluster_slots_pfail", 0),
                ("redis_cluster_known_nodes", NODES),
            ):
                if scrapes[pod].value(name) != wanted:
                    problems.append(f"{pod}: {name} is {scrapes[pod].value(name)}, not {wanted}")
        return problems

    wait_until(failed_over, 60, f"the scrapes show {replica} serving in place of the killed {master}")
    # What the alerts would have seen on the way: RedisReplicaLinkDown's series, and the
    # slots RedisClusterSlotsPfail and RedisClusterSlotsFailed count.
    assert seen == {"replica link down": True, "slots pfail or fail": True}

    # The pod restarts (its exporter, a sidecar, runs on) and rejoins as a replica.
    plain.sandbox.restart([master])
    wait_until(lambda: cluster_scrape_problems(plain), 60, f"{master} back as a replica of {replica} in the scrapes")
    assert (plain.exporters[master].scrape().labels("redis_instance_info") or {}).get("role") == "slave"
    assert plain.monitoring_denials() == {pod: [] for pod in plain.exporters}
    assert log_problems(plain, connect_errors_of=(master,)) == []
    assert "Couldn't connect to redis instance" in plain.exporters[master].log()


def test_over_tls_the_exporter_verifies_its_node_with_the_ca(over_tls: Monitored, tmp_path: Path) -> None:
    wait_until(lambda: cluster_scrape_problems(over_tls), 30, "every exporter shows the healthy cluster over TLS")
    assert all(e.args()[0].startswith("--redis.addr=rediss://localhost:") for e in over_tls.exporters.values())
    assert over_tls.monitoring_denials() == {pod: [] for pod in over_tls.exporters}
    assert log_problems(over_tls) == []

    # The same exporter, the same CA and node, dialling a name the node certificate does not
    # cover: refused, so the CA file verifies the node rather than merely being accepted.
    state = over_tls.state()
    first = state.nodes[0]
    uncovered = LocalExporter(
        pod="uncovered",
        node_host=first.host,
        redis_port=first.port,
        password=monitoring_password(state.password),
        work_dir=tmp_path / "uncovered",
        tls_ca_file=state.tls_ca_file,
        host=f"{first.pod}.another-service.redis.svc.cluster.local",
        # An address of the locked octet that no pod has: node 0's own exporter holds its port.
        listen_host=f"127.0.{TLS_OCTET}.250",
    )
    uncovered.start()
    try:
        refused = uncovered.scrape()
    finally:
        uncovered.stop()
    assert sweep(tmp_path / "uncovered") == []
    assert refused.value("redis_up") == 0
    assert refused.value("redis_exporter_last_scrape_error") == 1
    assert over_tls.exporters[first.pod].scrape().value("redis_up") == 1
