"""Faults an operator meets on EKS, injected into the sandbox (the dev stack's files, the
bootstrap's own code) on the engine under test, with every acknowledged write checked after.

Each test builds its own `Sandbox` on 127.0.8x.0/24 and stops every process it started, by
pid, whether it passes or fails (`make_sandbox`, tests/integration/conftest.py).

What is proven:
* scale-out: the moment `up --shards 4` returns, every replica of a master that gained
  slots holds what its master held, so killing that master then loses no key.
"""

from __future__ import annotations

import time

import pytest

from testkit.sandbox_support import cluster_client, masters, node_client, record_of, wait_healthy
from testkit.writers import lost_keys, write_keys

pytestmark = pytest.mark.integration

# 127.0.<octet>.0/24 per test; this suite owns 80..89.
SCALE_OUT_KILL = 80

# Enough keys that a quarter of them take a measurable time to reach a new replica.
LOADED_KEYS = 100_000


def _replication(sandbox, pod: str) -> dict:
    state = sandbox.load()
    client = node_client(state, record_of(state, pod))
    try:
        return client.info("replication")
    finally:
        client.close()


def _assert_nothing_lost(sandbox, expected: dict[str, str], what: str) -> None:
    assert expected, f"no {what} to check: the test proves nothing"
    with cluster_client(sandbox) as client:
        lost = lost_keys(client, expected)
    assert not lost, f"{len(lost)} of {len(expected)} {what} lost, e.g. {lost[:10]}"


# ---------------------------------------------------------------------------------------
# 1. Scale-out reports ok only once the new masters' replicas hold the moved keys.
# ---------------------------------------------------------------------------------------


def test_killing_a_new_master_the_moment_scale_out_returns_loses_no_key(make_sandbox):
    sb = make_sandbox(SCALE_OUT_KILL).sandbox
    sb.up()
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", LOADED_KEYS)
    before = set(masters(sb))

    topology = sb.up(shards=4)

    # Read at once, before anything else: what a master that dies now leaves behind.
    new_masters = {p: f for p, f in masters(sb).items() if p not in before}
    assert topology["state"] == "ok" and len(new_masters) == 1, (topology["problems"], new_masters)
    (new_master, facts), *_ = new_masters.items()
    offsets = {}
    for replica in (r["pod"] for r in topology["replicas"] if r["master"] == new_master):
        offsets[replica] = _replication(sb, replica).get("slave_repl_offset", 0)
    master_offset = _replication(sb, new_master)["master_repl_offset"]
    sb.kill(new_master)
    assert master_offset > 0 and offsets, (master_offset, offsets)
    assert all(offset >= master_offset for offset in offsets.values()), (
        f"up returned while {new_master}'s replicas were behind it: {offsets} of {master_offset}"
    )

    # Its replica takes over (the killed pod stays down until then: back at once, it would
    # bring its keys back from its own AOF); then `up` brings the pod back as a replica.
    heir = _wait_promoted(sb, list(offsets), facts.slots)
    sb.up()
    wait_healthy(sb)
    assert heir in masters(sb) and new_master not in masters(sb)
    _assert_nothing_lost(sb, keys, "keys")


def _wait_promoted(sandbox, candidates: list[str], slots, timeout: float = 60.0) -> str:
    """The first of `candidates` that serves `slots` as a master."""
    deadline = time.monotonic() + timeout
    while True:
        owners = {p: f for p, f in masters(sandbox).items() if p in candidates and f.slots == slots}
        if owners:
            return next(iter(owners))
        assert time.monotonic() < deadline, f"none of {candidates} took over {slots} within {timeout:.0f}s"
        time.sleep(0.2)
