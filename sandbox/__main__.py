"""python -m sandbox <command>: the stack's Redis Cluster as local processes.

up [--engine redis|valkey] [--binaries DIR] [--shards 3] [--replicas-per-shard 1] [--tls]
                                           start the pods and form (or adopt, or scale out or in) the cluster
status                                     each node's address, role, master, slots, link and keys
renew-cert                                 TLS: a new certificate for every node, loaded without a restart
kill <pod> [--stay-down]                   SIGKILL one pod, like a crashed container: back after the kubelet's 10 s back-off
restart <pod> | --all [--new-ip] [--lose-volume]
                                           preStop + SIGTERM, then start again (on a new address; on a new, empty volume)
roll [--binaries DIR]                      a rolling update, pod by pod, onto the engine's .engines/ release (or DIR's)
backup [--to DIR]                          stop the cluster, copy every pod's data directory, start it again
restore DIR                                a cluster from a backup's copies, on new addresses (sandbox down or absent)
partition <pod>... [--keep-client]         cut pods off from the others (nftables rules on their addresses)
heal                                       remove the partition
down [--purge]                             heal, stop every process; --purge deletes the data too (backups/ stays)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cluster_logic.errors import BootstrapError
from components.engines import ENGINES
from components.stack_settings import SettingsError
from sandbox.backups import BackupError
from sandbox.engine_binaries import EngineBinaries, EngineNotFound
from sandbox.local_cluster import DEFAULT_ROOT, DEFAULT_THIRD_OCTET, RESTART_COMMAND, Sandbox, SandboxError
from sandbox.local_nodes import NodeStartError

# The kubelet's first back-off before it restarts a crashed container.
KUBELET_BACKOFF_SECONDS = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where state and data live (default .sandbox)")
    parser.add_argument("--stack", default="dev", help="whose Pulumi.<stack>.yaml settings the pods use (default dev)")
    parser.add_argument(
        "--third-octet", type=int, default=DEFAULT_THIRD_OCTET, help="pods get addresses 127.0.<this>.x (default 60)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the pods and form the cluster")
    # No default here: a running sandbox keeps its shape unless told otherwise.
    up.add_argument("--shards", type=int, help="masters (default: what the sandbox runs, or 3)")
    up.add_argument("--replicas-per-shard", type=int, help="replicas per master (default: what it runs, or 1)")
    up.add_argument("--timeout", type=float, default=120.0)
    up.add_argument(
        "--engine", choices=tuple(ENGINES), help="redis or valkey (default: what the sandbox runs, or the stack's)"
    )
    up.add_argument(
        "--binaries",
        type=Path,
        help="a new sandbox only: a folder with another release of the engine's server and CLI, to roll from later",
    )
    up.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a new sandbox only: TLS only, clients, replication and the cluster bus (default: the stack's `tls`)",
    )
    status = commands.add_parser("status", help="the state of every node")
    status.add_argument("--json", action="store_true")
    kill = commands.add_parser("kill", help="SIGKILL a pod; it comes back after the kubelet's back-off")
    kill.add_argument("pod")
    kill.add_argument("--stay-down", action="store_true", help="no restart: the pod stays down until up or restart")
    # What `kill` starts in the background: the kubelet's restart after its back-off.
    start_after = commands.add_parser(RESTART_COMMAND, help="(kill's kubelet: starts a pod again after its back-off)")
    start_after.add_argument("pod")
    start_after.add_argument("--after", type=float, required=True)
    start_after.add_argument("--token", required=True)
    restart = commands.add_parser("restart", help="restart a pod (or all) through preStop and the entrypoint")
    which = restart.add_mutually_exclusive_group(required=True)
    which.add_argument("pod", nargs="?")
    which.add_argument("--all", action="store_true")
    restart.add_argument("--new-ip", action="store_true", help="come back on a new loopback address")
    restart.add_argument(
        "--lose-volume",
        action="store_true",
        help="come back on a new, empty volume and a new address (the data directory moves to lost-volumes/)",
    )
    roll = commands.add_parser("roll", help="a rolling update of every pod, as the StatefulSet runs one")
    roll.add_argument(
        "--binaries",
        type=Path,
        help="a folder with another release of the engine's server and CLI (default: .engines/)",
    )
    commands.add_parser(
        "renew-cert",
        help="TLS: renew the nodes' certificate (same CA) as cert-manager would; the readiness probes load it",
    )
    backup = commands.add_parser(
        "backup",
        help="copy every pod's data directory, as EBS snapshots of the volumes",
        description=(
            "Copies every pod's data directory (nodes.conf, the AOF, dump.rdb if any) into a folder of its own, "
            "data-<pod>/ per pod as the StatefulSet's claims are named, with manifest.json: the stack, engine, "
            "shape and TLS, each node's ID, role and slots, and every file's size and SHA-256. "
            "A running cluster is stopped for the copy: every pod at once, without preStop, so that each node's "
            "files are those of a clean shutdown (AOF flushed, nodes.conf written, nothing changing while read); "
            "then every pod starts again at its address and the command waits until the cluster is ok. "
            "Clients see the cluster down meanwhile (a few seconds). A sandbox that is down is copied as it lies "
            "on disk and stays down. Refused, with nothing stopped or written: no sandbox, some pods down while "
            "others run, a cluster that is not ok, a destination that holds anything."
        ),
    )
    backup.add_argument(
        "--to", type=Path, metavar="DIR", help="a new or empty folder (default: <root>/backups/<UTC time>)"
    )
    backup.add_argument("--timeout", type=float, default=120.0, help="for the cluster to be ok again (default 120)")
    restore = commands.add_parser(
        "restore",
        help="start the backed-up cluster from a backup's copies, on new addresses",
        description=(
            "Starts the cluster of a backup from its copies, each pod on a loopback address that no pod had at "
            "backup time, with the backup's stack, engine, shape and TLS, and waits until the cluster is ok: as "
            "new EBS volumes from the snapshots, bound to the claims, come back on pods with new IPs. Nothing "
            "forms the cluster: the entrypoint moves each node to its new address and peer-recovery.sh "
            "re-introduces the pods. Prints each node's ID and the keys. Into a root without a sandbox this "
            "makes a new one (new password); onto a sandbox that is down it keeps its password and moves its "
            "data directories to <root>/replaced/<UTC time>/. Refused, with nothing changed: a folder that is "
            "not a complete backup (what is missing or changed is named), a sandbox with any pod running "
            "(`down` first), binaries of another engine or an older line."
        ),
    )
    restore.add_argument("source", type=Path, metavar="DIR", help="a folder `backup` wrote")
    restore.add_argument("--timeout", type=float, default=120.0, help="for the cluster to be ok (default 120)")
    partition = commands.add_parser(
        "partition",
        help="cut pods off from the others on the client and bus ports, both ways",
        description=(
            "Cuts the named pods off from the other pods: every packet between their addresses and the other "
            "pods' on the client and cluster-bus ports (6379, 16379) is dropped, both ways, by nftables rules in "
            "a table of the sandbox's own (inet redis_eks_sandbox_<third octet>); the machine's other rules are "
            "left alone. Clients (any address that is no pod's, such as 127.0.0.1) are cut off from the named "
            "pods too, unless --keep-client: then they still reach every pod, as a client on the cut side would. "
            "Replaces any partition the sandbox holds; `heal` (and `down`) removes it. Needs nft (Debian's "
            "nftables) and root."
        ),
    )
    partition.add_argument("pods", nargs="+", metavar="pod")
    partition.add_argument(
        "--keep-client", action="store_true", help="clients keep reaching the cut pods (a client on their side)"
    )
    commands.add_parser("heal", help="remove the partition: every pod reaches every other again")
    down = commands.add_parser("down", help="heal any partition and stop every process")
    down.add_argument(
        "--purge", action="store_true", help="delete the data directories too; backups/ under the root stays"
    )
    options = parser.parse_args(argv)

    engine = getattr(options, "engine", None)
    try:
        initial = None
        if options.command == "up" and options.binaries is not None:
            initial = EngineBinaries(
                ENGINES[engine or Sandbox(options.root, options.stack).stack_engine()], options.binaries.resolve()
            )
        sandbox = Sandbox(
            root=options.root, stack=options.stack, third_octet=options.third_octet, engine=engine, binaries=initial
        )
        if options.command == "up":
            topology = sandbox.up(options.shards, options.replicas_per_shard, options.timeout, tls=options.tls)
            print(f"engine: {sandbox.binaries().describe()}")
            print(sandbox.tls_summary())
            print(f"cluster {topology['state']}: {topology['node_count']} nodes")
            print_status(sandbox.status())
            for pod, data_dir in sorted(topology.get("retained_volumes", {}).items()):
                print(f"retained: {pod}'s data directory {data_dir} (a scale-in removed the pod; its claim stays)")
            print("\nconnect:")
            for line in sandbox.connection_lines():
                print("  " + line)
        elif options.command == "status":
            rows = sandbox.status()
            print(json.dumps(rows, indent=2) if options.json else "", end="")
            if not options.json:
                print(sandbox.tls_summary())
                print_status(rows)
        elif options.command == "renew-cert":
            results = sandbox.renew_certificate()
            print(sandbox.tls_summary())
            for pod, result in results.items():
                if result["state"] != "up":
                    print(f"  {pod}: down; it loads the new certificate when it starts")
                elif result["reloaded"]:
                    print(f"  {pod}: reloaded; new connections get serial {result['serial']}")
                else:
                    print(f"  {pod}: NOT reloaded (serial {result['serial']}): {result['probe']}")
            if not all(r["reloaded"] for r in results.values() if r["state"] == "up"):
                return 1
        elif options.command == "kill":
            sandbox.kill(options.pod, restart_after=None if options.stay_down else KUBELET_BACKOFF_SECONDS)
            after = "it stays down" if options.stay_down else f"it starts again in {KUBELET_BACKOFF_SECONDS:g}s"
            print(f"killed {options.pod}; {after}")
        elif options.command == RESTART_COMMAND:
            sandbox.start_after(options.pod, options.after, options.token)
        elif options.command == "restart":
            sandbox.restart(
                None if options.all else [options.pod], new_ip=options.new_ip, lose_volume=options.lose_volume
            )
            print_status(sandbox.status())
        elif options.command == "roll":
            state_engine = sandbox.binaries().engine
            binaries = None if options.binaries is None else EngineBinaries(state_engine, options.binaries.resolve())
            sandbox.roll(binaries)
            print(f"rolled every pod onto {sandbox.binaries().describe()}")
            print_status(sandbox.status())
        elif options.command == "backup":
            print_backup(sandbox.backup(options.to, options.timeout))
        elif options.command == "restore":
            print_restore(sandbox.restore(options.source, options.timeout), options.source)
            print("\nconnect:")
            for line in sandbox.connection_lines():
                print("  " + line)
        elif options.command == "partition":
            cut = sandbox.partition(options.pods, keep_client=options.keep_client)
            state = sandbox.load()
            pods = {record.host: record.pod for record in state.nodes}
            print(
                f"cut off: {', '.join(pods[host] for host in cut.cut)} ({', '.join(cut.cut)}) from "
                f"{', '.join(pods[host] for host in cut.rest)}, ports {', '.join(map(str, cut.ports))}, both ways"
            )
            print("clients: " + ("still reach every pod" if cut.keep_client else "cut off from those pods too"))
            print("undo: python -m sandbox heal (down heals too)")
        elif options.command == "heal":
            print("healed: every pod reaches every other again" if sandbox.heal() else "no partition to heal")
        elif options.command == "down":
            sandbox.down(purge=options.purge)
            if not options.purge:
                print("stopped; data kept (down --purge deletes it)")
            elif sandbox.backups_dir.is_dir():
                print(f"stopped and purged; backups kept in {sandbox.backups_dir}")
            else:
                print("stopped and purged")
    except (SandboxError, BootstrapError, SettingsError, EngineNotFound, BackupError, NodeStartError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def print_backup(result: dict) -> None:
    manifest = result["manifest"]
    print(
        f"backed up {len(manifest.nodes)} nodes ({manifest.engine} {manifest.version}, {manifest.shards} shards with "
        f"{manifest.replicas_per_shard} replica(s) each, {manifest.total_bytes} bytes) to {result['destination']}"
    )
    if result["down_seconds"] is None:
        print("the sandbox was down: its data copied as it lies on disk; it stays down")
    else:
        print(
            f"the cluster was stopped (clean shutdown of every node), copied in {result['copy_seconds']:.1f}s, "
            f"started again: ok {result['down_seconds']:.1f}s after the first SIGTERM"
        )
    print_table(
        ("pod", "address", "id", "role", "slots", "files"),
        [
            [node.pod, f"{node.host}:{node.port}", node.id, node.role, node.slots, str(len(node.files))]
            for node in manifest.nodes
        ],
    )


def print_restore(result: dict, source: Path) -> None:
    manifest = result["manifest"]
    was = {node.pod: f"{node.host}:{node.port}" for node in manifest.nodes}
    rows = result["rows"]
    keys = sum(row["keys"] for row in rows if row.get("role") == "master")
    print(
        f"restored {len(rows)} nodes from {source} (backed up {manifest.created}, {manifest.engine} {manifest.version})"
    )
    if result["replaced"] is not None:
        print(f"the data it replaced is in {result['replaced']}")
    print(f"cluster ok {result['ok_seconds']:.1f}s after the pods started: {keys} keys, every node ID as backed up")
    print_table(
        ("pod", "address", "was", "id", "role", "master", "slots", "keys"),
        [
            [row["pod"], row["address"], was[row["pod"]], row["id"], row["role"], row.get("master") or ""]
            + [row["slots"], str(row["keys"])]
            for row in rows
        ],
    )


def print_status(rows: list[dict]) -> None:
    columns = ("pod", "address", "zone", "state", "version", "role", "master", "slots", "link", "keys")
    table = [[str(row.get(column, "") if row.get(column) is not None else "") for column in columns] for row in rows]
    print_table(columns, table)


def print_table(columns: tuple[str, ...], table: list[list[str]]) -> None:
    widths = [max(len(column), *(len(line[i]) for line in table)) for i, column in enumerate(columns)]
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths)))
    for line in table:
        print("  ".join(value.ljust(width) for value, width in zip(line, widths)))


if __name__ == "__main__":
    sys.exit(main())
