"""Live slot migration: moves slots between masters in redis-cli's safe order, several
(source, target) pairs at once, a batch of keys per MIGRATE and a round of slots per
pipeline, and never overwrites a key whose value differs on the two sides; on an engine
with atomic slot migration (Valkey 9: CLUSTER MIGRATESLOTS) the source streams the slots
itself."""

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
from cluster_logic.transports.base import NodeTransport, close_client

MIGRATE_BATCH = 500
# MIGRATE's timeout is the longest idle time of a transfer, and the source is blocked while
# it waits: a target that froze stalls the source's clients this long per MIGRATE sent. So a
# call carries a few MIGRATEs only (each slot needs one of its own), and a timeout on a
# target that still answers PING (busy restoring a large key) is retried with a longer one.
MIGRATE_TIMEOUT_MS = 2000
MIGRATES_PER_CALL = 3
MIGRATE_RETRY_TIMEOUTS_MS = (4000, 8000, 16000)
MAX_MOVE_THREADS = 8
# Slots handled per pipelined round of a (source, target) pair.
SLOTS_PER_ROUND = 64
# Time a run keeps, after its last round of slots, for the cluster to settle: the mover
# stops starting rounds when less than this (or a tenth of the budget) is left.
SETTLE_RESERVE_SECONDS = 30.0
# An atomic migration without a deadline of the run's own is given this long.
ATOMIC_TIMEOUT_SECONDS = 600.0
ATOMIC_POLL_SECONDS = 0.05
# While an atomic job runs, whether its target still answers is asked this often: the engine
# itself waits far longer for a target that froze.
ATOMIC_PEER_CHECK_SECONDS = 2.0
# CLUSTER GETSLOTMIGRATIONS states that end a job.
ATOMIC_DONE, ATOMIC_ENDED = "success", ("failed", "cancelled", "canceled")


def atomic_job(entries: Sequence[Mapping[str, str]], known: set[str]) -> Optional[Mapping[str, str]]:
    """The export job `CLUSTER MIGRATESLOTS` just started: the one entry of CLUSTER
    GETSLOTMIGRATIONS that was not there before it (`known` holds the names seen then)."""
    new = [e for e in entries if e.get("operation") == "EXPORT" and e.get("name") not in known]
    return new[-1] if new else None


def _as_text_map(entry: Any) -> dict[str, str]:
    """One GETSLOTMIGRATIONS entry (a map, or a flat list of fields and values) as text."""
    if isinstance(entry, (list, tuple)):
        entry = dict(zip(entry[::2], entry[1::2]))
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
        for k, v in dict(entry).items()
    }


class _Stopped(Exception):
    """A pair stopped because another one failed."""


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
        atomic: bool = True,
    ) -> None:
        """`atomic`: use the engine's atomic slot migration where it has one and the slots
        are plain (not left open, no keys on the target); closing slots an interrupted run
        left open passes False."""
        self.transport = transport
        self.ids = dict(ids)
        self.masters = list(masters)
        self.batch = batch
        self.migrate_timeout_ms = migrate_timeout_ms
        self.slots_per_round = slots_per_round
        self.deadline = deadline
        self.moved_keys = 0
        self._count_lock = threading.Lock()
        self._atomic = atomic
        self._atomic_sources: dict[NodeAddress, bool] = {}
        # Masters that did not answer a broadcast: not told again in this run.
        self._silent: set[NodeAddress] = set()
        self._migrate_clients: dict[NodeAddress, Any] = {}
        # Set by the first pair that fails: the others stop before their next round.
        self._failed = threading.Event()

    def move_all(self, moves: Sequence[tuple[NodeAddress, NodeAddress, Sequence[int]]]) -> None:
        moves = [m for m in moves if m[2]]
        if not moves:
            return
        errors: list[BaseException] = []
        try:
            with ThreadPoolExecutor(max_workers=min(MAX_MOVE_THREADS, len(moves))) as pool:
                futures = [pool.submit(self.move_slots, s, t, slots) for s, t, slots in moves]
                for future in futures:
                    try:
                        future.result()
                    except _Stopped:
                        pass
                    except BaseException as error:  # noqa: BLE001 - collect all, report first
                        errors.append(error)
        finally:
            for client in self._migrate_clients.values():
                close_client(client)
            self._migrate_clients.clear()
        if errors:
            first = errors[0]
            if isinstance(first, BootstrapError):
                raise first
            raise BootstrapError(f"moving slots failed: {short_error(first)}") from None

    def move_slots(self, source: NodeAddress, target: NodeAddress, slots: Sequence[int]) -> None:
        try:
            self._move_slots(source, target, list(slots))
        except _Stopped:
            raise
        except redis.RedisError as error:
            self._failed.set()
            raise BootstrapError(
                f"moving slots from {source.pod} to {target.pod} failed: {short_error(error)}; the slots moved so "
                "far stay moved, and the next update finishes the rest"
            ) from None
        except BaseException:
            self._failed.set()
            raise

    def _move_slots(self, source: NodeAddress, target: NodeAddress, slots: list[int]) -> None:
        if self._can_move_atomically(source, target, slots):
            self._check_budget()
            self.move_atomically(slots, source, target)
            return
        for i in range(0, len(slots), self.slots_per_round):
            self._check_budget()
            self.move_round(slots[i : i + self.slots_per_round], source, target)

    # -- atomic slot migration (Valkey 9) -----------------------------------------------

    def _can_move_atomically(self, source: NodeAddress, target: NodeAddress, slots: Sequence[int]) -> bool:
        if not self._atomic:
            return False
        if source not in self._atomic_sources:
            try:
                self.transport.client(source).execute_command("CLUSTER", "GETSLOTMIGRATIONS")
                self._atomic_sources[source] = True
            except redis.ResponseError:
                # Redis: unknown subcommand. The MIGRATE path works on every engine.
                self._atomic_sources[source] = False
        if not self._atomic_sources[source]:
            return False
        # Keys the target holds in slots it does not own are a leftover that only the
        # MIGRATE path judges key by key (never overwriting a different value).
        counts = pipeline(self.transport.client(target), [("CLUSTER", "COUNTKEYSINSLOT", s) for s in slots])
        return not any(counts)

    def move_atomically(self, slots: Sequence[int], source: NodeAddress, target: NodeAddress) -> None:
        """CLUSTER MIGRATESLOTS on the source, then its job followed until it ends. The
        engine moves the slots as one: on failure (or a cancel when time runs out) every
        one of them stays with the source."""
        src = self.transport.client(source)
        where = f"slots {format_ranges(slot_ranges(slots))} from {source.pod} to {target.pod}"
        keys = sum(pipeline(src, [("CLUSTER", "COUNTKEYSINSLOT", s) for s in slots]))
        known = {e.get("name", "") for e in self._slot_migrations(src)}
        ranges = [bound for pair in slot_ranges(slots) for bound in pair]
        try:
            src.execute_command("CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", *ranges, "NODE", self.ids[target])
        except redis.RedisError as error:
            raise BootstrapError(f"moving {where} failed: {short_error(error)}; nothing was moved") from None
        ends = time.monotonic() + (self.deadline.remaining() if self.deadline else ATOMIC_TIMEOUT_SECONDS)
        checked = time.monotonic()
        while True:
            try:
                job = atomic_job(self._slot_migrations(src), known)
            except redis.RedisError as error:
                # The engine moves the slots whole or not at all: if the source died, the slots
                # went to its replica with it, and the target drops what it had received.
                raise BootstrapError(
                    f"lost {source.pod} while moving {where} ({short_error(error)}); the engine keeps the slots "
                    "with the source's shard, and the next update moves them again"
                ) from None
            state = None if job is None else job.get("state")
            if state == ATOMIC_DONE:
                self._count(keys)
                return
            if state in ATOMIC_ENDED:
                raise BootstrapError(
                    f"moving {where} failed ({state}: {job.get('message') or 'no reason given'}); "
                    "the slots stay with the source and the next update tries again"
                )
            if time.monotonic() > ends:
                self._cancel_atomic(src)
                raise BootstrapError(
                    f"the time budget ran out while moving {where}; the migration was cancelled, the slots "
                    "stay with the source, and the next update continues"
                )
            if time.monotonic() > checked + ATOMIC_PEER_CHECK_SECONDS:
                checked = time.monotonic()
                if not self.transport.answers(target):
                    self._cancel_atomic(src)
                    raise BootstrapError(
                        f"{target.pod} stopped answering while moving {where}; the migration was cancelled, the "
                        "slots stay with the source, and the next update moves them once the target is back or "
                        "its replica has taken over"
                    )
            time.sleep(ATOMIC_POLL_SECONDS)

    @staticmethod
    def _cancel_atomic(client: Any) -> None:
        try:
            client.execute_command("CLUSTER", "CANCELSLOTMIGRATIONS", "ALL")
        except redis.RedisError:
            pass  # a source that is gone cancels nothing, and finishes nothing either

    @staticmethod
    def _slot_migrations(client: Any) -> list[dict[str, str]]:
        return [_as_text_map(entry) for entry in client.execute_command("CLUSTER", "GETSLOTMIGRATIONS") or []]

    def _check_budget(self) -> None:
        """A round is only started with time left for it and for the cluster to settle after,
        and while no other pair has failed (the run fails anyway; its error should not wait
        for the other moves); every round finished has its slots wholly moved, so stopping
        between rounds is safe."""
        if self._failed.is_set():
            raise _Stopped()
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
            replies = pipeline(src, [("CLUSTER", "SETSLOT", s, "NODE", dst_id) for s in slots], raise_on_error=False)
            refused = [r for r in replies if isinstance(r, redis.ResponseError)]
            # A master that gave its last slot away (the target's claim reached it by gossip
            # first) turns into the target's replica (cluster-allow-replica-migration), and a
            # replica refuses SETSLOT: its part is done.
            if refused and not (all("only with masters" in str(r) for r in refused) and self._is_replica(source)):
                raise refused[0]
        except redis.RedisError as error:
            raise BootstrapError(
                f"moving {where} failed: {short_error(error)}; the slots are left open and the next update resumes them"
            ) from None
        for other in self.masters:
            if other not in (source, target) and other not in self._silent:
                try:
                    pipeline(self.transport.client(other), [("CLUSTER", "SETSLOT", s, "NODE", dst_id) for s in slots])
                except (redis.ConnectionError, redis.TimeoutError):
                    # Gossip carries the new owner to a node we could not tell; telling a node
                    # that is down again each round would only hold the moves up.
                    self._silent.add(other)
                except redis.RedisError:
                    pass

    def _is_replica(self, node: NodeAddress) -> bool:
        (role,) = pipeline(self.transport.client(node), [("ROLE",)])
        return bool(role) and (role[0].decode() if isinstance(role[0], bytes) else str(role[0])) in ("slave", "replica")

    def _drain(self, slots: Sequence[int], source: NodeAddress, target: NodeAddress) -> None:
        """MIGRATEs keys until the source holds none in `slots`."""
        src = self.transport.client(source)
        pending = list(slots)
        timeouts: dict[int, int] = {}  # slot -> MIGRATE timeouts it has had
        while pending:
            listed = pipeline(src, [("CLUSTER", "GETKEYSINSLOT", s, self.batch) for s in pending])
            work = [(s, keys) for s, keys in zip(pending, listed) if keys]
            if not work:
                return
            # A slot that timed out goes alone, with a longer timeout; the others a few a call.
            calls = [[w] for w in work if w[0] in timeouts]
            plain = [w for w in work if w[0] not in timeouts]
            calls += [plain[i : i + MIGRATES_PER_CALL] for i in range(0, len(plain), MIGRATES_PER_CALL)]
            for call in calls:
                commands = [self._migrate_command(target, keys, timeouts.get(slot, 0)) for slot, keys in call]
                replies = pipeline(self._migrate_client(source), commands, raise_on_error=False)
                for (slot, keys), reply in zip(call, replies):
                    self._judge_migrate(slot, keys, reply, source, target, timeouts)
            pending = [s for s, _ in work]

    def _judge_migrate(
        self,
        slot: int,
        keys: Sequence[bytes],
        reply: Any,
        source: NodeAddress,
        target: NodeAddress,
        timeouts: dict[int, int],
    ) -> None:
        if not isinstance(reply, Exception):
            self._count(len(keys))
            return
        text = str(reply)
        if "BUSYKEY" in text:
            self._resolve_busy(slot, source, target, keys)
        elif "IOERR" in text:
            if timeouts.get(slot, 0) >= len(MIGRATE_RETRY_TIMEOUTS_MS) or not self.transport.answers(target):
                gone = "does not answer" if timeouts.get(slot, 0) < len(MIGRATE_RETRY_TIMEOUTS_MS) else "timed out"
                raise BootstrapError(
                    f"MIGRATE of slot {slot} from {source.pod} to {target.pod} failed: {target.pod} {gone}; the "
                    "slot is left open and the next update resumes it once the target is back or its replica "
                    "has taken over"
                )
            timeouts[slot] = timeouts.get(slot, 0) + 1
        elif "NOKEY" not in text:
            raise BootstrapError(
                f"MIGRATE of slot {slot} from {source.pod} to {target.pod} failed: {short_error(reply)}; "
                "the slot is left open and the next update resumes it"
            )

    def _migrate_client(self, source: NodeAddress) -> Any:
        """The source's client for MIGRATE calls: it waits as long as the longest call may
        block the source (a few MIGRATEs at their first timeout, or one at its longest)."""
        with self._count_lock:
            client = self._migrate_clients.get(source)
            if client is None:
                longest = max(MIGRATES_PER_CALL * MIGRATE_TIMEOUT_MS, *MIGRATE_RETRY_TIMEOUTS_MS) / 1000
                client = self._migrate_clients[source] = self.transport.migrate_client(source, longest + 4)
            return client

    def _migrate_command(
        self, target: NodeAddress, keys: Sequence[bytes], timeouts: int = 0, replace: bool = False
    ) -> tuple:
        timeout_ms = MIGRATE_RETRY_TIMEOUTS_MS[timeouts - 1] if timeouts else self.migrate_timeout_ms
        args: list[Any] = ["MIGRATE", target.host, target.port, "", 0, timeout_ms]
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
            pipeline(self._migrate_client(source), [self._migrate_command(target, same, replace=True)])
            self._count(len(same))

    def _count(self, n: int) -> None:
        with self._count_lock:
            self.moved_keys += n
