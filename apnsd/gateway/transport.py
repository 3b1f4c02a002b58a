"""The only socket user: TCP connect, TLS handshake (SNI, ALPN, verification), non-blocking I/O."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
import termios
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto

from apnsd.errors import GatewayError, GatewayRejected
from apnsd.proxy import parse_proxy

READ_SIZE = 64 * 1024  # below glibc's mmap threshold: pyOpenSSL allocates this per recv call
RECORD_SIZE = 16 * 1024  # the most plaintext one TLS record carries (RFC 8446 §5.1), so one SSL_read's most
# pyOpenSSL's recv() wraps each SSL_read in about a microsecond of Python, and SSL_read returns one record: a
# gateway that answers each request in a record of its own (nginx does) costs a recv per answer. Where its cffi
# binding is reachable, SSL_read is called on it directly into one buffer per connection; every error still
# goes through pyOpenSSL's own translation (_raise_ssl_error), and recv() remains the fallback.
_ffi: Any = getattr(SSL, "_ffi", None)
_SSL_read: Any = getattr(getattr(SSL, "_lib", None), "SSL_read", None)
FAST_READ = _ffi is not None and _SSL_read is not None and hasattr(SSL.Connection, "_raise_ssl_error")
# Whether a handshake resumed a session (pyOpenSSL has no wrapper for it); without the binding every handshake
# checks the certificate's name as on a full one.
_SSL_session_reused: Any = getattr(getattr(SSL, "_lib", None), "SSL_session_reused", None)
MAX_PROXY_RESPONSE = 16 * 1024  # a CONNECT answer is a status line and a few headers
_PROXY_HINTS = {
    407: ' (the proxy wants credentials, or refused these: proxy = "http://user:pass@host:port")',
    401: ' (the proxy wants credentials, or refused these: proxy = "http://user:pass@host:port")',
    403: " (the proxy's rules forbid this destination or port; tinyproxy needs ConnectPort 443)",
}


def open_tcp(host: str, port: int, timeout: float, proxy: str = "") -> socket.socket:
    """A TCP connection to host:port, directly or through an HTTP CONNECT tunnel; GatewayError with the cause."""
    target = f"{host}:{port}"
    if not proxy:
        return _dial(host, port, timeout, target, f"outgoing port {port} blocked?")
    p = parse_proxy(proxy)
    sock = _dial(p.host, p.port, timeout, f"proxy {p}", "is the proxy running and reachable?")
    try:
        _connect_tunnel(sock, host, port, p.authorization(), str(p), time.monotonic() + timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def _dial(host: str, port: int, timeout: float, what: str, hint: str) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise GatewayError(f"cannot reach {what}: connection timed out ({hint})") from None
    except OSError as exc:
        raise GatewayError(f"cannot reach {what}: {exc.strerror or exc} ({hint})") from None


def _connect_tunnel(
    sock: socket.socket, host: str, port: int, authorization: str | None, shown: str, deadline: float
) -> None:
    """Ask the proxy for a tunnel to host:port and read its answer; anything but 2xx is a GatewayError."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if authorization:
        request += f"Proxy-Authorization: {authorization}\r\n"
    answer = bytearray()
    try:
        sock.sendall((request + "\r\n").encode("idna" if not host.isascii() else "ascii"))
        while b"\r\n\r\n" not in answer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
            if len(answer) > MAX_PROXY_RESPONSE:
                break
    except TimeoutError:
        raise GatewayError(f"proxy {shown} did not answer CONNECT {authority} in time") from None
    except OSError as exc:
        raise GatewayError(f"proxy {shown} dropped CONNECT {authority}: {exc.strerror or exc}") from None
    head, sep, rest = bytes(answer).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    shown_line = "".join(c if c.isprintable() else "?" for c in status_line)[:200] or "(no answer)"
    parts = status_line.split(" ", 2)
    code = int(parts[1]) if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit() else 0
    if not sep or not 200 <= code < 300:
        raise GatewayError(f"proxy {shown} refused CONNECT {authority}: {shown_line}{_PROXY_HINTS.get(code, '')}")
    if rest:
        raise GatewayError(f"proxy {shown} sent data after its CONNECT answer; not a plain HTTP proxy?")
    sock.settimeout(None)


CHUNK = 128 * 1024  # plaintext encrypted at a time; ``written`` advances by a chunk once its ciphertext is sent
_INT = struct.Struct("i")
_INT_ZERO = _INT.pack(0)


class TlsSessions:
    """The TLS session of an app's latest connection, offered on its next one: a reconnect (after every binary
    error response, say) then resumes instead of repeating the certificate exchange and its signatures."""

    def __init__(self) -> None:
        self.session: SSL.Session | None = None
        self.verified: tuple[str, bytes] = ("", b"")  # (host, certificate DER) last found valid for that host
        self.context: SSL.Context | None = None  # the newer_context, once the gateway refused the first one's TLS


class TlsTransport:
    """One TLS connection to a gateway; the thread that created it is its only reader and writer.

    OpenSSL works on memory buffers and this class moves the ciphertext to and from the socket. OpenSSL
    (3.x) treats a socket write that fails as fatal to the whole TLS session: a gateway that writes an
    error response and closes at once would make the write fail with ECONNRESET and the answer it sent
    before unreadable. Here the TLS session never sees the socket fail, so what the peer sent before it
    went can still be read and decrypted after a failed write."""

    def __init__(
        self,
        host: str,
        port: int,
        context: SSL.Context,
        *,
        alpn: bytes | None = None,
        timeout: float = 10.0,
        verify_host: Callable[[x509.Certificate, str], bool] | None = None,
        proxy: str = "",
        sessions: TlsSessions | None = None,
        newer_context: Callable[[], SSL.Context] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._ip = _is_ip(host)
        self._proxy = proxy
        self._sessions = sessions
        self._context = sessions.context if sessions is not None and sessions.context is not None else context
        # A context offering newer TLS versions than ``context`` (binary stops at TLS 1.2): a gateway that refuses
        # the handshake for its version is dialled again, once, with this one (and so are its later connections).
        self._newer_context = newer_context if self._context is context else None
        self._alpn = alpn
        self._timeout = timeout
        self._verify_host = verify_host
        self._sock: socket.socket | None = None
        self._conn: SSL.Connection | None = None
        self._record_buf: Any = None  # SSL_read's destination when FAST_READ
        self._out = bytearray()  # plaintext not yet encrypted
        self._cipher = bytearray()  # ciphertext not yet taken by the socket
        self._encrypted = 0  # plaintext bytes whose ciphertext is (partly) in _cipher
        self._write_failure: str | None = None  # once a socket write failed, every later flush fails too
        self.written = 0  # plaintext bytes flush() has handed to the socket since connect
        self.closed = True
        self._established = False  # the handshake completed (so the session may be resumed later)
        self._addresses: list[tuple[int, int, int, str, tuple[Any, ...]]] = []  # resolved, not tried yet
        self._dialing = False  # the non-blocking TCP connect is in progress
        self.handshake_deadline = 0.0  # when start() must have become an established connection
        self.peer = f"{host}:{port}" + (f" via proxy {parse_proxy(proxy)}" if proxy else "")

    def connect(self) -> None:
        """Open TCP and complete the TLS handshake within the timeout, blocking; raise GatewayError with the cause.

        For one-shot users (send, check, feedback); the delivery loop uses start() and advance() instead."""
        self.start()
        while not self.advance():
            self._wait_io(self.handshake_deadline, write=self.wants_write)

    def start(self) -> None:
        """Begin connecting without blocking (the TCP connect in progress); advance() takes it further.

        Through a proxy the TCP connection and the CONNECT tunnel are opened blocking (bounded by the timeout);
        the TLS handshake is step-wise all the same."""
        self.handshake_deadline = time.monotonic() + self._timeout
        self._open()

    def _open(self) -> None:
        """Open the TCP connection (directly: non-blocking; through a proxy: blocking) and set up TLS on it."""
        if self._proxy:
            sock = open_tcp(self.host, self.port, self._timeout, self._proxy)
            sock.setblocking(False)
        else:
            self._addresses = _resolve(self.host, self.port, self._ip)
            sock = self._dial_next(None)
        self._setup(sock)

    def advance(self) -> bool:
        """Take the connect and handshake as far as they go without blocking; True once established.

        Raises GatewayError (GatewayRejected for a refused handshake) on failure or once the timeout passed."""
        if not self.closed:
            return True
        try:
            if self._dialing and not self._tcp_connected():
                self._check_timeout()
                return False
            if not self._handshake_step():
                self._check_timeout()
                return False
        except BaseException:
            if self._sessions is not None:
                self._sessions.session = None  # start afresh after a failed handshake
            self._abort()
            raise
        self.closed = False
        self._established = True
        return True

    def _setup(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = SSL.Connection(self._context, None)
        if not self._ip:
            conn.set_tlsext_host_name(self.host.encode("idna"))
        conn.set_connect_state()
        if self._sessions is not None and self._sessions.session is not None:
            conn.set_session(self._sessions.session)
        self._sock, self._conn = sock, conn
        if FAST_READ and self._record_buf is None and hasattr(conn, "_ssl"):
            self._record_buf = _ffi.new("char[]", RECORD_SIZE)

    def _dial_next(self, error: str | None) -> socket.socket:
        """A non-blocking connect to the next resolved address; GatewayError once none is left."""
        while self._addresses:
            family, kind, proto, _, addr = self._addresses.pop(0)
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            code = sock.connect_ex(addr)
            if code in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                self._dialing = code != 0
                return sock
            sock.close()
            error = os.strerror(code)
        raise GatewayError(f"cannot reach {self.peer}: {error} (outgoing port {self.port} blocked?)")

    def _tcp_connected(self) -> bool:
        """Whether the TCP connect finished; a refused address moves on to the next one."""
        sock = self._sock
        assert sock is not None
        if not select.select([], [sock], [], 0)[1]:
            return False
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            sock.close()
            self._sock = None
            self._setup(self._dial_next(os.strerror(code)))
            return False
        self._dialing = False
        return True

    def _check_timeout(self) -> None:
        if time.monotonic() >= self.handshake_deadline:
            if self._dialing:
                raise GatewayError(
                    f"cannot reach {self.peer}: connection timed out (outgoing port {self.port} blocked?)"
                )
            raise GatewayError(f"TLS handshake with {self.peer} timed out")

    def _handshake_step(self) -> bool:
        """One non-blocking round of the handshake: feed what arrived, send what OpenSSL wrote; True when done."""
        conn = self._conn
        assert conn is not None
        try:
            while True:
                fed = self._pull_handshake()
                try:
                    conn.do_handshake()
                    break
                except SSL.WantReadError:
                    self._push_handshake()
                    if not fed:
                        return False
                except SSL.Error as exc:
                    self._push_handshake()  # our alert, if OpenSSL wrote one, tells the gateway why
                    reason = describe_ssl_error(exc)
                    if self._offer_newer_versions(reason):
                        return False
                    raise GatewayRejected(f"TLS handshake with {self.peer} failed: {reason}") from None
            self._push_handshake()
        except OSError as exc:
            raise GatewayError(f"TLS handshake with {self.peer} failed: {exc}") from None
        if self._alpn is not None and conn.get_alpn_proto_negotiated() != self._alpn:
            raise GatewayRejected(
                f"{self.peer} did not select ALPN {self._alpn.decode()} (is it an HTTP/2 APNs endpoint?)"
            )
        if self._verify_host is not None:
            self._check_name(conn)
        return True

    def _offer_newer_versions(self, reason: str) -> bool:
        """The gateway refused our TLS version ("protocol version" alert) and a newer context exists: dial again
        with it (same deadline) and keep it for the session's later connections. True when redialling."""
        newer = self._newer_context
        if newer is None or "protocol version" not in reason:
            return False
        self._newer_context = None
        self._context = newer()
        if self._sessions is not None:
            self._sessions.context = self._context
            self._sessions.session = None  # a TLS 1.2 session cannot be resumed under TLS 1.3
        self._abort()
        self._open()
        return True

    def _check_name(self, conn: SSL.Connection) -> None:
        """The gateway's certificate must be valid for the host (OpenSSL has verified the chain); the same
        certificate as last time, on every reconnect, is not parsed again."""
        assert self._verify_host is not None
        sessions = self._sessions
        if (
            sessions is not None
            and sessions.verified[0] == self.host
            and _SSL_session_reused is not None
            and _SSL_session_reused(conn._ssl) == 1
        ):
            # A resumed session was saved only from a connection to this host whose certificate passed (or from one
            # that resumed such a session): the peer proved it holds that session's secret.
            return
        cert = conn.get_peer_certificate()
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert) if cert is not None else b""
        if der and self._sessions is not None and (self.host, der) == self._sessions.verified:
            return
        if cert is None or not self._verify_host(cert.to_cryptography(), self.host):
            raise GatewayRejected(f"{self.peer} presented a certificate that is not valid for {self.host}")
        if self._sessions is not None:
            self._sessions.verified = (self.host, der)

    def _push_handshake(self) -> None:
        """Send the handshake bytes OpenSSL has produced, as far as the socket takes them now (the rest waits
        in the outgoing buffer: wants_write)."""
        self._take_ciphertext()
        while self._cipher:
            try:
                sent = self._send_some()
            except (BlockingIOError, InterruptedError):
                return
            del self._cipher[:sent]

    def _pull_handshake(self) -> bool:
        """Hand the gateway's handshake bytes that arrived to OpenSSL (EOF included); True if there were any."""
        conn, sock = self._conn, self._sock
        assert conn is not None and sock is not None
        fed = False
        while True:
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return fed
            if not data:
                conn.bio_shutdown()  # OpenSSL then reports the unexpected end of the handshake
                return True
            conn.bio_write(data)
            fed = True

    def _wait_io(self, deadline: float, write: bool) -> None:
        assert self._sock is not None
        left = deadline - time.monotonic()
        if left > 0:
            select.select([] if write else [self._sock], [self._sock] if write else [], [], left)

    def fileno(self) -> int:
        """The socket's descriptor, for the owner's selector."""
        assert self._sock is not None
        return self._sock.fileno()

    def send(self, data: bytes | bytearray) -> None:
        """Queue bytes; they leave on the next flush()."""
        self._out += data

    @property
    def wants_write(self) -> bool:
        """True while queued bytes have not all been written (or, connecting, the TCP connect is in progress)."""
        return bool(self._out) or bool(self._cipher) or self._dialing

    @property
    def unsent(self) -> int:
        """Bytes queued (plaintext, or ciphertext of it) that the socket has not taken yet."""
        return len(self._out) + len(self._cipher)

    def flush(self) -> None:
        """Write as much of the queued bytes as the socket takes now, without blocking."""
        conn = self._conn
        if conn is None or self.closed:
            return
        if self._write_failure is not None:
            raise GatewayError(f"connection to {self.peer} lost: {self._write_failure}")
        out, cipher = self._out, self._cipher
        while cipher or out:
            if not cipher:
                # One chunk at a time, so that ``written`` says how far the socket has taken the stream.
                take = min(len(out), CHUNK)
                with memoryview(out) as view:
                    self._encrypted = conn.send(view[:take])
                del out[: self._encrypted]
                self._take_ciphertext()
            try:
                sent = self._send_some()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._write_failure = _os_reason(exc)
                raise GatewayError(f"connection to {self.peer} lost: {self._write_failure}") from None
            del cipher[:sent]
            if cipher:
                return  # the socket is full
            self.written += self._encrypted
            self._encrypted = 0

    def unacked(self) -> int:
        """Bytes the kernel took from us that the peer's TCP has not acknowledged yet (ciphertext; 0 when unknown):
        what ``written`` counts but the gateway cannot have read."""
        sock = self._sock
        if sock is None or self.closed:
            return 0
        try:
            return int(_INT.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, _INT_ZERO))[0])
        except OSError:
            return 0

    def _send_some(self) -> int:
        assert self._sock is not None
        with memoryview(self._cipher) as view:
            return self._sock.send(view)

    def _take_ciphertext(self) -> None:
        """Move what OpenSSL has encrypted (records, handshake messages, alerts) to the outgoing buffer."""
        conn = self._conn
        assert conn is not None
        try:
            while True:
                self._cipher += conn.bio_read(CHUNK + 4096)
        except SSL.WantReadError:
            pass

    def read(self) -> bytes:
        """Every byte available now (b'' if none); raises GatewayError when the peer has closed.

        When the peer closed after sending something, that is returned and ``closed`` becomes True."""
        conn, sock = self._conn, self._sock
        if conn is None or sock is None or self.closed:
            raise GatewayError(f"connection to {self.peer} is closed")
        ended: str | None = None
        while True:
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                ended = _os_reason(exc)
                break
            if not data:
                ended = "peer closed the connection"
                break
            conn.bio_write(data)
        plain = bytearray()
        try:
            self._decrypt(conn, plain)
        except (SSL.WantReadError, SSL.WantWriteError):
            pass
        except SSL.ZeroReturnError:
            ended = "peer closed the TLS session"
        except SSL.Error as exc:
            ended = describe_ssl_error(exc)
            self._established = False  # a broken TLS session is not offered again
        if ended is None:
            return bytes(plain)
        if plain:
            self.closed = True
            return bytes(plain)
        raise self._lost(ended)

    def _decrypt(self, conn: SSL.Connection, plain: bytearray) -> None:
        """Append every byte OpenSSL can decrypt now to ``plain``; ends with pyOpenSSL's WantReadError (or the
        error that stopped it, the bytes before it kept)."""
        buf = self._record_buf
        if buf is None:
            while True:
                plain += conn.recv(READ_SIZE)
        ssl, read, view = conn._ssl, _SSL_read, _ffi.buffer
        while True:
            n = read(ssl, buf, RECORD_SIZE)
            if n <= 0:
                conn._raise_ssl_error(ssl, n)
                raise SSL.Error(f"SSL_read returned {n} without an error")  # never loop on a silent failure
            plain += view(buf, n)

    def read_final(self, timeout: float) -> bytes:
        """After a failed write: what the peer sent before it went, waiting at most ``timeout`` for it."""
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        while not self.closed and self._sock is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                break
            try:
                chunks.append(self.read())
            except GatewayError:
                break
        return b"".join(chunks)

    def _lost(self, reason: str) -> GatewayError:
        self._abort()
        return GatewayError(f"connection to {self.peer} lost: {reason}")

    def close(self) -> None:
        """Send close_notify if possible and close the socket; never raises."""
        if self._conn is not None and not self.closed and self._write_failure is None:
            try:
                self._conn.shutdown()
                self._take_ciphertext()
                self._send_some()
            except (SSL.Error, OSError):
                pass
        self._abort()

    def _abort(self) -> None:
        if self._sessions is not None and self._conn is not None and self._established:
            # Taken at the end rather than after the handshake: under TLS 1.3 the session tickets that make it
            # resumable arrive afterwards, with the first data read.
            self._sessions.session = self._conn.get_session()
            # A connection the gateway ended without close_notify (an error response, then an immediate close)
            # would otherwise make OpenSSL drop its session when it is freed; TLS 1.1 and later allow resuming it.
            self._conn.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
        self._established = False
        self._dialing = False
        self.closed = True
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._conn = None
        self._out.clear()
        self._cipher.clear()


def _resolve(host: str, port: int, ip: bool = False) -> list[tuple[int, int, int, str, tuple[Any, ...]]]:
    """The addresses to try for host:port, in the resolver's order; GatewayError if the name does not resolve.

    An IP address is its own answer: the resolver (and Python's IDNA codec before it) is not asked on every
    reconnect."""
    if ip:
        if ":" in host:
            return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
    try:
        return [(f, k, p, c, a) for f, k, p, c, a in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)]
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise GatewayError(f"cannot reach {host}:{port}: {reason} (outgoing port {port} blocked?)") from None


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            pass
    return False


def _os_reason(exc: OSError) -> str:
    code = exc.errno
    if code is not None and code in errno.errorcode:
        return f"{errno.errorcode[code]} ({code})"
    return str(exc)


def describe_ssl_error(exc: SSL.Error) -> str:
    """Turn pyOpenSSL's nested error tuples into one readable line."""
    parts = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(item, tuple) and len(item) == 3:
            parts.append(str(item[2]))
    text = "; ".join(parts) or str(exc) or type(exc).__name__
    if "alert" in text and ("certificate" in text or "handshake" in text or "unknown ca" in text):
        text += (
            " — the gateway rejected the client certificate (wrong environment, revoked or not an APNs certificate?)"
        )
    elif "certificate verify failed" in text:
        text += " — the gateway's certificate is not trusted (set ca_file, or update the system CA store)"
    return text
