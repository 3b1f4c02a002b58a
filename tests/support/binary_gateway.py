"""A small binary-protocol gateway over real TLS on loopback, for tests that script what the gateway does."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

from apnsd.wire import binary


def frames_from(conn: ssl.SSLSocket, stop: threading.Event) -> Iterator[binary.Frame]:
    """Each whole frame the client sends, in order, until it closes, the socket fails or ``stop`` is set."""
    buf = bytearray()
    while not stop.is_set():
        try:
            data = conn.recv(65536)
        except (TimeoutError, OSError):
            return
        if not data:
            return
        buf += data
        frames, used = binary.decode_frames(buf)
        del buf[:used]
        yield from frames


class BinaryGateway:
    """Listens on 127.0.0.1 with the test PKI's server certificate (TLS 1.2 at most, as the legacy gateway) and hands
    each connection, on a thread of its own, to ``serve``, which subclasses write. ``receive_buffer`` shrinks the
    accepted sockets' receive buffer."""

    protocol = "binary"

    def __init__(self, pki: Any, receive_buffer: int = 0) -> None:
        self.host = "127.0.0.1"
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(pki.server_cert, pki.server_key)
        self._ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # tickets inside the handshake, as legacy clients expect
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # accepted ones inherit it
        self._listener.bind((self.host, 0))
        self._listener.listen(8)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.stop = threading.Event()
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def serve(self, conn: ssl.SSLSocket, number: int) -> None:
        """Handle connection ``number`` (1 for the first); the subclass's part."""
        raise NotImplementedError

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            raw.settimeout(5)
            try:
                conn = self._ctx.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                raw.close()
                continue
            self.connections += 1
            threading.Thread(target=self.serve, args=(conn, self.connections), daemon=True).start()

    def close(self) -> None:
        """Stop accepting and reading."""
        self.stop.set()
        self._thread.join(5)
        self._listener.close()
