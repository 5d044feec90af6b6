"""One time budget: a deadline every step draws on, the one polling helper, and a create or
update that stops at the budget the user set, not at a multiple of it."""

from __future__ import annotations

import pytest

from cluster_logic.deadline import Deadline, poll_until
from cluster_logic.errors import BootstrapError
from cluster_logic.migration import SlotMover
from cluster_logic.reconcile import ensure_cluster
from testkit.fake_transport import FakeTransport, SimulatedClock, fresh_node, six_nodes


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimulatedClock:
    return SimulatedClock().install(monkeypatch)


def test_a_deadline_counts_down_and_a_capped_one_never_outlives_it(clock: SimulatedClock) -> None:
    deadline = Deadline(10)
    clock.pause(4)
    assert deadline.remaining() == 6 and not deadline.expired()
    assert deadline.capped(30) is deadline, "a cap beyond what is left changes nothing"
    short = deadline.capped(2)
    clock.pause(2)
    assert short.expired() and not deadline.expired()


@pytest.mark.parametrize(
    "ready_at, waiting_for, outcome",
    [
        (3, None, ("done", 3)),
        (3, lambda n: f"n to reach 3, at {n}", ("done", 3)),
        (50, None, ("gave up", 10)),
        (50, lambda n: f"n to reach 50, at {n}", ("raised", "timed out after 10s waiting for n to reach 50, at 10")),
    ],
)
def test_poll_until(clock: SimulatedClock, ready_at: int, waiting_for, outcome: tuple) -> None:
    def observe() -> int:
        return int(clock.now())

    deadline = Deadline(10)
    if outcome[0] == "raised":
        with pytest.raises(BootstrapError) as failed:
            poll_until(observe, lambda n: n >= ready_at, deadline, waiting_for=waiting_for, interval=1.0)
        assert str(failed.value) == outcome[1]
    else:
        assert (
            poll_until(observe, lambda n: n >= ready_at, deadline, waiting_for=waiting_for, interval=1.0) == outcome[1]
        )
    assert clock.now() <= 10, "never sleeps past the deadline"


def test_every_step_of_one_run_shares_the_budget(clock: SimulatedClock) -> None:
    """Pods ready after 60 of 100 s, then a cluster that never converges: the run gives up
    at 100 s, naming the budget; each step starting a fresh 100 s would end at 160 s."""
    transport = FakeTransport(six_nodes(converged=False), ready_at=60)
    with pytest.raises(BootstrapError) as timed_out:
        ensure_cluster(transport, 3, 1, 100)
    assert "timed out after 100s waiting for the cluster to converge" in str(timed_out.value)
    assert 60 <= clock.now() < 101


def test_a_create_is_not_started_without_the_time_it_needs(clock: SimulatedClock) -> None:
    """Pods ready after 80 of 100 s: a create cut short would leave a half-formed cluster,
    so none is started, and the nodes are left as they were."""
    nodes = [fresh_node(i) for i in range(6)]
    transport = FakeTransport(nodes, ready_at=80)
    with pytest.raises(BootstrapError) as refused:
        ensure_cluster(transport, 3, 1, 100)
    assert "nothing was changed" in str(refused.value) and "needs 50s" in str(refused.value)
    assert transport.cli_calls == []
    probes = {("CLUSTER", "MYID"), ("CLUSTER", "NODES"), ("CLUSTER", "INFO"), ("INFO", "replication"), ("DBSIZE",)}
    assert {args[:2] for n in nodes for args in n.sent} <= probes, "only looked at"


@pytest.mark.parametrize("left, moves", [(100, True), (5, False)])
def test_the_slot_mover_starts_a_round_only_with_time_to_settle_after(
    clock: SimulatedClock, left: float, moves: bool
) -> None:
    nodes = six_nodes()
    transport = FakeTransport(nodes)
    source, target = nodes[0], nodes[1]
    deadline = Deadline(100)
    clock.pause(100 - left)
    mover = SlotMover(
        transport,
        {source.address: source.myid, target.address: target.myid},
        [n.address for n in nodes[:3]],
        deadline=deadline,
    )
    setslots = lambda: [a for a in source.sent + target.sent if a[:2] == ("CLUSTER", "SETSLOT")]  # noqa: E731
    if moves:
        mover.move_all([(source.address, target.address, [0, 1, 2])])
        assert setslots()
    else:
        with pytest.raises(BootstrapError) as stopped:
            mover.move_all([(source.address, target.address, [0, 1, 2])])
        assert "the next update continues" in str(stopped.value)
        assert setslots() == [], "no round is started"
