"""The TLS transport reading many small TLS records over a real socket, through the direct SSL_read path and
through pyOpenSSL's recv() fallback alike."""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

import pytest

from apnsd.gateway import transport
from apnsd.gateway.credentials import client_context, load_identity
from apnsd.gateway.transport import TlsTransport
from tests.support.wait import wait_for

RECORDS = [b"%05d" % i + b"r" * (i % 200) for i in range(3000)]  # 5 to 204 bytes each, one record apiece


def serve_records(pki: Any, listener: socket.socket) -> None:
    """Accept one client, send each of RECORDS in a TLS record of its own, then end the TLS session."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.load_verify_locations(pki.ca_cert)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    raw, _ = listener.accept()
    with ctx.wrap_socket(raw, server_side=True) as tls:
        for record in RECORDS:
            tls.sendall(record)
        try:
            tls.unwrap()  # sends close_notify, then waits for one the client, already closed, never sends
        except (ssl.SSLError, OSError):
            pass


@pytest.mark.parametrize("fast", [True, False], ids=["ssl_read", "recv_fallback"])
def test_every_small_record_is_read_and_the_goodbye_after_them_closes(
    fast: bool, pki: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3,000 records of one answer each arrive whole and in order; the close_notify after them sets closed."""
    monkeypatch.setattr(transport, "FAST_READ", fast and transport.FAST_READ)
    listener = socket.create_server(("127.0.0.1", 0))
    server = threading.Thread(target=serve_records, args=(pki, listener), daemon=True)
    server.start()
    t = TlsTransport("127.0.0.1", listener.getsockname()[1], client_context(load_identity(pki.client_pem), pki.ca_cert))
    t.connect()
    got = bytearray()

    def all_read() -> bool:
        got.extend(t.read())
        return t.closed

    wait_for(all_read, 10, "every record and the close_notify")
    t.close()
    server.join(10)
    listener.close()

    assert (fast and transport.FAST_READ, b"".join(RECORDS)) == (t._record_buf is not None, bytes(got))
