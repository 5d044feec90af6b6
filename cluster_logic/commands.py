"""Redis calls shared by the cluster logic: pipelines whose errors never quote a command
(a MIGRATE carries the password), commands for a node the caller is done with afterwards,
and reply and error text made printable."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import redis

if TYPE_CHECKING:
    from cluster_logic.model import NodeAddress
    from cluster_logic.transports.base import NodeTransport


def pipeline(client: redis.Redis, commands: Sequence[tuple], raise_on_error: bool = True) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    # redis-py's own raise_on_error writes the failing command into the message, and a
    # MIGRATE command carries the password: raise the server's reply alone instead.
    replies = pipe.execute(raise_on_error=False)
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
    return replies


def send_once(
    transport: NodeTransport, node: NodeAddress, commands: Sequence[tuple], raise_on_error: bool = True
) -> list[Any]:
    """`commands` to a node the caller does not come back to soon (one step of a round over
    every node): its connection is let go at once, so that a round over hundreds of pods
    never holds a connection (a port-forward each) to all of them."""
    try:
        return pipeline(transport.client(node), commands, raise_on_error)
    finally:
        transport.release_idle(node)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def first_line(message: Any) -> str:
    lines = str(message or "").strip().splitlines()
    return lines[0][:200] if lines else ""


def short_error(error: BaseException) -> str:
    return first_line(error) or type(error).__name__
