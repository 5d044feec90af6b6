"""Judging the nodes before anything is changed, and repairing what a crash or a lost volume
left behind: who is a member and who is fresh (refusing anything unsafe), formations that
died half-way, members never introduced, and pods that came back empty under a new ID."""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import redis

from cluster_logic.cluster import Cluster
from cluster_logic.commands import send_once
from cluster_logic.deadline import Deadline, poll_until
from cluster_logic.errors import BootstrapError, ForeignNodes
from cluster_logic.model import SLOTS, NodeEntry, pod_ordinal
from cluster_logic.observation import NodeView

log = logging.getLogger(__name__)

# Gossip spreads a MEET to every node within a few node-timeout-independent rounds.
MEMBERSHIP_SETTLE_SECONDS = 30.0
# Members whose picture of each other has not moved for this long are judged as they are.
MEMBERSHIP_STILL_SECONDS = 1.0


def classify(cluster: Cluster) -> tuple[list[NodeView], list[NodeView]]:
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
            "; they are all failed and hold no slots, as a pod that lost its volume leaves them"
            if failed_slotless
            else ""
        )
        raise ForeignNodes(
            "refusing to touch nodes that belong to another cluster (never reset): " + detail + hint, failed_slotless
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


def abandoned_formation(cluster: Cluster) -> bool:
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
    return covered < SLOTS or not members_agree(members)


def members_agree(members: Sequence[NodeView]) -> bool:
    ids = {v.myid for v in members}
    return all({e.id for e in v.entries} == ids and not any("handshake" in e.flags for e in v.entries) for v in members)


def wait_membership_settled(cluster: Cluster, deadline: Deadline) -> None:
    """Right after MEETs (an interrupted create, a scale-out cut short) the members still
    disagree on who is in, for a few gossip rounds; judge the cluster once they agree, or
    once nothing has moved for a second (nodes that were never introduced stay apart)."""
    picture, still, first = None, Deadline(MEMBERSHIP_STILL_SECONDS), True

    def members() -> list[NodeView]:
        nonlocal first
        # The caller has just refreshed the views: judge those first, fresh ones after.
        if not first:
            cluster.refresh()
        first = False
        return [v for v in cluster.views if v.member]

    def settled(members: list[NodeView]) -> bool:
        nonlocal picture, still
        if members_agree(members):
            return True
        seen = sorted((v.myid, tuple(sorted((e.id, tuple(sorted(e.flags))) for e in v.entries))) for v in members)
        if seen != picture:
            picture, still = seen, Deadline(MEMBERSHIP_STILL_SECONDS)
            return False
        return still.expired()

    poll_until(members, settled, deadline, interval=cluster.poll_interval)


def introduce_members(cluster: Cluster, deadline: Deadline) -> None:
    """Members that are all ours but were never all introduced (a create cut short between
    its ADDSLOTS and its MEETs): finish the introductions instead of judging them apart.
    A MEET among our own nodes changes no slot and no key."""
    members = [v for v in cluster.views if v.member and v.reachable]
    ours = {v.myid for v in cluster.views}
    if len(members) < 2 or members_agree(members) or any(e.id not in ours for v in members for e in v.entries):
        return
    log.warning("introducing %d cluster members that do not all know each other", len(members))
    # Every member meets every other: no reliance on gossip to pass the introductions on.
    for view in members:
        meets = [("CLUSTER", "MEET", o.node.host, o.node.port) for o in members if o is not view]
        send_once(cluster.transport, view.node, meets)
    cluster.refresh()
    wait_membership_settled(cluster, deadline)


def lost_identities(cluster: Cluster, known_pods: Mapping[str, str]) -> dict[str, str]:
    """Old node ID -> pod, for pods that came back empty after losing their volume.

    Such a pod starts as a fresh node under a new ID, while the members still list its old
    ID, which no pod answers for any more. Only the case that can be told apart for sure
    counts, and it is all or nothing: every unknown ID the members list was, by the
    earlier outputs, the ID of a pod that is fresh and empty now, and every member that
    lists it sees it failed or without an address and holding no slot. Anything else (a
    foreign node, an old ID still holding slots) is left to the refusal in `classify`.
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


def forget_lost_identities(cluster: Cluster, lost: Mapping[str, str]) -> None:
    """Every member forgets the old IDs; the fresh pods then join like a scale-out. A
    forgotten ID held no slot and no pod answers for it: nothing that holds a key goes."""
    for old_id, pod in sorted(lost.items(), key=lambda kv: pod_ordinal(kv[1])):
        log.warning("%s lost its volume: forgetting its old node ID %s and joining it again", pod, old_id)
    for view in cluster.views:
        if not view.member:
            continue
        old_ids = [e.id for e in view.entries if e.id in lost]
        replies = send_once(cluster.transport, view.node, [("CLUSTER", "FORGET", i) for i in old_ids], False)
        for old_id, reply in zip(old_ids, replies):
            if isinstance(reply, redis.ResponseError):
                raise BootstrapError(
                    f"{view.node.pod} refused to forget {old_id}, the old ID of {lost[old_id]}: {reply}"
                )
    cluster.refresh()


def start_formation_over(cluster: Cluster) -> None:
    # CLUSTER RESET is refused by Redis itself on a master that holds keys: a second lock
    # behind the zero-keys check in `abandoned_formation`.
    for view in cluster.views:
        if view.member:
            send_once(cluster.transport, view.node, [("CLUSTER", "RESET", "HARD")])
    cluster.refresh()
