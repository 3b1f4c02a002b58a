"""Pytest plugin: a session-wide development PKI and a one-connection TLS server for handshake tests."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from OpenSSL import SSL

from apnsd.gateway.credentials import load_public_key, server_context
from apnsd.testing.devpki import BUNDLE_ID, DevPki, make_dev_pki

H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """A fresh development PKI shared by the whole test session."""
    return make_dev_pki(str(tmp_path_factory.mktemp("pki")))


@dataclass
class OneShotServer:
    """A TLS server on 127.0.0.1 that takes one connection, handshakes and then answers like a gateway would."""

    port: int
    handshake_error: list[str] = field(default_factory=list)
    client_certs: list[str] = field(default_factory=list)


def _serve(listener: socket.socket, ctx: SSL.Context, h2: bool, server: OneShotServer) -> None:
    with listener:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
    sock.settimeout(None)  # blocking: the client always closes its end, which ends every read here
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with sock:
        conn = SSL.Connection(ctx, sock)
        conn.set_accept_state()
        try:
            conn.do_handshake()
        except SSL.Error as exc:
            server.handshake_error.append(str(exc))
            return
        peer = conn.get_peer_certificate(as_cryptography=True)
        server.client_certs.append(peer.subject.rfc4514_string() if peer else "")
        try:
            if h2:
                conn.recv(33)  # client preface + its SETTINGS
                conn.sendall(H2_SETTINGS)
            while conn.recv(4096):
                pass
        except SSL.Error:
            pass  # the client hangs up without close_notify


@pytest.fixture
def tls_server(pki: DevPki) -> Iterator[Callable[..., OneShotServer]]:
    """Factory starting one-connection TLS servers with the PKI's gateway certificate; joined at teardown."""
    threads: list[threading.Thread] = []

    def start(client_ca: str | None = None, alpn: list[bytes] | None = None, h2: bool = False) -> OneShotServer:
        ctx = server_context(pki.server_cert, pki.server_key, client_ca, alpn)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)
        server = OneShotServer(port=listener.getsockname()[1])
        threads.append(threading.Thread(target=_serve, args=(listener, ctx, h2, server), daemon=True))
        threads[-1].start()
        return server

    yield start
    for thread in threads:
        thread.join(timeout=15)


def token_auth_env(pki: DevPki, **env: str) -> dict[str, str]:
    """make_config overrides for app "default" under token (.p8) auth with the test key, topic BUNDLE_ID."""
    return {
        "APP_DEFAULT_CERT": "",
        "APP_DEFAULT_TOKEN_KEY": pki.p8_key,
        "APP_DEFAULT_KEY_ID": pki.key_id,
        "APP_DEFAULT_TEAM_ID": pki.team_id,
        "APP_DEFAULT_TOPIC": BUNDLE_ID,
        **env,
    }


def token_mock_options(pki: DevPki) -> dict[str, object]:
    """http2_mock options for a gateway that verifies the test key's provider tokens instead of client certificates."""
    return {
        "client_ca": False,
        "jwt_public_key": load_public_key(pki.p8_public),
        "jwt_key_id": pki.key_id,
        "jwt_team_id": pki.team_id,
    }
