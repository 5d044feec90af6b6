"""The writer that records every acknowledged write, and the bulk loads and checks around it.

`Writer` is the one steady writer of the tests and the benchmarks: a thread writing a new
key per attempt through a redis-py cluster client and keeping a record of every attempt, so
that a test can wait for writes (`wait_acknowledged`), then ask what was acknowledged, what
failed and for how long, and check that nothing acknowledged was lost (`lost_keys`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry


@dataclass
class Attempt:
    key: str
    value: str
    slot: int
    started: float
    ended: float
    ok: bool  # the SET was acknowledged
    durable: bool = False  # and WAIT 1 on the same connection returned >= 1
    error: str = ""


class Writer:
    """A steady writer: one thread, one new key per attempt (`<prefix>:<n>` = `n`), and a
    record of every attempt.

    mode "plain": `RedisCluster.set`; a write counts as failed only when redis-py finally
    raised (after its own retries and redirects).

    mode "wait": SET and `WAIT 1 <wait_ms>` pipelined on one connection to the key's
    master (as the cluster client's slot map names it). WAIT counts the replicas that
    acknowledged this connection's writes, so a write counts as durable only when the SET
    succeeded and that WAIT, on the same connection, returned >= 1. A MOVED/ASK/CLUSTERDOWN
    or a connection error is a failed attempt; the slot map is refreshed and the writer
    goes on with the next key.

    `slots` limits the keys to those slots (to aim at one master); `pace` is the pause
    between attempts (at least 10 ms after a failure).

    `retry_ask_to_slotless_master`: redis-py 8.1 cannot follow an ASK redirect to a master
    that holds no slot yet (it is absent from CLUSTER SLOTS, so the client has no node
    object for it: redis-py issue #4015, fix pending in PR #4214) and raises AttributeError.
    With this set, the writer counts those apart (`asks_to_slotless_master`), refreshes its
    slot map and tries the same key again, as an application would have to; otherwise such
    an attempt is a failure like any other.

    The writer closes `client` when it stops.
    """

    def __init__(
        self,
        client: RedisCluster,
        prefix: str,
        mode: str = "plain",
        pace: float = 0.002,
        wait_ms: int = 1000,
        slots: Optional[Iterable[int]] = None,
        retry_ask_to_slotless_master: bool = False,
    ) -> None:
        if mode not in ("plain", "wait"):
            raise ValueError(mode)
        self.client = client
        self.prefix = prefix
        self.mode = mode
        self.pace = pace
        self.wait_ms = wait_ms
        self.slots = frozenset(slots) if slots is not None else None
        self.retry_ask_to_slotless_master = retry_ask_to_slotless_master
        self.password = client.nodes_manager.connection_kwargs.get("password")
        # The node clients of mode "wait" speak TLS as the cluster client does.
        self.tls_options = {k: v for k, v in client.nodes_manager.connection_kwargs.items() if k.startswith("ssl")}
        self.attempts: list[Attempt] = []
        self.asks_to_slotless_master = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{prefix}", daemon=True)
        self._node_clients: dict[tuple[str, int], redis.Redis] = {}
        self._crash: Optional[BaseException] = None

    # -- running --------------------------------------------------------------------------

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> Writer:
        self._stop.set()
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            raise RuntimeError(f"writer {self.prefix} did not stop")
        for client in self._node_clients.values():
            client.close()
        self.client.close()
        if self._crash is not None:
            raise RuntimeError(f"writer {self.prefix} crashed: {self._crash!r}") from self._crash
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Writer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.running:
            self.stop()

    def _keys(self) -> Iterator[tuple[str, str, int]]:
        n = 0
        while True:
            n += 1
            key = f"{self.prefix}:{n}"
            slot = key_slot(key.encode())
            if self.slots is None or slot in self.slots:
                yield key, str(n), slot

    def _run(self) -> None:
        try:
            for key, value, slot in self._keys():
                attempt = None
                while attempt is None:
                    if self._stop.is_set():
                        return
                    started = time.monotonic()
                    if self.mode == "plain":
                        attempt = self._plain(key, value, slot, started)
                    else:
                        attempt = self._durable(key, value, slot, started)
                    if attempt is None:
                        # An ASK to a master without slots: the same key again, on a fresh slot map.
                        self.asks_to_slotless_master += 1
                        time.sleep(0.01)
                        self._refresh()
                self.attempts.append(attempt)
                time.sleep(self.pace if attempt.ok else max(self.pace, 0.01))
        except BaseException as error:  # noqa: BLE001 - surfaced by stop()
            self._crash = error

    def _plain(self, key: str, value: str, slot: int, started: float) -> Optional[Attempt]:
        try:
            ok = bool(self.client.set(key, value))
            return Attempt(key, value, slot, started, time.monotonic(), ok, error="" if ok else "SET returned false")
        except Exception as error:  # noqa: BLE001 - every failure is recorded
            if isinstance(error, AttributeError) and self.retry_ask_to_slotless_master:
                return None
            return Attempt(key, value, slot, started, time.monotonic(), False, error=_describe(error))

    def _durable(self, key: str, value: str, slot: int, started: float) -> Attempt:
        try:
            node = self.client.get_node_from_key(key)
            client = self._node_client(node.host, node.port)
            pipe = client.pipeline(transaction=False)
            pipe.set(key, value)
            pipe.execute_command("WAIT", 1, self.wait_ms)
            set_reply, wait_reply = pipe.execute(raise_on_error=False)
        except Exception as error:  # noqa: BLE001 - every failure is recorded
            self._refresh()
            return Attempt(key, value, slot, started, time.monotonic(), False, error=_describe(error))
        ended = time.monotonic()
        if isinstance(set_reply, Exception) or set_reply is not True:
            self._refresh()
            return Attempt(key, value, slot, started, ended, False, error=_describe(set_reply))
        durable = isinstance(wait_reply, int) and not isinstance(wait_reply, bool) and wait_reply >= 1
        error = "" if durable else f"WAIT 1 got {wait_reply!r}"
        return Attempt(key, value, slot, started, ended, True, durable=durable, error=error)

    def _node_client(self, host: str, port: int) -> redis.Redis:
        found = self._node_clients.get((host, port))
        if found is None:
            found = self._node_clients[(host, port)] = redis.Redis(
                host=host,
                port=port,
                password=self.password,
                decode_responses=True,
                socket_timeout=max(2.0, self.wait_ms / 1000 + 1),
                socket_connect_timeout=1.0,
                retry=Retry(NoBackoff(), 0),
                **self.tls_options,
            )
        return found

    def _refresh(self) -> None:
        try:
            self.client.nodes_manager.initialize()
        except Exception:  # noqa: BLE001 - nobody answers right now; the next attempt retries
            pass

    # -- waits ----------------------------------------------------------------------------

    def wait_acknowledged(
        self,
        count: int,
        after: float = 0.0,
        slots: Optional[Iterable[int]] = None,
        durable: bool = False,
        timeout: float = 60.0,
    ) -> list[Attempt]:
        """Blocks until `count` writes that started after `after` (to `slots`) were
        acknowledged (WAIT-acknowledged with `durable`); returns them."""
        wanted = None if slots is None else set(slots)
        deadline = time.monotonic() + timeout
        while True:
            found = [
                a
                for a in list(self.attempts)
                if (a.durable if durable else a.ok) and a.started >= after and (wanted is None or a.slot in wanted)
            ]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise AssertionError(
                    f"writer {self.prefix}: {len(found)} of {count} {'durable' if durable else 'acknowledged'} "
                    f"writes after {timeout:.0f}s; last errors: "
                    + "; ".join(sorted({a.error for a in self.failures()[-20:]}))
                )
            time.sleep(0.02)

    def wait_for_success_after(self, moment: float, slots: Optional[Iterable[int]], timeout: float) -> Attempt:
        """Blocks until a write that started after `moment` (to `slots`) succeeded; returns
        the first one."""
        return self.wait_acknowledged(1, after=moment, slots=slots, timeout=timeout)[0]

    # -- results --------------------------------------------------------------------------

    def acknowledged(self) -> dict[str, str]:
        return {a.key: a.value for a in self.attempts if a.ok}

    def durable(self) -> dict[str, str]:
        return {a.key: a.value for a in self.attempts if a.durable}

    def failures(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.ok]

    def successes_after(self, moment: float, slots: Optional[Iterable[int]] = None) -> list[Attempt]:
        wanted = None if slots is None else set(slots)
        return [a for a in self.attempts if a.ok and a.started >= moment and (wanted is None or a.slot in wanted)]

    def longest_outage(self, slots: Optional[Iterable[int]] = None) -> float:
        """The longest stretch of failed writes (to `slots`): from the start of the first
        failed attempt of a run to the end of the next successful one (to the end of the
        last attempt when none succeeded after it)."""
        wanted = None if slots is None else set(slots)
        attempts = sorted((a for a in self.attempts if wanted is None or a.slot in wanted), key=lambda a: a.started)
        longest = 0.0
        run_started: Optional[float] = None
        for attempt in attempts:
            if not attempt.ok:
                if run_started is None:
                    run_started = attempt.started
            elif run_started is not None:
                longest = max(longest, attempt.ended - run_started)
                run_started = None
        if run_started is not None and attempts:
            longest = max(longest, attempts[-1].ended - run_started)
        return longest

    def slowest_success(self, slots: Optional[Iterable[int]] = None) -> float:
        wanted = None if slots is None else set(slots)
        times = [a.ended - a.started for a in self.attempts if a.ok and (wanted is None or a.slot in wanted)]
        return max(times, default=0.0)

    def summary(self) -> str:
        failures = self.failures()
        errors = sorted({a.error for a in failures})
        text = f"{self.prefix}: {len(self.attempts)} attempts, {len(self.acknowledged())} acknowledged"
        if self.mode == "wait":
            text += f", {len(self.durable())} WAIT-acknowledged"
        text += f", {len(failures)} failed"
        if self.asks_to_slotless_master:
            text += f", {self.asks_to_slotless_master} ASK-to-slotless-master retries"
        if errors:
            text += f" ({'; '.join(errors[:5])})"
        return text


def _describe(error: object) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:120] if text else ''}"


def write_keys(client: RedisCluster, prefix: str, count: int) -> dict[str, str]:
    """Writes `prefix:0` .. `prefix:<count - 1>` (value: the number) through a cluster
    client, in pipelines of 500; returns them, every one acknowledged."""
    written = {}
    for start in range(0, count, 500):
        pipe = client.pipeline()
        chunk = {f"{prefix}:{n}": str(n) for n in range(start, min(count, start + 500))}
        for key, value in chunk.items():
            pipe.set(key, value)
        replies = pipe.execute()
        assert all(r is True for r in replies), replies
        written.update(chunk)
    return written


def lost_keys(client: RedisCluster, expected: Mapping[str, str]) -> list[str]:
    """Keys of `expected` that are missing or hold another value (`client` decodes replies)."""
    keys = list(expected)
    lost = []
    for start in range(0, len(keys), 2000):
        chunk = keys[start : start + 2000]
        # A cluster pipeline sends one batch per node.
        pipe = client.pipeline()
        for key in chunk:
            pipe.get(key)
        values = pipe.execute()
        lost += [k for k, v in zip(chunk, values) if v != expected[k]]
    return lost
