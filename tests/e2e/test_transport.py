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


class Tls13OnlyGateway:
    """A TLS server that refuses anything older than TLS 1.3 and closes each connection once its handshake is done
    (as a feedback service with nothing to report does), counting the connections it accepted."""

    def __init__(self, pki: Any) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.server_cert, pki.server_key)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # so that the serving thread sees close() promptly
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.settimeout(10)
            try:
                self.ctx.wrap_socket(conn, server_side=True).close()
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.listener.close()


def test_a_binary_gateway_that_refuses_tls_1_2_is_dialled_again_with_tls_1_3_once(pki: Any) -> None:
    """A binary transport refused for its TLS version redials at once with its newer context (one failed TCP
    connection in all), and the session's later connections start with that context."""
    gateway = Tls13OnlyGateway(pki)
    identity = load_identity(pki.client_pem)
    sessions = TlsSessions()
    versions = []
    try:
        for _ in range(2):
            t = TlsTransport(
                "127.0.0.1",
                gateway.port,
                client_context(identity, pki.ca_cert),
                sessions=sessions,
                newer_context=lambda: client_context(identity, pki.ca_cert, tls13=True),
            )
            t.connect()
            versions.append(t._conn.get_protocol_version_name())  # type: ignore[union-attr]
            t.close()
        wait_for(lambda: gateway.accepted == 3, 10, "the gateway to accept three connections")
    finally:
        gateway.close()

    assert ["TLSv1.3", "TLSv1.3"] == versions
    assert 3 == gateway.accepted


def test_without_a_newer_context_the_version_refusal_is_the_error(pki: Any) -> None:
    """A transport with no newer context (TLS 1.2 only) reports the gateway's refusal as the handshake error."""
    gateway = Tls13OnlyGateway(pki)
    try:
        t = TlsTransport("127.0.0.1", gateway.port, client_context(load_identity(pki.client_pem), pki.ca_cert))
        with pytest.raises(GatewayError, match="protocol version"):
            t.connect()
    finally:
        gateway.close()


def test_the_daemon_and_feedback_poller_reach_a_tls_1_3_only_binary_gateway(pki: Any) -> None:
    """The transports the daemon's binary session and the feedback poller make fall back to TLS 1.3."""
    from apnsd.config import AppConfig
    from apnsd.gateway.apps import build_session, load_credentials
    from apnsd.gateway.feedback import poll_feedback

    gateway = Tls13OnlyGateway(pki)
    try:
        app = AppConfig(
            protocol="binary",
            host="127.0.0.1",
            port=gateway.port,
            feedback_port=gateway.port,
            cert=pki.client_pem,
            ca_file=pki.ca_cert,
        )
        creds = load_credentials("default", app)
        t = build_session("default", app, creds).make_transport()
        t.connect()
        version = t._conn.get_protocol_version_name()  # type: ignore[union-attr]
        t.close()
        tuples = poll_feedback(app, creds)  # connects, reads until the gateway closes: no tuples
    finally:
        gateway.close()

    assert ("TLSv1.3", []) == (version, tuples)


def test_a_resumed_handshake_skips_the_name_check_only_for_the_host_it_was_checked_for(pki: Any, binary_mock):
    """The certificate's name is checked on a full handshake; a resumed one to the host whose certificate passed
    skips it, and a resumed one whose session store names another host checks it again."""
    mock = binary_mock()
    ctx = client_context(load_identity(pki.client_pem), pki.ca_cert)
    sessions = TlsSessions()
    checked: list[str] = []

    def verify(cert: Any, host: str) -> bool:
        checked.append(host)
        return True

    def connect() -> bool:
        t = TlsTransport(mock.host, mock.port, ctx, verify_host=verify, sessions=sessions)
        t.connect()
        was_resumed = resumed(t)
        t.close()
        return was_resumed

    first = connect()
    sessions.verified = (mock.host, b"not the certificate")  # so that only the resumption can spare the check
    second = connect()
    sessions.verified = ("another.example", sessions.verified[1])
    third = connect()

    assert (False, True, True) == (first, second, third)
    assert [mock.host, mock.host] == checked
