"""`Cluster`: the nodes of one desired cluster and the latest views of them, with the
questions every step asks of those views (which pod has which ID, which slot map the
nodes agree on, which masters and replicas there are)."""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Optional, Sequence

from cluster_logic.deadline import POLL_SECONDS
from cluster_logic.model import NodeAddress, NodeEntry
from cluster_logic.observation import NodeView, probe
from cluster_logic.planning import Layout
from cluster_logic.transports.base import NodeTransport


class Cluster:
    """The nodes of one desired cluster; `refresh` probes them, everything else reads the
    views it left (tests set `views` directly)."""

    def __init__(
        self,
        transport: Optional[NodeTransport],
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
        self.known_pods = dict(known_pods or {})
        self.views: list[NodeView] = []

    def refresh(self) -> list[NodeView]:
        self.views = probe(self.transport, self.nodes)
        return self.views

    def view_of(self, pod: str) -> NodeView:
        return next(v for v in self.views if v.node.pod == pod)

    def by_pod(self) -> dict[str, NodeAddress]:
        return {n.pod: n for n in self.nodes}

    def ids_by_pod(self) -> dict[str, str]:
        return {v.node.pod: v.myid for v in self.views}

    def pod_of_id(self) -> dict[str, str]:
        """Node ID -> pod, from the nodes themselves, their addresses, or earlier state."""
        result = dict(self.known_pods)
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

    @property
    def poll_interval(self) -> float:
        """How often to look again while waiting: as often as the transport can afford."""
        return self.transport.poll_interval if self.transport is not None else POLL_SECONDS

    def slots_covered(self) -> int:
        return sum(e.slot_count for e in self.reference_entries() if e.is_master)
