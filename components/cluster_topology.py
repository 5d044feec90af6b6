"""Redis Cluster logic of the bootstrap: plan, create or adopt, zone placement, converge,
scale out with live slot migration, and read the live topology.

It talks to nodes only through a `NodeTransport` (see `node_transports`), so the same code
runs against pods on EKS and against local redis-server processes.

Safety rules that hold everywhere below:
* a node that holds keys or knows nodes outside our set is never reset, flushed or joined;
* keys only move with MIGRATE (atomic per key) and REPLACE is used only for keys whose
  serialized value is byte-identical on both sides;
* no error message carries the password.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import redis

from components.node_transports import (
    AuthenticationFailed,
    NodeAddress,
    NodeTransport,
    PodStatus,
    TransportError,
    pod_ordinal,
)

log = logging.getLogger(__name__)

SLOTS = 16384
POLL_SECONDS = 0.1
MIGRATE_BATCH = 500
MIGRATE_TIMEOUT_MS = 20000
MAX_MOVE_THREADS = 8
# Slots handled per pipelined round of a (source, target) pair.
SLOTS_PER_ROUND = 64
# Below this share of its ideal slot count a master counts as under-filled (redis-cli's
# rebalance default threshold is 2%).
REBALANCE_THRESHOLD = 0.02

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class BootstrapError(Exception):
    """The bootstrap cannot (safely) reach the desired state; the message says why and
    never contains a secret."""


class ScaleInRefused(BootstrapError):
    pass


# ---------------------------------------------------------------------------------------
# Pure helpers: slot ranges, CLUSTER NODES parsing.
# ---------------------------------------------------------------------------------------


def slot_ranges(slots: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted slots folded into inclusive (start, end) ranges."""
    ranges: list[tuple[int, int]] = []
    for slot in sorted(set(slots)):
        if ranges and ranges[-1][1] == slot - 1:
            ranges[-1] = (ranges[-1][0], slot)
        else:
            ranges.append((slot, slot))
    return ranges


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping ranges; adjacent ones joined."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def format_ranges(ranges: Iterable[tuple[int, int]]) -> list[str]:
    return [str(a) if a == b else f"{a}-{b}" for a, b in ranges]


def expand_ranges(ranges: Iterable[tuple[int, int]]) -> list[int]:
    return [slot for a, b in ranges for slot in range(a, b + 1)]


def ideal_slot_counts(masters: int) -> list[int]:
    """How many slots each of `masters` masters holds when balanced (first ones get +1)."""
    base, extra = divmod(SLOTS, masters)
    return [base + (1 if i < extra else 0) for i in range(masters)]


@dataclass(frozen=True)
class NodeEntry:
    """One line of CLUSTER NODES."""

    id: str
    host: str
    port: int
    flags: frozenset[str]
    master_id: Optional[str]
    link: str
    config_epoch: int
    slots: tuple[tuple[int, int], ...] = ()
    migrating: tuple[tuple[int, str], ...] = ()
    importing: tuple[tuple[int, str], ...] = ()

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def myself(self) -> bool:
        return "myself" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    @property
    def slot_count(self) -> int:
        return sum(b - a + 1 for a, b in self.slots)


def parse_cluster_nodes(text: str) -> list[NodeEntry]:
    entries = []
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        node_id, address, flags, master, _ping, _pong, epoch, link = parts[:8]
        hostport = address.split("@", 1)[0].split(",", 1)[0]
        host, _, port = hostport.rpartition(":")
        slots: list[tuple[int, int]] = []
        migrating: list[tuple[int, str]] = []
        importing: list[tuple[int, str]] = []
        for token in parts[8:]:
            if token.startswith("["):
                body = token.strip("[]")
                if "->-" in body:
                    slot, target = body.split("->-")
                    migrating.append((int(slot), target))
                elif "-<-" in body:
                    slot, source = body.split("-<-")
                    importing.append((int(slot), source))
            elif "-" in token:
                a, b = token.split("-")
                slots.append((int(a), int(b)))
            else:
                slots.append((int(token), int(token)))
        entries.append(
            NodeEntry(
                id=node_id,
                host=host,
                port=int(port or 0),
                flags=frozenset(flags.split(",")),
                master_id=None if master == "-" else master,
                link=link,
                config_epoch=int(epoch),
                slots=tuple(merge_ranges(slots)),
                migrating=tuple(migrating),
                importing=tuple(importing),
            )
        )
    return entries


def parse_info(text: str) -> dict[str, str]:
    result = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            result[key.strip()] = value.strip()
    return result


# ---------------------------------------------------------------------------------------
# Placement planning (pure).
# ---------------------------------------------------------------------------------------


@dataclass
class Layout:
    """Which pods are masters and which replicas follow which master."""

    masters: list[str]
    replicas: dict[str, list[str]] = field(default_factory=dict)

    def master_of(self) -> dict[str, str]:
        return {r: m for m, rs in self.replicas.items() for r in rs}


def plan_layout(
    zones: Mapping[str, str],
    shards: int,
    replicas_per_shard: int,
    masters: Sequence[str] = (),
    attached: Optional[Mapping[str, str]] = None,
) -> Layout:
    """Chooses masters and replica placement so that, whenever the pods span more than one
    zone, replicas run in another zone than their master (and a master's replicas spread
    over different zones).

    `zones` maps every pod to its zone. `masters` are pods that already are masters and
    stay so; `attached` maps replicas that already follow a master and stay with it. Every
    other pod is free: the first needed become new masters, the rest replicas.
    """
    attached = dict(attached or {})
    pods = sorted(zones, key=lambda p: (pod_ordinal(p), p))
    chosen = [m for m in pods if m in set(masters)]
    free = [p for p in pods if p not in set(chosen) and p not in attached]
    zone_masters = Counter(zones[m] for m in chosen)

    def free_in(zone: str) -> list[str]:
        return [p for p in free if zones[p] == zone]

    # New masters: one at a time from the zone with the fewest masters so far, breaking
    # ties towards the zone with most free pods (it has replicas to spare).
    while len(chosen) < shards and free:
        candidates = sorted({zones[p] for p in free}, key=lambda z: (zone_masters[z], -len(free_in(z)), z))
        pod = free_in(candidates[0])[0]
        free.remove(pod)
        chosen.append(pod)
        zone_masters[zones[pod]] += 1
    if len(chosen) < shards:
        raise BootstrapError(f"{len(zones)} pods cannot hold {shards} shards")

    layout = Layout(masters=chosen, replicas={m: [] for m in chosen})
    for replica, master in sorted(attached.items(), key=lambda kv: pod_ordinal(kv[0])):
        layout.replicas.setdefault(master, []).append(replica)

    # Fill replica seats round by round so every master gets its first replica before any
    # gets a second; pick from the zone with most free pods among the zones not already
    # used by the master's group.
    while free:
        needy = [m for m in chosen if len(layout.replicas[m]) < replicas_per_shard]
        if not needy:
            # More pods than seats: extra replicas go to the masters with fewest.
            needy = sorted(chosen, key=lambda m: (len(layout.replicas[m]), pod_ordinal(m)))[:1]
        least = min(len(layout.replicas[m]) for m in needy)
        for master in [m for m in needy if len(layout.replicas[m]) == least]:
            if not free:
                break
            used = {zones[master]} | {zones[r] for r in layout.replicas[master]}
            counts = Counter(zones[p] for p in free)
            options = sorted(counts, key=lambda z: (z in used, z == zones[master], -counts[z], z))
            pod = free_in(options[0])[0]
            free.remove(pod)
            layout.replicas[master].append(pod)

    _repair_same_zone(layout, zones, fixed=set(attached))
    return layout


def _repair_same_zone(layout: Layout, zones: Mapping[str, str], fixed: set[str]) -> None:
    """Swaps movable replicas between masters while that removes same-zone pairs."""

    def bad(master: str, replica: str) -> bool:
        return zones[master] == zones[replica]

    improved = True
    while improved:
        improved = False
        pairs = [(m, r) for m, rs in layout.replicas.items() for r in rs if r not in fixed]
        for m1, r1 in pairs:
            if not bad(m1, r1):
                continue
            for m2, r2 in pairs:
                if m2 == m1 or r2 == r1:
                    continue
                before = bad(m1, r1) + bad(m2, r2)
                after = bad(m1, r2) + bad(m2, r1)
                if after < before:
                    layout.replicas[m1][layout.replicas[m1].index(r1)] = r2
                    layout.replicas[m2][layout.replicas[m2].index(r2)] = r1
                    improved = True
                    break
            if improved:
                break


def cli_create_order(layout: Layout) -> list[str]:
    """The pod order to give `redis-cli --cluster create` so that it builds `layout`.

    With every node on its own IP (one pod, one IP), redis-cli takes the first
    `masters` nodes as masters, rotates the rest left by one, then hands each master in
    turn its next `replicas` nodes. Pre-rotating right undoes the rotation. The result is
    checked (and corrected) after creation anyway.
    """
    seats = [r for m in layout.masters for r in layout.replicas.get(m, [])]
    if seats:
        seats = seats[-1:] + seats[:-1]
    return list(layout.masters) + seats


def placement_report(layout: Layout, zones: Mapping[str, str]) -> dict[str, Any]:
    distinct = sorted({z for z in zones.values()})
    same_zone = sorted(
        (r for m, rs in layout.replicas.items() for r in rs if zones.get(r) == zones.get(m)),
        key=pod_ordinal,
    )
    multi_zone = len([z for z in distinct if z]) > 1
    return {
        "zones": distinct,
        "multi_zone": multi_zone,
        "zone_aware": (not same_zone) if multi_zone else False,
        "replicas_in_master_zone": same_zone if multi_zone else [],
        "shards": [
            {
                "master": m,
                "zone": zones.get(m, ""),
                "replicas": [{"pod": r, "zone": zones.get(r, "")} for r in sorted(layout.replicas.get(m, []), key=pod_ordinal)],
            }
            for m in sorted(layout.masters, key=pod_ordinal)
        ],
    }


# ---------------------------------------------------------------------------------------
# Live view of the nodes.
# ---------------------------------------------------------------------------------------


@dataclass
class NodeView:
    node: NodeAddress
    error: str = ""
    myid: str = ""
    entries: list[NodeEntry] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    replication: dict[str, Any] = field(default_factory=dict)
    keys: int = 0

    @property
    def reachable(self) -> bool:
        return not self.error

    @property
    def me(self) -> Optional[NodeEntry]:
        return next((e for e in self.entries if e.id == self.myid), None)

    @property
    def known(self) -> int:
        return int(self.info.get("cluster_known_nodes", 0) or 0)

    @property
    def member(self) -> bool:
        me = self.me
        return self.known > 1 or bool(me and me.slots)

    def signature(self) -> tuple:
        """This node's picture of the cluster; converged nodes all have the same one."""
        return tuple(
            sorted(
                (e.id, "M" if e.is_master else f"S:{e.master_id}", e.slots)
                for e in self.entries
                if not e.failing
            )
        )


def probe(transport: NodeTransport, nodes: Sequence[NodeAddress]) -> list[NodeView]:
    def one(node: NodeAddress) -> NodeView:
        try:
            pipe = transport.client(node).pipeline(transaction=False)
            pipe.execute_command("CLUSTER", "MYID")
            pipe.execute_command("CLUSTER", "NODES")
            pipe.execute_command("CLUSTER", "INFO")
            pipe.execute_command("INFO", "replication")
            pipe.execute_command("DBSIZE")
            myid, nodes_text, info_text, replication, keys = pipe.execute()
        except redis.AuthenticationError:
            raise AuthenticationFailed(f"{node.pod} rejected the cluster password") from None
        except (redis.RedisError, OSError) as error:
            transport.forget(node)
            return NodeView(node, error=_short(error))
        return NodeView(
            node,
            myid=_text(myid),
            entries=parse_cluster_nodes(_text(nodes_text)),
            info=parse_info(_text(info_text)),
            replication=replication if isinstance(replication, dict) else parse_info(_text(replication)),
            keys=int(keys),
        )

    workers = min(getattr(transport, "probe_concurrency", 1), len(nodes))
    if workers <= 1:
        return [one(n) for n in nodes]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, nodes))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def _short(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


# ---------------------------------------------------------------------------------------
# Readiness.
# ---------------------------------------------------------------------------------------


def wait_ready(transport: NodeTransport, count: int, timeout: float) -> list[NodeAddress]:
    """Blocks until the first `count` pods are ready; names the laggards on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = transport.pod_statuses(count)
        waiting = [s for s in statuses if not s.ready]
        if not waiting and len(statuses) == count:
            return [s.node for s in statuses if s.node is not None]
        if any(s.reason == "not in the nodes input" for s in waiting):
            raise BootstrapError(
                f"{count} nodes are needed but the nodes input lists only {count - len(waiting)}: "
                + ", ".join(s.pod for s in waiting)
            )
        if time.monotonic() >= deadline:
            raise BootstrapError(
                f"timed out after {timeout:g}s waiting for {len(waiting)} of {count} pods to be Running and Ready: "
                + "; ".join(f"{s.pod} ({s.reason})" for s in waiting)
            )
        time.sleep(min(transport.poll_interval, max(0.0, deadline - time.monotonic())))


# ---------------------------------------------------------------------------------------
# The cluster as a whole.
# ---------------------------------------------------------------------------------------


class Cluster:
    """The nodes of one desired cluster and the operations on them."""

    def __init__(
        self,
        transport: NodeTransport,
        nodes: Sequence[NodeAddress],
        known_pods: Optional[Mapping[str, str]] = None,
        expected_nodes: Optional[int] = None,
    ):
        self.transport = transport
        self.nodes = list(nodes)
        # How many nodes a healthy member must know (more than `nodes` when reading a
        # cluster with pods down).
        self.expected = expected_nodes or len(self.nodes)
        self.zones = {n.pod: n.zone for n in self.nodes}
        self._known_pods = dict(known_pods or {})
        self.views: list[NodeView] = []

    # -- views ---------------------------------------------------------------------------

    def refresh(self) -> list[NodeView]:
        self.views = probe(self.transport, self.nodes)
        return self.views

    def view_of(self, pod: str) -> NodeView:
        return next(v for v in self.views if v.node.pod == pod)

    def pod_of_id(self) -> dict[str, str]:
        """Node ID -> pod, from the nodes themselves, their addresses, or earlier state."""
        result = dict(self._known_pods)
        by_endpoint = {(n.host, n.port): n.pod for n in self.nodes}
        for view in self.views:
            for entry in view.entries:
                pod = by_endpoint.get((entry.host, entry.port))
                if pod and entry.id not in result:
                    result[entry.id] = pod
        for view in self.views:
            if view.myid:
                result[view.myid] = view.node.pod
        return result

    def node_by_id(self) -> dict[str, NodeAddress]:
        return {v.myid: v.node for v in self.views if v.myid}

    def reference_entries(self) -> list[NodeEntry]:
        """The slot map most reachable nodes agree on (any view on a tie)."""
        views = [v for v in self.views if v.reachable and v.entries]
        if not views:
            return []
        counts = Counter(v.signature() for v in views)
        best = counts.most_common(1)[0][0]
        chosen = next(v for v in views if v.signature() == best)
        # Take each node's own line from itself: it carries migrating/importing marks.
        own = {v.myid: v.me for v in views if v.me is not None}
        return [own.get(e.id, e) for e in chosen.entries]

    def live_layout(self) -> Layout:
        pods = self.pod_of_id()
        entries = self.reference_entries()
        masters = [e for e in entries if e.is_master and e.slots]
        layout = Layout(masters=[pods.get(e.id, e.id) for e in masters])
        layout.replicas = {m: [] for m in layout.masters}
        ids = {e.id for e in masters}
        for entry in entries:
            if not entry.is_master and entry.master_id in ids:
                layout.replicas[pods.get(entry.master_id, entry.master_id)].append(pods.get(entry.id, entry.id))
        return layout

    # -- convergence ---------------------------------------------------------------------

    def problems(self, shards: Optional[int] = None, replicas_per_shard: Optional[int] = None) -> list[str]:
        """Everything that keeps the cluster from being converged; empty when it is."""
        found: list[str] = []
        pods = self.pod_of_id()
        reachable = [v for v in self.views if v.reachable]
        expected = self.expected
        for view in self.views:
            pod = view.node.pod
            if not view.reachable:
                found.append(f"{pod}: unreachable ({view.error})")
                continue
            state = view.info.get("cluster_state", "?")
            if state != "ok":
                found.append(f"{pod}: cluster_state {state}")
            if view.known != expected:
                found.append(f"{pod}: knows {view.known} of {expected} nodes")
            served = int(view.info.get("cluster_slots_ok", 0) or 0)
            if served != SLOTS:
                found.append(f"{pod}: {served} of {SLOTS} slots served")
            for entry in view.entries:
                if entry.failing and not entry.myself:
                    flags = ",".join(sorted(entry.flags & {"fail", "fail?", "handshake", "noaddr"}))
                    found.append(f"{pod}: sees {pods.get(entry.id, entry.id)} as {flags}")
            me = view.me
            if me is not None and (me.migrating or me.importing):
                open_slots = [s for s, _ in me.migrating] + [s for s, _ in me.importing]
                found.append(f"{pod}: open slots {format_ranges(slot_ranges(open_slots))}")
            if me is not None and not me.is_master and view.replication.get("master_link_status") != "up":
                found.append(f"{pod}: replica link to its master is {view.replication.get('master_link_status', 'down')}")
        if len({v.signature() for v in reachable}) > 1:
            found.append("nodes disagree about the slot map")
        if shards is not None and reachable:
            layout = self.live_layout()
            if len(layout.masters) != shards:
                found.append(f"{len(layout.masters)} masters hold slots, {shards} expected")
            if replicas_per_shard is not None:
                for master, replicas in sorted(layout.replicas.items(), key=lambda kv: pod_ordinal(kv[0])):
                    if len(replicas) != replicas_per_shard:
                        found.append(f"{master}: {len(replicas)} replicas, {replicas_per_shard} expected")
        return found

    def wait_converged(
        self,
        timeout: float,
        shards: Optional[int] = None,
        replicas_per_shard: Optional[int] = None,
        what: str = "the cluster to converge",
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.refresh()
            found = self.problems(shards, replicas_per_shard)
            if not found:
                return
            if time.monotonic() >= deadline:
                shown = "; ".join(found[:12]) + (f"; and {len(found) - 12} more" if len(found) > 12 else "")
                raise BootstrapError(f"timed out after {timeout:g}s waiting for {what}: {shown}")
            time.sleep(POLL_SECONDS)

    def wait_all_known(self, timeout: float) -> None:
        """Until every node knows every other one (needed before REPLICATE/SETSLOT NODE)."""
        deadline = time.monotonic() + timeout
        expected = len(self.nodes)
        while True:
            self.refresh()
            lagging = [
                v.node.pod
                for v in self.views
                if not v.reachable
                or v.known != expected
                or any("handshake" in e.flags or "noaddr" in e.flags for e in v.entries)
            ]
            if not lagging:
                return
            if time.monotonic() >= deadline:
                raise BootstrapError(
                    f"timed out after {timeout:g}s waiting for nodes to meet: " + ", ".join(lagging)
                )
            time.sleep(POLL_SECONDS)

    # -- output --------------------------------------------------------------------------

    def topology(self, shards: Optional[int] = None, replicas_per_shard: Optional[int] = None) -> dict[str, Any]:
        """The outputs: state, node count, masters and replicas with pods, slots, placement."""
        pods = self.pod_of_id()
        zones = dict(self.zones)
        entries = self.reference_entries()
        reachable = [v for v in self.views if v.reachable]
        problems = self.problems(shards, replicas_per_shard)
        if not reachable:
            state = "unreachable"
        elif any(v.info.get("cluster_state") != "ok" for v in reachable):
            state = "fail"
        elif problems:
            state = "degraded"
        else:
            state = "ok"
        links = {v.myid: v.replication.get("master_link_status", "down") for v in reachable}
        reachable_ids = {v.myid for v in reachable}
        masters = []
        replicas = []
        for entry in sorted(entries, key=lambda e: (pod_ordinal(pods.get(e.id, "")), e.id)):
            pod = pods.get(entry.id, f"{entry.host}:{entry.port}")
            status = "unreachable" if entry.id not in reachable_ids else ("failing" if entry.failing else "ok")
            if entry.is_master and (entry.slots or entry.migrating or entry.importing):
                masters.append(
                    {
                        "pod": pod,
                        "id": entry.id,
                        "zone": zones.get(pod, ""),
                        "slots": format_ranges(entry.slots),
                        "slot_count": entry.slot_count,
                        "replicas": sorted(
                            (pods.get(e.id, e.id) for e in entries if e.master_id == entry.id), key=pod_ordinal
                        ),
                        "status": status,
                    }
                )
            elif not entry.is_master:
                master_pod = pods.get(entry.master_id or "", entry.master_id or "")
                replicas.append(
                    {
                        "pod": pod,
                        "id": entry.id,
                        "zone": zones.get(pod, ""),
                        "master": master_pod,
                        "master_id": entry.master_id or "",
                        "link": links.get(entry.id, "unknown"),
                        "status": status,
                    }
                )
            else:
                problems.append(f"{pod}: master without slots")
        layout = self.live_layout()
        # Only what a node said of itself, now or in earlier outputs; never a guess by address.
        listed = {e.id for v in reachable for e in v.entries} | {e.id for e in entries}
        named = {**{i: p for i, p in self._known_pods.items() if i in listed}, **{v.myid: v.node.pod for v in reachable}}
        return {
            "state": state,
            "node_count": len({e.id for e in entries}) if entries else 0,
            "masters": masters,
            "replicas": replicas,
            "placement": placement_report(layout, zones),
            "problems": sorted(set(problems), key=problems.index),
            "node_ids": dict(sorted(named.items())),
        }

    # -- create --------------------------------------------------------------------------

    def create(self, shards: int, replicas_per_shard: int, timeout: float) -> None:
        layout = plan_layout(self.zones, shards, replicas_per_shard)
        by_pod = {n.pod: n for n in self.nodes}
        order = [by_pod[p] for p in cli_create_order(layout)]
        args = ["--cluster", "create", *[n.endpoint for n in order]]
        args += ["--cluster-replicas", str(replicas_per_shard), "--cluster-yes"]
        log.info("creating cluster: %s", " ".join(args))
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = self.transport.run_redis_cli(args, timeout=max(60.0, timeout), via=order[0])
            except BaseException as error:  # noqa: BLE001 - handed to the caller below
                outcome["error"] = error

        worker = threading.Thread(target=run, name="redis-cli-create", daemon=True)
        worker.start()
        self._hasten_join(worker)
        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
        output = _ANSI.sub("", result.stdout + "\n" + result.stderr)
        if result.returncode != 0 or "[ERR]" in output:
            tail = " | ".join(line for line in output.strip().splitlines()[-6:] if line.strip())
            raise BootstrapError(f"redis-cli --cluster create failed (exit {result.returncode}): {tail}")
        self.wait_all_known(timeout)
        self.correct_placement(shards, replicas_per_shard, timeout)

    def _hasten_join(self, worker: threading.Thread) -> None:
        """While redis-cli waits (in 1 s sleeps) for gossip to spread its single round of
        MEETs, introduce every node to every other one directly.

        Only once every node has its config epoch: SET-CONFIG-EPOCH is refused by a node
        that already knows others, and redis-cli sends MEET only after all epochs are set.
        """
        while worker.is_alive():
            try:
                views = probe(self.transport, self.nodes)
            except TransportError:
                return
            ready = all(v.reachable and int(v.info.get("cluster_my_epoch", 0) or 0) > 0 for v in views)
            if ready and any(v.known > 1 for v in views):
                for node in self.nodes:
                    others = [("CLUSTER", "MEET", o.host, o.port) for o in self.nodes if o != node]
                    try:
                        _pipeline(self.transport.client(node), others)
                    except redis.RedisError:
                        pass  # gossip still gets there; this only saves time
                return
            worker.join(POLL_SECONDS)

    def correct_placement(self, shards: int, replicas_per_shard: int, timeout: float) -> None:
        """Moves replicas (CLUSTER REPLICATE) until none shares its master's zone where
        another plan would avoid it. Only replicas move; no data is touched."""
        for _attempt in range(3):
            self.wait_converged(timeout, shards, None, what="replicas to attach")
            live = self.live_layout()
            current_bad = placement_report(live, self.zones)["replicas_in_master_zone"]
            if not current_bad:
                return
            keep = {
                r: m
                for m, rs in live.replicas.items()
                for r in rs[:replicas_per_shard]
                if self.zones.get(r) != self.zones.get(m)
            }
            target = plan_layout(self.zones, shards, replicas_per_shard, masters=live.masters, attached=keep)
            if len(placement_report(target, self.zones)["replicas_in_master_zone"]) >= len(current_bad):
                return  # nothing better is possible with these masters
            ids = {v.node.pod: v.myid for v in self.views}
            current = live.master_of()
            moves = [(r, m) for r, m in target.master_of().items() if current.get(r) != m]
            log.info("moving replicas to other zones: %s", moves)
            for replica, master in moves:
                self.transport.client(self.view_of(replica).node).execute_command("CLUSTER", "REPLICATE", ids[master])
        self.wait_converged(timeout, shards, None, what="replicas to attach")

    # -- scale out -----------------------------------------------------------------------

    def scale_out(self, shards: int, replicas_per_shard: int, timeout: float, members: Sequence[NodeView]) -> None:
        """Adds fresh nodes to the cluster formed by `members`: new masters first, then
        replicas, then moves slots onto the under-filled masters."""
        target = self.join(shards, replicas_per_shard, timeout, members)
        self.rebalance(shards, timeout, masters=target.masters)
        # Moves only replicas, and only if that removes same-zone pairs (an adopted
        # cluster, or replicas that followed a failover).
        self.correct_placement(shards, replicas_per_shard, timeout)

    def join(self, shards: int, replicas_per_shard: int, timeout: float, members: Sequence[NodeView]) -> Layout:
        """Meets the fresh nodes and attaches the new replicas; returns the planned layout.
        New masters hold no slots yet."""
        member_pods = {v.node.pod for v in members}
        reference = self.reference_entries()
        pods = self.pod_of_id()
        slot_masters = [pods[e.id] for e in reference if e.is_master and e.slots and e.id in pods]
        empty_masters = [
            pods[e.id]
            for e in reference
            if e.is_master and not e.slots and e.id in pods and pods[e.id] in member_pods
        ]
        if len(slot_masters) > shards:
            raise ScaleInRefused(scale_in_message(len(slot_masters), shards, "shards"))
        # Joined-but-empty masters from an interrupted run keep their role while needed.
        keep_masters = slot_masters + empty_masters[: shards - len(slot_masters)]
        attached = {
            pods[e.id]: pods[e.master_id]
            for e in reference
            if not e.is_master and e.master_id in pods and pods[e.master_id] in keep_masters and e.id in pods
        }
        target = plan_layout(self.zones, shards, replicas_per_shard, masters=keep_masters, attached=attached)
        by_pod = {n.pod: n for n in self.nodes}
        fresh = [n for n in self.nodes if n.pod not in member_pods]

        # Each new node greets every node itself: waiting for gossip to introduce them
        # takes seconds, a direct handshake a few cluster-cron ticks.
        for node in fresh:
            _pipeline(
                self.transport.client(node),
                [("CLUSTER", "MEET", other.host, other.port) for other in self.nodes if other != node],
            )
        started = time.monotonic()
        if fresh:
            self.wait_all_known(timeout)
        log.info("new nodes met the cluster in %.2fs", time.monotonic() - started)
        ids = {v.node.pod: v.myid for v in self.views}
        current = {pods.get(e.id): pods.get(e.master_id or "") for e in self.reference_entries() if not e.is_master}
        for replica, master in target.master_of().items():
            if current.get(replica) != master:
                self.transport.client(by_pod[replica]).execute_command("CLUSTER", "REPLICATE", ids[master])
        self.wait_converged(timeout, None, None, what="new nodes to join")
        log.info("new replicas in sync after %.2fs", time.monotonic() - started)
        return target

    def rebalance(self, shards: int, timeout: float, masters: Sequence[str]) -> None:
        """Moves slots from over-filled to under-filled masters, several pairs at once."""
        self.refresh()
        pods = self.pod_of_id()
        ids = {v.node.pod: v.myid for v in self.views}
        owned: dict[str, list[int]] = {m: [] for m in masters}
        for entry in self.reference_entries():
            if entry.is_master and entry.slots:
                owned.setdefault(pods.get(entry.id, entry.id), []).extend(expand_ranges(entry.slots))
        order = sorted(owned, key=lambda p: (pod_ordinal(p), p))
        ideal = dict(zip(order, ideal_slot_counts(len(order))))
        short = {m: ideal[m] - len(owned[m]) for m in order if len(owned[m]) < ideal[m] * (1 - REBALANCE_THRESHOLD)}
        if not short:
            return
        surplus = {m: len(owned[m]) - ideal[m] for m in order if len(owned[m]) > ideal[m]}
        moves: list[tuple[str, str, list[int]]] = []
        sources = {m: sorted(owned[m]) for m in surplus}
        for target, need in short.items():
            for source in list(surplus):
                if need <= 0:
                    break
                give = min(need, surplus[source])
                if give <= 0:
                    continue
                # Highest slots first keeps each master's ranges contiguous.
                taken, sources[source] = sources[source][-give:], sources[source][:-give]
                moves.append((source, target, taken))
                surplus[source] -= give
                need -= give
        by_pod = {n.pod: n for n in self.nodes}
        all_masters = [by_pod[m] for m in order]
        mover = SlotMover(self.transport, {by_pod[p]: ids[p] for p in order}, all_masters)
        log.info("moving slots: %s", [(s, t, len(sl)) for s, t, sl in moves])
        started = time.monotonic()
        mover.move_all([(by_pod[s], by_pod[t], sl) for s, t, sl in moves])
        log.info("moved %d keys in %.2fs", mover.moved_keys, time.monotonic() - started)
        self.wait_converged(timeout, shards, None, what="slot moves to settle")
        log.info("slot map settled after %.2fs", time.monotonic() - started)

    def close_open_slots(self, timeout: float) -> None:
        """Finishes migrations an interrupted run left open (the direction they had)."""
        self.refresh()
        ids = {v.myid: v.node for v in self.views if v.myid}
        pending: dict[tuple[str, str], set[int]] = defaultdict(set)
        owners = {}
        for entry in self.reference_entries():
            for a, b in entry.slots:
                for slot in range(a, b + 1):
                    owners[slot] = entry.id
        for view in self.views:
            me = view.me
            if me is None:
                continue
            for slot, target in me.migrating:
                pending[(me.id, target)].add(slot)
            for slot, source in me.importing:
                owner = owners.get(slot, source)
                if owner != me.id:
                    pending[(owner, me.id)].add(slot)
                else:
                    # We own it already: only the mark is left over.
                    self.transport.client(view.node).execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        if not pending:
            return
        unknown = [pair for pair in pending if pair[0] not in ids or pair[1] not in ids]
        if unknown:
            raise BootstrapError(
                "open slots point at nodes outside this cluster; fix them with redis-cli --cluster fix first"
            )
        masters = [ids[e.id] for e in self.reference_entries() if e.is_master and e.id in ids]
        mover = SlotMover(self.transport, {node: nid for nid, node in ids.items()}, masters)
        mover.move_all([(ids[s], ids[t], sorted(slots)) for (s, t), slots in pending.items()])
        self.wait_converged(timeout, None, None, what="open slots to close")


def scale_in_message(current: int, wanted: int, what: str) -> str:
    return (
        f"{what} cannot go from {current} to {wanted}: scaling in is not automated because the "
        "pods that go away must first hand over every key. Supported procedure: (1) move all "
        "slots off the masters that will be removed, e.g. `redis-cli --cluster rebalance "
        "<node> --cluster-weight <id>=0 ...` or `redis-cli --cluster reshard`; (2) make sure the "
        "pods with the highest ordinals (they are removed first) hold no slots, failing over "
        "with `CLUSTER FAILOVER` where needed; (3) remove them with `redis-cli --cluster "
        f"del-node`; (4) set {what} to {wanted} together with `redis-eks:acceptManualChange "
        f"{what}={wanted}` and run `pulumi up`: the StatefulSet shrinks and the bootstrap adopts "
        "the smaller cluster; (5) remove acceptManualChange again."
    )


# ---------------------------------------------------------------------------------------
# Slot migration.
# ---------------------------------------------------------------------------------------


class SlotMover:
    """Moves slots between masters in redis-cli's safe order, one thread per
    (source, target) pair, a batch of keys per MIGRATE, and a round of slots per
    pipeline.

    Per slot the order is redis-cli's: SETSLOT IMPORTING on the target, then MIGRATING on
    the source, MIGRATE until the source has no key left in the slot, then SETSLOT NODE on
    the target, the source and the other masters. Pipelining a round of slots keeps that
    order for every slot while paying the round trips once per round instead of per slot.
    """

    def __init__(
        self,
        transport: NodeTransport,
        ids: Mapping[NodeAddress, str],
        masters: Sequence[NodeAddress],
        batch: int = MIGRATE_BATCH,
        migrate_timeout_ms: int = MIGRATE_TIMEOUT_MS,
        slots_per_round: int = SLOTS_PER_ROUND,
    ) -> None:
        self.transport = transport
        self.ids = dict(ids)
        self.masters = list(masters)
        self.batch = batch
        self.migrate_timeout_ms = migrate_timeout_ms
        self.slots_per_round = slots_per_round
        self.moved_keys = 0
        self._count_lock = threading.Lock()

    def move_all(self, moves: Sequence[tuple[NodeAddress, NodeAddress, Sequence[int]]]) -> None:
        moves = [m for m in moves if m[2]]
        if not moves:
            return
        errors: list[BaseException] = []
        with ThreadPoolExecutor(max_workers=min(MAX_MOVE_THREADS, len(moves))) as pool:
            futures = [pool.submit(self.move_slots, s, t, slots) for s, t, slots in moves]
            for future in futures:
                try:
                    future.result()
                except BaseException as error:  # noqa: BLE001 - collect all, report first
                    errors.append(error)
        if errors:
            first = errors[0]
            if isinstance(first, BootstrapError):
                raise first
            raise BootstrapError(f"moving slots failed: {_short(first)}") from None

    def move_slots(self, source: NodeAddress, target: NodeAddress, slots: Sequence[int]) -> None:
        slots = list(slots)
        for i in range(0, len(slots), self.slots_per_round):
            self.move_round(slots[i : i + self.slots_per_round], source, target)

    def move_slot(self, slot: int, source: NodeAddress, target: NodeAddress) -> None:
        self.move_round([slot], source, target)

    def move_round(self, slots: Sequence[int], source: NodeAddress, target: NodeAddress) -> None:
        src = self.transport.client(source)
        dst = self.transport.client(target)
        src_id, dst_id = self.ids[source], self.ids[target]
        where = f"slots {format_ranges(slot_ranges(slots))} from {source.pod} to {target.pod}"
        try:
            # Importing first: from the moment the source redirects with ASK, the target
            # must accept the asked-for keys.
            _pipeline(dst, [("CLUSTER", "SETSLOT", s, "IMPORTING", src_id) for s in slots])
            _pipeline(src, [("CLUSTER", "SETSLOT", s, "MIGRATING", dst_id) for s in slots])
            self._drain(slots, source, target)
            # Target first so it serves the slot before the source starts redirecting
            # there with MOVED; then the source; then everyone else (gossip would get
            # there too, but slower).
            _pipeline(dst, [("CLUSTER", "SETSLOT", s, "NODE", dst_id) for s in slots])
            _pipeline(src, [("CLUSTER", "SETSLOT", s, "NODE", dst_id) for s in slots])
        except redis.RedisError as error:
            raise BootstrapError(
                f"moving {where} failed: {_short(error)}; the slots are left open and the next update resumes them"
            ) from None
        for other in self.masters:
            if other not in (source, target):
                try:
                    _pipeline(self.transport.client(other), [("CLUSTER", "SETSLOT", s, "NODE", dst_id) for s in slots])
                except redis.RedisError:
                    pass  # gossip carries the new owner to a node we could not tell

    def _drain(self, slots: Sequence[int], source: NodeAddress, target: NodeAddress) -> None:
        """MIGRATEs keys until the source holds none in `slots`."""
        src = self.transport.client(source)
        pending = list(slots)
        io_errors = 0
        while pending:
            listed = _pipeline(src, [("CLUSTER", "GETKEYSINSLOT", s, self.batch) for s in pending])
            work = [(s, keys) for s, keys in zip(pending, listed) if keys]
            if not work:
                return
            replies = _pipeline(src, [self._migrate_command(target, keys) for _, keys in work], raise_on_error=False)
            for (slot, keys), reply in zip(work, replies):
                if not isinstance(reply, Exception):
                    self._count(len(keys))
                    continue
                text = str(reply)
                if "BUSYKEY" in text:
                    self._resolve_busy(slot, source, target, keys)
                elif "IOERR" in text and io_errors < 5:
                    io_errors += 1
                    time.sleep(0.2 * io_errors)
                elif "NOKEY" in text:
                    continue
                else:
                    raise BootstrapError(
                        f"MIGRATE of slot {slot} from {source.pod} to {target.pod} failed: {_short(reply)}; "
                        "the slot is left open and the next update resumes it"
                    )
            pending = [s for s, _ in work]

    def _migrate_command(self, target: NodeAddress, keys: Sequence[bytes], replace: bool = False) -> tuple:
        args: list[Any] = ["MIGRATE", target.host, target.port, "", 0, self.migrate_timeout_ms]
        if replace:
            args.append("REPLACE")
        args += ["AUTH", self.transport.password, "KEYS", *keys]
        return tuple(args)

    def _resolve_busy(self, slot: int, source: NodeAddress, target: NodeAddress, keys: Sequence[bytes]) -> None:
        """Some keys exist on both sides (an earlier run died mid-batch). Like
        `redis-cli --cluster fix`, replace only keys whose values are identical;
        anything else needs a human."""
        src = self.transport.client(source)
        dst = self.transport.client(target)
        # A key already moved answers ASK (the source is MIGRATING): it is not here.
        present = _pipeline(src, [("EXISTS", k) for k in keys], raise_on_error=False)
        still = [k for k, exists in zip(keys, present) if exists == 1]
        if not still:
            return
        ours = _pipeline(src, [("DUMP", k) for k in still])
        # The target answers for a slot it only imports when asked with ASKING.
        theirs = _pipeline(dst, [c for k in still for c in (("ASKING",), ("DUMP", k))])[1::2]
        same = [k for k, a, b in zip(still, ours, theirs) if b is None or a == b]
        differ = [k for k, a, b in zip(still, ours, theirs) if b is not None and a != b]
        if differ:
            raise BootstrapError(
                f"slot {slot}: {len(differ)} key(s) exist on both {source.pod} and {target.pod} with "
                "different values; refusing to overwrite. Inspect them and resolve by hand "
                "(`redis-cli --cluster fix` with care), then run the update again"
            )
        if same:
            _pipeline(src, [self._migrate_command(target, same, replace=True)])
            self._count(len(same))

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.moved_keys += n


def _pipeline(client: redis.Redis, commands: Sequence[tuple], raise_on_error: bool = True) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    # redis-py's own raise_on_error writes the failing command into the message, and a
    # MIGRATE command carries the password: raise the server's reply alone instead.
    replies = pipe.execute(raise_on_error=False)
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
    return replies


# ---------------------------------------------------------------------------------------
# Entry points.
# ---------------------------------------------------------------------------------------


def _classify(cluster: Cluster) -> tuple[list[NodeView], list[NodeView]]:
    """Splits nodes into cluster members and fresh ones; refuses anything unsafe."""
    views = cluster.views
    down = [v for v in views if not v.reachable]
    if down:
        raise BootstrapError("cannot reach " + "; ".join(f"{v.node.pod} ({v.error})" for v in down))
    ours = {v.myid for v in views}
    loaded = [v for v in views if not v.member and v.keys]
    if loaded:
        raise BootstrapError(
            "refusing to touch nodes that hold keys outside a cluster (never flushed or reset): "
            + ", ".join(f"{v.node.pod} ({v.keys} keys)" for v in loaded)
        )
    members = [v for v in views if v.member]
    fresh = [v for v in views if not v.member]
    foreign = {}
    for view in members:
        strangers = [e for e in view.entries if e.id not in ours]
        if strangers:
            foreign[view.node.pod] = strangers
    if foreign:
        detail = "; ".join(
            f"{pod} knows {len(es)} node(s) outside this StatefulSet (e.g. {es[0].host}:{es[0].port})"
            for pod, es in sorted(foreign.items(), key=lambda kv: pod_ordinal(kv[0]))
        )
        failed_slotless = all(e.flags & {"fail", "noaddr"} and not e.slots for es in foreign.values() for e in es)
        hint = (
            "; they are all failed and hold no slots: if a pod lost its volume, `pulumi refresh` and"
            " then `pulumi up` join it again (see README, the bootstrap)"
            if failed_slotless
            else ""
        )
        raise BootstrapError(
            "refusing to touch nodes that belong to another cluster (never reset): " + detail + hint
        )
    if members:
        member_ids = {v.myid for v in members}
        split = [v.node.pod for v in members if {e.id for e in v.entries} != member_ids]
        if split:
            raise BootstrapError(
                "the nodes form more than one cluster or a cluster that is still joining: "
                + ", ".join(split)
                + " see a different member list; refusing to change them"
            )
    return members, fresh


# Gossip spreads a MEET to every node within a few node-timeout-independent rounds.
MEMBERSHIP_SETTLE_SECONDS = 30.0


def _abandoned_formation(cluster: Cluster) -> bool:
    """A formation that died half-way (a crashed `--cluster create`, a bootstrap killed
    mid-create): only our nodes, not one key among them, and slots left unassigned or
    members that do not all know each other (once gossip has settled). Starting such a
    formation over loses nothing. Fresh nodes beside a complete cluster are a scale-out,
    not this."""
    views = cluster.views
    if not views or any(not v.reachable or v.keys for v in views):
        return False
    members = [v for v in views if v.member]
    if not members:
        return False
    ours = {v.myid for v in views}
    if any(e.id not in ours for v in members for e in v.entries):
        return False
    covered = sum(v.me.slot_count for v in members if v.me is not None and v.me.is_master)
    return covered < SLOTS or not _members_agree(members)


def _members_agree(members: Sequence[NodeView]) -> bool:
    ids = {v.myid for v in members}
    return all({e.id for e in v.entries} == ids and not any("handshake" in e.flags for e in v.entries) for v in members)


def _wait_membership_settled(cluster: Cluster, timeout: float) -> None:
    """Right after MEETs (an interrupted create, a scale-out cut short) the members still
    disagree on who is in, for a few gossip rounds; judge the cluster once they agree, or
    once nothing has moved for a second (nodes that were never introduced stay apart)."""
    deadline = time.monotonic() + timeout
    last, stable_since = None, time.monotonic()
    while time.monotonic() < deadline:
        members = [v for v in cluster.views if v.member]
        if _members_agree(members):
            return
        picture = sorted((v.myid, tuple(sorted((e.id, tuple(sorted(e.flags))) for e in v.entries))) for v in members)
        if picture != last:
            last, stable_since = picture, time.monotonic()
        elif time.monotonic() - stable_since >= 1.0:
            return
        time.sleep(POLL_SECONDS)
        cluster.refresh()


def _introduce_members(cluster: Cluster, timeout: float) -> None:
    """Members that are all ours but were never all introduced (a create cut short between
    its ADDSLOTS and its MEETs): finish the introductions instead of judging them apart.
    A MEET among our own nodes changes no slot and no key."""
    members = [v for v in cluster.views if v.member and v.reachable]
    ours = {v.myid for v in cluster.views}
    if len(members) < 2 or _members_agree(members) or any(e.id not in ours for v in members for e in v.entries):
        return
    log.warning("introducing %d cluster members that do not all know each other", len(members))
    # Every member meets every other: no reliance on gossip to pass the introductions on.
    for view in members:
        for other in members:
            if other is not view:
                cluster.transport.client(view.node).execute_command("CLUSTER", "MEET", other.node.host, other.node.port)
    cluster.refresh()
    _wait_membership_settled(cluster, timeout)


def lost_identities(cluster: Cluster, known_pods: Mapping[str, str]) -> dict[str, str]:
    """Old node ID -> pod, for pods that came back empty after losing their volume.

    Such a pod starts as a fresh node under a new ID, while the members still list its old
    ID, which no pod answers for any more. Only the case that can be told apart for sure
    counts, and it is all or nothing: every unknown ID the members list was, by the
    earlier outputs, the ID of a pod that is fresh and empty now, and every member that
    lists it sees it failed or without an address and holding no slot. Anything else (a
    foreign node, an old ID still holding slots) is left to the refusal in `_classify`.
    """
    views = cluster.views
    if not known_pods or any(not v.reachable for v in views):
        return {}
    ours = {v.myid for v in views}
    members = [v for v in views if v.member]
    empty_fresh = {v.node.pod for v in views if not v.member and not v.keys}
    entries_by_id: dict[str, list[NodeEntry]] = {}
    for view in members:
        for entry in view.entries:
            if entry.id not in ours:
                entries_by_id.setdefault(entry.id, []).append(entry)
    lost: dict[str, str] = {}
    for old_id, entries in entries_by_id.items():
        pod = known_pods.get(old_id)
        if pod not in empty_fresh or pod in lost.values():
            return {}
        if any(e.slots or not e.flags & {"fail", "noaddr"} for e in entries):
            return {}
        lost[old_id] = pod
    # Forgetting would also drop a member's open slot toward an old ID (keys half moved)
    # and Redis refuses it on a replica of that ID, after the others forgot already.
    for view in members:
        me = view.me
        if me is None:
            continue
        if me.master_id in lost or any(target in lost for _, target in (*me.migrating, *me.importing)):
            return {}
    return lost


def _forget_lost_identities(cluster: Cluster, lost: Mapping[str, str]) -> None:
    """Every member forgets the old IDs; the fresh pods then join like a scale-out. A
    forgotten ID held no slot and no pod answers for it: nothing that holds a key goes."""
    for old_id, pod in sorted(lost.items(), key=lambda kv: pod_ordinal(kv[1])):
        log.warning("%s lost its volume: forgetting its old node ID %s and joining it again", pod, old_id)
    for view in cluster.views:
        if not view.member:
            continue
        client = cluster.transport.client(view.node)
        for entry in view.entries:
            if entry.id in lost:
                try:
                    client.execute_command("CLUSTER", "FORGET", entry.id)
                except redis.ResponseError as error:
                    raise BootstrapError(
                        f"{view.node.pod} refused to forget {entry.id}, the old ID of {lost[entry.id]}: {error}"
                    ) from None
    cluster.refresh()


def _start_formation_over(cluster: Cluster) -> None:
    # CLUSTER RESET is refused by Redis itself on a master that holds keys: a second lock
    # behind the zero-keys check above.
    for view in cluster.views:
        if view.member:
            cluster.transport.client(view.node).execute_command("CLUSTER", "RESET", "HARD")
    cluster.refresh()


def ensure_cluster(
    transport: NodeTransport,
    shards: int,
    replicas_per_shard: int,
    timeout: float,
    *,
    mode: str = "create",
    known_pods: Optional[Mapping[str, str]] = None,
) -> dict[str, Any]:
    """Brings the first shards*(1+replicas) pods to a converged cluster and returns its
    topology.

    mode "create": fresh nodes are formed into a cluster; nodes that already form exactly
    the expected cluster are adopted unchanged; anything else is refused.
    mode "update": additionally scales an existing cluster out (new masters, new
    replicas, slots onto the new masters), finishes interrupted slot moves, and joins
    again the pods that lost their volume (`lost_identities`, from `known_pods`: node ID ->
    pod as the last outputs named them).
    """
    count = shards * (1 + replicas_per_shard)
    nodes = wait_ready(transport, count, timeout)
    cluster = Cluster(transport, nodes, known_pods)
    cluster.refresh()
    _wait_membership_settled(cluster, min(timeout, MEMBERSHIP_SETTLE_SECONDS))
    _introduce_members(cluster, min(timeout, MEMBERSHIP_SETTLE_SECONDS))
    if _abandoned_formation(cluster):
        log.warning("the nodes hold an unfinished, empty formation; starting it over")
        _start_formation_over(cluster)
    if mode == "update":
        lost = lost_identities(cluster, known_pods or {})
        if lost:
            _forget_lost_identities(cluster, lost)
    members, fresh = _classify(cluster)
    if not members:
        cluster.create(shards, replicas_per_shard, timeout)
    elif mode == "update":
        covered = sum(e.slot_count for e in cluster.reference_entries() if e.is_master)
        if covered != SLOTS:
            raise BootstrapError(
                f"the existing cluster serves {covered} of {SLOTS} slots; fix it first (redis-cli --cluster fix)"
            )
        cluster.close_open_slots(timeout)
        cluster.refresh()
        # Joins fresh nodes if any, then fills under-filled masters; a no-op on a cluster
        # already in shape.
        cluster.scale_out(shards, replicas_per_shard, timeout, [v for v in cluster.views if v.member])
    elif not fresh and _is_expected(cluster, shards, replicas_per_shard):
        log.info("adopting the existing cluster")
        if any(v.me and (v.me.migrating or v.me.importing) for v in cluster.views):
            # Adopt means no change: report the open slots (state "degraded"), and the
            # next update, which the drift triggers, finishes them.
            return cluster.topology(shards, replicas_per_shard)
    else:
        layout = cluster.live_layout()
        loaded = [f"{v.node.pod} ({v.keys} keys)" for v in cluster.views if v.keys]
        holding = ("; nodes holding keys: " + ", ".join(loaded)) if loaded else ""
        raise BootstrapError(
            f"the nodes already hold a cluster that is not the expected one{holding} ({len(layout.masters)} masters over "
            f"{len(members)} of {count} pods; expected {shards} masters with {replicas_per_shard} replica(s) each "
            f"over {count} pods); refusing to change nodes that may hold data. Set shards/replicasPerShard to "
            "match it, or reshape it by hand first"
        )
    cluster.wait_converged(timeout, shards, None)
    return cluster.topology(shards, replicas_per_shard)


def _is_expected(cluster: Cluster, shards: int, replicas_per_shard: int) -> bool:
    layout = cluster.live_layout()
    entries = cluster.reference_entries()
    empty_masters = [e for e in entries if e.is_master and not e.slots]
    total_replicas = sum(len(r) for r in layout.replicas.values())
    covered = sum(e.slot_count for e in entries if e.is_master)
    return (
        len(layout.masters) == shards
        and not empty_masters
        and total_replicas == shards * replicas_per_shard
        and covered == SLOTS
    )


def read_topology(
    transport: NodeTransport,
    shards: int,
    replicas_per_shard: int,
    known_pods: Optional[Mapping[str, str]] = None,
) -> dict[str, Any]:
    """The live topology without waiting or changing anything (for `pulumi refresh`)."""
    count = shards * (1 + replicas_per_shard)
    statuses: list[PodStatus] = transport.pod_statuses(count)
    nodes = [s.node for s in statuses if s.node is not None]
    cluster = Cluster(transport, nodes, known_pods, expected_nodes=count)
    cluster.refresh()
    topology = cluster.topology(shards, replicas_per_shard)
    not_ready = [f"{s.pod}: not ready ({s.reason})" for s in statuses if not s.ready]
    if not_ready:
        topology["problems"] = not_ready + topology["problems"]
        if topology["state"] == "ok":
            topology["state"] = "degraded"
    return topology
