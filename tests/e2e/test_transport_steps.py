"""The TLS transport's step-wise connect against the mock gateway over real sockets: driven by a selector, resumed
after the gateway closed without a TLS goodbye, failing with a clear cause, and checking the gateway's name."""

from __future__ import annotations

import select
from typing import Any

import pytest
from OpenSSL._util import lib as _ssl

from apnsd.errors import GatewayError, GatewayRejected
from apnsd.gateway.credentials import client_context, load_identity
from apnsd.gateway.transport import TlsSessions, TlsTransport
from apnsd.testing.redis_server import free_port
from apnsd.wire import binary
from tests.support.wait import wait_for


def resumed(t: TlsTransport) -> bool:
    """Whether the transport's TLS session was resumed (OpenSSL's own flag; pyOpenSSL has no wrapper)."""
    return bool(_ssl.SSL_session_reused(t._conn._ssl))  # type: ignore[union-attr]


def connect_in_steps(t: TlsTransport) -> int:
    """start() and advance() until established, waiting on the socket in between; returns the steps taken."""
    t.start()
    steps = 1
    while not t.advance():
        fd = t.fileno()
        select.select([fd], [fd] if t.wants_write else [], [], 5.0)
        steps += 1
    return steps


def test_a_step_wise_connect_completes_over_several_steps_without_blocking(pki: Any, binary_mock: Any) -> None:
    """The handshake needs the gateway's answers: advance() returns False until they came, then True."""
    mock = binary_mock()
    t = TlsTransport(mock.host, mock.port, client_context(load_identity(pki.client_pem), pki.ca_cert))

    steps = connect_in_steps(t)

    assert steps >= 2 and not t.closed
    t.close()


def test_a_session_the_gateway_closed_after_an_error_response_is_resumed(pki: Any, binary_mock: Any) -> None:
    """An error response and an immediate close (no TLS goodbye) do not spoil the session for the reconnect."""
    mock = binary_mock(fail_prefixes=(("bad0", 8),), hard_close=True)
    ctx = client_context(load_identity(pki.client_pem), pki.ca_cert)
    sessions = TlsSessions()
    first = TlsTransport(mock.host, mock.port, ctx, sessions=sessions)
    connect_in_steps(first)
    first.send(binary.encode_frame(bytes.fromhex("bad0") + b"\x00" * 30, b"{}", 1))
    first.flush()
    answer = bytearray()

    def error_response_read() -> bool:
        try:
            answer.extend(first.read())
        except GatewayError:
            return True
        return first.closed

    wait_for(error_response_read, 10, "the error response and the close")
    first.close()
    second = TlsTransport(mock.host, mock.port, ctx, sessions=sessions)
    connect_in_steps(second)

    assert binary.encode_error_response(8, 1) == bytes(answer)
    assert True is resumed(second)
    second.close()


def test_a_refused_port_fails_with_the_cause() -> None:
    """Nothing listening: the step-wise connect raises GatewayError naming the address and the refusal."""
    port = free_port()
    t = TlsTransport("127.0.0.1", port, client_context(None))

    with pytest.raises(GatewayError) as err:
        connect_in_steps(t)

    assert f"cannot reach 127.0.0.1:{port}: Connection refused (outgoing port {port} blocked?)" == str(err.value)


def test_a_certificate_not_valid_for_the_host_is_refused_every_time(pki: Any, binary_mock: Any) -> None:
    """The name check runs on each connect until a certificate passed it: a refused one is never remembered."""
    mock = binary_mock()
    ctx = client_context(load_identity(pki.client_pem), pki.ca_cert)
    sessions = TlsSessions()
    for _ in range(2):
        t = TlsTransport(mock.host, mock.port, ctx, verify_host=lambda cert, host: False, sessions=sessions)
        with pytest.raises(GatewayRejected) as err:
            connect_in_steps(t)
        assert f"{mock.host}:{mock.port} presented a certificate that is not valid for {mock.host}" == str(err.value)
