"""The sandbox's backup folder: every pod's data directory copied whole, with a manifest that proves it complete.

A backup stands in for the EBS snapshots of the StatefulSet's volumes. Each pod's data
directory (nodes.conf, the AOF directory, dump.rdb if any) goes into a folder named after the
pod's claim, `data-<statefulset>-<ordinal>/`, as a restored volume is bound to that claim;
`manifest.json` lists the cluster's settings, each node's identity as its nodes.conf states it
(ID, role, master, slots) and every file copied with its size and SHA-256. A restore trusts
nothing the manifest does not vouch for: a folder with a file missing, changed or cut short
is refused before anything is touched.

This module only reads and writes folders; stopping and starting the pods around a backup or
a restore is `sandbox.local_cluster.Sandbox`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from cluster_logic.model import NodeEntry, format_ranges, parse_cluster_nodes, pod_ordinal

MANIFEST_FILE = "manifest.json"
FORMAT = 1
NODES_CONF = "nodes.conf"
# redis.conf leaves appenddirname and appendfilename at their defaults, the same for both engines.
AOF_DIR = "appendonlydir"
AOF_MANIFEST = f"{AOF_DIR}/appendonly.aof.manifest"


class BackupError(RuntimeError):
    """A backup cannot be written, or a folder is not a complete backup; the message says why."""


@dataclass
class BackedUpNode:
    pod: str
    ordinal: int
    zone: str
    # Where the pod was at backup time: a restore puts every pod somewhere else.
    host: str
    port: int
    id: str
    role: str
    master_id: Optional[str]
    slots: str
    # Path inside the claim folder -> {"size": bytes, "sha256": hex}.
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def claim(self) -> str:
        return claim_name(self.pod)


@dataclass
class Manifest:
    created: str
    stack: str
    engine: str
    version: str
    bin_dir: Optional[str]
    shards: int
    replicas_per_shard: int
    tls: bool
    # How the files were taken: "clean shutdown" (the backup stopped the running pods) or
    # "as on disk" (the sandbox was down already, possibly after a crash).
    consistency: str
    nodes: list[BackedUpNode]
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for node in self.nodes for f in node.files.values())


def claim_name(pod: str) -> str:
    """The StatefulSet's claim of the pod's volume: `data-<pod>`."""
    return f"data-{pod}"


def myself_in(nodes_conf: str) -> Optional[NodeEntry]:
    """The `myself` line of a nodes.conf (the `vars` line has too few fields to parse)."""
    return next((entry for entry in parse_cluster_nodes(nodes_conf) if entry.myself), None)


def prepare_destination(destination: Path) -> Path:
    """Refuses a destination that holds anything; returns a new, empty staging folder beside it
    (mode 0700: the copies hold every key). Called before any pod stops, so that a destination
    that cannot be written changes nothing."""
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise BackupError(f"{destination} exists and is not an empty folder: a backup never overwrites anything")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}.partial-"))
    except OSError as error:
        raise BackupError(f"cannot write a backup to {destination}: {error}") from None


def write_backup(
    staging: Path, destination: Path, data_dirs: Mapping[str, Path], describe: Mapping[str, Any]
) -> Manifest:
    """Copies each pod's data directory (`data_dirs`: pod -> directory, whose files must not
    change meanwhile) into `staging` (from `prepare_destination`) with the manifest, made of
    `describe` (the Manifest's fields but `nodes`, and `placement`: pod -> zone, host and
    port), then renames it to `destination`: the backup appears only once complete. On any
    failure the staging folder is removed and nothing is left behind."""
    try:
        nodes = []
        for pod, data_dir in sorted(data_dirs.items(), key=lambda item: pod_ordinal(item[0])):
            nodes.append(_copy_node(pod, Path(data_dir), staging / claim_name(pod), describe["placement"][pod]))
        fields = {key: value for key, value in describe.items() if key != "placement"}
        manifest = Manifest(nodes=nodes, **fields)
        (staging / MANIFEST_FILE).write_text(manifest.to_json())
        # rename(2) replaces an empty directory, and nothing but an empty one.
        os.rename(staging, destination)
    except BaseException:
        discard(staging)
        raise
    return manifest


def discard(staging: Path) -> None:
    """Removes a staging folder a backup gave up on."""
    shutil.rmtree(staging, ignore_errors=True)


def node_identity(pod: str, data_dir: Path) -> NodeEntry:
    """The node a pod's data directory holds (its nodes.conf's `myself` line); refused when
    there is none, as such a directory restores nothing."""
    nodes_conf = Path(data_dir) / NODES_CONF
    myself = myself_in(nodes_conf.read_text()) if nodes_conf.is_file() else None
    if myself is None:
        raise BackupError(f"{pod} has no node in {nodes_conf}: it never ran, so there is nothing of it to back up")
    return myself


def _copy_node(pod: str, data_dir: Path, target: Path, where: Mapping[str, Any]) -> BackedUpNode:
    myself = node_identity(pod, data_dir)
    shutil.copytree(data_dir, target, symlinks=True)
    files = {}
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        files[str(path.relative_to(target))] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return BackedUpNode(
        pod=pod,
        ordinal=pod_ordinal(pod),
        zone=where["zone"],
        host=where["host"],
        port=where["port"],
        id=myself.id,
        role="master" if myself.is_master else "slave",
        master_id=myself.master_id,
        slots=" ".join(format_ranges(myself.slots)),
        files=files,
    )


def read_backup(source: Path) -> Manifest:
    """The manifest of the backup in `source`, once every file it lists is there with its size
    and checksum, every node has its nodes.conf (naming the node the manifest names) and an
    AOF with every file the AOF's own manifest lists, and the nodes make up the cluster's
    shape. Anything else is refused with the list of what is wrong."""
    source = Path(source)
    manifest_path = source / MANIFEST_FILE
    if not source.is_dir():
        raise BackupError(f"{source} is not a folder")
    if not manifest_path.is_file():
        raise BackupError(
            f"{source} is not a backup: it has no {MANIFEST_FILE} (`python -m sandbox backup` writes one)"
        )
    try:
        raw = json.loads(manifest_path.read_text())
        if raw.get("format") != FORMAT:
            raise BackupError(f"{manifest_path} is of format {raw.get('format')!r}; this sandbox reads {FORMAT}")
        manifest = Manifest(**{**raw, "nodes": [BackedUpNode(**node) for node in raw["nodes"]]})
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise BackupError(f"{manifest_path} cannot be read: {error}") from None

    problems = []
    expected = manifest.shards * (1 + manifest.replicas_per_shard)
    ordinals = sorted(node.ordinal for node in manifest.nodes)
    if ordinals != list(range(expected)):
        problems.append(
            f"{manifest.shards} shards with {manifest.replicas_per_shard} replica(s) each are pods 0..{expected - 1}, "
            f"the manifest lists ordinals {ordinals}"
        )
    for node in manifest.nodes:
        problems += _node_problems(source, node)
    if problems:
        raise BackupError(f"{source} is not a complete backup: " + "; ".join(problems))
    return manifest


def _node_problems(source: Path, node: BackedUpNode) -> list[str]:
    folder = source / node.claim
    if not folder.is_dir():
        return [f"{node.claim}/ is missing"]
    problems = []
    for name in (NODES_CONF, AOF_MANIFEST):
        if name not in node.files:
            problems.append(f"{node.claim}/{name} is not in the manifest")
    for name, expected in node.files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{node.claim}/{name} is missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(f"{node.claim}/{name} has {path.stat().st_size} bytes, not {expected['size']}")
        elif _sha256(path) != expected["sha256"]:
            problems.append(f"{node.claim}/{name} has changed since the backup (checksum)")
    if problems:
        return problems
    myself = myself_in((folder / NODES_CONF).read_text())
    if myself is None or myself.id != node.id:
        problems.append(f"{node.claim}/{NODES_CONF} is not node {node.id} of {node.pod}")
    for name in _aof_files((folder / AOF_MANIFEST).read_text()):
        if f"{AOF_DIR}/{name}" not in node.files:
            problems.append(f"{node.claim}/{AOF_DIR}/{name}, which the AOF manifest lists, is not in the backup")
    return problems


def _aof_files(aof_manifest: str) -> list[str]:
    """The files an AOF manifest names (`file <name> seq <n> type <b|h|i>` per line)."""
    names = []
    for line in aof_manifest.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "file":
            names.append(words[1])
    return names


def restore_node(source: Path, node: BackedUpNode, data_dir: Path) -> None:
    """Copies the files the manifest lists for `node` (and nothing else found in the folder)
    into `data_dir`, which must not exist yet."""
    data_dir.mkdir(parents=True)
    for name in node.files:
        target = data_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / node.claim / name, target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
