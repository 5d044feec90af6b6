"""Live slot migration: moves slots between masters in redis-cli's safe order, several
(source, target) pairs at once, a batch of keys per MIGRATE and a round of slots per
pipeline, and never overwrites a key whose value differs on the two sides."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Optional, Sequence

import redis

from cluster_logic.commands import pipeline, short_error
from cluster_logic.deadline import Deadline
from cluster_logic.errors import BootstrapError
from cluster_logic.model import NodeAddress, format_ranges, slot_ranges
from cluster_logic.transports.base import NodeTransport

MIGRATE_BATCH = 500
MIGRATE_TIMEOUT_MS = 20000
MAX_MOVE_THREADS = 8
# Slots handled per pipelined round of a (source, target) pair.
SLOTS_PER_ROUND = 64
# Time a run keeps, after its last round of slots, for the cluster to settle: the mover
# stops starting rounds when less than this (or a tenth of the budget) is left.
SETTLE_RESERVE_SECONDS = 30.0


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
        deadline: Optional[Deadline] = None,
    ) -> None:
        self.transport = transport
        self.ids = dict(ids)
        self.masters = list(masters)
        self.batch = batch
        self.migrate_timeout_ms = migrate_timeout_ms
        self.slots_per_round = slots_per_round
        self.deadline = deadline
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
            raise BootstrapError(f"moving slots failed: {short_error(first)}") from None

    def move_slots(self, source: NodeAddress, target: NodeAddress, slots: Sequence[int]) -> None:
        slots = list(slots)
        for i in range(0, len(slots), self.slots_per_round):
            self._check_budget()
            self.move_round(slots[i : i + self.slots_per_round], source, target)

    def _check_budget(self) -> None:
        """A round is only started with time left for it and for the cluster to settle after;
        every round finished has its slots wholly moved, so stopping between rounds is safe."""
        if self.deadline is None:
            return
        reserve = min(SETTLE_RESERVE_SECONDS, self.deadline.seconds / 10)
        if self.deadline.remaining() < reserve:
            raise BootstrapError(
                f"the {self.deadline.seconds:g}s time budget ran out while moving slots ({self.moved_keys} keys "
                "moved); the slots moved so far stay moved, and the next update continues"
            )

    def move_round(self, slots: Sequence[int], source: NodeAddress, target: NodeAddress) -> None:
        src = self.transport.client(source)
        dst = self.transport.client(target)
        src_id, dst_id = self.ids[source], self.ids[target]
        where = f"slots {format_ranges(slot_ranges(slots))} from {source.pod} to {target.pod}"
        try:
            # Importing first: from the moment the source redirects with ASK, the target
            # must accept the asked-for keys.
            pipeline(dst, [("CLUSTER", "SETSLOT", s, "IMPORTING", src_id) for s in slots])
            pipeline(src, [("CLUSTER", "SETSLOT", s, "MIGRATING", dst_id) for s in slots])
            self._drain(slots, source, target)
            # Target first so it serves the slot before the source starts redirecting
            # there with MOVED; then the source; then everyone else (gossip would get
            # there too, but slower).
            pipeline(dst, [("CLUSTER", "SETSLOT", s, "NODE", dst_id) for s in slots])
            pipeline(src, [("CLUSTER", "SETSLOT", s, "NODE", dst_id) for s in slots])
        except redis.RedisError as error:
            raise BootstrapError(
                f"moving {where} failed: {short_error(error)}; the slots are left open and the next update resumes them"
            ) from None
        for other in self.masters:
            if other not in (source, target):
                try:
                    pipeline(self.transport.client(other), [("CLUSTER", "SETSLOT", s, "NODE", dst_id) for s in slots])
                except redis.RedisError:
                    pass  # gossip carries the new owner to a node we could not tell

    def _drain(self, slots: Sequence[int], source: NodeAddress, target: NodeAddress) -> None:
        """MIGRATEs keys until the source holds none in `slots`."""
        src = self.transport.client(source)
        pending = list(slots)
        io_errors = 0
        while pending:
            listed = pipeline(src, [("CLUSTER", "GETKEYSINSLOT", s, self.batch) for s in pending])
            work = [(s, keys) for s, keys in zip(pending, listed) if keys]
            if not work:
                return
            replies = pipeline(src, [self._migrate_command(target, keys) for _, keys in work], raise_on_error=False)
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
                        f"MIGRATE of slot {slot} from {source.pod} to {target.pod} failed: {short_error(reply)}; "
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
        present = pipeline(src, [("EXISTS", k) for k in keys], raise_on_error=False)
        still = [k for k, exists in zip(keys, present) if exists == 1]
        if not still:
            return
        ours = pipeline(src, [("DUMP", k) for k in still])
        # The target answers for a slot it only imports when asked with ASKING.
        theirs = pipeline(dst, [c for k in still for c in (("ASKING",), ("DUMP", k))])[1::2]
        same = [k for k, a, b in zip(still, ours, theirs) if b is None or a == b]
        differ = [k for k, a, b in zip(still, ours, theirs) if b is not None and a != b]
        if differ:
            raise BootstrapError(
                f"slot {slot}: {len(differ)} key(s) exist on both {source.pod} and {target.pod} with "
                "different values; refusing to overwrite. Inspect them and resolve by hand "
                "(`redis-cli --cluster fix` with care), then run the update again"
            )
        if same:
            pipeline(src, [self._migrate_command(target, same, replace=True)])
            self._count(len(same))

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.moved_keys += n
