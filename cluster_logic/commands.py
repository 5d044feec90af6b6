"""Redis calls shared by the cluster logic: pipelines whose errors never quote a command
(a MIGRATE carries the password), and reply and error text made printable."""

from __future__ import annotations

from typing import Any, Sequence

import redis


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


def text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def short_error(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__
