"""What every transport's clients share: a retry policy that lets the cluster logic judge a
dead node at once instead of redis-py's minute of backoffs."""

from __future__ import annotations

import socket
import time

import redis

from cluster_logic.model import NodeAddress
from cluster_logic.transports.base import CLIENT_RETRY
from cluster_logic.transports.direct import DirectTransport


def _refusing_address() -> tuple[str, int]:
    # A port that was just free: nothing listens there, so a connect is refused at once.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()


def test_a_client_tries_a_dead_node_twice_without_backoff() -> None:
    host, port = _refusing_address()
    with DirectTransport([NodeAddress("redis-cluster-0", host, port)], "password") as transport:
        client = transport.client(transport.nodes[0])
        assert client.connection_pool.connection_kwargs["retry"] is CLIENT_RETRY
        attempts = []
        connect = client.connection_pool.connection_class._connect

        def counted(connection):
            attempts.append(time.monotonic())
            return connect(connection)

        client.connection_pool.connection_class._connect = counted
        try:
            try:
                client.ping()
            except redis.ConnectionError:
                pass
        finally:
            client.connection_pool.connection_class._connect = connect
    assert len(attempts) == 2, attempts
