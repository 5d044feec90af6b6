"""How long a rolling update may take: of the Redis pods (the StatefulSet's update await), of the
nodes (the node groups' update await) and of one `pulumi up` that does both, from the pods' own
bounds, EKS's limits and the stack's size.

A roll replaces one pod at a time: the StatefulSet's RollingUpdate deletes the next pod only
once the one before is Running and Ready again (Kubernetes' StatefulSet documentation, "Rolling
Updates"; podManagementPolicy Parallel changes only scaling, and the PodDisruptionBudget only
evictions, as in a node drain, not this roll); a replica is Ready only once its full sync is
done (probe-readiness.sh). So a roll takes about the sum of its pods' turns, and a
fixed await (the 30 minutes this replaced) stops waiting half way through a large cluster:
`pulumi up` then fails while the roll goes on in the cluster. One pod's turn is bounded by:

- its stop: the termination grace period, preStop handover plus shutdown;
- its start: rescheduling, the EBS volume's attach, the container's start (POD_START_SECONDS);
- its data: the AOF loaded from the volume, then, for a replica, the full sync written to it,
  each at most the data set (maxmemory) and its rewrite (DATA_PASSES in all), at the volume's
  throughput (`storageThroughput`), which bounds both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from components import redis_node_files as files
from components.stack_settings import StackSettings

# Room after the preStop handover for redis-server to flush its AOF and exit on SIGTERM.
SHUTDOWN_SECONDS = 30
# Rescheduling the pod, attaching its EBS volume on the node, starting the containers and the
# first probes: an allowance, not a measurement of AWS (none is possible here).
POD_START_SECONDS = 120
# Whole-data-set reads and writes of one pod's turn: the AOF (up to twice the data set before
# Redis rewrites it: auto-aof-rewrite-percentage 100) and a replica's full sync.
DATA_PASSES = 3
# Before the first pod's turn: the StatefulSet controller noticing the new revision.
ROLL_START_SECONDS = 600
# EKS gives up draining a node after this long (AWS's user guide, "Understand each phase of
# node updates": PodEvictionFailure), unless the update is forced.
EKS_DRAIN_LIMIT_SECONDS = 15 * 60
# Per node of a node update, after its drain: its termination, and the launch, join and first
# Ready of a node in its place (an allowance, like POD_START_SECONDS: nothing here measured EC2).
NODE_REPLACE_SECONDS = 5 * 60
# The rest of a node update: its setup, its scale-up (new nodes launched together, up to twice
# the zones) and its scale-down phases (the same user guide page).
NODE_UPDATE_PHASES_SECONDS = 15 * 60
# What the Terraform provider that pulumi-aws bridges waits by default for an update of the
# EKS cluster (a clusterVersion upgrade) and of an add-on, unless customTimeouts say otherwise:
# internal/service/eks/cluster.go and addon.go, `Timeouts`. pulumi-eks sets none on the
# cluster it makes (nodejs/eks/cluster/cluster.ts), so the control plane's is fixed.
CONTROL_PLANE_UPDATE_SECONDS = 60 * 60
ADDON_UPDATE_SECONDS = 20 * 60


@dataclass(frozen=True)
class RollBudget:
    pod_turn_seconds: int
    pods: int

    @property
    def update_seconds(self) -> int:
        """The StatefulSet's update await: every pod's turn, one after the other."""
        return ROLL_START_SECONDS + self.pods * self.pod_turn_seconds

    def drain_seconds(self, nodes: int) -> int:
        """What draining one node takes when the pods spread evenly over `nodes`: its pods go
        one at a time, each through the PodDisruptionBudget, the next once the last is back."""
        return math.ceil(self.pods / max(nodes, 1)) * self.pod_turn_seconds


def node_update_seconds(settings: StackSettings) -> int:
    """The node groups' update await: EKS replaces the nodes one at a time (maxUnavailable 1),
    each drained within EKS's limit, else the update fails. A roll of three nodes can already
    outlast a fixed await (Terraform's 60 minutes), which then gives up while EKS goes on."""
    per_node = EKS_DRAIN_LIMIT_SECONDS + NODE_REPLACE_SECONDS
    return NODE_UPDATE_PHASES_SECONDS + settings.node_desired_size * per_node


def deploy_seconds(settings: StackSettings) -> int:
    """The longest one `pulumi up` of the stack may wait: on EKS the control plane, then the node
    groups (whose version is the control plane's output), then the add-ons after them, then the
    StatefulSet (its StorageClass waits for the add-ons), one after the other."""
    seconds = roll_budget(settings).update_seconds
    if settings.platform == "eks":
        seconds += CONTROL_PLANE_UPDATE_SECONDS + node_update_seconds(settings) + ADDON_UPDATE_SECONDS
    return seconds


def termination_grace_seconds() -> int:
    return files.PRESTOP_TIMEOUT_SECONDS + SHUTDOWN_SECONDS


def roll_budget(settings: StackSettings) -> RollBudget:
    data_mib = files.maxmemory_bytes(settings.memory_limit_bytes) / 2**20
    data_seconds = math.ceil(DATA_PASSES * data_mib / settings.storage_throughput)
    turn = termination_grace_seconds() + POD_START_SECONDS + data_seconds
    return RollBudget(pod_turn_seconds=turn, pods=settings.pod_count)


def drain_warning(settings: StackSettings) -> str | None:
    """Why a node update of this stack would pass EKS's drain limit, or None."""
    if settings.platform != "eks":
        return None
    budget = roll_budget(settings)
    nodes = settings.node_desired_size
    if budget.drain_seconds(nodes) <= EKS_DRAIN_LIMIT_SECONDS:
        return None
    per_node_allowed = EKS_DRAIN_LIMIT_SECONDS // budget.pod_turn_seconds
    remedy = (
        f"Raise redis-eks:nodeDesiredSize to at least {math.ceil(settings.pod_count / per_node_allowed)}"
        if per_node_allowed
        else "Even one pod per node takes longer; lower memoryLimit or raise storageThroughput"
    )
    return (
        f"{settings.pod_count} Redis pods on {nodes} nodes put up to {math.ceil(settings.pod_count / nodes)} on one "
        f"node; draining it takes up to {budget.drain_seconds(nodes) // 60} min (one pod at a time, up to "
        f"{budget.pod_turn_seconds} s each), past EKS's {EKS_DRAIN_LIMIT_SECONDS // 60} min drain limit: a node update "
        f"(AMI, version, instance type) would fail with PodEvictionFailure. {remedy} (docs/operations.md, "
        '"How long a roll takes")'
    )
