"""The TLS transport against the project's mock gateways over real sockets: resumption, and reading what the
gateway sent before a write failed."""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

import pytest
from OpenSSL._util import lib as _ssl

from apnsd.errors import GatewayError
from apnsd.gateway.credentials import client_context, load_identity
from apnsd.gateway.transport import TlsSessions, TlsTransport
from apnsd.wire import binary
from tests.support.wait import wait_for


def resumed(t: TlsTransport) -> bool:
    """Whether the transport's TLS session was resumed (OpenSSL's own flag; pyOpenSSL has no wrapper)."""
    return bool(_ssl.SSL_session_reused(t._conn._ssl))  # type: ignore[union-attr]


@pytest.mark.parametrize("protocol", ["binary", "http2"])
def test_a_reconnect_resumes_the_previous_tls_session(protocol, pki: Any, binary_mock, http2_mock):
    """The second connection of an app offers the first one's session and the gateway resumes it."""
    mock = binary_mock() if protocol == "binary" else http2_mock()
    ctx = client_context(load_identity(pki.client_pem), pki.ca_cert, [b"h2"] if protocol == "http2" else None)
    sessions = TlsSessions()
    alpn = b"h2" if protocol == "http2" else None
    first = TlsTransport(mock.host, mock.port, ctx, alpn=alpn, sessions=sessions)
    first.connect()
    if protocol == "http2":  # under TLS 1.3 the resumable session comes after the handshake: read up to SETTINGS
        wait_for(first.read, 10, "the gateway's SETTINGS")
    first.close()

    second = TlsTransport(mock.host, mock.port, ctx, alpn=alpn, sessions=sessions)
    second.connect()

    assert True is resumed(second)
    second.close()


def test_error_response_is_read_after_a_write_fails_on_the_reset(pki: Any, binary_mock):
    """A gateway that answers status 8 and closes at once makes the next write fail; read_final still
    returns the 6-byte answer it sent before."""
    mock = binary_mock(fail_prefixes=(("bad0", 8),), hard_close=True)
    ctx = client_context(load_identity(pki.client_pem), pki.ca_cert)
    t = TlsTransport(mock.host, mock.port, ctx)
    t.connect()
    bad = bytes.fromhex("bad0") + b"\x00" * 30
    t.send(binary.encode_frame(bad, b"{}", 7) + binary.encode_frame(b"\x01" * 32, b"{}", 8) * 2000)
    try:
        t.flush()
    except GatewayError:
        pass  # the reset may already have come: that is the case under test too
    wait_for(lambda: len(mock.record.received) == 1, 10, "the gateway to reject the first frame")

    def write_fails() -> bool:
        try:
            t.send(binary.encode_frame(b"\x02" * 32, b"{}", 9) * 100)
            t.flush()
        except GatewayError:
            return True
        return False

    wait_for(write_fails, 10, "a write to fail on the closed connection")
    assert binary.encode_error_response(8, 7) == t.read_final(1.0)


def test_binary_connections_stop_at_tls_1_2_and_still_resume(pki: Any) -> None:
    """Against a gateway that offers TLS 1.3, an ALPN-less (binary) connection speaks TLS 1.2, resumes its session
    on the reconnect, and an HTTP/2 context from the same code still gets TLS 1.3."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve(count: int) -> None:
        for _ in range(count):
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(10)
                try:
                    tls.recv(1)  # until the client closes
                except (OSError, ssl.SSLError):
                    pass

    server = threading.Thread(target=serve, args=(3,), daemon=True)
    server.start()
    identity = load_identity(pki.client_pem)
    binary_ctx = client_context(identity, pki.ca_cert)
    sessions = TlsSessions()
    versions, resumes = [], []
    for _ in range(2):
        t = TlsTransport("127.0.0.1", port, binary_ctx, sessions=sessions)
        t.connect()
        versions.append(t._conn.get_protocol_version_name())  # type: ignore[union-attr]
        resumes.append(resumed(t))
        t.close()
    h2 = TlsTransport("127.0.0.1", port, client_context(identity, pki.ca_cert, [b"h2"]))
    h2.connect()
    versions.append(h2._conn.get_protocol_version_name())  # type: ignore[union-attr]
    h2.close()
    server.join(10)
    listener.close()

    assert ["TLSv1.2", "TLSv1.2", "TLSv1.3"] == versions
    assert [False, True] == resumes
