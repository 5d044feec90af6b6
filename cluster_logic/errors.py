"""Why the cluster logic refuses or gives up: messages state facts about the nodes, never a
secret and never a deployment tool's procedure (the caller adds that)."""

from __future__ import annotations


class BootstrapError(Exception):
    """The cluster cannot (safely) reach the desired state; the message says why."""


class ScaleInRefused(BootstrapError):
    """Fewer shards than masters holding slots: the keys would have to move first."""

    def __init__(self, what: str, current: int, wanted: int) -> None:
        self.what, self.current, self.wanted = what, current, wanted
        super().__init__(
            f"{what} cannot go from {current} to {wanted} here: the masters beyond {wanted} hold slots, "
            "and the pods that go must first hand over every key (the scale-in step does)"
        )


class ForeignNodes(BootstrapError):
    """Members know nodes outside this set of pods. `failed_and_slotless` tells the case a
    lost volume leaves behind (every stranger failed, holding no slot) from another
    cluster's nodes."""

    def __init__(self, message: str, failed_and_slotless: bool) -> None:
        self.failed_and_slotless = failed_and_slotless
        super().__init__(message)


class UnexpectedCluster(BootstrapError):
    """The nodes already form a cluster of another shape than the one asked for."""
