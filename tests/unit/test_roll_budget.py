"""How long the StatefulSet's update await waits: the sum of its pods' turns, each bounded by
the pod's stop, its start and its data at the volume's throughput; and when a node drain
would pass EKS's 15-minute limit."""

from __future__ import annotations

import pytest

from components import redis_node_files as files
from components import roll_budget as roll
from components.stack_settings import MAX_REPLICAS_PER_SHARD, MAX_SHARDS, parse_settings
from tests.unit.conftest import KUBECONFIG, build_stack

STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"


def seconds(duration: str) -> int:
    assert duration.endswith("s"), duration
    return int(duration[:-1])


@pytest.mark.parametrize(
    ("settings", "turn"),
    [
        # stop 90 s + start 120 s + 3 x 716 MiB (70% of 1Gi) at 125 MiB/s = 18 s
        ({}, 90 + 120 + 18),
        # 8Gi: 3 x 5734 MiB at 250 MiB/s = 69 s
        (
            {
                "memoryLimit": "8Gi",
                "memoryRequest": "8Gi",
                "storageThroughput": "250",
                "storageIops": "6000",
                "storageSize": "50Gi",
            },
            279,
        ),
        # the same data at the gp3 baseline: 138 s (a volume of twice maxmemory, as the settings
        # require)
        ({"memoryLimit": "8Gi", "memoryRequest": "8Gi", "storageSize": "12Gi"}, 348),
    ],
)
def test_one_pods_turn_is_its_stop_its_start_and_its_data_at_the_volumes_throughput(settings, turn):
    assert roll.roll_budget(parse_settings(settings)).pod_turn_seconds == turn
    assert roll.termination_grace_seconds() == files.PRESTOP_TIMEOUT_SECONDS + roll.SHUTDOWN_SECONDS


def test_the_update_await_is_every_pods_turn_one_after_the_other():
    small, large = (parse_settings({"shards": str(n), "replicasPerShard": "1"}) for n in (3, 30))
    assert roll.roll_budget(large).update_seconds - roll.ROLL_START_SECONDS == 10 * (
        roll.roll_budget(small).update_seconds - roll.ROLL_START_SECONDS
    )


def test_the_statefulset_waits_as_long_as_its_roll_may_take(dev_stack, prod_stack):
    for run in (dev_stack, prod_stack):
        create, update, _ = run.one(STATEFUL_SET).custom_timeouts
        assert create == "20m"
        assert seconds(update) == roll.ROLL_START_SECONDS + 6 * (279 if run is prod_stack else 228)


def test_the_most_pods_the_settings_allow_are_waited_for_to_the_end():
    """600 pods of 8Gi: about 58 hours at the gp3 baseline, where a fixed 30 minutes gave up
    on the 6th pod and failed the update while the roll went on."""
    run = build_stack(
        "dev",
        shards=str(MAX_SHARDS),
        replicasPerShard=str(MAX_REPLICAS_PER_SHARD),
        memoryLimit="8Gi",
        memoryRequest="8Gi",
        storageSize="12Gi",
        # Nodes that hold the pods (the settings check it): 200 in each zone of 33 nodes.
        nodeInstanceType="r6i.4xlarge",
        nodeMaxSize="100",
        nodeDesiredSize="100",
    )
    update = seconds(run.one(STATEFUL_SET).custom_timeouts[1])
    assert update == roll.ROLL_START_SECONDS + 600 * 348
    assert update > 58 * 3600


def test_a_node_holding_too_many_pods_to_drain_in_15_minutes_is_warned_about(monkeypatch):
    warnings = []
    monkeypatch.setattr(
        "pulumi.log.warn",
        # The dev example's documentation range has a warning of its own.
        lambda message, resource=None, **_: "documentation ranges" in message or warnings.append(message),
    )
    # Nodes large enough to hold 20 pods each (the settings check it), too many to drain in time.
    build_stack(
        "dev", shards="30", replicasPerShard="1", nodeDesiredSize="4", nodeMaxSize="6", nodeInstanceType="m6i.2xlarge"
    )
    (warning,) = warnings
    assert "60 Redis pods on 4 nodes put up to 15 on one node" in warning
    assert "PodEvictionFailure" in warning and "nodeDesiredSize to at least 20" in warning
    warnings.clear()
    build_stack("dev")
    assert warnings == []


def test_a_cluster_made_elsewhere_has_no_eks_drain_limit():
    settings = parse_settings(
        {
            "platform": "existing",
            "kubeconfig": KUBECONFIG,
            "storageProvisioner": "x.io/y",
            "shards": "50",
        }
    )
    assert roll.drain_warning(settings) is None


NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"


def test_the_node_group_waits_for_every_node_to_be_drained_and_replaced(dev_stack, prod_stack):
    """A node update (AMI, clusterVersion, nodeInstanceType) replaces the nodes one at a time, each
    drained within EKS's 15 minutes: a roll of three nodes can already outlast the provider's
    default 60 minutes, which then failed `pulumi up` while EKS carried on and left the add-ons
    after the group as they were."""
    for run, nodes in ((dev_stack, 3), (prod_stack, 6)):
        create, update, _ = run.one(NODE_GROUP).custom_timeouts
        assert create == ""
        assert seconds(update) == 15 * 60 + nodes * (15 * 60 + roll.NODE_REPLACE_SECONDS)
        assert seconds(update) > 60 * 60
    assert roll.node_update_seconds(parse_settings({"nodeDesiredSize": "6", "nodeMaxSize": "6"})) == 135 * 60


def test_one_pulumi_up_may_wait_for_the_control_plane_the_nodes_the_add_ons_and_the_pods_in_turn():
    settings = parse_settings({"nodeDesiredSize": "6", "nodeMaxSize": "9"})
    assert roll.deploy_seconds(settings) == (
        60 * 60 + roll.node_update_seconds(settings) + 20 * 60 + roll.roll_budget(settings).update_seconds
    )
    existing = parse_settings({"platform": "existing", "kubeconfig": KUBECONFIG, "storageProvisioner": "x.io/y"})
    assert roll.deploy_seconds(existing) == roll.roll_budget(existing).update_seconds
