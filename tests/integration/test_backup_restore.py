"""`python -m sandbox backup` and `restore`, as a user runs them: the sandbox's rehearsal of restoring the data volumes' EBS snapshots onto pods with new IPs.

On EKS: snapshots of every data volume, new volumes from them bound to the StatefulSet's
claims, `pulumi up`, and the pods start on new IPs with their old nodes.conf and AOF. Here:
`backup` copies every pod's data directory, `restore` starts the pods from the copies on
loopback addresses none of them had, and the cluster must come back by itself (entrypoint,
peer recovery) with the same node IDs, the same masters, replicas and slots, and every key.
A refused command must change nothing.

Addresses: 127.0.63.0/24, locked per run like the reliability suite's octets
(`ManagedSandbox`); every process is stopped by pid when the test ends.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from redis.crc import key_slot

from cluster_logic.model import SLOTS
from sandbox.engine_binaries import EngineBinaries
from sandbox.processes import alive
from testkit.processes import processes_under
from testkit.sandbox_support import (
    ManagedSandbox,
    cluster_client,
    cluster_problems,
    node_client,
    run_sandbox_cli,
    snapshot,
    states_ok,
    wait_healthy,
)
from testkit.writers import lost_keys

pytestmark = pytest.mark.integration
OCTET = 63


def sandbox(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_sandbox_cli(root, OCTET, *args, check=check)


def timed(root: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = sandbox(root, *args)
    return result, time.monotonic() - started


def one_key_per_slot() -> dict[str, str]:
    """A key in each of the 16384 slots, each with a value of its own."""
    keys: dict[int, str] = {}
    n = 0
    while len(keys) < SLOTS:
        keys.setdefault(key_slot(f"slot:{n}".encode()), f"slot:{n}")
        n += 1
    return {key: f"value of slot {slot} ({key})" for slot, key in keys.items()}


def write(sb, keys: dict[str, str]) -> None:
    with cluster_client(sb) as client:
        items = list(keys.items())
        for start in range(0, len(items), 2000):
            pipe = client.pipeline()
            for key, value in items[start : start + 2000]:
                pipe.set(key, value)
            assert all(reply is True for reply in pipe.execute())


def key_count(sb) -> int:
    """Keys held by the masters (replicas hold copies)."""
    state = sb.load()
    total = 0
    for record in state.nodes:
        client = node_client(state, record)
        try:
            if client.info("replication")["role"] == "master":
                total += client.dbsize()
        finally:
            client.close()
    return total


def fingerprint(path: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file and link under `path` (but the top-level entries in `skip`) with its content."""
    found = {}
    for entry in sorted(path.rglob("*")):
        relative = entry.relative_to(path)
        if relative.parts[0] in skip:
            continue
        if entry.is_symlink():
            found[str(relative)] = f"-> {entry.readlink()}"
        elif entry.is_file():
            found[str(relative)] = hashlib.sha256(entry.read_bytes()).hexdigest()
        else:
            found[str(relative)] = "dir"
    return found


@pytest.fixture
def managed(tmp_path: Path, engine: EngineBinaries) -> Iterator[ManagedSandbox]:
    managed = ManagedSandbox(tmp_path / "sandbox", OCTET, engine=engine.engine.name)
    try:
        yield managed
    finally:
        problems = managed.close()
        assert not problems, f"processes outlived Sandbox.down: {problems}"


def test_a_backup_restored_on_new_addresses_keeps_every_node_id_and_key(managed, engine, tmp_path):
    root, sb = managed.root, managed.sandbox
    sandbox(root, "up", "--engine", engine.engine.name)
    keys = one_key_per_slot()
    write(sb, keys)
    before = snapshot(sb)
    backed_up_hosts = {pod: facts.host for pod, facts in before.items()}

    # A destination that holds anything is refused before any pod stops.
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    refused = sandbox(root, "backup", "--to", str(occupied), check=False)
    assert refused.returncode == 1 and "is not an empty folder" in refused.stderr, refused
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    assert {pod: f.run_id for pod, f in snapshot(sb).items()} == {pod: f.run_id for pod, f in before.items()}

    backup, backup_seconds = timed(root, "backup")
    destination = Path(backup.stdout.split(" to ", 1)[1].splitlines()[0])
    assert destination.parent == (root / "backups").resolve(), backup.stdout
    manifest = json.loads((destination / "manifest.json").read_text())
    assert manifest["engine"] == engine.engine.name and manifest["consistency"] == "clean shutdown"
    assert {n["pod"]: n["id"] for n in manifest["nodes"]} == {pod: f.id for pod, f in before.items()}
    assert sorted(p.name for p in destination.iterdir()) == [f"data-redis-cluster-{i}" for i in range(6)] + [
        "manifest.json"
    ]
    # The backup stopped every node and started it again: same nodes, same place, every key.
    wait_healthy(sb)
    after_backup = snapshot(sb)
    assert all(after_backup[pod].run_id != before[pod].run_id for pod in before), "the backup restarted no pod"
    assert {pod: (f.id, f.host, f.slots) for pod, f in after_backup.items()} == {
        pod: (f.id, f.host, f.slots) for pod, f in before.items()
    }
    with cluster_client(sb) as client:
        assert not lost_keys(client, keys)
    # Written after the backup: a restore from the copies must not have them.
    later = {f"after-backup:{n}": "too late" for n in range(200)}
    write(sb, later)

    # Onto a running sandbox: refused, nothing changed.
    state_text = sb.state_path.read_text()
    pids = [record.pid for record in sb.load().nodes]
    refused = sandbox(root, "restore", str(destination), check=False)
    assert refused.returncode == 1 and "`down` first" in refused.stderr, refused
    assert sb.state_path.read_text() == state_text and all(alive(pid) for pid in pids)
    assert not (root / "replaced").exists()

    sandbox(root, "down")
    # A sandbox that is down is copied as it lies on disk, and stays down.
    at_rest = sandbox(root, "backup", "--to", str(tmp_path / "at-rest"))
    assert "it stays down" in at_rest.stdout and not processes_under(root), at_rest.stdout
    at_rest_manifest = json.loads((tmp_path / "at-rest" / "manifest.json").read_text())
    assert at_rest_manifest["consistency"] == "as on disk"
    assert [n["id"] for n in at_rest_manifest["nodes"]] == [n["id"] for n in manifest["nodes"]]

    # From a folder that is not a complete backup: refused, naming what is wrong; nothing
    # changed, nothing started.
    untouched = fingerprint(root, skip=("backups",))
    master = next(n for n in manifest["nodes"] if n["role"] == "master")
    aof = next(name for name in master["files"] if name.endswith(".incr.aof"))
    damages = {
        "no manifest": (lambda d: (d / "manifest.json").unlink(), "has no manifest.json"),
        "a pod's folder": (
            lambda d: shutil.rmtree(d / "data-redis-cluster-5"),
            "data-redis-cluster-5/ is missing",
        ),
        "an AOF file": (
            lambda d: (d / f"data-{master['pod']}" / aof).unlink(),
            f"data-{master['pod']}/{aof} is missing",
        ),
        "a cut AOF": (
            lambda d: (d / f"data-{master['pod']}" / aof).write_bytes(b"*1\r\n"),
            f"data-{master['pod']}/{aof} has 4 bytes",
        ),
        "another node's nodes.conf": (
            lambda d: shutil.copy(d / "data-redis-cluster-1/nodes.conf", d / "data-redis-cluster-0/nodes.conf"),
            "data-redis-cluster-0/nodes.conf",
        ),
    }
    for what, (damage, message) in damages.items():
        broken = tmp_path / f"broken-{what.replace(' ', '-')}"
        shutil.copytree(destination, broken)
        damage(broken)
        refused = sandbox(root, "restore", str(broken), check=False)
        assert refused.returncode == 1, (what, refused)
        assert "not a backup" in refused.stderr or "not a complete backup" in refused.stderr, (what, refused.stderr)
        assert message in refused.stderr, (what, refused.stderr)
        assert fingerprint(root, skip=("backups",)) == untouched, f"{what}: the refused restore changed the sandbox"
        assert not processes_under(root), what

    restore, restore_seconds = timed(root, "restore", str(destination))
    print(f"backup (stop, copy, start, ok) {backup_seconds:.1f}s; restore (copy, start, ok) {restore_seconds:.1f}s")
    print(restore.stdout)
    assert (root / "replaced").is_dir(), "the data the restore replaced is gone"
    restored = snapshot(sb)
    assert_same_cluster(before, restored)
    assert all(restored[pod].host != host for pod, host in backed_up_hosts.items()), restored
    assert not {f.host for f in restored.values()} & set(backed_up_hosts.values()), "a pod is on an old address"
    # The restore's "ok" is the bootstrap's (every slot served, replicas linked); a node may
    # still list a peer at its old address for a moment, until gossip brings the new one.
    wait_healthy(sb, timeout=30)
    assert set(states_ok(sb).values()) == {"ok"} and not cluster_problems(sb)
    with cluster_client(sb) as client:
        lost = lost_keys(client, keys)
        assert not lost, f"{len(lost)} of {len(keys)} keys lost, e.g. {lost[:5]}"
        assert not any(client.exists(key) for key in list(later)[:20]), "keys written after the backup came back"
    assert key_count(sb) == len(keys)
    # What it prints: every node's ID and the keys.
    assert f"{len(keys)} keys" in restore.stdout
    assert all(facts.id in restore.stdout for facts in before.values())

    # A purge leaves the backups, as deleting volumes leaves their snapshots; a restore into
    # the empty sandbox is a new one (a new password) with the same nodes and keys.
    password = sb.load().password
    sandbox(root, "down", "--purge")
    assert sorted(p.name for p in root.iterdir()) == ["backups"]
    sandbox(root, "restore", str(destination))
    assert sb.load().password != password
    assert_same_cluster(before, snapshot(sb))
    with cluster_client(sb) as client:
        assert not lost_keys(client, keys)
    assert key_count(sb) == len(keys)

    # A pod down while the others run: a backup would copy a failure; refused, nothing written.
    sandbox(root, "kill", "redis-cluster-4")
    refused = sandbox(root, "backup", check=False)
    assert refused.returncode == 1 and "redis-cluster-4 down while the other pods run" in refused.stderr, refused
    assert [p.name for p in (root / "backups").iterdir()] == [destination.name]


def assert_same_cluster(before, after) -> None:
    """Same node per pod, same role, same master, same slots."""
    assert set(after) == set(before)
    for pod, facts in before.items():
        now = after[pod]
        assert now.id == facts.id, f"{pod} came back as another node"
        assert (now.role, now.master_id, now.slots) == (facts.role, facts.master_id, facts.slots), (facts, now)


def test_a_backup_without_a_sandbox_is_refused_and_writes_nothing(tmp_path):
    root = tmp_path / "sandbox"
    refused = sandbox(root, "backup", check=False)
    assert refused.returncode == 1 and "no sandbox in" in refused.stderr and "python -m sandbox up" in refused.stderr
    assert not root.exists()
    elsewhere = tmp_path / "backup"
    refused = sandbox(root, "backup", "--to", str(elsewhere), check=False)
    assert refused.returncode == 1 and "no sandbox in" in refused.stderr
    assert not root.exists() and not elsewhere.exists()
    # Nor does a restore from a folder that is no backup leave anything behind.
    refused = sandbox(root, "restore", str(tmp_path), check=False)
    assert refused.returncode == 1 and "has no manifest.json" in refused.stderr
    assert not root.exists()
