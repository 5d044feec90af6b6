"""One time budget per run: every step of a create or an update draws on the same deadline,
and every wait polls through `poll_until`."""

from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

from cluster_logic.errors import BootstrapError

T = TypeVar("T")

# How often the cluster logic looks again at nodes it waits for.
POLL_SECONDS = 0.1


def now() -> float:
    """The clock every deadline reads (looked up at each call, so a test can simulate it)."""
    return time.monotonic()


def pause(seconds: float) -> None:
    """The pause between two looks (looked up at each call, like `now`)."""
    time.sleep(seconds)


class Deadline:
    """A point in time, and the budget it was set from (for the messages)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self._end = now() + self.seconds

    def remaining(self) -> float:
        return max(0.0, self._end - now())

    def expired(self) -> bool:
        return now() >= self._end

    def capped(self, seconds: float) -> Deadline:
        """A shorter deadline for one step: at most `seconds`, never past this one."""
        if seconds >= self.remaining():
            return self
        return Deadline(seconds)


def poll_until(
    observe: Callable[[], T],
    done: Callable[[T], bool],
    deadline: Deadline,
    *,
    waiting_for: Optional[Callable[[T], str]] = None,
    interval: float = POLL_SECONDS,
) -> T:
    """Observes until `done` holds, and returns that observation.

    When the deadline passes first: raises `BootstrapError` naming the budget and what was
    still awaited (`waiting_for` of the last observation), or, without `waiting_for`,
    returns the last observation for the caller to judge.
    """
    while True:
        seen = observe()
        if done(seen):
            return seen
        if deadline.expired():
            if waiting_for is None:
                return seen
            raise BootstrapError(f"timed out after {deadline.seconds:g}s waiting for {waiting_for(seen)}")
        pause(min(interval, deadline.remaining()))
