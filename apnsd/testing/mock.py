"""A fake APNs gateway over real TLS on loopback, for both protocols, built on the protocol cores."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from OpenSSL import SSL

from apnsd import logs
from apnsd.errors import ProtocolError
from apnsd.gateway.credentials import inspect_certificate, server_context
from apnsd.testing.record import MockRecord, Received
from apnsd.wire import binary

READ_SIZE = 256 * 1024


@dataclass(frozen=True)
class BinaryFaults:
    """Faults the binary mock injects: error responses for token prefixes, an abrupt close after N, a
    Shutdown (status 10) after N; ``hard_close`` closes right after an error response without reading on."""

    fail_prefixes: tuple[tuple[str, int], ...] = ()
    close_after: int = 0
    once: bool = True
    shutdown_after: int = 0
    hard_close: bool = False


@dataclass
class _Counters:
    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: int = 0
    closes: int = 0


class MockGateway:
    """Listens on loopback and serves each TLS connection in its own thread until stopped."""

    def __init__(
        self,
        protocol: str,
        cert_file: str,
        key_file: str,
        client_ca_file: str | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        binary_faults: BinaryFaults = BinaryFaults(),
        http2_faults: Any = None,
        record: MockRecord | None = None,
        feedback: list[tuple[int, bytes]] | None = None,
        now: Callable[[], float] | None = None,
    ) -> None:
        self.protocol = protocol
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.record = record or MockRecord()
        self.binary_faults = binary_faults
        self.http2_faults = http2_faults
        self.feedback = list(feedback or [])
        self._now = now or time.time
        self.log = logs.get("mock", protocol=protocol)
        alpn = [b"h2"] if protocol == "http2" else None
        self._ctx = server_context(cert_file, key_file, client_ca_file, alpn)
        if protocol == "binary":
            # TLS 1.3 servers send session tickets after the handshake. Providers of the binary era never
            # read (the tutorials' PHP writes and closes), so their close() finds unread bytes and resets
            # the connection, discarding frames Nagle still held: the gateway would never see them.
            # TLS 1.2 puts the ticket inside the handshake, as the legacy gateway's clients expected.
            self._ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        self._listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.host, self.port = host, self._listener.getsockname()[1]
        self._feedback_listener: socket.socket | None = None
        self.feedback_port = 0
        self._channels_listener: socket.socket | None = None
        self.channels_port = 0  # http2: the channel management API's port, once started
        self.channels: Any = None  # http2: the ChannelRegistry behind broadcasts and the management API
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._counters = _Counters()
        self._h2_state: Any = None
        if protocol == "http2":
            from apnsd.testing.http2_mock import FaultState, Http2Faults

            self.http2_faults = http2_faults or Http2Faults()
            self._h2_state = FaultState()
            self.channels = self._h2_state.channels
        elif protocol != "binary":
            raise ValueError(f"unknown protocol {protocol!r}")

    def start(self, with_feedback: bool = False, channels_port: int = 0) -> MockGateway:
        """Start accepting; binary: and the feedback service, http2: and the channel management API (own ports)."""
        self._spawn(self._accept_loop, self._listener, self._serve)
        if self.protocol == "http2":
            self._channels_listener = socket.create_server(
                (self.host, channels_port), family=socket.AF_INET6 if ":" in self.host else socket.AF_INET
            )
            self.channels_port = self._channels_listener.getsockname()[1]
            self._spawn(self._accept_loop, self._channels_listener, self._serve_channels)
        if with_feedback:
            self._feedback_listener = socket.create_server((self.host, 0))
            self.feedback_port = self._feedback_listener.getsockname()[1]
            self._spawn(self._accept_loop, self._feedback_listener, self._serve_feedback)
        return self

    def stop(self) -> None:
        """Close the listeners and every open connection."""
        self._stopped.set()
        for lst in (self._listener, self._feedback_listener, self._channels_listener):
            if lst is not None:
                try:
                    lst.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                lst.close()
        with self._lock:
            for s in list(self._conns):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self._threads:
            t.join(timeout=5)

    @property
    def open_connections(self) -> int:
        """Connections being served right now."""
        with self._lock:
            return len(self._conns)

    def __enter__(self) -> MockGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name=f"mock-{self.protocol}")
        t.start()
        self._threads.append(t)

    def _accept_loop(self, listener: socket.socket, serve: Callable[[SSL.Connection], None]) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            self._spawn(self._handle, sock, serve)

    def _handle(self, sock: socket.socket, serve: Callable[[SSL.Connection], None]) -> None:
        with self._lock:
            self._conns.add(sock)
        # An error response must leave before a hard close that follows it (Nagle could hold it back, and a
        # close with unread data resets the connection, discarding what is still unsent).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = SSL.Connection(self._ctx, sock)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            if serve == self._serve_channels:
                self.channels.connected()
            else:
                self.record.connected()
            serve(conn)
        except (SSL.Error, OSError, ProtocolError):
            pass
        finally:
            with self._lock:
                self._conns.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    # --- binary ------------------------------------------------------------------------------

    def _serve(self, conn: SSL.Connection) -> None:
        if self.protocol == "http2":
            self._serve_http2(conn)
        else:
            self._serve_binary(conn)

    def _serve_binary(self, conn: SSL.Connection) -> None:
        buf = bytearray()
        faults = self.binary_faults
        last = [0]  # the identifier of the last notification this connection accepted, across reads
        while True:
            data = conn.recv(READ_SIZE)
            if not data:
                return
            buf += data
            bad: binary.MalformedInput | None = None
            try:
                frames, used = binary.decode_frames(buf)
            except binary.MalformedInput as exc:
                frames, used, bad = exc.decoded, 0, exc
            del buf[:used]
            if not self._take_frames(conn, frames, faults, last):
                return
            if bad is not None:
                # Like APNs: status 128 (could not parse), then close; the log says what was wrong.
                self.log.warning("unparseable_input", error=str(bad), status=128, notifications_before=len(frames))
                conn.sendall(binary.encode_error_response(128, 0))
                self._end_after_error(conn, faults)
                return

    def _take_frames(
        self, conn: SSL.Connection, frames: list[binary.Frame], faults: BinaryFaults, last: list[int]
    ) -> bool:
        """Record and answer decoded notifications; False once the connection is over. ``last`` holds the
        identifier of the connection's last accepted notification, which a Shutdown names."""
        accepted: list[Received] = []
        keep = self.record.keep_payloads
        for f in frames:
            ident = f.identifier or 0
            status = self._binary_status(f, faults)
            if status is None and self._should_close(faults):
                self.record.add(accepted)
                return False  # abrupt: no error response, no TLS goodbye
            if status is None and self._should_shut_down(faults):
                # Status 10 names the last notification processed; this one and all after it are discarded.
                self.record.add(accepted)
                conn.sendall(binary.encode_error_response(10, last[0]))
                self._end_after_error(conn, faults)
                return False
            if status is not None:
                self.record.add([*accepted, Received(f.token.hex(), f.payload, str(ident), status)])
                if f.command != binary.COMMAND_SIMPLE:  # command 0 has no identifier: APNs just closes
                    conn.sendall(binary.encode_error_response(status, ident))
                self._end_after_error(conn, faults)
                return False
            accepted.append(Received(f.token.hex(), f.payload if keep else b"", str(ident), 200))
            last[0] = ident
        self.record.add(accepted)
        return True

    def _end_after_error(self, conn: SSL.Connection, faults: BinaryFaults) -> None:
        """Close after an error response: gracefully, or (``hard_close``) at once as Apple's gateway did,
        so that the client's unread frames make the kernel reset the connection under its writes."""
        if not faults.hard_close:
            _close_gracefully(conn)

    def _binary_status(self, f: binary.Frame, faults: BinaryFaults) -> int | None:
        token = f.token.hex()
        for prefix, status in faults.fail_prefixes:
            if token.startswith(prefix):
                return status
        if not f.token:
            return 2
        if len(f.token) != 32:
            return 5
        if not f.payload:
            return 4
        if len(f.payload) > 2048:
            return 7
        return None

    def _should_close(self, faults: BinaryFaults) -> bool:
        return self._count_towards(faults.close_after, faults.once)

    def _should_shut_down(self, faults: BinaryFaults) -> bool:
        return self._count_towards(faults.shutdown_after, faults.once)

    def _count_towards(self, limit: int, once: bool) -> bool:
        """Count one accepted notification; True when it is the one past ``limit`` (then start again)."""
        if not limit:
            return False
        c = self._counters
        with c.lock:
            if once and c.closes:
                return False
            c.accepted += 1
            if c.accepted > limit:
                c.closes += 1
                c.accepted = 0
                return True
        return False

    def _serve_feedback(self, conn: SSL.Connection) -> None:
        with self._lock:
            tuples, self.feedback = self.feedback, []
        conn.sendall(b"".join(binary.encode_feedback(ts, tok) for ts, tok in tuples))
        _close_gracefully(conn)

    # --- http2 -------------------------------------------------------------------------------

    def _serve_channels(self, conn: SSL.Connection) -> None:
        from apnsd.testing.channels_mock import ChannelApiConnection

        # management requests are not notifications: they stay out of the record (the registry logs them)
        self._serve_http2(conn, ChannelApiConnection, MockRecord())

    def _serve_http2(self, conn: SSL.Connection, kind: Any = None, record: MockRecord | None = None) -> None:
        from apnsd.testing.http2_mock import Http2GatewayConnection

        faults = self.http2_faults
        cert = conn.get_peer_certificate(as_cryptography=True)
        if cert is not None and not faults.allowed_topics and faults.jwt_public_key is None:
            faults = replace(faults, allowed_topics=inspect_certificate(cert).topic_names())
        h2c = (kind or Http2GatewayConnection)(faults, self._h2_state, record or self.record, self._now)
        conn.sendall(h2c.initiate())
        while not h2c.closed:
            if faults.idle_timeout and h2c.idle and not conn.pending():
                if not select.select([conn], [], [], faults.idle_timeout)[0]:
                    conn.sendall(h2c.idle_goaway())
                    break
            data = conn.recv(READ_SIZE)
            if not data:
                return
            out = h2c.receive(data)
            if out:
                conn.sendall(out)
        if h2c.abrupt:
            return
        _close_gracefully(conn)


def _close_gracefully(conn: SSL.Connection) -> None:
    """TLS close_notify, then read and discard until the peer closes (or the mock stops), so the peer
    gets our last bytes (an error response) before any reset could destroy them."""
    try:
        conn.shutdown()
        while conn.recv(READ_SIZE):
            pass
    except (SSL.Error, OSError):
        pass
