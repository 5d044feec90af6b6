"""Figures for the faults an operator meets on EKS, per engine: each fault injected into a
fresh sandbox (the dev stack's files, the bootstrap's own code) under a plain writer and a
`WAIT 1` writer, then healed as the product heals it (the pods' own scripts, or the next
`up` where the product says so). Per fault and engine it prints the acknowledged writes
lost (plain, WAIT-acknowledged, and the keys loaded before; the goal is 0 everywhere) and
the seconds from the fault to a healthy cluster (every node ok, every slot served, every
replica linked).

The faults are tests/integration/test_faults.py's and test_scaling.py's, with figures:
  * a new master killed the moment `up --shards 4` returns;
  * a scale-out cut short by its target or source, killed or frozen (SIGSTOP) mid-move, then
    the next `up` (the frozen one resumed once its replica took over);
  * a master back with an empty, truncated or corrupt nodes.conf, or on a new, empty volume;
  * a replica's volume lost; two masters' volumes lost at once (the pods heal themselves).

Run from the project root:
  .venv/bin/python -m benchmarks.fault_benchmark [--engines redis valkey] [--keys N]
Loopback only (127.0.58.0/24, a fresh sandbox per fault); every server is stopped by pid.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from benchmarks.machine_info import header_lines
from benchmarks.side_by_side import Row, add_engines_argument, engine_binaries, print_results
from cluster_logic.errors import BootstrapError
from sandbox.engine_binaries import EngineBinaries
from sandbox.local_cluster import Sandbox
from testkit.faults import CutMidMove, damage, wait_failed_over, wait_promoted
from testkit.sandbox_support import ManagedSandbox, cluster_client, masters, snapshot, wait_healthy
from testkit.writers import Writer, lost_keys, write_keys

OCTET = 58


@dataclass
class Outcome:
    healthy_seconds: float
    plain_lost: int
    plain_acknowledged: int
    durable_lost: int
    durable_acknowledged: int
    loaded_lost: int
    loaded: int
    note: str = ""

    def cell(self) -> str:
        lost = self.plain_lost + self.durable_lost + self.loaded_lost
        verdict = "none lost" if not lost else f"**{lost:,} LOST**"
        return (
            f"ok after {self.healthy_seconds:.1f} s; {verdict} ({self.plain_lost} of {self.plain_acknowledged:,} "
            f"acknowledged, {self.durable_lost} of {self.durable_acknowledged:,} WAIT, {self.loaded_lost} of "
            f"{self.loaded:,} loaded){'; ' + self.note if self.note else ''}"
        )


def new_master_killed(sb: Sandbox) -> str:
    before = set(masters(sb))
    sb.up(shards=4)
    (new_master,) = [p for p in masters(sb) if p not in before]
    facts = snapshot(sb)[new_master]
    replicas = [p for p, f in snapshot(sb).items() if f.master_id == facts.id]
    sb.kill(new_master)
    wait_promoted(sb, replicas, facts.slots)
    sb.up()
    return f"{new_master} killed"


def cut_short(victim: str, how: str) -> Callable[[Sandbox], str]:
    def run(sb: Sandbox) -> str:
        cut = CutMidMove(sb, victim, how)
        started = time.monotonic()
        try:
            with cut:
                sb.up(shards=4)
        except BootstrapError:
            pass
        gave_up = time.monotonic() - started
        if cut.pod:
            wait_failed_over(sb, cut.node_id, cut.pod)
        cut.thaw()
        sb.up()
        return f"up gave up after {gave_up:.1f} s"

    return run


def identity_lost(how: str) -> Callable[[Sandbox], str]:
    def run(sb: Sandbox) -> str:
        victim = sorted(masters(sb))[0]
        sb.kill(victim)
        damage(sb.root / "nodes" / victim / "data", how)
        sb.restart([victim], timeout=180)
        return ""

    return run


def volumes_lost(which: str) -> Callable[[Sandbox], str]:
    def run(sb: Sandbox) -> str:
        facts = snapshot(sb)
        replicas = sorted(p for p, f in facts.items() if f.role == "slave")
        victims = [replicas[0]] if which == "replica" else sorted(masters(sb))[:2]
        sb.restart(victims, lose_volume=True, timeout=180)
        return ""

    return run


FAULTS: list[tuple[str, Callable[[Sandbox], str]]] = [
    ("a new master killed the moment `up --shards 4` returns", new_master_killed),
    ("a scale-out cut short: its target killed", cut_short("target", "kill")),
    ("a scale-out cut short: its source killed", cut_short("source", "kill")),
    ("a scale-out cut short: its target frozen", cut_short("target", "freeze")),
    ("a scale-out cut short: its source frozen", cut_short("source", "freeze")),
    ("a master back with an empty nodes.conf", identity_lost("empty")),
    ("a master back with a truncated nodes.conf", identity_lost("truncated")),
    ("a master back with a corrupt nodes.conf", identity_lost("corrupt")),
    ("a master back on a new, empty volume", identity_lost("volume lost")),
    ("a replica's volume lost (`restart --lose-volume`)", volumes_lost("replica")),
    ("two masters' volumes lost at once", volumes_lost("masters")),
]


def run_fault(work: Path, binaries: EngineBinaries, fault: Callable[[Sandbox], str], keys: int) -> Outcome:
    managed = ManagedSandbox(work / "sandbox", OCTET, engine=binaries.engine.name)
    try:
        sb = managed.sandbox
        sb.up()
        with cluster_client(sb) as client:
            loaded = write_keys(client, "loaded", keys)
        plain = Writer(cluster_client(sb), "plain", retry_ask_to_slotless_master=True).start()
        durable = Writer(cluster_client(sb), "durable", mode="wait").start()
        try:
            plain.wait_acknowledged(50)
            started = time.monotonic()
            note = fault(sb)
            wait_healthy(sb, timeout=180)
            healthy = time.monotonic() - started
            plain.wait_acknowledged(50, after=time.monotonic())
        finally:
            plain.stop()
            durable.stop()
        with cluster_client(sb) as client:
            return Outcome(
                healthy,
                len(lost_keys(client, plain.acknowledged())),
                len(plain.acknowledged()),
                len(lost_keys(client, durable.durable())),
                len(durable.durable()),
                len(lost_keys(client, loaded)),
                len(loaded),
                note,
            )
    finally:
        leftovers = managed.close()
        if leftovers:
            raise RuntimeError(f"processes outlived the sandbox: {leftovers}")


def bench(engines: Mapping[str, EngineBinaries], keys: int, only: str = "") -> list[Row]:
    rows = []
    for title, fault in (f for f in FAULTS if only in f[0]):
        cells, figures = {}, {}
        for name, binaries in engines.items():
            with tempfile.TemporaryDirectory(prefix=f"fault-benchmark-{name}-") as work:
                outcome = run_fault(Path(work), binaries, fault, keys)
            cells[name], figures[name] = outcome.cell(), outcome.healthy_seconds
            print(f"  {title}, {name}: {outcome.cell()}", flush=True)
        rows.append(Row(title, cells, figures))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_engines_argument(parser)
    parser.add_argument("--keys", type=int, default=20_000, help="keys loaded before each fault")
    parser.add_argument("--only", default="", help="the faults whose title holds this text (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    engines = engine_binaries(args.engines)
    for line in header_lines(engines.values()):
        print(line)
    chosen = sum(1 for title, _ in FAULTS if args.only in title)
    print(f"\n== {chosen} faults per engine, each under a plain and a WAIT 1 writer ==", flush=True)
    rows = bench(engines, args.keys, args.only)
    print_results("Faults per engine (the goal: none lost, healthy on its own or after the next `up`)", engines, rows)


if __name__ == "__main__":
    main()
