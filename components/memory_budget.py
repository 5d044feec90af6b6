"""How a Redis pod's memory limit divides: the data set's `maxmemory` and the replica output
buffers, for redis.conf and for the settings' checks of what a volume must hold (no Pulumi
and no settings import, so both can use it)."""

from __future__ import annotations

MIB = 2**20

# maxmemory caps only the data set. Redis needs memory beyond it inside the container limit:
#   ~10% allocator fragmentation and per-client buffers,
#   ~10% the output buffer of a replica during a full sync (capped to that below; Redis
#        does not count replica output buffers against maxmemory),
#   ~10% pages copied-on-write while the AOF-rewrite fork runs under writes.
# So the data set gets 70% of the limit. Going higher gets the pod OOM-killed exactly when
# it is busiest (a resync or an AOF rewrite), which is also when losing it hurts most.
MAXMEMORY_PERCENT_OF_LIMIT = 70
REPLICA_BUFFER_HARD_PERCENT_OF_LIMIT = 10
REPLICA_BUFFER_SOFT_PERCENT_OF_LIMIT = 5


def maxmemory_bytes(memory_limit_bytes: int) -> int:
    """The `maxmemory` for a container limit: 70% of it, rounded down to a whole MiB."""
    if memory_limit_bytes <= 0:
        raise ValueError(f"memory limit must be positive, got {memory_limit_bytes}")
    return whole_mib(memory_limit_bytes * MAXMEMORY_PERCENT_OF_LIMIT // 100)


def whole_mib(value: int) -> int:
    # A readable figure in redis.conf; at least 1 MiB so a tiny limit never means "no limit" (0).
    return max(MIB, value // MIB * MIB)
