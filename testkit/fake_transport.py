"""A transport to nodes that exist only as canned replies, on a simulated clock: for unit
tests that run the real reconcile code through the decisions a crash or a budget forces,
without a server or a wait."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

from cluster_logic import deadline
from cluster_logic.model import NodeAddress
from cluster_logic.planning import ideal_slot_counts
from cluster_logic.transports.base import CliResult, NodeTransport, PodStatus


class SimulatedClock:
    """Stands in for `cluster_logic.deadline.now`/`pause`: time moves only by the pauses."""

    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time

    def pause(self, seconds: float) -> None:
        self.time += max(seconds, 0.001)

    def install(self, monkeypatch: Any) -> SimulatedClock:
        monkeypatch.setattr(deadline, "now", self.now)
        monkeypatch.setattr(deadline, "pause", self.pause)
        return self


@dataclass
class FakeNode:
    """What one node answers to the probe, and what was sent to it."""

    address: NodeAddress
    myid: str
    nodes: str  # CLUSTER NODES, with this node's line flagged myself
    info: dict[str, str] = field(default_factory=lambda: {"cluster_state": "ok", "cluster_known_nodes": "1"})
    replication: dict[str, Any] = field(default_factory=lambda: {"role": "master"})
    keys: int = 0
    sent: list[tuple] = field(default_factory=list)
    # ACL users: name -> password hashes; None until an ACL command, then as the node's
    # ACL file would have started it (the admin and the replication user, any password).
    users: Optional[dict[str, set[str]]] = None

    def answer(self, args: tuple) -> Any:
        self.sent.append(args)
        words = tuple(str(a).upper() for a in args[:2])
        if words[:1] == ("ACL",):
            return self._acl(words[1], [str(a) for a in args[2:]])
        if words == ("CLUSTER", "MYID"):
            return self.myid
        if words == ("CLUSTER", "NODES"):
            return self.nodes
        if words == ("CLUSTER", "INFO"):
            return "\r\n".join(f"{k}:{v}" for k, v in self.info.items())
        if words == ("INFO", "REPLICATION"):
            return self.replication
        if words[:1] == ("DBSIZE",):
            return self.keys
        if words == ("CLUSTER", "GETKEYSINSLOT"):
            return []
        if words == ("CLUSTER", "RESET"):
            # What Redis does: a fresh node under a new ID, alone, with no slot.
            self.myid = "reset-" + self.myid
            self.nodes = f"{self.myid} {self.address.endpoint}@16379 myself,master - 0 0 0 connected"
            self.info = {"cluster_state": "fail", "cluster_known_nodes": "1", "cluster_my_epoch": "0"}
        return "OK"

    def _acl(self, command: str, args: list[str]) -> Any:
        # Just enough of ACL for the rotation: hashes added (#), removed (!) or reset.
        if self.users is None:
            self.users = {"default": set(), "replication": set()}
        if command == "LIST":
            return [
                f"user {name} on {' '.join('#' + h for h in sorted(hashes))} ~* +@all"
                for name, hashes in self.users.items()
            ]
        if command == "DELUSER":
            self.users.pop(args[0], None)
            return 1
        hashes = self.users.setdefault(args[0], set())
        for word in args[1:]:
            if word == "resetpass":
                hashes.clear()
            elif word.startswith("#"):
                hashes.add(word[1:])
            elif word.startswith("!"):
                hashes.discard(word[1:])
        return "OK"


class _Pipeline:
    def __init__(self, node: FakeNode) -> None:
        self._node, self._queued = node, []

    def execute_command(self, *args: Any) -> _Pipeline:
        self._queued.append(args)
        return self

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        queued, self._queued = self._queued, []
        return [self._node.answer(args) for args in queued]


class _Client:
    def __init__(self, node: FakeNode) -> None:
        self._node = node
        # What the transports set their retry policy on.
        self.connection_pool = SimpleNamespace(connection_kwargs={})

    def pipeline(self, transaction: bool = False) -> _Pipeline:
        return _Pipeline(self._node)

    def execute_command(self, *args: Any) -> Any:
        return self._node.answer(args)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


# The default fake redis-cli: the tests that get this far only check what led there.
CLI_FAILS = CliResult(1, "", "[ERR] not in this test")


class FakeTransport(NodeTransport):
    """Pods that turn ready at `ready_at` on the simulated clock, and a `redis-cli` whose
    result is `cli_result`."""

    poll_interval = 1.0

    def __init__(
        self,
        nodes: Sequence[FakeNode],
        password: str = "fake-password",
        ready_at: float = 0.0,
        cli_result: CliResult = CLI_FAILS,
        on_pod_statuses: Optional[Callable[[], None]] = None,
    ) -> None:
        super().__init__(password)
        self.fake_nodes = {n.address: n for n in nodes}
        self.ready_at = ready_at
        self.cli_result = cli_result
        self.cli_calls: list[list[str]] = []
        self._on_pod_statuses = on_pod_statuses

    def pod_statuses(self, count: int) -> list[PodStatus]:
        if self._on_pod_statuses is not None:
            self._on_pod_statuses()
        ready = deadline.now() >= self.ready_at
        return [
            PodStatus(a.pod, True, node=a) if ready else PodStatus(a.pod, False, "phase Pending")
            for a in list(self.fake_nodes)[:count]
        ]

    def running_nodes(self, count: int) -> list[NodeAddress]:
        return list(self.fake_nodes)[:count]

    def _make_client(self, node: NodeAddress, password: Optional[str] = None) -> Any:
        return _Client(self.fake_nodes[node])

    def run_cli(self, args: Sequence[str], timeout: float, via: NodeAddress) -> CliResult:
        self.cli_calls.append(list(args))
        return self.cli_result


def formed_nodes(masters: int = 3, replicas: int = 3, converged: bool = True) -> list[FakeNode]:
    """A formed cluster as every node would describe it: `masters` masters over all slots
    and `replicas` replicas dealt round the masters; with `converged` False, every node
    reports cluster_state fail."""
    count = masters + replicas
    addresses = [NodeAddress(f"redis-cluster-{i}", f"10.0.0.{i + 1}", 6379, "abc"[i % 3]) for i in range(count)]
    starts = [0]
    for size in ideal_slot_counts(masters):
        starts.append(starts[-1] + size)
    lines = []
    for i in range(count):
        if i < masters:
            lines.append(f"id{i} 10.0.0.{i + 1}:6379@16379 master - 0 0 1 connected {starts[i]}-{starts[i + 1] - 1}")
        else:
            lines.append(f"id{i} 10.0.0.{i + 1}:6379@16379 slave id{(i + 1) % masters} 0 0 1 connected")
    nodes = []
    for i, address in enumerate(addresses):
        text = "\n".join(
            line.replace(" master ", " myself,master ", 1).replace(" slave ", " myself,slave ", 1) if j == i else line
            for j, line in enumerate(lines)
        )
        info = {
            "cluster_state": "ok" if converged else "fail",
            "cluster_known_nodes": str(count),
            "cluster_slots_ok": "16384",
        }
        replication = {"role": "master"} if i < masters else {"role": "slave", "master_link_status": "up"}
        nodes.append(FakeNode(address, f"id{i}", text, info, replication))
    return nodes


def six_nodes(converged: bool = True) -> list[FakeNode]:
    """Three masters and a replica each."""
    return formed_nodes(3, 3, converged)


def fresh_node(i: int, keys: int = 0) -> FakeNode:
    address = NodeAddress(f"redis-cluster-{i}", f"10.0.0.{i + 1}", 6379, "abc"[i % 3])
    line = f"fresh{i} {address.endpoint}@16379 myself,master - 0 0 0 connected"
    return FakeNode(address, f"fresh{i}", line, {"cluster_state": "fail", "cluster_known_nodes": "1"}, keys=keys)
