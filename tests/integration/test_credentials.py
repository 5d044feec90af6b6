"""Users and password rotation on real servers of the engine under test, driven the way
`pulumi up` drives them: `CredentialRotation` (before the Secret changes) and the bootstrap
(after), both pickled and served by `python -m pulumi.dynamic`, called over gRPC. A "Secret
update" is what the kubelet does to a pod's mount: the node's secret files rewritten."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import pytest
import redis

from cluster_logic.credentials import (
    Credential,
    UserAccess,
    replication_password,
)
from components.cluster_bootstrap import credentials_props
from components.redis_node_files import node_credentials
from sandbox.engine_binaries import EngineBinaries
from sandbox.local_nodes import LocalNode
from testkit.provider_server import ProviderServer, plain_strings, secret, serialized_provider, serialized_rotation
from testkit.redis_nodes import PASSWORD, LocalNodes, cluster_nodes, key_in_slots, wait_ready, wait_replicas_online

pytestmark = pytest.mark.integration

NEW_PASSWORD = "Rotated-Passw0rd.for_tests-only"
APP = UserAccess("app", commands=("+@read", "+@write", "+@connection", "-@dangerous"), keys=("app:*",))
READER = UserAccess("reader", commands=("+@read", "+@connection"), keys=("*",))
USER_PASSWORDS = {"app": "App-Passw0rd.for_tests-only", "reader": "Reader-Passw0rd.for_tests-only"}


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderServer]:
    with ProviderServer() as running:
        yield running


@pytest.fixture(scope="module")
def blobs() -> tuple[str, str]:
    return serialized_rotation(), serialized_provider()


def _props(blob: str, engine: EngineBinaries, nodes: LocalNodes, credentials: Sequence[Credential], **extra) -> dict:
    admin = credentials[0].passwords[0]
    values = {
        "__provider": blob,
        "engine": engine.engine.name,
        "shards": 3,
        "replicas_per_shard": 1,
        "password": secret(admin),
        "credentials": secret(credentials_props(credentials)),
        "transport": "direct",
        "nodes": nodes.inputs(),
        "ready_timeout_seconds": 60,
    }
    values.update(extra)
    return values


def _login(node: LocalNode, user: str, password: str) -> redis.Redis:
    return node.client(username=user, password=password)


def _refuses(node: LocalNode, user: str, password: str) -> bool:
    try:
        _login(node, user, password).ping()
    except redis.AuthenticationError:
        return True
    except redis.ResponseError as error:
        return "WRONGPASS" in str(error)
    return False


def _permitted(call) -> None:
    """The command passed the ACL check: it ran, or the node sent it to the key's owner
    (a redirect comes after the ACL check)."""
    try:
        call()
    except redis.exceptions.MovedError:
        pass


def _update_secret(nodes: Sequence[LocalNode], credentials: Sequence[Credential]) -> None:
    """What the kubelet does once the Secret changed: every pod's mount holds the new files."""
    for node in nodes:
        node.credentials = list(credentials)
        node.password = credentials[0].passwords[0]
        node.write_secret()


def _restart(node: LocalNode, writer: Optional[FreshConnectionWriter] = None) -> None:
    """A pod restart as a rolling update does it: preStop (a master hands over), SIGTERM,
    start, ready."""
    if writer is not None:
        writer.restarting.add(node.pod)
    node.stop(prestop=True)
    node.start()
    wait_ready([node], timeout=30)
    if writer is not None:
        writer.restarting.discard(node.pod)


def _masters(nodes: Sequence[LocalNode]) -> list[tuple[LocalNode, Sequence[tuple[int, int]]]]:
    """Each master with the slot ranges it serves."""
    by_id = {next(e for e in cluster_nodes(node) if e.myself).id: node for node in nodes}
    return [(by_id[e.id], e.slots) for e in cluster_nodes(nodes[0]) if e.is_master and e.slots]


@dataclass
class FreshConnectionWriter:
    """Writes to every master in turn, each write on a new connection logged in with the
    password the client has now, as an application that reconnects would: a rotation that
    drops a password too early shows here, not on connections logged in long before. A
    MOVED (a master handed over) is followed, on a new connection too. A pod in
    `restarting` may refuse connections: only those failures are expected."""

    masters: list[tuple[LocalNode, Sequence[tuple[int, int]]]]
    password: str
    failures: list[str] = field(default_factory=list)
    writes: int = 0
    restarting: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def start(self) -> FreshConnectionWriter:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            for master, ranges in self.masters:
                n += 1
                self._write(master, key_in_slots(ranges, "rot:", n * 7))
            time.sleep(0.01)

    def _write(self, master: LocalNode, key: str) -> None:
        host, port = master.ip, master.port
        for _hop in range(3):
            client = redis.Redis(host=host, port=port, password=self.password, socket_timeout=5)
            try:
                client.set(key, "v")
                self.writes += 1
                return
            except redis.exceptions.MovedError as moved:
                host, port = moved.host, moved.port
            except (redis.RedisError, OSError) as error:
                if master.pod not in self.restarting or isinstance(error, redis.AuthenticationError):
                    self.failures.append(f"{master.pod} ({host}): {error}")
                return
            finally:
                client.close()
        self.failures.append(f"{key}: too many redirects")

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)


def test_users_get_exactly_their_rights_and_a_removed_user_is_locked_out(
    server: ProviderServer, blobs: tuple[str, str], nodes: LocalNodes, engine: EngineBinaries
) -> None:
    rotation_blob, bootstrap_blob = blobs
    cluster = nodes.cluster()
    with_users = node_credentials(nodes.settings, PASSWORD, [APP, READER], USER_PASSWORDS)
    # The users reach the running nodes (rotation), then their Secret, then the bootstrap
    # finishes: as one `pulumi up` that adds users.
    first = server.create(_props(rotation_blob, engine, nodes, with_users))
    assert PASSWORD not in plain_strings(ProviderServer.from_struct(first.properties))
    _update_secret(cluster, with_users)
    bootstrap = server.create(_props(bootstrap_blob, engine, nodes, with_users))
    assert ProviderServer.from_struct(bootstrap.properties, unwrap=True)["state"] == "ok"

    node = cluster[0]
    reader = _login(node, "reader", USER_PASSWORDS["reader"])
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.set("anything", "x")
    _permitted(lambda: reader.get("anything"))
    app = _login(node, "app", USER_PASSWORDS["app"])
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.get("other:key")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.flushall()
    # A node restarted since reads the same users from its Secret.
    _restart(cluster[1])
    assert _login(cluster[1], "reader", USER_PASSWORDS["reader"]).ping()

    # `reader` removed from the stack: after the next `pulumi up` it cannot log in anywhere,
    # and its open connection is gone.
    without_reader = node_credentials(nodes.settings, PASSWORD, [APP], USER_PASSWORDS)
    state = ProviderServer.from_struct(first.properties)
    server.update(first.id, state, _props(rotation_blob, engine, nodes, without_reader))
    _update_secret(cluster, without_reader)
    server.update(
        bootstrap.id,
        ProviderServer.from_struct(bootstrap.properties),
        _props(bootstrap_blob, engine, nodes, without_reader),
    )
    for each in cluster:
        assert _refuses(each, "reader", USER_PASSWORDS["reader"]), each.pod
    with pytest.raises((redis.ConnectionError, redis.exceptions.NoPermissionError, redis.AuthenticationError)):
        reader.get("anything")
    assert _login(node, "app", USER_PASSWORDS["app"]).ping()


def test_a_new_password_is_rotated_under_writes_with_pods_restarting_midway(
    server: ProviderServer, blobs: tuple[str, str], nodes: LocalNodes, engine: EngineBinaries
) -> None:
    rotation_blob, bootstrap_blob = blobs
    cluster = nodes.cluster()
    old = node_credentials(nodes.settings, PASSWORD, [APP], USER_PASSWORDS)
    new = node_credentials(nodes.settings, NEW_PASSWORD, [APP], USER_PASSWORDS)
    rotation = server.create(_props(rotation_blob, engine, nodes, old))
    bootstrap = server.create(_props(bootstrap_blob, engine, nodes, old))
    bootstrap_state = ProviderServer.from_struct(bootstrap.properties)
    masters = _masters(cluster)
    master_pods = {master.pod for master, _ in masters}
    writer = FreshConnectionWriter(masters, PASSWORD).start()
    try:
        # 1. The rotation: every node takes the new passwords beside the old.
        server.update(
            rotation.id, ProviderServer.from_struct(rotation.properties), _props(rotation_blob, engine, nodes, new)
        )
        for node in cluster:
            assert not _refuses(node, "default", PASSWORD) and not _refuses(node, "default", NEW_PASSWORD)
        # Refresh shows the rotation half done.
        read = server.read(bootstrap.id, bootstrap_state)
        outs = ProviderServer.from_struct(read.properties, unwrap=True)
        assert outs["state"] == "rotating"
        assert any("still accepts a previous password" in p for p in outs["problems"])
        assert NEW_PASSWORD not in repr(outs["problems"]) and PASSWORD not in repr(outs["problems"])

        # 2. A replica restarts before its Secret changed: it knows only the old password.
        _restart(next(n for n in cluster if n.pod not in master_pods), writer)

        # 3. The Secret changes; the client switches; a master restarts with the new Secret.
        _update_secret(cluster, new)
        writer.password = NEW_PASSWORD
        _restart(masters[0][0], writer)

        # 4. The bootstrap (this `pulumi up`'s, or the next one's after an interruption)
        # gives the new users to the node that missed them, waits the grace period, and
        # removes the old password everywhere.
        updated = server.update(
            bootstrap.id, bootstrap_state, _props(bootstrap_blob, engine, nodes, new, rotation_grace_seconds=2)
        )
        assert ProviderServer.from_struct(updated.properties, unwrap=True)["state"] == "ok"
    finally:
        writer.stop()
    assert writer.failures == [], writer.failures[:5]
    assert writer.writes > 50
    for node in cluster:
        assert _refuses(node, "default", PASSWORD), f"{node.pod} still takes the old password"
        assert not _refuses(node, "default", NEW_PASSWORD)
        assert node.client(password=NEW_PASSWORD).config_get("masterauth")["masterauth"] == replication_password(
            NEW_PASSWORD
        )
    # Every replica is linked to its master with the new replication password, the one
    # that restarted with the old Secret included.
    for node in cluster:
        node.password = NEW_PASSWORD
    wait_replicas_online(cluster, timeout=30)
    final = server.read(bootstrap.id, ProviderServer.from_struct(updated.properties))
    assert ProviderServer.from_struct(final.properties, unwrap=True)["state"] == "ok"
