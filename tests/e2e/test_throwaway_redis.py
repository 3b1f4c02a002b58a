"""The throwaway redis-server behind the demo and the tests: it is up only once its own process answers."""

from __future__ import annotations

import pytest

from apnsd.errors import QueueError
from apnsd.testing.redis_server import RedisServer, free_port, server_pid


def test_free_port_never_hands_out_the_same_port_twice() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_a_server_whose_port_is_taken_moves_to_a_fresh_port_instead_of_trusting_the_other_one() -> None:
    with RedisServer() as first:
        second = RedisServer()
        second.port = first.port  # as if the kernel had handed the same port out twice
        try:
            second.start()
            assert second.port != first.port
            assert second.proc is not None and server_pid("127.0.0.1", second.port) == second.proc.pid
        finally:
            second.stop()


def test_a_server_asked_for_a_taken_port_says_so() -> None:
    with RedisServer() as first:
        with pytest.raises(QueueError, match=f"port {first.port} is taken"):
            RedisServer(port=first.port).start()


def test_server_pid_is_none_where_nothing_listens() -> None:
    assert server_pid("127.0.0.1", free_port()) is None
