"""The partition checker: every write acknowledged around a fault, plain and WAIT-acknowledged, and which of them are gone once it healed.

`LossChecker` runs two `Writer`s (testkit.writers) side by side through one fault: a plain
one (SET, acknowledged by the master alone) and a durable one (SET then `WAIT 1` on the same
connection, counted only when a replica acknowledged it), both aimed at the same slots when
given (the shard a test cuts off). The test marks the moments that matter (`mark("cut")`,
`mark("heal")`), and after the heal `report()` reads every acknowledged key back through a
cluster client and says which are missing or changed, when they were acknowledged relative to
the marks, and how long the isolated side went on acknowledging.

`MajorityProbe` answers the other question of a partition: when did the majority side take
writes for the cut-off shard again. It sends a SET for a key of those slots straight to each
given node (the shard's replicas on the majority side) every few milliseconds, without
following redirects, and records the first success per node and every reply it got
(`MOVED` until a replica is promoted, `NOREPLICAS` while a `bounded` master has no replica in
sync, `CLUSTERDOWN` while the cluster has no majority).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from testkit.writers import Attempt, Writer, lost_keys


@dataclass
class Losses:
    """What `LossChecker.report` found; times in seconds after the `cut` mark."""

    acknowledged: int  # plain writes acknowledged
    acknowledged_lost: list[str]  # ... missing or changed after the heal
    durable: int  # WAIT-acknowledged writes
    durable_lost: list[str]
    # Plain writes acknowledged between the cut and the heal, and how many of those were lost.
    acknowledged_during_cut: int
    lost_during_cut: int
    # When the last plain write that was acknowledged after the cut, then lost, was
    # acknowledged: how long the cut-off side went on acknowledging what it could not keep
    # (None: nothing acknowledged after the cut was lost).
    window: Optional[float]
    # When the last plain write before the first refused one after the cut was acknowledged:
    # how long the cut-off side went on acknowledging, kept or not (None: no write was refused
    # between the cut and the heal, so it acknowledged all along).
    acknowledging: Optional[float]
    failures: int  # attempts that failed, plain and durable
    errors: dict[str, int]  # the kinds of failure seen, and how often

    def summary(self) -> str:
        window = "-" if self.window is None else f"{self.window:.2f} s"
        acknowledging = "none" if self.acknowledging is None else f"{self.acknowledging:.2f} s"
        return (
            f"plain: {len(self.acknowledged_lost):,} of {self.acknowledged:,} acknowledged lost "
            f"({self.lost_during_cut:,} of {self.acknowledged_during_cut:,} acknowledged during the cut; the last "
            f"lost one acknowledged {window} after the cut; acknowledging until {acknowledging} after it); WAIT: {len(self.durable_lost):,} of {self.durable:,} "
            f"lost; {self.failures:,} attempts failed"
        )


class LossChecker:
    """A plain and a `WAIT 1` writer through one fault, and what of theirs the heal kept."""

    def __init__(
        self,
        make_client: Callable[[], RedisCluster],
        prefix: str = "checked",
        slots: Optional[Iterable[int]] = None,
        pace: float = 0.002,
        wait_ms: int = 500,
    ) -> None:
        slots = None if slots is None else frozenset(slots)
        self.make_client = make_client
        self.slots = slots
        self.plain = Writer(make_client(), f"{prefix}-plain", slots=slots, pace=pace)
        self.durable = Writer(make_client(), f"{prefix}-wait", mode="wait", slots=slots, pace=pace, wait_ms=wait_ms)
        self.marks: dict[str, float] = {}

    def start(self, warm_up: int = 50, timeout: float = 60.0) -> LossChecker:
        """Starts both writers and returns once each has `warm_up` acknowledged writes (the
        durable one WAIT-acknowledged)."""
        self.plain.start()
        self.durable.start()
        self.plain.wait_acknowledged(warm_up, timeout=timeout)
        self.durable.wait_acknowledged(warm_up, durable=True, timeout=timeout)
        return self

    def mark(self, name: str) -> float:
        """Records a moment (`cut`, `heal`, ...): now, on the writers' clock."""
        self.marks[name] = time.monotonic()
        return self.marks[name]

    def stop(self) -> None:
        for writer in (self.plain, self.durable):
            if writer.running:
                writer.stop()

    def __enter__(self) -> LossChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def report(self) -> Losses:
        """Stops the writers and reads every acknowledged key back (after the heal)."""
        self.stop()
        client = self.make_client()
        try:
            plain_lost = lost_keys(client, self.plain.acknowledged())
            durable_lost = lost_keys(client, self.durable.durable())
        finally:
            client.close()
        cut = self.marks.get("cut")
        heal = self.marks.get("heal", float("inf"))
        lost = set(plain_lost)
        during: list[Attempt] = []
        if cut is not None:
            during = [a for a in self.plain.attempts if a.ok and cut <= a.ended <= heal]
        lost_during = [a for a in during if a.key in lost]
        acknowledging = None
        if cut is not None:
            after = sorted(
                (a for a in self.plain.attempts if a.started >= cut and a.ended <= heal), key=lambda a: a.started
            )
            refused = next((a for a in after if not a.ok), None)
            if refused is not None:
                acknowledging = max((a.ended - cut for a in after if a.ok and a.ended <= refused.started), default=0.0)
        errors: dict[str, int] = {}
        for attempt in self.plain.failures() + self.durable.failures():
            kind = error_kind(attempt.error)
            errors[kind] = errors.get(kind, 0) + 1
        return Losses(
            acknowledged=len(self.plain.acknowledged()),
            acknowledged_lost=plain_lost,
            durable=len(self.durable.durable()),
            durable_lost=durable_lost,
            acknowledged_during_cut=len(during),
            lost_during_cut=len(lost_during),
            window=max((a.ended - cut for a in lost_during), default=None) if cut is not None else None,
            acknowledging=acknowledging,
            failures=sum(errors.values()),
            errors=errors,
        )


def error_kind(error: str) -> str:
    """A failed attempt's error without what varies (slots, addresses, numbers): its type and
    the engine's error code (`ResponseError: NOREPLICAS`, `ConnectionError`)."""
    kind, _, message = error.partition(":")
    words = message.split()
    if words and words[0].isupper() and words[0].isalpha():
        return f"{kind}: {words[0]}"
    return kind


@dataclass
class ProbeRecord:
    first_success: Optional[float] = None  # monotonic
    replies: dict[str, int] = field(default_factory=dict)  # reply kind -> count


class MajorityProbe:
    """SETs for a key of `slot` straight to each of `nodes` (host, port) every `pace`
    seconds, redirects not followed, until stopped: when did the majority side accept a
    write for the cut-off shard."""

    def __init__(self, nodes: Iterable[tuple[str, int]], slot: int, password: str, pace: float = 0.01) -> None:
        self.nodes = tuple(nodes)
        self.key = next(f"probe:{n}" for n in range(10**6) if key_slot(f"probe:{n}".encode()) == slot)
        self.password = password
        self.pace = pace
        self.records: dict[tuple[str, int], ProbeRecord] = {node: ProbeRecord() for node in self.nodes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="majority-probe", daemon=True)

    def start(self) -> MajorityProbe:
        self._thread.start()
        return self

    def stop(self) -> MajorityProbe:
        self._stop.set()
        self._thread.join(timeout=30)
        return self

    def __enter__(self) -> MajorityProbe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        clients = {
            node: redis.Redis(
                host=node[0],
                port=node[1],
                password=self.password,
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
                retry=Retry(NoBackoff(), 0),
            )
            for node in self.nodes
        }
        try:
            n = 0
            while not self._stop.is_set():
                for node, client in clients.items():
                    n += 1
                    record = self.records[node]
                    try:
                        client.set(self.key, str(n))
                        kind = "OK"
                        if record.first_success is None:
                            record.first_success = time.monotonic()
                    except redis.RedisError as error:
                        # MOVED, ASK and CLUSTERDOWN have types of their own; others by their code.
                        kind = error_kind(f"{type(error).__name__}: {error}")
                    record.replies[kind] = record.replies.get(kind, 0) + 1
                time.sleep(self.pace)
        finally:
            for client in clients.values():
                client.close()

    def first_success(self) -> Optional[float]:
        """The first moment any of the nodes accepted the write (monotonic), or None."""
        found = [r.first_success for r in self.records.values() if r.first_success is not None]
        return min(found, default=None)

    def replies(self) -> Mapping[str, int]:
        total: dict[str, int] = {}
        for record in self.records.values():
            for kind, count in record.replies.items():
                total[kind] = total.get(kind, 0) + count
        return total
